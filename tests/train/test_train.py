"""The trainer in process (cli.main): events, files, resume, stop, OOM and bad checkpoints
(design §5, §6, §7)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bitttt import cli, train as train_mod
from bitttt.checkpoint import list_step_checkpoints

from trainlib import read_events, train

pytestmark = pytest.mark.slow

STEP_FIELDS = {"step", "total_steps", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "eta_s", "mem_bytes"}


def test_run_events_and_files(micro_run):
    events = read_events(micro_run)
    names = [e["event"] for e in events]
    assert names[0] == "start" and names[-1] == "done"
    assert {"step", "eval", "checkpoint", "sample"} <= set(names)
    assert all("time" in e for e in events)
    start = events[0]
    assert start["total_steps"] == 60 and start["n_params"] > 0 and start["config"]["mixer"] == "ttt_linear"
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 61))
    assert all(STEP_FIELDS <= set(e) for e in steps)
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [0, 20, 40, 60]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0  # it learned
    assert evals[-1]["val_bpb"] < 8
    assert events[-1]["reason"] == "completed" and events[-1]["path"].endswith("final")
    for name in ("config.json", "tokenizer.json", "events.jsonl"):
        assert os.path.isfile(micro_run / name)
    for ckpt in [micro_run / "final"] + [p for _, p in list_step_checkpoints(str(micro_run))]:
        assert sorted(os.listdir(ckpt)) == ["config.json", "model.safetensors", "optimizer.pt", "tokenizer.json",
                                            "trainer_state.json"]
    with open(micro_run / "config.json") as f:
        assert json.load(f)["model_type"] == "bitttt"


def step_losses(run_dir) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_events(run_dir) if e["event"] == "step"}


@pytest.mark.parametrize("mixer", ["ttt_linear", "attention"])
def test_resume_is_exact(tmp_path, mixer):
    common = ["--steps", "24", "--eval-every", "8", "--save-every", "100", "--sample-every", "100", "--mixer", mixer]
    assert train(tmp_path / "straight", *common) == 0
    assert train(tmp_path / "split", *common, "--stop-after", "12") == 0
    events = read_events(tmp_path / "split")
    assert events[-1]["event"] == "done" and events[-1]["reason"] == "stopped" and events[-1]["step"] == 12
    assert cli.main(["train", "--resume", str(tmp_path / "split"), "--log-format", "jsonl"]) == 0
    start = [e for e in read_events(tmp_path / "split") if e["event"] == "start"][-1]
    assert start["start_step"] == 12 and start["config"]["stop_after"] == 0  # --stop-after is not inherited
    straight, split = step_losses(tmp_path / "straight"), step_losses(tmp_path / "split")
    assert sorted(split) == list(range(1, 25))
    assert split == straight  # bit for bit


def test_stop_file(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_step = train_mod.Trainer.train_step

    def step_then_stop(self, step):
        if step == 5:
            (run_dir / "STOP").write_text("")
        return real_step(self, step)

    monkeypatch.setattr(train_mod.Trainer, "train_step", step_then_stop)
    assert train(run_dir, "--steps", "50") == 0
    done = read_events(run_dir)[-1]
    assert done["reason"] == "stopped" and done["step"] == 5
    assert done["path"].endswith("step-000005") and os.path.isdir(done["path"])
    assert not (run_dir / "STOP").exists()


# Out of memory arrives three ways: torch's OutOfMemoryError (CUDA), Python's MemoryError, and
# the CPU allocator's plain RuntimeError, which once fell through to "this is a bug" (exit 1).
@pytest.mark.parametrize("make_error", [
    lambda: torch.OutOfMemoryError("simulated"),
    lambda: MemoryError(),
    lambda: RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8000000000000 bytes."),
    lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                         "you tried to allocate 8000000000000 bytes."),
], ids=["torch-oom", "memoryerror", "cpu-cant-allocate", "cpu-not-enough"])
def test_oom_keeps_the_last_checkpoint(tmp_path, monkeypatch, make_error):
    run_dir = tmp_path / "run"
    real_step = train_mod.Trainer.train_step

    def oom_at_7(self, step):
        if step == 7:
            raise make_error()
        return real_step(self, step)

    monkeypatch.setattr(train_mod.Trainer, "train_step", oom_at_7)
    assert train(run_dir, "--steps", "50", "--save-every", "5") == cli.EXIT_OOM
    events = read_events(run_dir)
    err = [e for e in events if e["event"] == "error"][-1]
    assert err["kind"] == "oom" and "batch" in err["hint"]
    assert events[-1]["event"] == "done" and events[-1]["reason"] == "error"
    assert events[-1]["path"].endswith("step-000005")
    assert [s for s, _ in list_step_checkpoints(str(run_dir))] == [5]
    monkeypatch.setattr(train_mod.Trainer, "train_step", real_step)
    assert cli.main(["train", "--resume", str(run_dir), "--steps", "8", "--log-format", "jsonl"]) == 0


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["truncated_weights", "bad_config", "missing_tokenizer", "bad_optimizer"])
def test_bad_checkpoint_is_a_clear_error(micro_run, tmp_path, damage, capsys):
    run_dir = _copy_run(micro_run, tmp_path / "run")
    ckpt = run_dir / "final"
    if damage == "truncated_weights":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "bad_config":
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["n_embd"] = 96
        cfg["n_head"] = 3
        (ckpt / "config.json").write_text(json.dumps(cfg))
    elif damage == "missing_tokenizer":
        (ckpt / "tokenizer.json").unlink()
    else:
        (ckpt / "optimizer.pt").write_bytes(b"not a torch file")
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and p.name != "events.jsonl"}
    code = cli.main(["train", "--resume", str(ckpt), "--steps", "80", "--log-format", "jsonl"])
    assert code == cli.EXIT_CONFIG
    out = capsys.readouterr()
    err = [json.loads(line) for line in out.out.splitlines() if line.startswith("{")][-2]
    assert err["event"] == "error" and err["kind"] == "config" and str(ckpt) in err["message"]
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and p.name != "events.jsonl"}
    assert after == before  # nothing overwritten
    if damage != "bad_optimizer":  # loading for inference fails the same way
        with pytest.raises(cli.ConfigError):
            from bitttt.checkpoint import load_model

            load_model(str(ckpt))


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"n_layer": 2, "n_layers": 3}))
    assert cli.main(["train", "--config", str(cfg), "--print-config"]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert cli.main(["train", "--config", str(cfg), "--log-format", "jsonl"]) == cli.EXIT_CONFIG
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in events] == ["error", "done"] and events[0]["kind"] == "config"
    assert "n_layers" in err and "valid keys" in err and "n_layer" in err


def test_print_config_layers(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"n_layer": 2, "steps": 7, "lr": 0.01}))
    assert cli.main(["train", "--preset", "small", "--config", str(cfg), "--steps", "9", "--print-config"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["n_layer"] == 2 and resolved["n_embd"] == 512  # file over preset
    assert resolved["steps"] == 9 and resolved["lr"] == 0.01  # flag over file
    assert not (tmp_path / "runs").exists()


def test_existing_run_dir_is_not_overwritten(micro_run, capsys):
    assert cli.main(["train", "--run-dir", str(micro_run), "--steps", "5"]) == cli.EXIT_CONFIG
    assert "--resume" in capsys.readouterr().err


def test_bad_data_line(tmp_path):
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"text": "hello"}\n{"text": 3}\n')
    run_dir = tmp_path / "run"
    assert train(run_dir, "--data", str(bad), "--steps", "5") == cli.EXIT_DATA
    err = [e for e in read_events(run_dir) if e["event"] == "error"][0]
    assert err["kind"] == "data" and f"{bad}:2" in err["message"]


def test_bpe_run_restores_its_tokenizer(tmp_path):
    from bitttt.checkpoint import load_model

    text = tmp_path / "t.md"
    text.write_text("Test-time training keeps learning while it reads. " * 400)
    run_dir = tmp_path / "run"
    assert train(run_dir, "--data", str(text), "--tokenizer", "bpe", "--vocab-size", "300", "--steps", "4",
                 "--seq-len", "32", "--eval-every", "4", "--sample-every", "4", "--save-every", "100") == 0
    model, tok, _ = load_model(str(run_dir))
    assert tok.kind == "bpe" and model.config.vocab_size == tok.vocab_size == 320
    assert tok.decode(tok.encode("keeps learning")) == "keeps learning"
    sample = [e for e in read_events(run_dir) if e["event"] == "sample"][0]
    assert sample["prompt"] == "The " and isinstance(sample["text"], str)
