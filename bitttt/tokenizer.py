"""Tokenizers: the default byte-level one (no training, any language) and a trained byte-level
BPE (the `tokenizers` library). Both save as tokenizer.json and share the chat specials.

Every token maps to bytes (`token_bytes`), so generated text streams through one incremental
UTF-8 decoder whatever the tokenizer.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterable, Iterator

from bitttt.errors import ConfigError

# BPE training slows down much faster than linearly with the length of one "word" (a run
# without whitespace: 100k characters took 15 s, 5 MB did not end): longer runs are fed to
# the trainer in pieces of this many characters.
BPE_MAX_TRAIN_WORD = 256
_LONG_RUN = re.compile(r"\S{%d,}" % (BPE_MAX_TRAIN_WORD + 1))

SPECIALS = ("<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>")
VOCAB_MULTIPLE = 64  # the model's vocabulary is padded to a multiple of 64 (faster matmuls)


def padded_vocab(n: int) -> int:
    return -(-n // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


class Tokenizer:
    """Common interface: encode/decode, special ids, per-token bytes, save."""

    kind = "base"
    n_tokens: int  # real tokens; the model's vocab_size is padded_vocab(n_tokens)

    def special_id(self, name: str) -> int:
        raise NotImplementedError

    @property
    def bos_id(self) -> int:
        return self.special_id("<|bos|>")

    @property
    def eos_id(self) -> int:
        return self.special_id("<|eos|>")

    @property
    def eos_ids(self) -> frozenset[int]:
        """Every id that ends a generation (an HF folder may name several); eos_id is among them."""
        return frozenset((self.eos_id,))

    @property
    def vocab_size(self) -> int:
        return padded_vocab(self.n_tokens)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for; b"" for specials and padding ids."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def encode_chat(self, messages: list[dict], add_assistant: bool = False) -> list[int]:
        """<|role|> content <|eos|> per message; then <|assistant|> to ask for a reply."""
        ids: list[int] = []
        for m in messages:
            role = m.get("role", "user") if isinstance(m, dict) else "user"
            if f"<|{role}|>" not in SPECIALS:
                role = "user"
            ids.append(self.special_id(f"<|{role}|>"))
            ids.extend(self.encode(str(m.get("content", "")) if isinstance(m, dict) else str(m)))
            ids.append(self.eos_id)
        if add_assistant:
            ids.append(self.special_id("<|assistant|>"))
        return ids

    def save(self, path: str) -> None:
        raise NotImplementedError


class StreamDecoder:
    """Feeds token ids, returns the text that is complete so far (UTF-8 safe)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        return self._dec.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


class ByteTokenizer(Tokenizer):
    """ids 0..255 are bytes, then the specials; vocab padded to 320."""

    kind = "byte"

    def __init__(self) -> None:
        self.n_tokens = 256 + len(SPECIALS)

    def special_id(self, name: str) -> int:
        return 256 + SPECIALS.index(name)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def token_bytes(self, token_id: int) -> bytes:
        return bytes((token_id,)) if 0 <= token_id < 256 else b""

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({"bitttt_tokenizer": "byte", "specials": list(SPECIALS), "n_tokens": self.n_tokens}, f, indent=2)


def _byte_level_decoder_table() -> dict[str, int]:
    """GPT-2's byte <-> printable-unicode map, inverted (what ByteLevel BPE tokens are made of)."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()  # 256 characters, one per byte, in GPT-2's order
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = {chr(c): b for b, c in zip(bs, cs)}
    assert set(table) == set(alphabet), "tokenizers' ByteLevel alphabet changed"  # internal invariant
    return table


class BPETokenizer(Tokenizer):
    """A byte-level BPE from the `tokenizers` library; specials come first (ids 0..4)."""

    kind = "bpe"

    def __init__(self, tok) -> None:
        self.tok = tok
        self.n_tokens = tok.get_vocab_size(with_added_tokens=True)
        self._special = {name: tok.token_to_id(name) for name in SPECIALS}
        if None in self._special.values():
            raise ConfigError("BPE tokenizer lacks bitttt's special tokens", hint="train it with bitttt train --tokenizer bpe")
        table = _byte_level_decoder_table()
        specials = set(self._special.values())
        self._bytes = [b""] * self.n_tokens
        for token, i in tok.get_vocab(with_added_tokens=True).items():
            if i not in specials:
                self._bytes[i] = bytes(table[c] for c in token if c in table)

    @classmethod
    def train(cls, texts: Iterator[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 256 + len(SPECIALS):
            raise ConfigError(f"--vocab-size {vocab_size} is too small for a byte-level BPE",
                              hint=f"use at least {256 + len(SPECIALS)}")
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(_bounded_words(texts), trainer=trainer)
        return cls(tok)

    def special_id(self, name: str) -> int:
        return self._special[name]

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id] if 0 <= token_id < self.n_tokens else b""

    def save(self, path: str) -> None:
        self.tok.save(path)


def _bounded_words(texts: Iterable[str]) -> Iterator[str]:
    """The texts, with every run of over BPE_MAX_TRAIN_WORD non-space characters cut into
    separate texts of that length (the trainer never merges across texts). Ordinary text
    passes through unchanged."""
    for text in texts:
        start = 0
        for m in _LONG_RUN.finditer(text):
            if m.start() > start:
                yield text[start:m.start()]
            for i in range(m.start(), m.end(), BPE_MAX_TRAIN_WORD):
                yield text[i:min(i + BPE_MAX_TRAIN_WORD, m.end())]
            start = m.end()
        if start < len(text):
            yield text[start:] if start else text


def load_tokenizer(path: str) -> Tokenizer:
    """Reads a tokenizer.json written by either kind; ConfigError if missing or damaged."""
    if not os.path.isfile(path):
        raise ConfigError(f"missing tokenizer: {path}", hint="copy tokenizer.json from the run that made the model")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: unreadable tokenizer ({e})", hint="copy tokenizer.json from the run that made the model")
    hint = "copy tokenizer.json from the run that made the model"
    if isinstance(d, dict) and "bitttt_tokenizer" in d:
        if d["bitttt_tokenizer"] != "byte":
            raise ConfigError(f"{path}: unknown bitttt tokenizer kind {d['bitttt_tokenizer']!r} (known: 'byte')",
                              hint=hint)
        if d.get("specials", list(SPECIALS)) != list(SPECIALS):
            # Other specials would give other ids: the model's embeddings would be read wrong.
            raise ConfigError(f"{path}: byte tokenizer with specials {d.get('specials')}, bitttt has "
                              f"{list(SPECIALS)}", hint=hint)
        return ByteTokenizer()
    if not isinstance(d, dict) or "model" not in d:
        raise ConfigError(f"{path}: neither a bitttt byte tokenizer nor a Hugging Face tokenizer.json", hint=hint)
    try:
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_file(path))
    except ConfigError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # also tokenizers' PanicException (a BaseException) on odd JSON
        raise ConfigError(f"{path}: not a tokenizer bitttt can read ({type(e).__name__}: {e})", hint=hint) from None
