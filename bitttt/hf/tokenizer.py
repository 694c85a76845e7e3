"""The tokenizer of a Hugging Face folder: tokenizer.json through the `tokenizers` library (no
transformers), special tokens from tokenizer_config.json (else config.json's ids), and the chat
template (tokenizer_config.json's `chat_template` or chat_template.jinja) rendered with jinja2
when it is installed, else a plain "role: content" fallback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from bitttt.errors import ConfigError
from bitttt.hf.bitnet import BitNetConfig
from bitttt.hf.loader import HINT, read_json
from bitttt.tokenizer import Tokenizer, _byte_level_decoder_table

GENERATION_CONFIG = "generation_config.json"
BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # sentencepiece byte tokens


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json writes a special token as a string or as {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value if isinstance(value, str) else None


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
        return self.tok.encode(text, add_special_tokens=False).ids

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
        return _render(self.chat_template, messages=msgs, add_generation_prompt=add_assistant,
                       bos_token=self.bos_text, eos_token=self.eos_text)

    def save(self, path: str) -> None:
        self.tok.save(path)


def _have_jinja() -> bool:
    try:
        import jinja2  # noqa: F401
    except ImportError:
        return False
    return True


def _render(template: str, **context: Any) -> str:
    """Renders a chat template as transformers does: sandboxed, trim_blocks and lstrip_blocks."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(**context)
    except TemplateError as e:
        raise ConfigError(f"chat template: {e}", hint="the folder's chat_template rejected these messages") from None


def _chat_template(path: str, tok_config: dict[str, Any]) -> str | None:
    t = tok_config.get("chat_template")
    if isinstance(t, list):  # [{"name": "default", "template": ...}, ...]
        t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"), None)
    jinja_file = os.path.join(path, "chat_template.jinja")
    if not isinstance(t, str) and os.path.isfile(jinja_file):
        with open(jinja_file, encoding="utf-8") as f:
            t = f.read()
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
    except Exception as e:
        raise ConfigError(f"{tok_path}: not a tokenizer ({e})", hint=HINT) from None

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
