"""Tokenizers and the data cache: sources, the split, batches, bad input (design §7)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from bitttt import data
from bitttt.errors import ConfigError, DataError
from bitttt.tokenizer import ByteTokenizer, load_tokenizer


def test_byte_tokenizer_round_trip(tmp_path):
    tok = ByteTokenizer()
    text = "héllo, wörld — ✓"
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 320 and tok.vocab_size % 64 == 0
    tok.save(str(tmp_path / "t.json"))
    assert isinstance(load_tokenizer(str(tmp_path / "t.json")), ByteTokenizer)
    dec = tok.stream_decoder()  # multi-byte characters arrive one byte at a time
    assert "".join(dec.feed(i) for i in tok.encode(text)) + dec.flush() == text


def test_bpe_tokenizer(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("the quick brown fox jumps over the lazy dog. " * 200 + "ünïcödé ✓ " * 50)
    tok = data.train_bpe([str(src)], 400)
    ids = tok.encode("the lazy fox ✓")
    assert len(ids) < len("the lazy fox ✓".encode())
    assert tok.decode(ids) == "the lazy fox ✓"
    assert tok.eos_id < 5 and tok.vocab_size % 64 == 0
    tok.save(str(tmp_path / "tok.json"))
    again = load_tokenizer(str(tmp_path / "tok.json"))
    assert again.encode("the lazy fox ✓") == ids and again.kind == "bpe"


def test_missing_or_bad_tokenizer(tmp_path):
    with pytest.raises(ConfigError, match="missing tokenizer"):
        load_tokenizer(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="unreadable tokenizer"):
        load_tokenizer(str(tmp_path / "bad.json"))


def test_sources_and_cache(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("alpha " * 3000)
    (tmp_path / "d" / "b.md").write_text("beta " * 3000)
    (tmp_path / "d" / "skip.bin").write_bytes(b"\0\1")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "gamma " * 2000}) + "\n")
        f.write(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n")
    tok = ByteTokenizer()
    td = data.prepare(str(tmp_path / "cache"), [str(tmp_path / "d"), str(tmp_path / "*.jsonl.gz")], tok, 0.1, 66)
    assert td.meta["n_docs"] == 4 and td.meta["chat"]
    assert len(td.train) + len(td.val) == td.meta["n_tokens"]
    assert td.val_bytes == len(td.val) - int((np.asarray(td.val) >= 256).sum())
    again = data.prepare(str(tmp_path / "cache"), [str(tmp_path / "d"), str(tmp_path / "*.jsonl.gz")], tok, 0.1, 66)
    assert again.meta == td.meta  # reused
    x, y = data.get_batch(td.train, 4, 64, seed=1, step=3, micro=0, device=torch.device("cpu"))
    x2, _ = data.get_batch(td.train, 4, 64, seed=1, step=3, micro=0, device=torch.device("cpu"))
    assert torch.equal(x, x2) and torch.equal(x[:, 1:], y[:, :-1])


@pytest.mark.parametrize("content, where", [
    ('{"text": "ok"}\n{"text": 1}\n', ":2"),
    ('{"text": "ok"}\nnot json\n', ":2"),
    ('{"messages": "hi"}\n', ":1"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, content, where):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(DataError, match=f"{p}{where}"):
        data.prepare(str(tmp_path / "cache"), [str(p)], ByteTokenizer(), 0.1, 66)


def test_no_usable_text(tmp_path):
    (tmp_path / "tiny.txt").write_text("hi")
    with pytest.raises(DataError, match="only 3 tokens"):
        data.prepare(str(tmp_path / "cache"), [str(tmp_path / "tiny.txt")], ByteTokenizer(), 0.1, 66)
    with pytest.raises(DataError, match="no such file"):
        data.expand_sources([str(tmp_path / "missing.txt")])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        list(data.read_documents([str(tmp_path / "latin1.txt")]))


def test_default_corpus_split():
    tok = ByteTokenizer()
    docs = list(data.default_documents())
    assert len(docs) > 50 and sum(len(d.text) for d in docs) > 100_000
    mask = _mask_of(data._val_ranges(400_000, 0.1, 66), 400_000)
    assert 0.08 < mask.mean() < 0.12 and not mask[:4096].all()
    del tok


def _mask_of(ranges, n):
    mask = np.zeros(n, dtype=bool)
    for a, b in ranges:
        mask[a:b] = True
    return mask


@pytest.mark.parametrize("n,frac,min_tokens", [(400_000, 0.1, 66), (5000, 0.1, 66), (4096 * 7 + 5, 0.3, 10),
                                               (10_000_000, 0.01, 258), (9000, 0.45, 4000)])
def test_val_ranges_are_the_blocks_of_the_mask_they_replace(n, frac, min_tokens):
    """The split as ranges (issue 27: no whole-corpus boolean mask) selects the tokens the mask did."""
    mask = np.zeros(n, dtype=bool)  # the mask of the first cache version, the oracle
    n_blocks = n // data.VAL_BLOCK
    k = round(n_blocks * frac)
    if k >= 1 and n_blocks - k >= 1:
        for i in range(k):
            b = int((i + 0.5) * n_blocks / k)
            mask[b * data.VAL_BLOCK:(b + 1) * data.VAL_BLOCK] = True
    else:
        mask[n - min(max(int(n * frac), min_tokens), n - min_tokens):] = True
    assert np.array_equal(_mask_of(data._val_ranges(n, frac, min_tokens), n), mask)
