"""The chat server, `bitttt chat --protocol jsonl` (design §6 "Chat server").

One JSON request per stdin line, events out on stdout. A reader thread feeds the lines to a
bounded inbox, so a `cancel` sent while a reply streams is seen between two tokens. Every
request is answered (token…done, ok, error or bye); no request, however bad, ends the server or
unloads its model: only `stop` or the end of stdin do (after the requests read before it).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any, TextIO

import torch

from bitttt.chat_memory import MemoryFileError, resolve_state_path
from bitttt.errors import ConfigError
from bitttt.generate import ChatSession, SamplingParams

MAX_LINE_CHARS = 1 << 20  # a longer request line is skipped and answered with an error
MAX_PROMPT_TOKENS = 8192  # per generate request; longer text goes in several turns
MAX_PENDING = 256  # requests waiting while a reply streams; more are dropped, each with an error
MAX_PENDING_BYTES = 16 << 20  # the bytes of those requests (each line is at most MAX_LINE_CHARS)
OPS = ("generate", "cancel", "reset", "save_state", "load_state", "stop")
ROLES = ("system", "user", "assistant")
_EOF, _TOO_LONG, _DROPPED = object(), object(), object()


class RequestError(ValueError):
    """A request that is not well formed."""


class _Dropped:
    """Requests the inbox had no room for, in a row; each is answered with an error in its turn."""

    def __init__(self) -> None:
        self.n = 1


class _Reader:
    """Reads stdin on its own thread into a bounded inbox: lines, _TOO_LONG for an oversized line
    (skipped to its end), _EOF last. Past MAX_PENDING requests or MAX_PENDING_BYTES waiting, a
    line is dropped (a _Dropped marker keeps its turn, answered with an error) unless it is a
    `cancel` or `stop`: those always get through.

    The server takes requests in order with get(); while a reply streams, take_control() finds a
    `cancel` (taken out) or a `stop` (left in its turn) among the waiting lines."""

    def __init__(self, stdin: TextIO) -> None:
        self.stdin = stdin
        self.items: deque = deque()
        self.bytes = 0
        self.scanned = 0  # items[:scanned] were looked at by take_control already
        self.cond = threading.Condition()
        threading.Thread(target=self._run, name="chat-stdin", daemon=True).start()

    def _run(self) -> None:
        try:
            while line := self.stdin.readline(MAX_LINE_CHARS + 1):
                if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
                    while (rest := self.stdin.readline(MAX_LINE_CHARS)) and not rest.endswith("\n"):
                        pass
                    self._put(_TOO_LONG)
                elif line.strip():
                    self._put(line)
        except (OSError, ValueError):  # stdin closed under us
            pass
        finally:
            self._put(_EOF)

    def _put(self, item: Any) -> None:
        with self.cond:
            size = len(item) if isinstance(item, str) else 0
            full = len(self.items) >= MAX_PENDING or self.bytes + size > MAX_PENDING_BYTES
            if full and item is not _EOF and _op_of(item) not in ("cancel", "stop"):
                if self.items and isinstance(self.items[-1], _Dropped):
                    self.items[-1].n += 1
                else:
                    self.items.append(_Dropped())
            else:
                self.items.append(item)
                self.bytes += size
            self.cond.notify()

    def get(self) -> Any:
        """The next request (blocks): a line, _TOO_LONG, _DROPPED (one dropped request) or _EOF."""
        with self.cond:
            while not self.items:
                self.cond.wait()
            item = self.items[0]
            if isinstance(item, _Dropped):
                item.n -= 1
                if item.n == 0:
                    self._pop()
                return _DROPPED
            return self._pop()

    def _pop(self) -> Any:
        item = self.items.popleft()
        self.scanned = max(0, self.scanned - 1)
        if isinstance(item, str):
            self.bytes -= len(item)
        return item

    def take_control(self) -> str | None:
        """"cancel" (taken out of the inbox) or "stop" (left in it) if one came in since the last
        call; None otherwise. Never blocks."""
        with self.cond:
            while self.scanned < len(self.items):
                i = self.scanned
                op = _op_of(self.items[i])
                if op == "cancel":
                    item = self.items[i]
                    del self.items[i]
                    self.bytes -= len(item)
                    return "cancel"
                self.scanned += 1
                if op == "stop":
                    return "stop"
            return None


def _op_of(line: Any) -> str | None:
    """The op of a raw request line, without raising (used while a reply streams)."""
    if not isinstance(line, str):
        return None
    try:
        req = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        return None
    return req.get("op") if isinstance(req, dict) and isinstance(req.get("op"), str) else None


class ChatServer:
    def __init__(self, session: ChatSession, stdout: TextIO, state_root: str | None = None,
                 model_path: str | None = None) -> None:
        self.session, self.stdout, self.state_root, self.model_path = session, stdout, state_root, model_path

    def send(self, event: str, **fields: Any) -> None:
        self.stdout.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")
        self.stdout.flush()

    def serve(self, stdin: TextIO) -> int:
        reader = _Reader(stdin)
        self.send("ready", chat_format=self.session.chat_format, model=self.model_path,
                  memory=self.session.memory())
        while True:
            line = reader.get()
            if line is _EOF:
                return 0
            if not self.handle(line, reader):
                self.send("bye")
                return 0

    def handle(self, line: Any, reader: _Reader) -> bool:
        """Answers one request line; False after `stop`."""
        try:
            if line is _TOO_LONG:
                raise RequestError(f"request longer than {MAX_LINE_CHARS} characters; skipped")
            if line is _DROPPED:
                raise RequestError(f"request dropped: {MAX_PENDING} requests or {MAX_PENDING_BYTES >> 20} MB "
                                   "were already waiting; send it again after the reply")
            req = self._parse(line)
            op = req.pop("op")
            if op == "stop":
                return False
            getattr(self, "_op_" + op)(req, reader)
        except (RequestError, ConfigError, TypeError, KeyError) as e:
            kind = "state" if isinstance(e, MemoryFileError) else "request"
            self.send("error", kind=kind, message=str(e)[:2000], hint=getattr(e, "hint", None))
        except (torch.OutOfMemoryError, MemoryError) as e:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.send("error", kind="oom", message=f"out of memory: {str(e)[:500]}",
                      hint="send a shorter prompt, ask for fewer tokens, or reset the memory")
        except Exception as e:  # a bug or a kernel error: say it, keep the model, keep serving
            self.send("error", kind="internal", message=f"{type(e).__name__}: {str(e)[:1000]}", hint=None)
        return True

    def _parse(self, line: str) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except ValueError as e:
            raise RequestError(f"not JSON ({e}): {line.strip()[:80]!r}") from None
        except RecursionError:
            raise RequestError(f"JSON nested too deeply: {line.strip()[:80]!r}") from None
        if not isinstance(req, dict):
            raise RequestError(f"expected a JSON object, got {type(req).__name__}")
        op = req.get("op")
        if op not in OPS:
            raise RequestError(f"unknown op {str(op)[:40]!r}; use {', '.join(OPS)}")
        return req

    # -- ops -------------------------------------------------------------------------------
    def _op_generate(self, req: dict[str, Any], reader: _Reader) -> None:
        messages = self._messages(req.pop("messages", None), req.pop("prompt", None))
        params = SamplingParams.from_dict({**self.session.defaults.__dict__, **req})
        check = _CancelCheck(reader)
        t0 = time.perf_counter()
        for piece in self.session.reply(messages, params, check, max_prompt_tokens=MAX_PROMPT_TOKENS):
            rate = check.tokens / max(time.perf_counter() - t0, 1e-9)
            self.send("token", text=piece, n_tokens=check.tokens, tokens_per_s=round(rate, 2))
        turn = self.session.last_turn
        self.send("done", n_tokens=turn.n_tokens, tokens_per_s=turn.n_tokens / max(time.perf_counter() - t0, 1e-9),
                  cancelled=turn.cancelled, memory=turn.memory)

    def _messages(self, messages: Any, prompt: Any) -> list[dict[str, str]]:
        if messages is None:
            if not isinstance(prompt, str):
                raise RequestError('generate needs "prompt" (text) or "messages" (a list of {role, content})')
            return [{"role": "user", "content": prompt}]
        if prompt is not None:
            raise RequestError('generate takes "prompt" or "messages", not both')
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role", "user") in ROLES
                for m in messages):
            raise RequestError(f"messages must be a non-empty list of {{role ({', '.join(ROLES)}), content (text)}}")
        return [{"role": m.get("role", "user"), "content": m["content"]} for m in messages]

    def _op_cancel(self, req: dict[str, Any], reader: _Reader) -> None:
        self.send("ok", op="cancel", cancelled=False)  # nothing streams now: nothing to cancel

    def _op_reset(self, req: dict[str, Any], reader: _Reader) -> None:
        self.session.reset()
        self.send("ok", op="reset", memory=self.session.memory())

    def _op_save_state(self, req: dict[str, Any], reader: _Reader) -> None:
        path = resolve_state_path(req.get("path"), self.state_root)
        self.send("ok", op="save_state", path=str(self.session.save(path)))

    def _op_load_state(self, req: dict[str, Any], reader: _Reader) -> None:
        path = resolve_state_path(req.get("path"), self.state_root)
        self.session.load(path)
        self.send("ok", op="load_state", path=str(path), memory=self.session.memory())


class _CancelCheck:
    """should_stop for a streaming reply, asked before each token: `cancel` ends the reply (its
    answer is the `done` with cancelled true); `stop` ends it too and is handled after it;
    anything else, the end of input included, waits its turn in the reader's inbox (a script
    that pipes its requests in and closes stdin gets every reply: docs/design.md §6).
    `tokens` counts the tokens let through."""

    def __init__(self, reader: _Reader) -> None:
        self.reader, self.tokens = reader, 0

    def __call__(self) -> bool:
        if self.reader.take_control() is not None:
            return True
        self.tokens += 1
        return False


def chat_jsonl(session: ChatSession, stdin: TextIO, stdout: TextIO, state_root: str | None = None,
               model_path: str | None = None) -> int:
    """Serves design §6's protocol until `stop` or end of input; returns the exit code (0).
    state_root: if given, save_state/load_state paths must lie inside it."""
    if hasattr(stdin, "reconfigure"):
        stdin.reconfigure(errors="replace")  # bytes that are not UTF-8 become a bad request, not a crash
    try:
        return ChatServer(session, stdout, state_root, model_path).serve(stdin)
    except BrokenPipeError:  # the client went away: nobody to answer
        return 0
