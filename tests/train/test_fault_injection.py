"""Kill -9 during saves (design §5 "Crash-safe saves", issue 12): whatever instant a save dies
at, the loader finds a complete checkpoint (the previous or the new one), start-up recovery
leaves no `.tmp-/.old-/.del-` folder, and `--resume` continues bit for bit.

Most trials fork this test process (bitttt already imported) into a child that runs one real
save (`Trainer.save`, `export`) and is killed with SIGKILL where BITTTT_TEST_SAVE_PAUSE stops
it: at every named point between the save's file-system steps, and at seeded random delays.
A few trials kill `python -m bitttt train` itself and resume it.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from bitttt import checkpoint as ckpt_io
from bitttt import cli, export
from bitttt import train as train_mod

from ckptlib import final_tensors, folder_digest, leftovers, make_trainer, write_corpus
from trainlib import MICRO, read_events, train

pytestmark = pytest.mark.slow

WRITES = ["made-tmp"] + [f"wrote-{f}" for f in ("model.safetensors", "optimizer.pt", "trainer_state.json",
                                                 "config.json", "tokenizer.json")]
EXPORT_WRITES = ["made-tmp", "wrote-model.safetensors", "wrote-config.json", "wrote-tokenizer.json"]
REPLACE = ["moved-old", "renamed-new", "renamed-to-del:1", "deleted:1"]
# Each scenario: the save the child runs, and every point it passes (":n" = the n-th arrival).
SCENARIOS = {
    # step-30 is new; pruning to --keep-last 1 then removes step-10 and step-20
    "new-step": WRITES + ["renamed-new", "renamed-to-del:1", "deleted:1", "renamed-to-del:2", "deleted:2"],
    # step-20 again (a resume from an earlier checkpoint): replaced, then step-10 pruned
    "same-step": WRITES + REPLACE + ["renamed-to-del:2", "deleted:2"],
    "final": WRITES + REPLACE,  # final/ of an extended run
    "export-force": EXPORT_WRITES + REPLACE,  # over an earlier export
}
RANDOM_TRIALS = 12
WAIT_S = 120  # a child or trainer that reaches no point by then is a failure, not a hang


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A run directory with checkpoints/step-000010, step-000020 and final/ (step 40) holding
    three different weights, plus an export of step-10; and the trainer that wrote them."""
    root = tmp_path_factory.mktemp("fault")
    corpus = write_corpus(root / "corpus.txt")
    run_dir = root / "run"
    trainer = make_trainer(run_dir, "--data", corpus, "--steps", "40", "--keep-last", "5")
    trainer.train_step(1)
    for step, final in ((10, False), (20, False), (40, True)):
        trainer.step = step
        _perturb(trainer)
        trainer.save(final=final)
    export.export(str(run_dir / "checkpoints" / "step-000010"), str(root / "export"))
    trainer.t.keep_last = 1  # the children's saves prune
    return root, trainer


def _perturb(trainer) -> None:
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1e-3)


def _save(scenario: str, trainer, root) -> None:
    """What the child does: one save of new weights."""
    if scenario == "export-force":
        export.export(str(root / "run" / "final"), str(root / "export"), force=True)
        return
    _perturb(trainer)
    trainer.run_dir = str(root / "run")  # the trial's copy (this is the forked child's trainer)
    trainer.step = {"new-step": 30, "same-step": 20, "final": 40}[scenario]
    trainer.save(final=scenario == "final")


def _state(root) -> dict[str, str]:
    """name -> digest of every checkpoint and export folder."""
    folders = {"final": root / "run" / "final", "export": root / "export"}
    ckdir = root / "run" / "checkpoints"
    folders.update({n: ckdir / n for n in os.listdir(ckdir) if not n.startswith(".")})
    return {name: folder_digest(path) for name, path in folders.items() if os.path.isdir(path)}


def _fork_save(scenario: str, trainer, root, pause: str | None, marker) -> int:
    pid = os.fork()
    if pid == 0:  # the child: save, then leave without pytest's exit handlers
        code = 1
        try:
            if pause:
                os.environ[ckpt_io.SAVE_PAUSE_ENV] = pause if ":" in pause else f"{pause}:1"
                os.environ[ckpt_io.SAVE_PAUSE_FILE_ENV] = str(marker)
            _save(scenario, trainer, root)
            code = 0
        finally:
            os._exit(code)
    return pid


def _wait_for(marker, pid: int) -> bool:
    """True once the child paused at its point; False if it finished without reaching it."""
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        if os.path.exists(marker):
            return True
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"no pause point within {WAIT_S} s")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except ChildProcessError:  # exited (and reaped) already
        pass


def _fresh(template_root, trial_root):
    shutil.rmtree(trial_root, ignore_errors=True)
    shutil.copytree(template_root / "run", trial_root / "run")
    shutil.copytree(template_root / "export", trial_root / "export")
    return trial_root


def _check_recovered(root, before: dict[str, str], after: dict[str, str], where: str) -> None:
    """After a killed save and start-up recovery: every folder is its previous or its new
    version, whole; one present before and after is still there; no leftover stays."""
    run_dir = root / "run"
    ckpt_io.recover_run(str(run_dir))  # the trainer's start-up, once it holds the lock
    ckpt, _ = train_mod.find_resume(str(run_dir))
    ckpt_io.recover_folder(str(root), "export")  # the next export's start (write_folder)
    assert leftovers(root, run_dir, run_dir / "checkpoints") == [], where
    now = _state(root)
    for name, digest in now.items():
        assert digest in (before.get(name), after.get(name)), f"{where}: {name} is neither version"
    for name in set(before) & set(after):
        assert name in now, f"{where}: {name} is gone"
    ckpt_io.load_optimizer_state(ckpt)
    assert ckpt_io.read_trainer_state(ckpt)["step"] in (20, 30, 40)
    with torch.random.fork_rng(devices=[]):  # building a model draws from the RNG the next child saves
        ckpt_io.load_model(ckpt)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks the test process")
def test_killed_saves_leave_a_complete_checkpoint(template, tmp_path):
    root, trainer = template
    before = _state(root)
    trials, rng = 0, random.Random(12)
    for scenario, points in SCENARIOS.items():
        trial = _fresh(root, tmp_path / "t")
        start = time.time()
        pid = _fork_save(scenario, trainer, trial, None, None)
        assert os.waitpid(pid, 0)[1] == 0
        save_s = time.time() - start
        after = _state(trial)
        assert after != before
        for point in points + [f"random-{i}" for i in range(RANDOM_TRIALS // len(SCENARIOS))]:
            trial = _fresh(root, tmp_path / "t")
            marker = tmp_path / "paused"
            if marker.exists():
                marker.unlink()
            random_kill = point.startswith("random-")
            pid = _fork_save(scenario, trainer, trial, None if random_kill else point, marker)
            if random_kill:
                time.sleep(rng.uniform(0, 1.2 * save_s))
            else:
                assert _wait_for(marker, pid), f"{scenario}: the save never reached {point}"
            _kill(pid)
            _check_recovered(trial, before, after, f"{scenario} killed at {point}")
            trials += 1
    print(f"fault injection: {trials} killed saves")
    assert trials >= 50


SCHEDULE = ["--steps", "30", "--save-every", "10", "--keep-last", "1", "--eval-every", "10", "--sample-every", "0"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run of the schedule the killed trainers run: (its corpus, its run dir)."""
    root = tmp_path_factory.mktemp("straight")
    corpus = write_corpus(root / "corpus.txt")
    assert train(root / "run", "--data", corpus, *SCHEDULE) == 0
    return corpus, root / "run"


@pytest.mark.integration
@pytest.mark.parametrize("pause,resumes_at", [
    ("wrote-optimizer.pt:2", 10),  # inside the step-20 save
    ("renamed-to-del:1", 20),  # pruning step-10 after step-20 is in place
    ("wrote-trainer_state.json:3", 20),  # inside the final save
])
def test_killed_trainer_resumes_bit_exact(straight, tmp_path, pause, resumes_at):
    corpus, straight_run = straight
    run_dir, marker = tmp_path / "killed", tmp_path / "paused"
    env = {**os.environ, "OMP_NUM_THREADS": "1", ckpt_io.SAVE_PAUSE_ENV: pause,
           ckpt_io.SAVE_PAUSE_FILE_ENV: str(marker)}
    cmd = [sys.executable, "-m", "bitttt", "train", *MICRO, "--data", corpus, "--run-dir", str(run_dir), *SCHEDULE]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + WAIT_S
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert marker.exists(), f"the trainer never reached {pause} (exit {proc.poll()})"
    finally:
        proc.kill()
        proc.wait()
    assert cli.main(["train", "--resume", str(run_dir), "--log-format", "jsonl"]) == 0
    start = [e for e in read_events(run_dir) if e["event"] == "start"][-1]
    assert start["start_step"] == resumes_at
    assert leftovers(run_dir, run_dir / "checkpoints") == []
    ours, theirs = final_tensors(run_dir), final_tensors(straight_run)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # bit for bit
