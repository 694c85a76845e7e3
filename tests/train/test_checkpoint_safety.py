"""Checkpoint safety (issue 12): no pickle runs code, leftovers of killed saves are recovered,
export never writes over a run, and packed weights with a BT2 code of 3 are refused."""

from __future__ import annotations

import builtins
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from bitttt import checkpoint as ckpt_io
from bitttt import cli

from ckptlib import folder_digest, leftovers

pytestmark = pytest.mark.slow


class CreatesAFile:
    """Unpickling this calls open(path, "w"): code run by loading a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return builtins.open, (self.path, "w")


def _copy_run(micro_run, tmp_path):
    return shutil.copytree(micro_run, tmp_path / "run")


# -- pickles ---------------------------------------------------------------------------------


def test_what_the_trainer_saves_loads_weights_only(micro_run):
    state = torch.load(micro_run / "final" / "optimizer.pt", weights_only=True)
    assert state["optimizer"]["state"] and state["torch_rng"].dtype == torch.uint8


def test_a_crafted_optimizer_pickle_does_not_run(micro_run, tmp_path, capsys):
    run_dir = _copy_run(micro_run, tmp_path)
    created = tmp_path / "pwned"
    torch.save({"optimizer": CreatesAFile(str(created)), "torch_rng": torch.get_rng_state()},
               run_dir / "final" / "optimizer.pt")
    with pytest.raises(cli.ConfigError, match="unreadable optimizer state"):
        ckpt_io.load_optimizer_state(str(run_dir / "final"))
    assert cli.main(["train", "--resume", str(run_dir / "final"), "--steps", "80", "--log-format", "jsonl"]) == 2
    assert not created.exists()
    assert "optimizer.pt" in capsys.readouterr().err


def test_an_optimizer_file_of_the_wrong_shape_is_a_clear_error(micro_run, tmp_path):
    run_dir = _copy_run(micro_run, tmp_path)
    torch.save({"optimizer": [1, 2]}, run_dir / "final" / "optimizer.pt")
    with pytest.raises(cli.ConfigError, match="not a bitttt optimizer state"):
        ckpt_io.load_optimizer_state(str(run_dir / "final"))


# -- leftovers of killed saves ------------------------------------------------------------------


def test_start_up_puts_back_a_folder_renamed_aside(micro_run, tmp_path):
    """Killed between its two renames, a save left final/ as .old-final-PID only."""
    run_dir = _copy_run(micro_run, tmp_path)
    digest = folder_digest(run_dir / "final")
    dead = _dead_pid()
    os.rename(run_dir / "final", run_dir / f".old-final-{dead}")
    os.makedirs(run_dir / f".tmp-final-{dead}")  # the half-written new one
    assert ckpt_io.resolve(str(run_dir)) == str(run_dir / f".old-final-{dead}")  # a reader reads it there
    ckpt_io.recover_run(str(run_dir))  # the trainer's start-up, once it holds the lock
    assert ckpt_io.resolve(str(run_dir)) == str(run_dir / "final")
    assert folder_digest(run_dir / "final") == digest
    assert leftovers(run_dir) == []


def test_stale_leftovers_are_removed_and_a_live_saver_is_left_alone(micro_run, tmp_path):
    run_dir = _copy_run(micro_run, tmp_path)
    ckdir = run_dir / "checkpoints"
    dead, alive = _dead_pid(), os.getppid()
    shutil.copytree(ckdir / "step-000020", ckdir / f".del-step-000020-{dead}")
    shutil.copytree(ckdir / "step-000040", ckdir / f".old-step-000040-{dead}")  # step-40 exists: stale
    os.makedirs(ckdir / f".tmp-step-000080-{dead}")
    os.makedirs(ckdir / f".tmp-step-000100-{alive}")  # another process saving now
    ckpt_io.recover_run(str(run_dir))
    assert leftovers(ckdir) == [str(ckdir / f".tmp-step-000100-{alive}")]


def test_the_loader_reads_the_previous_folder_while_a_save_replaces_it(micro_run, tmp_path):
    run_dir = _copy_run(micro_run, tmp_path)
    alive = os.getppid()  # the saver, between its two renames
    os.rename(run_dir / "final", run_dir / f".old-final-{alive}")
    assert ckpt_io.resolve(str(run_dir)) == str(run_dir / f".old-final-{alive}")
    ckdir = run_dir / "checkpoints"
    os.rename(ckdir / "step-000040", ckdir / f".old-step-000040-{alive}")
    assert ckpt_io.list_step_checkpoints(str(run_dir))[-1] == (40, str(ckdir / f".old-step-000040-{alive}"))
    assert leftovers(run_dir) == [str(run_dir / f".old-final-{alive}")]  # not touched


def test_pruning_never_leaves_a_half_checkpoint(micro_run, tmp_path, monkeypatch):
    """A kill inside the deletion of a pruned checkpoint leaves a .del- folder, never a step-N."""
    run_dir = _copy_run(micro_run, tmp_path)
    monkeypatch.setattr(shutil, "rmtree", _interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt):
        ckpt_io.prune(str(run_dir), keep_last=1)
    monkeypatch.undo()
    for _, path in ckpt_io.list_step_checkpoints(str(run_dir)):
        assert sorted(os.listdir(path)) == sorted(os.listdir(run_dir / "final"))


def _interrupted_rmtree(path, *args, **kwargs):
    names = sorted(os.listdir(path)) if os.path.isdir(path) else []
    if names:
        os.remove(os.path.join(path, names[-1]))
        raise KeyboardInterrupt  # killed half-way
    return None


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# -- export --------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["final", "checkpoints/step-000020", "run", "new-step", "not-an-export"])
def test_export_never_writes_over_a_run(micro_run, tmp_path, target, capsys):
    run_dir = _copy_run(micro_run, tmp_path)
    (tmp_path / "not-an-export").mkdir()
    (tmp_path / "not-an-export" / "notes.txt").write_text("mine")
    out = {"run": run_dir, "not-an-export": tmp_path / "not-an-export",
           "new-step": run_dir / "checkpoints" / "step-000999"}.get(target, run_dir / target)
    before = {p: folder_digest(p) for p in [run_dir / "final", *[p for _, p in
                                                                 ckpt_io.list_step_checkpoints(str(run_dir))]]}
    for force in ([], ["--force"]):
        assert cli.main(["export", str(run_dir / "checkpoints" / "step-000040"), "--out", str(out), *force]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--out" in err
    assert {p: folder_digest(p) for p in before} == before
    assert (tmp_path / "not-an-export" / "notes.txt").read_text() == "mine"
    assert not (run_dir / "checkpoints" / "step-000999").exists()


def test_export_replaces_an_earlier_export_only_with_force(micro_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert cli.main(["export", str(micro_run / "checkpoints" / "step-000020"), "--out", str(out)]) == 0
    first = folder_digest(out)
    assert cli.main(["export", str(micro_run), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and folder_digest(out) == first
    assert cli.main(["export", str(micro_run), "--out", str(out), "--force"]) == 0
    assert folder_digest(out) != first and leftovers(tmp_path) == []


# -- BT2 code 3 -----------------------------------------------------------------------------------


def test_packed_code_3_is_refused(micro_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert cli.main(["export", str(micro_run), "--out", str(out)]) == 0
    tensors = load_file(out / "model.safetensors")
    name = next(k for k in tensors if k.endswith(".packed"))
    tensors[name].view(-1)[:3] = 0xFF  # 3 bytes: 12 codes of 3
    tensors[name].view(-1)[3] = 0b00110000  # and one more
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(cli.ConfigError, match=r"\b13\b"):
        ckpt_io.load_model(str(out))
    capsys.readouterr()
    assert cli.main(["generate", "--model", str(out), "--prompt", "a", "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert name in err and err.count("\n") == 1
