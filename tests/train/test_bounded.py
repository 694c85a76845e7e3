"""Stops that always arrive and memory bounded by design (issue 27): a stop acts within a bound
(generous: the machine is shared; never a speed assertion) during the step-0 evaluation, a long
gradient accumulation, a sample and tokenizing; leftovers of killed processes are removed; a
corpus larger than the memory a process may use tokenizes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from bitttt import data as data_mod
from bitttt import evaluate as eval_mod
from bitttt.stop import StopRequested
from bitttt.tokenizer import ByteTokenizer
from trainlib import MICRO, read_events, train

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
BOUND_S = 60  # a stop must end the process within this (seconds plus one micro-step; generous)
WAIT_S = 300  # for the trainer to reach the phase a test stops it in


def _corpus(path, n_bytes: int) -> str:
    line = "the quick brown fox jumps over the lazy dog and keeps on running far away.\n"
    with open(path, "w") as f:
        for _ in range(n_bytes // len(line)):
            f.write(line)
    return str(path)


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def kill_leftover_trainers():
    """A test that fails while waiting must not leave its trainer running."""
    yield
    while STARTED:
        p = STARTED.pop()
        if p.poll() is None:
            p.kill()
            p.wait()


def _start(run_dir, *extra: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "bitttt", "train", *MICRO, "--run-dir", str(run_dir), *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
    STARTED.append(p)
    return p


def _wait_for_event(proc: subprocess.Popen, event: str) -> None:
    end = time.monotonic() + WAIT_S
    for line in proc.stdout:
        if line.startswith(f'{{"event": "{event}"'):
            return
        assert time.monotonic() < end, f"no {event} event within {WAIT_S} s"
    raise AssertionError(f"the trainer ended before a {event} event")


def _stopped_within_bound(proc: subprocess.Popen, how: str, run_dir) -> float:
    t0 = time.monotonic()
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        (run_dir / "STOP").write_text("")
    try:
        code = proc.wait(BOUND_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0
    return time.monotonic() - t0


@pytest.mark.integration
@pytest.mark.parametrize("how", ["SIGTERM", "STOP"])
def test_stop_during_the_step0_evaluation(tmp_path, how):
    """--eval-tokens 2000000 took 518 s to stop, then ran a step and saved first."""
    run_dir = tmp_path / "run"
    corpus = _corpus(tmp_path / "c.txt", 4_000_000)
    proc = _start(run_dir, "--data", corpus, "--val-fraction", "0.45", "--eval-tokens", "2000000",
                  "--steps", "10", "--save-every", "1", "--sample-every", "0")
    _wait_for_event(proc, "start")  # the step-0 evaluation comes next
    _stopped_within_bound(proc, how, run_dir)
    events = read_events(run_dir)
    assert not [e for e in events if e["event"] in ("step", "checkpoint", "eval")]
    assert events[-1]["event"] == "done" and events[-1]["reason"] == "stopped" and events[-1]["step"] == 0
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.integration
def test_stop_inside_a_long_gradient_accumulation(tmp_path):
    """--grad-accum 100000: STOP and SIGTERM were looked at between steps only."""
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "--grad-accum", "100000", "--steps", "5", "--sample-every", "0")
    _wait_for_event(proc, "eval")  # step 0's; the first step's accumulation starts now
    time.sleep(1)
    _stopped_within_bound(proc, "STOP", run_dir)
    events = read_events(run_dir)
    assert not [e for e in events if e["event"] in ("step", "checkpoint")]
    assert events[-1]["reason"] == "stopped" and events[-1]["step"] == 0


@pytest.mark.integration
def test_stop_during_a_sample_saves_the_step(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "--sample-every", "1", "--sample-tokens", "100000", "--steps", "5", "--eval-every", "0",
                  "--save-every", "0")
    _wait_for_event(proc, "step")  # step 1 is done; its sample of up to 100000 tokens runs now
    # At once, not after a pause: the sample also ends at the first end-of-text token, which a
    # random tiny model draws after a few hundred tokens, under a second on a quiet machine.
    _stopped_within_bound(proc, "SIGTERM", run_dir)
    events = read_events(run_dir)
    done = events[-1]
    assert done["reason"] == "stopped" and done["step"] == 1
    assert done["path"].endswith("step-000001") and os.path.isfile(os.path.join(done["path"], "model.safetensors"))
    assert not [e for e in events if e["event"] == "sample"]


def test_a_stop_reaches_inside_one_large_text_file(tmp_path):
    """A stop is looked at per piece of a file, not once per file (a 50 MB .txt was one call)."""
    corpus = _corpus(tmp_path / "big.txt", 6 * data_mod.TEXT_PIECE)
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 3:
            raise StopRequested("STOP file")

    cache = tmp_path / "run" / "data"
    cache.parent.mkdir()
    with pytest.raises(StopRequested):
        data_mod.prepare(str(cache), [corpus], ByteTokenizer(), 0.1, 66, check=check)
    assert os.listdir(cache.parent) == []  # no half cache left


def test_leftovers_of_killed_processes_are_removed_by_the_next_owner(tmp_path):
    """A kill during tokenizing left RUN/data.tmp-PID (59 MB for a 50 MB corpus); a killed
    config.json write its temporary file. The run's next trainer removes them."""
    run_dir = tmp_path / "run"
    assert train(run_dir, "--steps", "1", "--sample-every", "0") == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / f"data.tmp-{dead.pid}").mkdir()
    (run_dir / f"data.tmp-{dead.pid}" / "all.bin").write_bytes(b"\0" * 1000)
    (run_dir / f".config.json.tmp-{dead.pid}").write_text("{")
    assert train(run_dir, "--resume", str(run_dir), "--steps", "2", "--sample-every", "0") == 0
    assert not [e for e in os.listdir(run_dir) if ".tmp-" in e]


def test_run_level_files_are_replaced_atomically(tmp_path, monkeypatch):
    """tokenizer.json and config.json are written to a temporary sibling and renamed: the
    launcher never reads half of one."""
    from bitttt import model as model_mod
    from bitttt import tokenizer as tok_mod

    written = []
    save_tok, save_cfg = tok_mod.ByteTokenizer.save, model_mod.save_config
    monkeypatch.setattr(tok_mod.ByteTokenizer, "save", lambda self, p: (written.append(p), save_tok(self, p))[1])
    monkeypatch.setattr(model_mod, "save_config", lambda c, p, *a: (written.append(p), save_cfg(c, p, *a))[1])
    run_dir = tmp_path / "run"
    assert train(run_dir, "--steps", "1", "--sample-every", "0") == 0
    direct = [p for p in written if os.path.dirname(os.path.abspath(p)) == str(run_dir)]
    assert direct and all(os.path.basename(p).startswith(".") for p in direct), direct
    assert (run_dir / "tokenizer.json").is_file() and (run_dir / "config.json").is_file()


@pytest.mark.integration
def test_sigterm_to_eval_removes_its_temporary_folder(micro_run, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    corpus = _corpus(tmp_path / "eval.txt", 20_000_000)
    proc = subprocess.Popen([sys.executable, "-m", "bitttt", "eval", "--model", str(micro_run), "--data", corpus,
                             "--max-tokens", "10000000"], env={**ENV, "TMPDIR": str(tmpdir)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    STARTED.append(proc)
    end = time.monotonic() + WAIT_S
    while not os.listdir(tmpdir):
        assert time.monotonic() < end and proc.poll() is None, "eval made no temporary folder"
        time.sleep(0.05)
    time.sleep(2)  # tokenizing or scoring
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(BOUND_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code != 0  # it was still running: the signal ended it
    assert os.listdir(tmpdir) == []


def test_a_killed_evals_folder_is_removed_by_the_next_eval(micro_run, tmp_path, monkeypatch):
    import tempfile

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / f"{eval_mod.EVAL_TMP_PREFIX}{dead.pid}-abc"
    stale.mkdir()
    (tmp_path / f"{eval_mod.EVAL_TMP_PREFIX}{os.getpid()}-live").mkdir()  # a live process's: kept
    corpus = _corpus(tmp_path / "eval.txt", 20_000)
    eval_mod.evaluate(str(micro_run), [corpus], max_tokens=1024)
    assert sorted(os.listdir(tmp_path)) == sorted(["eval.txt", f"{eval_mod.EVAL_TMP_PREFIX}{os.getpid()}-live"])


MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys
    from bitttt import data
    from bitttt.tokenizer import ByteTokenizer
    vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
    limit = vm + int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    meta = data.build_cache(sys.argv[1], [sys.argv[2]], ByteTokenizer(), 0.1, 66)
    print(meta["n_tokens"], meta["n_val"])
""")


@pytest.mark.integration
def test_a_corpus_larger_than_the_memory_allowed_tokenizes(tmp_path):
    """The process may grow by 64 MiB of address space; the corpus is 160 MB in one file (its
    tokens 320 MB). Reading it whole, masking the split or listing tokens would not fit."""
    n_bytes = 160_000_000
    corpus = _corpus(tmp_path / "big.txt", n_bytes)
    size = os.path.getsize(corpus)
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "cache"), corpus, str(64 << 20)],
                         capture_output=True, text=True, env=ENV, timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    n_tokens, n_val = map(int, out.stdout.split())
    assert n_tokens == size + 1  # every byte and one end-of-text
    train_bin, val_bin = tmp_path / "cache" / "train.bin", tmp_path / "cache" / "val.bin"
    assert os.path.getsize(train_bin) + os.path.getsize(val_bin) == 2 * n_tokens
    assert os.path.getsize(val_bin) == 2 * n_val
    with open(val_bin, "rb") as f:  # the split holds the corpus's bytes (one line repeated)
        head = f.read(2 * 200)
    assert bytes(head[::2]).decode() in open(corpus).read(size // 2)
