"""Fuzzing the data reader and the tokenizer loader (issue 12): generated bad input, fixed seed.

Every case must end in a correct result (the cached tokens are exactly the text's bytes, a
loaded tokenizer round-trips text) or a DataError / ConfigError with a message and a hint,
within CASE_TIMEOUT_S (SIGALRM: a FIFO read or a runaway BPE would otherwise never end).
Inputs: random binary files, invalid UTF-8 (every kind of bad sequence), NUL bytes, BOMs,
empty files, jsonl lines of every wrong shape (deep nesting, lone surrogates, wrong types),
truncated and bit-flipped gzip, folders holding FIFOs, dangling links, link loops and files
that are not text, a 50 MB line, and tokenizer.json files that are garbage, truncated,
bit-flipped or of the wrong type. A few cases also go through `python -m bitttt train`,
which must exit 3 with one line and no traceback. BITTTT_FUZZ_SCALE multiplies the cases.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import resource
import signal
import subprocess
import sys

import pytest

from bitttt import data
from bitttt.errors import ConfigError, DataError
from bitttt.tokenizer import SPECIALS, BPETokenizer, ByteTokenizer, load_tokenizer

SEED = int(os.environ.get("BITTTT_FUZZ_SEED", "1212"))
SCALE = float(os.environ.get("BITTTT_FUZZ_SCALE", "1"))
CASES = {"file": 200, "jsonl": 150, "gzip": 120, "tokenizer": 150}  # per kind at scale 1
CASE_TIMEOUT_S = 30  # a hang bound, not a speed test: cases take milliseconds
MIN_TOKENS = 8

BAD_UTF8 = [b"\xff", b"\xfe", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80",
            b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98"]
JSONL_BAD = ['[1, 2]', '5', 'null', '"text"', '{"text": 5}', '{"text": null}', '{"messages": "hi"}',
             '{"messages": [1]}', '{"messages": [{"role": "user"}]}', '{"text": NaN}', '{"text": 1e999999}',
             '{"text": "a"', '{text: "a"}', "{}", '{"text": "\\ud800"}', '{"messages": [{"content": "\\udfff"}]}',
             "[" * 50000 + "]" * 50000, '{"a":' * 20000 + "1" + "}" * 20000]


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"no result within {CASE_TIMEOUT_S} s")


def outcome(fn) -> tuple[str, object]:
    """("ok", value), ("clean", error) or ("FAIL", description), within the time bound."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_TIMEOUT_S)
    try:
        return "ok", fn()
    except (DataError, ConfigError) as e:
        if str(e).strip() and e.hint.strip():
            return "clean", e
        return "FAIL", f"{type(e).__name__} without message or hint: {e!r}"
    except Hang as e:
        return "FAIL", f"hang: {e}"
    except Exception as e:  # anything else reaches the CLI as a traceback ("this is a bug")
        return "FAIL", f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def cached_tokens(td: data.TokenData) -> bytes:
    """The cache's token stream as bytes, eos marks removed (train and val interleave by block,
    so compare multisets of bytes, plus the total)."""
    import numpy as np

    allt = np.concatenate([np.asarray(td.train), np.asarray(td.val)])
    return bytes(sorted(int(t) for t in allt if t < 256))


def prepare(tmp, paths):
    return data.prepare(os.path.join(tmp, "cache"), paths, ByteTokenizer(), 0.1, MIN_TOKENS)


def check_text_case(tmp, paths, expected: bytes | None, results: dict, what: str) -> None:
    """expected: the UTF-8 bytes the sources must tokenize to, or None if they must be refused."""
    kind, value = outcome(lambda: prepare(tmp, paths))
    results[kind] = results.get(kind, 0) + 1
    if kind == "FAIL":
        results.setdefault("failures", []).append(f"{what}: {value}")
    elif kind == "ok" and expected is None:
        results.setdefault("failures", []).append(f"{what}: accepted bad input")
    elif kind == "ok" and cached_tokens(value) != bytes(sorted(expected)):
        results.setdefault("failures", []).append(f"{what}: cached tokens differ from the text's bytes")
    elif kind == "clean" and expected is not None and len(expected) >= 2 * MIN_TOKENS + 2:
        results.setdefault("failures", []).append(f"{what}: refused good input: {value}")


def random_text(rng: random.Random, n: int) -> str:
    alphabet = "abc xyz\n\tÄé中文🙂\x00\r"
    return "".join(rng.choice(alphabet) for _ in range(n))


def write(path, content: bytes) -> str:
    with open(path, "wb") as f:
        f.write(content)
    return path


# ---------------------------------------------------------------------------------------
# Plain files
# ---------------------------------------------------------------------------------------


def test_fuzz_text_files(tmp_path):
    rng = random.Random(f"{SEED}-file")
    results: dict = {}
    for i in range(int(CASES["file"] * SCALE)):
        tmp = str(tmp_path / f"c{i}")
        os.makedirs(tmp)
        suffix = rng.choice([".txt", ".md"])
        pick = rng.randrange(5)
        if pick == 0:  # random bytes: UTF-8 only by chance
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))
            try:
                expected = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8").encode("utf-8")
            except UnicodeDecodeError:
                expected = None
            what = "random bytes"
        elif pick == 1:  # text with one bad sequence somewhere
            text = random_text(rng, rng.randrange(0, 500)).encode()
            at = rng.randrange(len(text) + 1)
            raw, expected, what = text[:at] + rng.choice(BAD_UTF8) + text[at:], None, "invalid UTF-8"
            try:  # the insertion may complete a sequence cut at `at`: then it is valid text
                expected = raw.decode("utf-8").encode()
            except UnicodeDecodeError:
                pass
        elif pick == 2:  # empty or tiny
            raw = random_text(rng, rng.choice([0, 1, 5])).encode()
            expected, what = raw, "empty or tiny"
        elif pick == 3:  # NULs, CRs, a BOM
            raw = (b"\xef\xbb\xbf" if rng.random() < 0.5 else b"") + random_text(rng, rng.randrange(50, 800)).encode()
            expected, what = raw.removeprefix(b"\xef\xbb\xbf"), "NUL bytes / BOM"
        else:  # one long line
            raw = ("x" * rng.randrange(10_000, 200_000)).encode()
            expected, what = raw, "long line"
        check_text_case(tmp, [write(os.path.join(tmp, "a" + suffix), raw)], expected, results, f"#{i} {what}")
    _report("text files", results)


def test_fuzz_jsonl(tmp_path):
    rng = random.Random(f"{SEED}-jsonl")
    results: dict = {}
    for i in range(int(CASES["jsonl"] * SCALE)):
        tmp = str(tmp_path / f"c{i}")
        os.makedirs(tmp)
        good, lines = [], []
        for _ in range(rng.randrange(1, 6)):
            t = random_text(rng, rng.randrange(20, 200))
            lines.append(json.dumps({"text": t}) if rng.random() < 0.7 else
                         json.dumps({"messages": [{"role": "user", "content": t}]}))
            good.append(t)
        bad = rng.random() < 0.7
        if bad:
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(JSONL_BAD + [random_text(rng, 30)]))
        raw = "\n".join(lines).encode()
        kind, value = outcome(lambda: prepare(tmp, [write(os.path.join(tmp, "a.jsonl"), raw)]))
        results[kind] = results.get(kind, 0) + 1
        if kind == "FAIL" or (kind == "ok" and bad):
            results.setdefault("failures", []).append(f"#{i}: {value if kind == 'FAIL' else 'accepted a bad line'}")
        elif kind == "clean" and not bad:
            results.setdefault("failures", []).append(f"#{i}: refused good jsonl: {value}")
        elif kind == "ok" and cached_tokens(value) != bytes(sorted("".join(good).encode())):
            results.setdefault("failures", []).append(f"#{i}: cached tokens differ from the texts' bytes")
    _report("jsonl", results)


def test_fuzz_gzip(tmp_path):
    rng = random.Random(f"{SEED}-gzip")
    results: dict = {}
    for i in range(int(CASES["gzip"] * SCALE)):
        tmp = str(tmp_path / f"c{i}")
        os.makedirs(tmp)
        text = random_text(rng, rng.randrange(100, 3000)).encode()
        gz = bytearray(gzip.compress(text, mtime=0))
        if rng.random() < 0.5:
            gz = gz[:rng.randrange(len(gz))]
            what = "truncated"
        else:
            for _ in range(rng.randrange(1, 4)):
                gz[rng.randrange(len(gz))] ^= 1 << rng.randrange(8)
            what = "bit flips"
        # A flip in the header's mtime/flags-free bytes leaves a valid file: then it must read exactly.
        try:
            expected = gzip.decompress(bytes(gz)).decode("utf-8").encode()
        except Exception:
            expected = None
        path = write(os.path.join(tmp, "a.txt.gz"), bytes(gz))
        check_text_case(tmp, [path], expected, results, f"#{i} gzip {what}")
    _report("gzip", results)


def test_folders_with_odd_entries(tmp_path):
    """FIFOs, dangling links, link loops, non-text files and a folder named x.txt are skipped;
    the one text file is read once."""
    root = tmp_path / "corpus"
    (root / "sub" / "d.txt").mkdir(parents=True)  # a folder with a text suffix
    text = "the only text file " * 20
    (root / "sub" / "real.txt").write_text(text)
    (root / "image.png").write_bytes(b"\x89PNG\x00\xff")
    os.mkfifo(root / "pipe.txt")  # opening it would block forever
    os.symlink("missing.txt", root / "dangling.txt")
    os.symlink("..", root / "sub" / "loop")  # a link back up: a loop for link-following walks
    os.symlink("self.md", root / "self.md")
    for paths in ([str(root)], [str(root / "**" / "*.txt")], [str(root), str(root / "sub" / "real.txt")]):
        kind, td = outcome(lambda: prepare(str(tmp_path / "w"), paths))
        assert kind == "ok", td
        assert cached_tokens(td) == bytes(sorted(text.encode())), paths  # read once, nothing else
    kind, err = outcome(lambda: prepare(str(tmp_path / "w"), [str(root / "pipe.txt")]))
    assert kind == "clean" and "not a regular file (a FIFO)" in str(err)
    for bad in ("self.md", "dangling.txt"):
        kind, err = outcome(lambda: prepare(str(tmp_path / "w"), [str(root / bad)]))
        assert kind == "clean", err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    p = tmp_path / "secret.txt"
    p.write_text("x" * 100)
    p.chmod(0)
    kind, err = outcome(lambda: prepare(str(tmp_path), [str(p)]))
    assert kind == "clean" and "cannot read" in str(err)


HUGE_LINE_BYTES = 50_000_000
# Bytes of memory per byte of text: the text, its UTF-8, the uint16 ids and the split copies.
# (Through a list of Python ints it was about 17.)
MEMORY_PER_BYTE = 10


@pytest.mark.slow
def test_50_mb_line_keeps_memory_sane(tmp_path):
    path = tmp_path / "one_line.txt"
    with open(path, "wb") as f:
        for _ in range(50):
            f.write(b"abcdefghij" * 100_000)  # no newline anywhere
    script = (
        "import resource, sys\n"
        "from bitttt import data\n"
        "from bitttt.tokenizer import ByteTokenizer\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "td = data.prepare(sys.argv[2], [sys.argv[1]], ByteTokenizer(), 0.1, 8)\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(len(td.train) + len(td.val), (peak - base) * 1024)\n")
    r = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "cache")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    n_tokens, grew = map(int, r.stdout.split())
    assert n_tokens == HUGE_LINE_BYTES + 1  # every byte, and one eos
    assert grew < MEMORY_PER_BYTE * HUGE_LINE_BYTES, f"prepare took {grew / 1e6:.0f} MB for a 50 MB line"


BPE_TIMEOUT_S = 120  # a hang bound: it takes about a second


def test_bpe_on_a_long_line_ends(tmp_path):
    # 2 MB without whitespace: the BPE trainer never finished one such "word" (it is cut into
    # pieces now). In a subprocess: SIGALRM cannot interrupt the trainer's native loop.
    path = tmp_path / "long.txt"
    path.write_text("ab" * 1_000_000 + " the end")
    script = ("import sys\nfrom bitttt import data\ntok = data.train_bpe([sys.argv[1]], 300)\n"
              "print(tok.decode(tok.encode('abab the end')))\n")
    r = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                       timeout=BPE_TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "abab the end"


# ---------------------------------------------------------------------------------------
# tokenizer.json
# ---------------------------------------------------------------------------------------


def _real_bpe_json(tmp_path) -> bytes:
    tok = BPETokenizer.train(iter(["hello world, the cat sat on the mat. " * 50]), 300)
    tok.save(str(tmp_path / "bpe.json"))
    return (tmp_path / "bpe.json").read_bytes()


def test_fuzz_tokenizer_json(tmp_path):
    rng = random.Random(f"{SEED}-tokenizer")
    real = _real_bpe_json(tmp_path)
    byte = json.dumps({"bitttt_tokenizer": "byte", "specials": list(SPECIALS), "n_tokens": 261}).encode()
    wrong = [b"", b"[]", b"5", b"null", b'"byte"', b"{}", b'{"bitttt_tokenizer": "bogus"}',
             b'{"bitttt_tokenizer": 5}', json.dumps({"bitttt_tokenizer": "byte", "specials": ["<x>"]}).encode(),
             b"[" * 100000, b'{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}',
             b'{"model": 5}', b'{"model": {"type": "Nope"}}']
    results: dict = {}
    path = str(tmp_path / "tokenizer.json")
    for i in range(int(CASES["tokenizer"] * SCALE)):
        pick = rng.randrange(5)
        if pick == 0:
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
        elif pick == 1:
            src = rng.choice([real, byte])
            raw = src[:rng.randrange(len(src))]
        elif pick == 2:
            raw = bytearray(rng.choice([real, byte]))
            for _ in range(rng.randrange(1, 5)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            raw = bytes(raw)
        elif pick == 3:
            raw = rng.choice(wrong)
        else:
            raw = rng.choice([real, byte])
        write(path, raw)
        kind, value = outcome(lambda: load_tokenizer(path))
        results[kind] = results.get(kind, 0) + 1
        if kind == "FAIL":
            results.setdefault("failures", []).append(f"#{i}: {value} (input {raw[:60]!r})")
        elif kind == "ok":
            # Accepted: it must be a working tokenizer (a flip in a harmless place, or the real file).
            k2, v2 = outcome(lambda: value.decode(value.encode("the cat sat")))
            if k2 != "ok" or v2 != "the cat sat":
                results.setdefault("failures", []).append(f"#{i}: loaded but does not round-trip: {v2}")
        elif raw in (real, byte):
            results.setdefault("failures", []).append(f"#{i}: refused a good tokenizer.json: {value}")
    for p in (str(tmp_path), str(tmp_path / "missing.json")):  # a folder, nothing
        assert outcome(lambda: load_tokenizer(p))[0] == "clean"
    _report("tokenizer.json", results)


# ---------------------------------------------------------------------------------------
# Through the CLI: exit 3, one line, never a traceback
# ---------------------------------------------------------------------------------------

CLI_CASES = {
    "binary.txt": bytes(range(256)) * 8,
    "deep.jsonl": b"[" * 100000 + b"]" * 100000 + b"\n",
    "corrupt.txt.gz": gzip.compress(b"hello world " * 500, mtime=0)[:40] + b"\x00" * 40,
}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("name", list(CLI_CASES))
def test_cli_bad_data_exits_3_without_traceback(tmp_path, name):
    path = write(str(tmp_path / name), CLI_CASES[name])
    r = subprocess.run([sys.executable, "-m", "bitttt", "train", "--data", path, "--steps", "1", "--n-layer", "1",
                        "--n-embd", "32", "--n-head", "1", "--seq-len", "16", "--run-dir", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 3, (r.returncode, r.stdout[-1500:], r.stderr[-1500:])
    assert "Traceback" not in r.stdout + r.stderr
    assert name in r.stdout + r.stderr  # the message names the file


def _report(target: str, results: dict) -> None:
    failures = results.pop("failures", [])
    print(f"\nfuzz {target}: {sum(results.values())} cases: {results}")
    assert not failures, f"{len(failures)} failures (first 10):\n" + "\n".join(failures[:10])
