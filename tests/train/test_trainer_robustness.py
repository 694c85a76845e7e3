"""The trainer at its edges (issue 12): a stop during start-up, a reader that goes away,
divergence, missing data, and one held-out measure shared with `bitttt eval`."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from bitttt import cli
from bitttt import data as data_mod
from bitttt import train as train_mod
from bitttt.checkpoint import list_step_checkpoints
from trainlib import MICRO, read_events, train

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # a shared 2-core machine: spinning threads cost 10x
DIVERGE = ["--lr", "1e8", "--warmup", "0", "--save-every", "1", "--eval-every", "0", "--sample-every", "0"]


def write_docs(path, n: int = 40) -> None:
    """n jsonl documents: enough text for a tiny BPE and a few training windows."""
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"Document {i}: test-time training keeps learning while it reads. " * 20})
                    + "\n")


def counting_documents(monkeypatch, on_doc):
    """Replaces data.documents with the real one that calls on_doc(i) before document i; returns
    the list of indices reached."""
    real, reached = data_mod.documents, []

    def documents(paths):
        for i, doc in enumerate(real(paths)):
            reached.append(i)
            on_doc(i)
            yield doc

    monkeypatch.setattr(data_mod, "documents", documents)
    return reached


def assert_stopped_in_start_up(run_dir, step=0, path=None):
    events = read_events(run_dir)
    assert "start" not in [e["event"] for e in events]  # it never got to train
    done = events[-1]
    assert done["event"] == "done" and done["reason"] == "stopped"
    assert done["step"] == step and done["path"] == path
    assert any(e["event"] == "warning" and "start-up" in e["message"] for e in events)


# ---------------------------------------------------------------------------------------
# 1. Stop during start-up
# ---------------------------------------------------------------------------------------


def test_sigterm_while_training_bpe_stops_inside_the_loop(tmp_path, monkeypatch):
    docs, run_dir = tmp_path / "d.jsonl", tmp_path / "run"
    write_docs(docs)
    # A signal is delivered asynchronously (to any thread): give it a moment to land before the next document.
    reached = counting_documents(monkeypatch, lambda i: i == 3 and (os.kill(os.getpid(), signal.SIGTERM),
                                                                    time.sleep(0.5)))
    assert train(run_dir, "--data", str(docs), "--tokenizer", "bpe", "--vocab-size", "300", "--steps", "5") == 0
    assert_stopped_in_start_up(run_dir)
    assert len(reached) < 10  # seen inside the BPE's reading loop, not after 40 documents


def test_stop_file_while_tokenizing(tmp_path, monkeypatch):
    docs, run_dir = tmp_path / "d.jsonl", tmp_path / "run"
    write_docs(docs)
    counting_documents(monkeypatch, lambda i: i == 2 and (run_dir / "STOP").write_text(""))
    assert train(run_dir, "--data", str(docs), "--steps", "5") == 0
    assert_stopped_in_start_up(run_dir)
    assert not (run_dir / "STOP").exists()
    assert not [p for p in os.listdir(run_dir) if ".tmp-" in p]  # no half-written token cache


def test_sigint_while_building_the_model(tmp_path, monkeypatch):
    real = train_mod.BitTTTForCausalLM

    def build_then_ctrl_c(config):
        model = real(config)
        os.kill(os.getpid(), signal.SIGINT)
        return model

    monkeypatch.setattr(train_mod, "BitTTTForCausalLM", build_then_ctrl_c)
    assert train(tmp_path / "run", "--steps", "5") == 0
    assert_stopped_in_start_up(tmp_path / "run")


def test_stop_while_resuming_keeps_the_checkpoint(micro_run, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(micro_run, run_dir)
    real_load = train_mod.Trainer._load

    def load_then_sigterm(self, path):
        real_load(self, path)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train_mod.Trainer, "_load", load_then_sigterm)
    before = (run_dir / "final" / "model.safetensors").read_bytes()
    assert cli.main(["train", "--resume", str(run_dir), "--steps", "80", "--log-format", "jsonl"]) == 0
    events = read_events(run_dir)
    done = events[-1]
    assert done["reason"] == "stopped" and done["step"] == 60 and done["path"] == str(run_dir / "final")
    assert (run_dir / "final" / "model.safetensors").read_bytes() == before


@pytest.mark.integration
def test_sigterm_in_start_up_of_a_real_process(tmp_path):
    """The handlers are in place as soon as the run directory exists (here: during BPE training)."""
    docs, run_dir = tmp_path / "d.jsonl", tmp_path / "run"
    write_docs(docs, n=3000)
    proc = subprocess.Popen([sys.executable, "-m", "bitttt", "train", *MICRO, "--data", str(docs),
                             "--tokenizer", "bpe", "--vocab-size", "2000", "--steps", "100000",
                             "--run-dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    try:
        deadline = time.time() + 120
        while not (run_dir / "events.jsonl").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    done = json.loads(out.splitlines()[-1])
    assert done["event"] == "done" and done["reason"] == "stopped"


# ---------------------------------------------------------------------------------------
# 2. The reader goes away
# ---------------------------------------------------------------------------------------


def start_and_orphan(run_dir, *extra: str) -> subprocess.Popen:
    """Starts a jsonl trainer on pipes, reads its first step event, then closes both pipes
    (a launcher that crashed) and sends it a SIGPIPE for good measure."""
    proc = subprocess.Popen([sys.executable, "-m", "bitttt", "train", *MICRO, "--run-dir", str(run_dir), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    for line in proc.stdout:
        if line.startswith('{"event": "step"'):
            break
    proc.stdout.close()
    proc.stderr.close()
    proc.send_signal(signal.SIGPIPE)
    return proc


@pytest.mark.integration
def test_training_goes_on_when_stdout_closes(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_and_orphan(run_dir, "--steps", "60", "--eval-every", "30", "--save-every", "0",
                            "--sample-every", "0")
    try:
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    events = read_events(run_dir)
    assert [e["step"] for e in events if e["event"] == "step"][-1] == 60
    done = events[-1]
    assert done["event"] == "done" and done["reason"] == "completed"
    assert done["path"] == str(run_dir / "final") and (run_dir / "final" / "model.safetensors").is_file()


@pytest.mark.integration
def test_stop_file_is_honoured_after_stdout_closes(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_and_orphan(run_dir, "--steps", "100000", "--eval-every", "0", "--save-every", "0",
                            "--sample-every", "0")
    try:
        time.sleep(0.5)  # some steps with nobody reading
        assert proc.poll() is None  # alive: neither the broken pipe nor SIGPIPE ended it
        (run_dir / "STOP").write_text("")
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    done = read_events(run_dir)[-1]
    assert done["event"] == "done" and done["reason"] == "stopped" and done["step"] > 1
    assert os.path.isfile(os.path.join(done["path"], "model.safetensors"))


# ---------------------------------------------------------------------------------------
# 3. Divergence
# ---------------------------------------------------------------------------------------


def _held_out_loss(path) -> float:
    """The loss of a checkpoint on a fixed text: the oracle that it 'loads and evaluates finite'."""
    from bitttt.checkpoint import load_model

    model, tok, _ = load_model(str(path))
    ids = torch.tensor([tok.encode("The quick brown fox jumps over the lazy dog. " * 3)])
    with torch.no_grad():
        return model(ids, labels=ids).loss.item()


@pytest.mark.parametrize("lr", ["1e8", "1e30"])
@pytest.mark.parametrize("log_format", ["text", "jsonl"])
def test_divergence_is_its_own_error_and_keeps_the_last_good_checkpoint(tmp_path, log_format, lr, capsys):
    """Issue 27's repro: `--resume run --lr 1e30` kept a step whose weights were finite but ~1e29
    (NaN at the next forward). The kept checkpoint must load and evaluate finite."""
    run_dir = tmp_path / "run"
    assert train(run_dir, "--steps", "20", "--stop-after", "2", "--warmup", "0", "--eval-every", "0",
                 "--sample-every", "0") == 0  # stopped at step 2: the same total resumes the same schedule
    code = cli.main(["train", "--resume", str(run_dir), *DIVERGE, "--log-format", log_format, "--lr", lr])
    out = capsys.readouterr()
    assert code == cli.EXIT_DIVERGED == 5
    events = read_events(run_dir)
    err = [e for e in events if e["event"] == "error"]
    assert len(err) == 1 and err[0]["kind"] == "diverged"
    assert "--lr" in err[0]["hint"] and "data" in err[0]["hint"]
    done = events[-1]
    assert done["event"] == "done" and done["reason"] == "error"
    saved = list_step_checkpoints(str(run_dir))
    assert saved and done["path"] == saved[-1][1] and done["step"] == saved[-1][0]
    assert not (run_dir / "final").exists()
    for _, path in saved:  # every checkpoint on disk is finite and sane: none was written after the blow-up
        weights = load_file(os.path.join(path, "model.safetensors")).values()
        assert all(torch.isfinite(t).all() and t.abs().max() < 1e6 for t in weights if t.is_floating_point())
    assert math.isfinite(_held_out_loss(done["path"]))
    assert "Traceback" not in out.err and "this is a bug" not in out.out + out.err
    if log_format == "text":
        assert out.err.startswith("bitttt: error: ") and "error (" not in out.out  # one form on a terminal


@pytest.mark.parametrize("poison, want", [(None, 7.5), (float("nan"), float("nan")), (float("-inf"), float("inf")),
                                           (-1e9, 1e9)], ids=["finite", "nan", "-inf", "negative"])
def test_largest_weight_is_the_largest_magnitude_and_propagates_nan(poison, want):
    # the weights check after every step: max |w| over all parameters, the largest being
    # negative here (-7.5), NaN if any weight is NaN; the oracle is Python's max over floats
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5))
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-1, 1)
        model[0].weight[2, 3] = -7.5
        if poison is not None:
            model[1].bias[4] = poison
    values = [abs(v) for p in model.parameters() for v in p.detach().flatten().tolist()]
    got = train_mod.largest_weight(model)
    if math.isnan(want):
        assert math.isnan(got) and any(math.isnan(v) for v in values)
    else:
        assert got == want == max(values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_clip_is_torch_clip_grad_norm(dtype):
    # the step's clipping (one C++ pass for float32 CPU gradients, torch's own otherwise) against
    # torch.nn.utils.clip_grad_norm_ on a twin model with the same gradients: norm and clipped grads
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3)).to(dtype)
    model[2].weight.requires_grad_(False)  # a frozen parameter has no gradient
    twin = copy.deepcopy(model)
    for m in (model, twin):
        m(torch.randn(4, 6, dtype=dtype)).pow(2).sum().mul(100).backward()
        for p in m.parameters():
            if p.grad is not None:
                p.grad.copy_(torch.arange(p.numel(), dtype=dtype).view_as(p) - 2.5)
    want = torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0).item()
    assert want > 1  # so it clips
    with torch.profiler.profile() as prof:
        got = train_mod.clip_grad_norm(model, 1.0)
    assert ("bitttt::clip_grad_norm_" in {e.name for e in prof.events()}) == (dtype == torch.float32)
    assert got == pytest.approx(want, rel=1e-6)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------
# 6. Missing data, models/
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("log_format", ["text", "jsonl"])
def test_missing_data_leaves_no_run_directory(tmp_path, log_format, capsys):
    run_dir = tmp_path / "runs" / "first"
    code = train(run_dir, "--data", str(tmp_path / "no-such.txt"), "--steps", "5", "--log-format", log_format)
    out = capsys.readouterr()
    assert code == cli.EXIT_DATA
    assert not (tmp_path / "runs").exists()
    assert "no-such.txt" in out.err and "Traceback" not in out.err
    if log_format == "jsonl":
        events = [json.loads(line) for line in out.out.splitlines()]
        assert [e["event"] for e in events] == ["error", "done"] and events[0]["kind"] == "data"


def test_models_folder_is_ignored_by_git():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, ".gitignore")) as f:
        assert "models/" in f.read().split()


# ---------------------------------------------------------------------------------------
# 7. One held-out measure
# ---------------------------------------------------------------------------------------


def test_bitttt_eval_reproduces_the_last_eval_event(micro_run, capsys):
    last = [e for e in read_events(micro_run) if e["event"] == "eval"][-1]
    assert last["val_tokens"] == 1024  # the run's --eval-tokens, said in the event
    assert cli.main(["eval", "--model", str(micro_run), "--no-pack", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["held_out"] and r["tokens"] == last["val_tokens"]
    assert r["loss"] == last["val_loss"] and r["bits_per_byte"] == last["val_bpb"]  # exactly
    assert cli.main(["eval", "--model", str(micro_run)]) == 0  # packed kernels: the same set, float rounding
    text = capsys.readouterr().out
    assert "1,024 held-out tokens" in text
    assert f"{last['val_bpb']:.3f} bits/byte" in text
