"""--resume (design §5 "Resume and extending a run"): nothing to train is refused, data paths
are stored absolute, and a new total decays from the learning rate the run had."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from bitttt import cli

from ckptlib import folder_digest, write_corpus
from trainlib import read_events, train

pytestmark = pytest.mark.slow

LR, MIN_LR = 3e-3, 3e-4  # the micro runs' (tiny preset's) peak and final learning rates


def step_events(run_dir) -> dict[int, dict]:
    return {e["step"]: e for e in read_events(run_dir) if e["event"] == "step"}


def decay(step: int, from_step: int, from_lr: float, total: int, min_lr: float) -> float:
    """A cosine from from_lr at from_step down to min_lr at total."""
    return min_lr + 0.5 * (from_lr - min_lr) * (1 + math.cos(math.pi * (step - from_step) / (total - from_step)))


@pytest.mark.parametrize("steps", [["--steps", "40"], ["--steps", "60"], []])
def test_resume_with_nothing_to_train_is_refused(micro_run, tmp_path, steps, capsys):
    run_dir = shutil.copytree(micro_run, tmp_path / "run")  # finished at step 60
    before = folder_digest(run_dir / "final"), (run_dir / "events.jsonl").read_bytes()
    assert cli.main(["train", "--resume", str(run_dir), *steps]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at step 60" in err and "--steps N with N > 60" in err
    assert (folder_digest(run_dir / "final"), (run_dir / "events.jsonl").read_bytes()) == before


def test_resume_from_another_directory_reads_the_same_data(tmp_path, monkeypatch):
    first, other = tmp_path / "first", tmp_path / "other"
    first.mkdir(), other.mkdir()
    write_corpus(first / "corpus.txt", seed=1)
    write_corpus(other / "corpus.txt", seed=2)  # the same relative path, other text
    schedule = ["--data", "corpus.txt", "--steps", "24", "--eval-every", "100", "--save-every", "100",
                "--sample-every", "0"]
    monkeypatch.chdir(first)
    assert train(tmp_path / "straight", *schedule) == 0
    assert train(tmp_path / "split", *schedule, "--stop-after", "12") == 0
    with open(tmp_path / "split" / "config.json") as f:
        assert json.load(f)["training"]["data"] == [str(first / "corpus.txt")]
    monkeypatch.chdir(other)
    assert cli.main(["train", "--resume", str(tmp_path / "split"), "--log-format", "jsonl"]) == 0
    straight, split = step_events(tmp_path / "straight"), step_events(tmp_path / "split")
    assert sorted(split) == list(range(1, 25))
    assert [split[s]["loss"] for s in split] == [straight[s]["loss"] for s in split]  # bit for bit
    assert [split[s]["lr"] for s in split] == [straight[s]["lr"] for s in split]  # the original schedule


def test_extending_a_finished_run_decays_from_its_last_lr(micro_run, tmp_path):
    run_dir = shutil.copytree(micro_run, tmp_path / "run")  # 60 steps, warmup 10: ends at MIN_LR
    last_lr = step_events(run_dir)[60]["lr"]
    assert last_lr == pytest.approx(MIN_LR)
    # 20 more steps to a lower floor, interrupted after 8 and resumed: one decay 60 -> 80
    assert cli.main(["train", "--resume", str(run_dir), "--steps", "80", "--min-lr", "1e-4", "--stop-after", "8",
                     "--log-format", "jsonl"]) == 0
    assert cli.main(["train", "--resume", str(run_dir), "--log-format", "jsonl"]) == 0
    events = step_events(run_dir)
    lrs = [events[s]["lr"] for s in range(61, 81)]
    assert lrs == pytest.approx([decay(s, 60, last_lr, 80, 1e-4) for s in range(61, 81)], rel=1e-9)
    assert all(a > b for a, b in zip([last_lr] + lrs, lrs))  # down all the way, never back up
    assert lrs[-1] == pytest.approx(1e-4)


def test_a_longer_total_for_an_interrupted_run_continues_its_lr(tmp_path):
    run_dir = tmp_path / "run"
    assert train(run_dir, "--steps", "24", "--eval-every", "100", "--save-every", "100", "--sample-every", "0",
                 "--stop-after", "16") == 0
    lr16 = step_events(run_dir)[16]["lr"]
    assert MIN_LR < lr16 < 0.7 * LR  # into its decay
    assert cli.main(["train", "--resume", str(run_dir), "--steps", "40", "--log-format", "jsonl"]) == 0
    events = step_events(run_dir)
    assert [events[s]["lr"] for s in range(17, 41)] == pytest.approx(
        [decay(s, 16, lr16, 40, MIN_LR) for s in range(17, 41)], rel=1e-9)
