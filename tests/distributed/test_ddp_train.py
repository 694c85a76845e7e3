"""Data-parallel `bitttt train --nproc 2` on CPU (gloo over 127.0.0.1) against one process with
the same global batch: losses, evaluations and weights; resume in one process and in two; STOP;
a failing and a hung rank (design §6, issue 14).

Each 2-process job costs a few seconds of torch imports per process, so there are few: one per
mixer (shared by the tests that need it), a STOP job and its resume, a failure and a hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from bitttt.checkpoint import list_step_checkpoints

from ddplib import (JOB_TIMEOUT_S, SEQ_LEN, job_command, job_env, read_events, run_job, step_losses, train_here,
                    wait_for_step)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# Two ranks x batch 2 against one process x batch 4 sum the same float32 terms in another order
# (per-rank means, then an all-reduce, vs one mean). In 4 steps the losses differed by < 1e-6
# relative here, and by 1.5e-5 at step 4 (attention) on a CI machine: a weight that rounds to
# another ternary code amplifies the rounding (~1e-4 relative by step 20). A changed token moves
# them by ~1e-2, so 1e-4 keeps a 100x margin on both sides.
# The weights after 4 steps: up to 3e-5 apart in 5 of 16384 elements of one matrix (ttt_linear
# with the AVX-512 TTT kernels, whose outputs are bit-equal per sequence: only the parameter
# gradients' sums over the batch are ordered differently). One AdamW step moves a weight by
# ~lr = 3e-3, so a wrong share of the batch would still be 10x past this bound.
# AdamW divides each gradient by its own running RMS, so an element whose gradient is ~0 moves by
# up to ~lr per step on either side of the reordered sum, and a weight whose ternary code flips
# moves its neighbours. Seen here (Xeon, AVX-512): 43 of 32768 elements of attention's gate_up
# up to 1.4e-3 apart after 4 steps. Hence a share, not a bound on every
# element: at most WEIGHT_OUTLIER_SHARE beyond WEIGHT_ATOL, and none beyond what STEPS AdamW
# steps can move a weight at all (lr 3e-3 each). A wrong share of the batch moves most elements.
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 3e-4
WEIGHT_OUTLIER_SHARE = 1e-2
WEIGHT_MAX_DIFF = 2 * 4 * 3e-3
PER_RANK_BATCH, WORLD = 2, 2

# mixer -> grad_accum: every mixer, with and without gradient accumulation (no_sync on the
# non-final micro-steps; the STOP job runs ttt_linear without it).
CASES = {"ttt_linear": 2, "ttt_mlp": 1, "attention": 2}
STEPS, SAVE_AT = 4, 2


def case_args(mixer: str) -> list[str]:
    return ["--mixer", mixer, "--grad-accum", str(CASES[mixer]), "--steps", str(STEPS), "--eval-every", "2",
            "--save-every", str(SAVE_AT), "--sample-every", "0"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """mixer -> the run directory of its finished 2-process job (run once per module)."""
    done: dict[str, str] = {}

    def get(mixer: str):
        if mixer not in done:
            run_dir = tmp_path_factory.mktemp(f"ddp-{mixer}") / "run"
            r = run_job(run_dir, WORLD, *case_args(mixer), "--batch-size", str(PER_RANK_BATCH))
            assert r.returncode == 0, r.stderr[-3000:]
            (run_dir / "stdout.txt").write_text(r.stdout)
            done[mixer] = run_dir
        return done[mixer]

    return get


def assert_close_losses(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=LOSS_RTOL), f"step {step}"


def assert_close_weights(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    diff = (got.float() - want.float()).abs()
    outliers = int((diff > WEIGHT_ATOL).sum())
    assert outliers <= WEIGHT_OUTLIER_SHARE * diff.numel(), \
        f"{name}: {outliers} of {diff.numel()} elements differ by more than {WEIGHT_ATOL} (max {diff.max():.2e})"
    assert float(diff.max()) <= WEIGHT_MAX_DIFF, f"{name}: max difference {diff.max():.2e} > {WEIGHT_MAX_DIFF}"


def weights(ckpt) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(ckpt, "model.safetensors"))


@pytest.mark.parametrize("mixer", list(CASES))
def test_two_processes_equal_one_with_the_global_batch(tmp_path, two_process_run, mixer):
    ddp_run = two_process_run(mixer)
    assert train_here(tmp_path / "one", *case_args(mixer), "--batch-size", str(PER_RANK_BATCH * WORLD)) == 0

    events = read_events(ddp_run)
    start = events[0]
    accum = CASES[mixer]
    assert start["world_size"] == WORLD and start["global_batch_size"] == PER_RANK_BATCH * WORLD * accum
    assert start["config"]["batch_size"] == PER_RANK_BATCH  # --batch-size stays per process
    assert events[-1]["event"] == "done" and events[-1]["reason"] == "completed"
    assert_close_losses(step_losses(ddp_run), step_losses(tmp_path / "one"))
    evals = {e["step"]: e["val_loss"] for e in events if e["event"] == "eval"}
    want_evals = {e["step"]: e["val_loss"] for e in read_events(tmp_path / "one") if e["event"] == "eval"}
    assert_close_losses(evals, want_evals)
    with open(ddp_run / "checkpoints" / f"step-{SAVE_AT:06d}" / "trainer_state.json") as f:
        assert json.load(f)["tokens_seen"] == SAVE_AT * PER_RANK_BATCH * WORLD * accum * SEQ_LEN  # the global count

    got, want = weights(ddp_run / "final"), weights(tmp_path / "one" / "final")
    assert sorted(got) == sorted(want)
    for name in want:
        assert_close_weights(got[name], want[name], name)
    # only rank 0 wrote: its events once on stdout and in events.jsonl, one set of checkpoints
    stdout = [json.loads(line) for line in (ddp_run / "stdout.txt").read_text().splitlines() if line.startswith("{")]
    assert stdout == events and sum(e["event"] == "start" for e in events) == 1
    assert [s for s, _ in list_step_checkpoints(str(ddp_run))] == list(range(SAVE_AT, STEPS, SAVE_AT))


@pytest.mark.parametrize("mixer", list(CASES))
def test_a_two_process_checkpoint_continues_in_one_process(tmp_path, two_process_run, mixer):
    ddp_run = two_process_run(mixer)
    ckpt = ddp_run / "checkpoints" / f"step-{SAVE_AT:06d}"
    # the global batch kept: 1 process x 4 continues as 2 x 2 did
    assert train_here(tmp_path / "resumed", "--resume", str(ckpt), "--batch-size", str(PER_RANK_BATCH * WORLD)) == 0
    start = read_events(tmp_path / "resumed")[0]
    assert start["start_step"] == SAVE_AT and start["world_size"] == 1
    want = {s: v for s, v in step_losses(ddp_run).items() if s > SAVE_AT}
    assert_close_losses(step_losses(tmp_path / "resumed"), want)


def _start_job(run_dir, *args: str) -> subprocess.Popen:
    """A 2-process job in a session of its own, so that _kill_job reaches its ranks too (killing
    torchrun's agent alone once left two ranks waiting in a collective for an hour)."""
    return subprocess.Popen(job_command(run_dir, WORLD, *args), env=job_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _kill_job(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def test_stop_file_stops_both_ranks_at_one_step_and_resume_is_exact(tmp_path):
    run_dir, steps, every = tmp_path / "run", 100, 4  # steps: far more than run while the test reacts
    args = ["--mixer", "ttt_linear", "--steps", str(steps), "--save-every", str(every), "--keep-last", "100",
            "--eval-every", "0", "--sample-every", "0", "--batch-size", str(PER_RANK_BATCH)]
    proc = _start_job(run_dir, *args)
    try:
        wait_for_step(run_dir, every + 2, proc)
        (run_dir / "STOP").write_text("")
        _, stderr = proc.communicate(timeout=JOB_TIMEOUT_S)
    finally:
        _kill_job(proc)
    # exit 0: every rank ended cleanly; a rank that went on alone would wait in its next
    # all-reduce, and the job would fail
    assert proc.returncode == 0, stderr[-3000:]
    events = read_events(run_dir)
    done = events[-1]
    assert done["event"] == "done" and done["reason"] == "stopped" and every < done["step"] < steps
    stop_step = done["step"]
    saved = [s for s, _ in list_step_checkpoints(str(run_dir))]
    assert saved == sorted({*range(every, stop_step + 1, every), stop_step})  # + one at the stop, rank 0's
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == saved
    assert not (run_dir / "final").exists() and not (run_dir / "STOP").exists()

    # SIGTERM to the job (what the launcher sends, to torchrun's agent) stops it like STOP; and the
    # same world size resumes bit for bit: from the first checkpoint, over the steps both ran
    resumed = tmp_path / "resumed"
    proc = _start_job(resumed, "--resume", str(run_dir / "checkpoints" / f"step-{every:06d}"))
    try:
        wait_for_step(resumed, every + 2, proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=JOB_TIMEOUT_S)
    finally:
        _kill_job(proc)
    assert proc.returncode == 0, stderr[-3000:]
    done = read_events(resumed)[-1]
    assert done["event"] == "done" and done["reason"] == "stopped" and done["step"] < steps
    assert os.path.isfile(os.path.join(done["path"], "model.safetensors"))
    got, want = step_losses(resumed), step_losses(run_dir)
    both = sorted(set(got) & set(want))
    assert both[:2] == [every + 1, every + 2]
    assert {s: got[s] for s in both} == {s: want[s] for s in both}


def test_a_failing_rank_ends_the_job_and_is_named(tmp_path):
    run_dir = tmp_path / "run"
    env = job_env(BITTTT_TEST_FAIL_RANK="1:step=2")
    r = run_job(run_dir, WORLD, "--mixer", "attention", "--steps", "20", "--batch-size", "2", env=env)
    assert r.returncode == 1, r.stderr[-3000:]
    events = read_events(run_dir)
    error = next(e for e in events if e["event"] == "error")
    assert error["rank"] == 1 and error["message"].startswith("rank 1: RuntimeError: test fault on rank 1")
    assert events[-1]["event"] == "done" and events[-1]["reason"] == "error"
    assert max(e["step"] for e in events if e["event"] == "step") < 2


def test_a_hung_rank_times_out(tmp_path):
    run_dir = tmp_path / "run"
    env = job_env(BITTTT_TEST_FAIL_RANK="1:step=2:hang")
    r = run_job(run_dir, WORLD, "--mixer", "attention", "--steps", "20", "--batch-size", "2", "--dist-timeout", "3",
                env=env)
    assert r.returncode != 0
    events = read_events(run_dir)
    error = next(e for e in events if e["event"] == "error")
    assert error["rank"] == 0 and "Timed out" in error["message"] and "hung" in error["hint"]  # rank 0 gave up
    assert events[-1]["event"] == "done" and events[-1]["reason"] == "error"


STOP_BOUND_S = 60  # a few seconds plus one micro-step, with room for a loaded 2-core machine




def _wait_for_event(run_dir, name: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(run_dir / "events.jsonl") and any(e["event"] == name for e in read_events(run_dir)):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {name} event: {proc.poll()=}")


def _stop_within_bound(proc: subprocess.Popen, how: str, run_dir) -> None:
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        (run_dir / "STOP").write_text("")
    try:
        _, stderr = proc.communicate(timeout=STOP_BOUND_S)
    finally:
        _kill_job(proc)
    assert proc.returncode == 0, stderr[-3000:]


def test_a_stop_reaches_both_ranks_inside_a_long_accumulation(tmp_path):
    """Under data parallel the ranks agreed on stops once per step, so --grad-accum 100000 never
    stopped; they now agree at every micro-step."""
    run_dir = tmp_path / "run"
    proc = _start_job(run_dir, "--grad-accum", "100000", "--steps", "5", "--sample-every", "0",
                      "--batch-size", str(PER_RANK_BATCH))
    _wait_for_event(run_dir, "eval", proc)  # step 0's; the first step's accumulation starts now
    time.sleep(1)
    _stop_within_bound(proc, "STOP", run_dir)
    events = read_events(run_dir)
    assert not [e for e in events if e["event"] in ("step", "checkpoint")]
    assert events[-1]["event"] == "done" and events[-1]["reason"] == "stopped" and events[-1]["step"] == 0


def test_a_stop_during_rank0s_sample_stops_both_ranks_cleanly(tmp_path):
    """Only rank 0 samples: a stop there once ended rank 0 alone, and rank 1 waited in its next
    collective until the job failed."""
    run_dir = tmp_path / "run"
    proc = _start_job(run_dir, "--sample-every", "1", "--sample-tokens", "100000", "--steps", "50",
                      "--eval-every", "0", "--save-every", "0", "--batch-size", str(PER_RANK_BATCH))
    wait_for_step(run_dir, 1, proc)  # step 1 is done; rank 0's sample of up to 100000 tokens runs now
    _stop_within_bound(proc, "SIGTERM", run_dir)
    done = read_events(run_dir)[-1]
    assert done["event"] == "done" and done["reason"] == "stopped" and 1 <= done["step"] < 50
    assert os.path.isfile(os.path.join(done["path"], "model.safetensors"))
