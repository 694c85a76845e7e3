"""The chat server, `bitttt chat --protocol jsonl` (design §6 "Chat server").

One JSON request per stdin line, events out on stdout. A reader thread feeds the lines to a
queue, so a `cancel` sent while a reply streams is seen between two tokens. Every request is
answered (token…done, ok, error or bye); no request, however bad, ends the server or unloads
its model: only `stop` or the end of stdin do.
"""

from __future__ import annotations

import json
import queue
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
OPS = ("generate", "cancel", "reset", "save_state", "load_state", "stop")
ROLES = ("system", "user", "assistant")
_EOF, _TOO_LONG = object(), object()


class RequestError(ValueError):
    """A request that is not well formed."""


class _Reader:
    """Reads stdin on its own thread into a queue: lines, _TOO_LONG for an oversized line
    (skipped to its end), _EOF last."""

    def __init__(self, stdin: TextIO) -> None:
        self.q: queue.Queue = queue.Queue()
        self.stdin = stdin
        threading.Thread(target=self._run, name="chat-stdin", daemon=True).start()

    def _run(self) -> None:
        try:
            while line := self.stdin.readline(MAX_LINE_CHARS + 1):
                if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
                    while (rest := self.stdin.readline(MAX_LINE_CHARS)) and not rest.endswith("\n"):
                        pass
                    self.q.put(_TOO_LONG)
                elif line.strip():
                    self.q.put(line)
        except (OSError, ValueError):  # stdin closed under us
            pass
        finally:
            self.q.put(_EOF)

    def get(self) -> Any:
        return self.q.get()

    def poll(self) -> Any:
        try:
            return self.q.get_nowait()
        except queue.Empty:
            return None


def _op_of(line: Any) -> str | None:
    """The op of a raw request line, without raising (used while a reply streams)."""
    if not isinstance(line, str):
        return None
    try:
        req = json.loads(line)
    except ValueError:
        return None
    return req.get("op") if isinstance(req, dict) and isinstance(req.get("op"), str) else None


class ChatServer:
    def __init__(self, session: ChatSession, stdout: TextIO, state_root: str | None = None,
                 model_path: str | None = None) -> None:
        self.session, self.stdout, self.state_root, self.model_path = session, stdout, state_root, model_path
        self.pending: deque = deque()  # requests that came in while a reply streamed

    def send(self, event: str, **fields: Any) -> None:
        self.stdout.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")
        self.stdout.flush()

    def serve(self, stdin: TextIO) -> int:
        reader = _Reader(stdin)
        self.send("ready", chat_format=self.session.chat_format, model=self.model_path,
                  memory=self.session.memory())
        while True:
            line = self.pending.popleft() if self.pending else reader.get()
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
        check = _CancelCheck(reader, self.pending)
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
    """should_stop for a streaming reply, asked before each token: drains the requests that came
    in meanwhile. `cancel` ends the reply (its answer is the `done` with cancelled true); `stop`
    ends it too and is handled after it; anything else, the end of input included, waits its turn
    (a script that pipes its requests in and closes stdin gets every reply).
    `tokens` counts the tokens let through."""

    def __init__(self, reader: _Reader, pending: deque) -> None:
        self.reader, self.pending, self.tokens = reader, pending, 0

    def __call__(self) -> bool:
        while (line := self.reader.poll()) is not None:
            op = _op_of(line)
            if op == "cancel":
                return True
            self.pending.append(line)
            if op == "stop":
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
