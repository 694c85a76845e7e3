"""The tokenizer of a Hugging Face folder: tokenizer.json through the `tokenizers` library (no
transformers), special tokens from tokenizer_config.json (else config.json's ids), and the chat
template (tokenizer_config.json's `chat_template` or chat_template.jinja) rendered with jinja2
when it is installed, else a plain "role: content" fallback.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterable
from typing import Any

from bitttt.errors import ConfigError
from bitttt.hf.bitnet import BitNetConfig
from bitttt.hf.loader import HINT, read_json
from bitttt.tokenizer import Tokenizer, _byte_level_decoder_table

GENERATION_CONFIG = "generation_config.json"
BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # sentencepiece byte tokens
TEMPLATE_DEADLINE_S = 5.0  # a chat template renders in milliseconds; one that takes seconds loops
TEMPLATE_HINT = "the folder's chat_template rejected these messages or hit a limit; fix or remove it"


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json writes a special token as a string or as {"content": ...}."""
    text = value.get("content") if isinstance(value, dict) else value
    return text if isinstance(text, str) else None


def _uses_byte_level(tokenizer_json: dict[str, Any]) -> bool:
    dec = tokenizer_json.get("decoder") or {}
    parts = dec.get("decoders", []) if dec.get("type") == "Sequence" else [dec]
    return any(isinstance(p, dict) and p.get("type") == "ByteLevel" for p in parts)


class HFTokenizer(Tokenizer):
    """bitttt's Tokenizer interface over an HF tokenizer.json: "<|bos|>"/"<|eos|>" map to the
    folder's own bos/eos; other names are looked up in its vocabulary."""

    kind = "hf"

    def __init__(self, tok, bos_id: int, eos_id: int, byte_level: bool, chat_template: str | None,
                 bos_text: str, eos_text: str, more_eos_ids: Iterable[int] = ()) -> None:
        self.tok, self._bos, self._eos = tok, bos_id, eos_id
        self._eos_ids = frozenset((eos_id, *more_eos_ids))
        self.n_tokens = tok.get_vocab_size(with_added_tokens=True)
        self.chat_template, self.bos_text, self.eos_text = chat_template, bos_text, eos_text
        self._renderer: TemplateRenderer | None = None  # started at the first chat turn
        specials = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        table = _byte_level_decoder_table() if byte_level else None
        self._bytes = [b""] * self.n_tokens
        for token, i in tok.get_vocab(with_added_tokens=True).items():
            if i in specials or i >= self.n_tokens:
                continue
            if table is not None:
                self._bytes[i] = bytes(table[ch] for ch in token if ch in table)
            elif m := BYTE_FALLBACK.match(token):
                self._bytes[i] = bytes((int(m.group(1), 16),))
            else:
                self._bytes[i] = token.replace("\u2581", " ").encode("utf-8")  # sentencepiece's space mark

    @property
    def vocab_size(self) -> int:
        return self.n_tokens  # the model's vocabulary is the checkpoint's, not bitttt's padded one

    def special_id(self, name: str) -> int:
        if name == "<|bos|>":
            return self._bos
        if name == "<|eos|>":
            return self._eos
        i = self.tok.token_to_id(name)
        if i is None:
            raise ConfigError(f"tokenizer has no token {name}", hint="this folder's tokenizer does not use it")
        return i

    @property
    def eos_ids(self) -> frozenset[int]:
        return self._eos_ids

    def encode(self, text: str) -> list[int]:
        try:
            return self.tok.encode(text, add_special_tokens=False).ids
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # tokenizers' own errors, and PanicException (a BaseException)
            raise ConfigError(f"tokenizer.json cannot encode this text ({type(e).__name__}: {str(e)[:200]})",
                              hint="the folder's tokenizer is damaged or incomplete (e.g. a WordLevel "
                                   "vocabulary without its unk_token)") from None

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id] if 0 <= token_id < self.n_tokens else b""

    def encode_chat(self, messages: list[dict], add_assistant: bool = False) -> list[int]:
        """The new turns as the folder's chat template writes them, without the leading bos (the
        conversation's cache already starts with it)."""
        text = self.render_chat(messages, add_assistant)
        if self.bos_text and text.startswith(self.bos_text):
            text = text[len(self.bos_text):]
        return self.encode(text)

    def render_chat(self, messages: list[dict], add_assistant: bool) -> str:
        msgs = [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))} if isinstance(m, dict)
                else {"role": "user", "content": str(m)} for m in messages]
        if self.chat_template is None or not _have_jinja():
            text = "".join(f"{m['role'].capitalize()}: {m['content']}{self.eos_text}" for m in msgs)
            return text + ("Assistant: " if add_assistant else "")
        if self._renderer is None:
            self._renderer = TemplateRenderer()
        return self._renderer.render(self.chat_template, dict(messages=msgs, add_generation_prompt=add_assistant,
                                                              bos_token=self.bos_text, eos_token=self.eos_text))

    def save(self, path: str) -> None:
        self.tok.save(path)


def _have_jinja() -> bool:
    try:
        import jinja2  # noqa: F401
    except ImportError:
        return False
    return True


class TemplateRenderer:
    """Renders chat templates in a child process (bitttt/hf/template_worker.py) with a deadline:
    a template that loops or allocates without end is killed there and answered with a
    ConfigError here; the next render starts a fresh child. One child per tokenizer, started at
    the first render; it exits when this process closes its stdin (close(), or exit)."""

    def __init__(self, deadline_s: float = TEMPLATE_DEADLINE_S) -> None:
        self.deadline_s = deadline_s
        self._proc: subprocess.Popen | None = None
        self._answers: queue.Queue = queue.Queue()

    def _start(self) -> subprocess.Popen:
        worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "template_worker.py")
        proc = subprocess.Popen([sys.executable, "-I", worker], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, encoding="utf-8", bufsize=1)
        answers = self._answers = queue.Queue()  # this child's own: a killed one's late lines go nowhere

        def read() -> None:
            for line in proc.stdout:
                answers.put(line)
            answers.put(None)
        threading.Thread(target=read, name="chat-template", daemon=True).start()
        return proc

    def render(self, template: str, context: dict[str, Any]) -> str:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = self._start()
        try:
            self._proc.stdin.write(json.dumps({"template": template, "context": context}) + "\n")
            self._proc.stdin.flush()
            line = self._answers.get(timeout=self.deadline_s)
        except queue.Empty:
            self.close()
            raise ConfigError(f"chat template: rendering took longer than {self.deadline_s:g} s; stopped",
                              hint="the folder's chat_template loops too long; fix or remove it") from None
        except OSError as e:  # the child died under us (killed, or out of memory at start)
            self.close()
            raise ConfigError(f"chat template: the renderer stopped ({e})", hint=TEMPLATE_HINT) from None
        answer = json.loads(line) if line else {"error": "the renderer exited"}
        if line is None:
            self.close()
        if "error" in answer:
            raise ConfigError(f"chat template: {answer['error']}", hint=TEMPLATE_HINT)
        return answer["text"]

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()  # our own child, by its handle
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass


def _chat_template(path: str, tok_config: dict[str, Any]) -> str | None:
    t = tok_config.get("chat_template")
    if isinstance(t, list):  # [{"name": "default", "template": ...}, ...]
        t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"), None)
    jinja_file = os.path.join(path, "chat_template.jinja")
    if not isinstance(t, str) and os.path.isfile(jinja_file):
        try:
            with open(jinja_file, encoding="utf-8") as f:
                t = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{jinja_file}: unreadable ({type(e).__name__}: {str(e)[:120]})",
                              hint="a chat template is UTF-8 text; fix or remove the file") from None
    return t if isinstance(t, str) and t.strip() else None


def load_hf_tokenizer(path: str, config: BitNetConfig) -> HFTokenizer:
    """The folder's tokenizer.json (+ tokenizer_config.json if present); ConfigError if missing or bad."""
    tok_path = os.path.join(path, "tokenizer.json")
    tok_json = read_json(tok_path)
    cfg_path = os.path.join(path, "tokenizer_config.json")
    tok_config = read_json(cfg_path) if os.path.isfile(cfg_path) else {}
    try:
        from tokenizers import Tokenizer as RustTokenizer

        tok = RustTokenizer.from_file(tok_path)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # also PanicException, a BaseException, from a tokenizer.json tokenizers chokes on
        raise ConfigError(f"{tok_path}: not a tokenizer ({type(e).__name__}: {str(e)[:200]})", hint=HINT) from None

    def special(key: str, fallback_id: int | None) -> tuple[int | None, str]:
        text = _token_text(tok_config.get(key))
        i = tok.token_to_id(text) if text else None
        if i is None and fallback_id is not None:
            i, text = fallback_id, tok.id_to_token(fallback_id) or ""
        return i, text or ""

    eos_ids = config.eos_ids + generation_eos_ids(path)
    bos_id, bos_text = special("bos_token", config.bos_token_id)
    eos_id, eos_text = special("eos_token", eos_ids[0] if eos_ids else None)
    if eos_id is None:
        raise ConfigError(f"{path}: no eos token in tokenizer_config.json or config.json", hint=HINT)
    return HFTokenizer(tok, bos_id if bos_id is not None else eos_id, eos_id, _uses_byte_level(tok_json),
                       _chat_template(path, tok_config), bos_text, eos_text, eos_ids)


def generation_eos_ids(path: str) -> list[int]:
    """generation_config.json's eos_token_id (an int or a list; Llama 3 chat models add <|eot_id|>
    there), [] without the file."""
    gen_path = os.path.join(path, GENERATION_CONFIG)
    if not os.path.isfile(gen_path):
        return []
    e = read_json(gen_path).get("eos_token_id")
    ids = [] if e is None else [e] if isinstance(e, int) else e
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ConfigError(f"{gen_path}: eos_token_id {e!r} is not an id or a list of ids", hint=HINT)
    return ids
