"""Training data: reading text files, tokenizing once into a memory-mapped cache in the run
directory (with a held-out validation split), and drawing batches from a seeded generator.

Sources: `.txt`, `.md`, `.jsonl` (a "text" field, or chat "messages"), each optionally
gzipped; files, folders (recursive) or globs. Without sources, the English documentation
that ships with every CPython (`pydoc_data.topics`). Problems raise DataError naming the
file (and the line, for jsonl).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import shutil
import stat
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from bitttt.errors import DataError
from bitttt.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer

SUFFIXES = (".txt", ".md", ".jsonl")
DEFAULT_CORPUS = "pydoc_data.topics"
VAL_BLOCK = 4096  # the validation split is every ~1/val_fraction-th block of this many tokens
CACHE_VERSION = 1
CACHE_DIR = "data"  # the token cache's folder in a run directory
TEXT_PIECE = 1 << 20  # characters of a text file read (and tokenized) at a time
MAX_CARRY = 4 * TEXT_PIECE  # a line longer than this is cut where the piece ends
COPY_TOKENS = 1 << 22  # tokens copied at a time when the cache is split


@dataclass
class Document:
    text: str | None  # plain text, or
    messages: list | None  # a chat: [{"role": ..., "content": ...}, ...]
    source: str  # file[:line], for error messages
    ends: bool = True  # False for a piece of a long text file that goes on in the next Document


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def expand_sources(paths: list[str]) -> list[str]:
    """Files, folders and globs -> a sorted, de-duplicated list of readable text files."""
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            # Regular files only: a FIFO named x.txt would block the reader forever, and a
            # dangling link is no text. os.walk does not follow links to folders (no loops).
            found = [os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs
                     if _is_text_file(f) and os.path.isfile(os.path.join(d, f))]
            if not found:
                raise DataError(f"{p}: no {', '.join(SUFFIXES)} files (optionally .gz) in this folder",
                                hint="point --data at text files")
            files.extend(sorted(found))
        elif os.path.isfile(p):
            if not _is_text_file(p):
                raise DataError(f"{p}: not a {'/'.join(SUFFIXES)} file (optionally .gz)",
                                hint="convert it to .txt or .jsonl with a \"text\" field")
            files.append(p)
        elif os.path.exists(p):
            raise DataError(f"{p}: not a regular file ({_file_kind(p)})", hint="point --data at text files or folders")
        else:
            matched = sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f) and _is_text_file(f))
            if not matched:
                raise DataError(f"{p}: no such file, folder or matching text files", hint="check the --data path")
            files.extend(matched)
    # The same file reached twice (a glob through a link loop, a folder and a file in it) counts once.
    seen: set[str] = set()
    return [f for f in files if not (os.path.realpath(f) in seen or seen.add(os.path.realpath(f)))]


def _file_kind(path: str) -> str:
    mode = os.stat(path).st_mode
    return "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device file"


def _is_text_file(name: str) -> bool:
    base = name[:-3] if name.endswith(".gz") else name
    return base.endswith(SUFFIXES)


def _open_text(path: str):
    # utf-8-sig: a leading byte-order mark is no text. newline="": the text's bytes as they are
    # (no \r\n -> \n), so the tokens and the bits-per-byte count are those of the file.
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_documents(files: list[str]) -> Iterator[Document]:
    for path in files:
        is_jsonl = path.removesuffix(".gz").endswith(".jsonl")
        line_no = 0
        try:
            with _open_text(path) as f:
                if not is_jsonl:
                    yield from _text_pieces(f, path)
                    continue
                for line_no, line in enumerate(f, start=1):
                    if line.strip():
                        yield _jsonl_document(line, f"{path}:{line_no}")
        except UnicodeDecodeError as e:
            where = f"{path}:{line_no + 1}" if is_jsonl else path
            raise DataError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})", hint="save the file as UTF-8") from None
        except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:  # zlib.error: a damaged gzip stream
            raise DataError(f"{path}: cannot read ({e})", hint="check that the file exists, is readable and not damaged") from None


def _text_pieces(f, path: str) -> Iterator[Document]:
    """A text file as Documents of about TEXT_PIECE characters, cut after a line break where there
    is one (a long line is cut anyway at MAX_CARRY): memory stays bounded whatever the file's
    size, and a stop is looked at between pieces. Only the last piece `ends` the document."""
    carry = ""
    while True:
        chunk = f.read(TEXT_PIECE)
        if not chunk:
            yield Document(carry, None, path)
            return
        text = carry + chunk
        cut = text.rfind("\n") + 1
        if cut == 0 and len(text) < MAX_CARRY:
            carry = text
            continue
        cut = cut or len(text)
        yield Document(text[:cut], None, path, ends=False)
        carry = text[cut:]


def _jsonl_document(line: str, where: str) -> Document:
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise DataError(f"{where}: bad JSON ({e})", hint="each line must be one JSON object") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply", hint="each line must be one flat JSON object") from None
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        return Document(_check_encodable(obj["text"], where), None, where)
    if isinstance(obj, dict) and isinstance(obj.get("messages"), list) and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in obj["messages"]):
        for m in obj["messages"]:
            _check_encodable(m["content"], where)
        return Document(None, obj["messages"], where)
    raise DataError(f"{where}: expected a \"text\" string or a \"messages\" list of {{role, content}}",
                    hint='write lines like {"text": "..."} or {"messages": [{"role": "user", "content": "..."}]}')


def _check_encodable(text: str, where: str) -> str:
    # JSON can escape a lone surrogate ("\ud800"): valid JSON, but no UTF-8 text to train on.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{where}: the text holds a lone surrogate escape (\\u{ord(text[e.start]):04x})",
                        hint="write the text as UTF-8, without \\ud800-\\udfff escapes") from None
    return text


def default_documents() -> Iterator[Document]:
    from pydoc_data import topics

    for key in sorted(topics.topics):
        yield Document(topics.topics[key], None, f"{DEFAULT_CORPUS}:{key}")


def documents(paths: list[str] | None) -> Iterator[Document]:
    return read_documents(expand_sources(paths)) if paths else default_documents()


def _doc_texts(paths: list[str] | None, check: Callable[[], None] | None = None) -> Iterator[str]:
    for doc in documents(paths):
        if check:
            check()
        if doc.text is not None:
            yield doc.text
        else:
            yield from (m["content"] for m in doc.messages)


def train_bpe(paths: list[str] | None, vocab_size: int, check: Callable[[], None] | None = None) -> BPETokenizer:
    """check (if given) is called per document; what it raises ends the training."""
    return BPETokenizer.train(_doc_texts(paths, check), vocab_size)


# ---------------------------------------------------------------------------------------
# The token cache
# ---------------------------------------------------------------------------------------


@dataclass
class TokenData:
    """The memory-mapped splits and what bits per byte needs."""

    train: np.ndarray
    val: np.ndarray
    val_bytes: int  # UTF-8 bytes the validation tokens stand for
    meta: dict

    @property
    def val_tokens_per_byte(self) -> float:
        return len(self.val) / max(self.val_bytes, 1)


def fingerprint(paths: list[str] | None, tokenizer: Tokenizer, val_fraction: float) -> str:
    h = hashlib.sha256(json.dumps([CACHE_VERSION, tokenizer.kind, tokenizer.n_tokens, val_fraction]).encode())
    for f in expand_sources(paths) if paths else [DEFAULT_CORPUS]:
        st = os.stat(f) if os.path.exists(f) else None
        h.update(f"{os.path.abspath(f)}:{st.st_size if st else 0}:{st.st_mtime_ns if st else 0}".encode())
    return h.hexdigest()[:16]


def prepare(cache_dir: str, paths: list[str] | None, tokenizer: Tokenizer, val_fraction: float,
            min_tokens: int, check: Callable[[], None] | None = None) -> TokenData:
    """Tokenizes the sources into cache_dir (once; reused while they are unchanged). check (if
    given) is called per document piece; what it raises ends the tokenizing (no cache is left)."""
    fp = fingerprint(paths, tokenizer, val_fraction)
    meta_path = os.path.join(cache_dir, "meta.json")
    if os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            if meta.get("fingerprint") == fp:
                return _open_cache(cache_dir, meta, min_tokens)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt
    return _open_cache(cache_dir, build_cache(cache_dir, paths, tokenizer, val_fraction, min_tokens, check, fp),
                       min_tokens)


def build_cache(cache_dir: str, paths: list[str] | None, tokenizer: Tokenizer, val_fraction: float,
                min_tokens: int, check: Callable[[], None] | None = None, fp: str | None = None) -> dict:
    """Writes the token cache (all.bin, then train.bin and val.bin) into a temporary sibling
    `CACHE_DIR.tmp-PID` renamed to cache_dir; returns its meta. Memory stays bounded whatever the
    corpus size: text is read in pieces, tokens are written as they come and split by copying
    chunks of at most COPY_TOKENS. Any failure or stop removes the temporary folder."""
    tmp = f"{cache_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    try:
        all_path = os.path.join(tmp, "all.bin")
        n_tokens, chat, n_docs = _write_tokens(all_path, paths, tokenizer, dtype, check)
        if n_tokens < 2 * min_tokens:
            raise DataError(f"{', '.join(paths) if paths else DEFAULT_CORPUS}: only {n_tokens} tokens of text, "
                            f"need at least {2 * min_tokens} for a training and a validation window",
                            hint="add more text or lower --seq-len")
        val_ranges = _val_ranges(n_tokens, val_fraction, min_tokens)
        val_counts = _split(all_path, tmp, dtype, val_ranges, check)
        os.remove(all_path)
        meta = {"fingerprint": fp or fingerprint(paths, tokenizer, val_fraction), "dtype": np.dtype(dtype).name,
                "n_tokens": n_tokens, "n_docs": n_docs, "n_val": sum(b - a for a, b in val_ranges),
                "val_bytes": _bytes_of_counts(val_counts, tokenizer), "chat": chat,
                "sources": paths or [DEFAULT_CORPUS], "tokenizer": tokenizer.kind}
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(cache_dir, ignore_errors=True)
    os.replace(tmp, cache_dir)
    return meta


def remove_leftovers(run_dir: str) -> None:
    """Removes half-built token caches (`data.tmp-PID`) that killed processes left in run_dir. Only
    for the run's owner (train.own_run): no other process writes there. Best effort."""
    try:
        entries = os.listdir(run_dir)
    except OSError:
        return
    for entry in entries:
        if entry.startswith(f"{CACHE_DIR}.tmp-") and entry != f"{CACHE_DIR}.tmp-{os.getpid()}":
            shutil.rmtree(os.path.join(run_dir, entry), ignore_errors=True)


def _write_tokens(path: str, paths: list[str] | None, tokenizer: Tokenizer, dtype: type,
                  check: Callable[[], None] | None) -> tuple[int, bool, int]:
    """Every document's tokens and an end-of-text (none for an empty document), to path, piece by
    piece. Returns (tokens, any chat, documents)."""
    n_tokens, chat, n_docs, in_doc = 0, False, 0, 0
    eos = np.asarray([tokenizer.eos_id], dtype=dtype).tobytes()
    with open(path, "wb") as out:
        for doc in documents(paths):
            if check:
                check()
            arr = _encode_document(tokenizer, doc, dtype)
            chat = chat or doc.messages is not None
            out.write(arr.tobytes())
            in_doc += len(arr)
            if doc.ends and in_doc:
                out.write(eos)
                n_tokens, n_docs = n_tokens + in_doc + 1, n_docs + 1
            if doc.ends:
                in_doc = 0
    return n_tokens, chat, n_docs


def _encode_document(tokenizer: Tokenizer, doc: Document, dtype) -> np.ndarray:
    """A document's token ids (no eos). Byte-level text goes straight from its UTF-8 bytes:
    a list of Python ints costs ~20x the text (a 50 MB line: 1.1 GB and half a minute)."""
    if doc.text is not None and isinstance(tokenizer, ByteTokenizer):
        return np.frombuffer(doc.text.encode("utf-8"), dtype=np.uint8).astype(dtype)
    ids = tokenizer.encode(doc.text) if doc.text is not None else tokenizer.encode_chat(doc.messages)
    return np.asarray(ids, dtype=dtype)


def _val_ranges(n: int, val_fraction: float, min_tokens: int) -> list[tuple[int, int]]:
    """The validation split as sorted [start, end) token ranges: every k-th block of VAL_BLOCK
    tokens, spread evenly; the tail if there are few blocks."""
    n_blocks = n // VAL_BLOCK
    k = round(n_blocks * val_fraction)
    if k >= 1 and n_blocks - k >= 1:
        blocks = sorted({int((i + 0.5) * n_blocks / k) for i in range(k)})
        return [(b * VAL_BLOCK, (b + 1) * VAL_BLOCK) for b in blocks]
    n_val = min(max(int(n * val_fraction), min_tokens), n - min_tokens)
    return [(n - n_val, n)]


def _split(all_path: str, folder: str, dtype: type, val_ranges: list[tuple[int, int]],
           check: Callable[[], None] | None) -> dict[int, int]:
    """Copies all.bin into train.bin and val.bin by ranges, COPY_TOKENS at most at a time.
    Returns token id -> count over the validation tokens."""
    item = np.dtype(dtype).itemsize
    counts: dict[int, int] = {}
    n = os.path.getsize(all_path) // item
    with open(all_path, "rb") as src, open(os.path.join(folder, "train.bin"), "wb") as train, \
            open(os.path.join(folder, "val.bin"), "wb") as val:
        pos = 0
        for start, end in [*val_ranges, (n, n)]:
            for out, a, b in ((train, pos, start), (val, start, end)):
                while a < b:
                    if check:
                        check()
                    m = min(b - a, COPY_TOKENS)
                    chunk = src.read(m * item)
                    out.write(chunk)
                    if out is val:
                        ids, c = np.unique(np.frombuffer(chunk, dtype=dtype), return_counts=True)
                        for i, k in zip(ids.tolist(), c.tolist()):
                            counts[i] = counts.get(i, 0) + k
                    a += m
            pos = end
    return counts


def _bytes_of_counts(counts: dict[int, int], tokenizer: Tokenizer) -> int:
    return sum(len(tokenizer.token_bytes(i)) * c for i, c in counts.items())


def _count_bytes(tokens: np.ndarray, tokenizer: Tokenizer) -> int:
    ids, counts = np.unique(tokens, return_counts=True)
    return _bytes_of_counts(dict(zip(ids.tolist(), counts.tolist())), tokenizer)


def _open_cache(cache_dir: str, meta: dict, min_tokens: int) -> TokenData:
    dtype = np.dtype(meta["dtype"])
    train = np.memmap(os.path.join(cache_dir, "train.bin"), dtype=dtype, mode="r")
    val = np.memmap(os.path.join(cache_dir, "val.bin"), dtype=dtype, mode="r")
    if len(train) < min_tokens or len(val) < min_tokens:
        raise DataError(f"{cache_dir}: {len(train)} training and {len(val)} validation tokens; "
                        f"each needs at least {min_tokens}", hint="add more text or lower --seq-len")
    return TokenData(train, val, int(meta["val_bytes"]), meta)


# ---------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------


def get_batch(tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, step: int, micro: int,
              device: torch.device, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: x, y int64 [B, T], y = x shifted by one. The generator is seeded by
    (seed, step, micro) alone, so a resumed run draws exactly the batches it would have.

    Data parallel: the global batch is batch_size x world_size windows, the one a single
    process with that batch size draws; rank r takes rows [r B, (r + 1) B) of it."""
    rng = np.random.default_rng([seed, step, micro])
    starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch_size * world_size, endpoint=True)
    starts = starts[rank * batch_size:(rank + 1) * batch_size]
    windows = np.stack([np.asarray(tokens[s:s + seq_len + 1], dtype=np.int64) for s in starts])
    w = torch.from_numpy(windows).to(device)
    return w[:, :-1], w[:, 1:]


def eval_windows(tokens: np.ndarray, seq_len: int, max_tokens: int) -> np.ndarray:
    """Start offsets of non-overlapping windows over the split (0, seq_len, 2 seq_len, ... while
    a window and its next token fit), evenly thinned to max_tokens; computed without listing
    every window of a large split."""
    if len(tokens) < seq_len + 1:
        raise DataError(f"{len(tokens)} tokens: a window of {seq_len} needs {seq_len + 1}",
                        hint="use more text or a shorter sequence length")
    n_windows = (len(tokens) - seq_len - 1) // seq_len + 1
    n = max(1, min(n_windows, max_tokens // seq_len))
    return np.linspace(0, n_windows - 1, n).round().astype(np.int64) * seq_len


def window_batch(tokens: np.ndarray, starts: np.ndarray, seq_len: int, device: torch.device):
    windows = np.stack([np.asarray(tokens[s:s + seq_len + 1], dtype=np.int64) for s in starts])
    w = torch.from_numpy(windows).to(device)
    return w[:, :-1], w[:, 1:]
