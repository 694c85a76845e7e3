"""The run-time estimate before launch (issue 26's floor): what a run does, what each part costs,
measured from events.jsonl; every expected number below is worked out by hand in the comments."""

import dataclasses
import json
from pathlib import Path

import pytest

from bitttt_gui import runtime
from bitttt_gui.command import TrainSettings

from test_gui_app import make_app, pump, start  # noqa: F401  (make_app is a fixture)

CONFIG = {"preset": "tiny", "mixer": "ttt_linear", "ternary": True, "n_layer": 4, "n_embd": 256, "n_head": 4,
          "mini_batch": 16, "tokenizer": "byte", "batch_size": 16, "seq_len": 128, "grad_accum": 1, "threads": 0,
          "compile": False, "device": "auto", "eval_tokens": 16384}


def _events(process_start=90.0):
    """A 6-step run: 2048 tokens a step. The first step takes 2 s (1024 tokens/s), the next five 1 s
    each; evaluations take 3.5 s (the first, with its ternary report) and 2 s; a sample 1 s; the save 2 s."""
    ev = [{"event": "start", "time": 100.0, "config": CONFIG, "world_size": 1, "start_step": 0,
           "process_start": process_start},
          {"event": "eval", "time": 103.0, "step": 0}, {"event": "ternary", "time": 103.5, "step": 0},
          {"event": "step", "time": 105.5, "step": 1, "tokens_per_s": 1024.0}]
    ev += [{"event": "step", "time": 105.5 + i, "step": 1 + i, "tokens_per_s": 2048.0} for i in range(1, 6)]
    ev += [{"event": "eval", "time": 112.0, "step": 6}, {"event": "ternary", "time": 112.5, "step": 6},
           {"event": "sample", "time": 113.5, "step": 6}, {"event": "checkpoint", "time": 115.5, "step": 6},
           {"event": "done", "time": 115.6, "reason": "completed"}]
    return ev


def test_plan_counts_what_the_trainer_does():
    # the default run: evals at 0,100,...,500; samples at 250 and 500; a save at 250 and final/
    assert runtime.plan(500, 100, 250, 250) == runtime.Plan(steps=500, evals=6, samples=2, saves=2)
    # 120 steps, eval every 50: 0, 50, 100 and the last (120); no samples; only final/
    assert runtime.plan(120, 50, 0, 0) == runtime.Plan(120, 4, 0, 1)
    # resumed at 72: evals at 100 and 120 (none at the start); saves at 100 and final/
    assert runtime.plan(120, 50, 0, 50, start_step=72) == runtime.Plan(48, 2, 0, 2)
    # eval every 0 still evaluates at step 0 and at the end
    assert runtime.plan(6, 0, 6, 0) == runtime.Plan(6, 2, 1, 1)


def test_measure_splits_a_run_into_its_parts():
    t = runtime.measure(_events(), "run x")
    assert t.step_s == pytest.approx(1.0) and t.steps_timed == 5
    assert t.eval_s == pytest.approx(2.0)             # the later evaluation; the first's extra 1.5 s is start-up
    assert t.sample_s == pytest.approx(1.0) and t.save_s == pytest.approx(2.0)
    # 10 s to the start event, the first step's extra 1 s, the first evaluation's extra 1.5 s
    assert t.startup_s == pytest.approx(12.5) and t.eval_tokens == 16384


def test_predict_the_default_run_by_hand():
    t = runtime.measure(_events(), "run x")
    # 12.5 + 500 steps x 1 s + 6 evals x 2 s + 2 samples x 1 s + 2 saves x 2 s
    assert runtime.predict(t, runtime.plan(500, 100, 250, 250), 16384) == pytest.approx(530.5)
    # twice the evaluation tokens: twice each evaluation
    assert runtime.predict(t, runtime.plan(500, 100, 250, 250), 32768) == pytest.approx(542.5)
    # the measured run itself: 12.5 + 6 + 2 x 2 + 1 + 2 = 25.5 s, against 115.6 - 90 = 25.6 s measured
    assert runtime.predict(t, runtime.plan(6, 0, 6, 0), 16384) == pytest.approx(25.5)


def test_too_few_steps_or_no_process_start():
    short = [e for e in _events() if not (e["event"] == "step" and e["step"] > 3)]
    assert runtime.measure(short, "x") is None
    t = runtime.measure(_events(process_start=None), "x")
    assert t.startup_s is None and t.step_s == pytest.approx(1.0)
    assert runtime.measure(_events(process_start=None), "x", launched_at=95.0).startup_s == pytest.approx(7.5)


def test_the_speed_key_of_a_form_matches_its_run():
    form = dataclasses.asdict(TrainSettings())      # the tiny preset, as the form holds it
    run = runtime.run_key(_events())
    assert runtime.speed_key(form) == run
    assert runtime.speed_key({**form, "batch_size": 8}) != run
    assert runtime.speed_key({**form, "steps": 7, "lr": 1.0}) == run      # not speed settings


def test_the_newest_finished_matching_run_wins_and_calibrations_are_kept(tmp_path):
    runs = tmp_path / "runs"
    for name, step_s, mtime in (("old", 2.0, 1000), ("new", 1.0, 2000)):
        d = runs / name
        d.mkdir(parents=True)
        ev = _events()
        for e in ev:
            if e["event"] == "step" and e["step"] > 1:
                e["tokens_per_s"] = 2048.0 / step_s
        (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ev))
        import os
        os.utime(d / "events.jsonl", (mtime, mtime))
    src = runtime.TimingSource(tmp_path)
    key = runtime.run_key(_events())
    t = src.for_key(key)
    assert t.source == "run new" and t.step_s == pytest.approx(1.0)
    other = runtime.speed_key({**CONFIG, "batch_size": 8})
    assert src.for_key(other) is None
    src.remember(other, dataclasses.replace(t, source="a measurement"))
    assert runtime.TimingSource(tmp_path).for_key(other).source == "a measurement"


def test_durations_read_as_a_person_says_them():
    assert runtime.fmt_duration(42) == "about 40 s"
    assert runtime.fmt_duration(530.5) == "about 9 min"
    assert runtime.fmt_duration(2 * 3600 + 600) == "about 2 h 10 min"


# -- the Train tab ---------------------------------------------------------------------------

@pytest.mark.gui
def test_a_finished_run_with_the_same_settings_gives_the_run_time(make_app):
    app = make_app()
    train = app.tabs["train"]
    assert "not measured" in train.runtime_label.cget("text")
    start(app, run_name="timed", steps="30", eval_every="10", save_every="0", sample_every="0")
    pump(app.root, lambda: not app.training_running(), what="the run")
    text = train.runtime_label.cget("text")
    secs, t = train.expected_run_time(train.settings)
    assert t.source == "run timed" and f"{runtime.fmt_duration(secs)} (run timed, " in text
    # the fake's steps take 0.01 s: 2048 tokens a step at 204,800 tokens/s
    assert t.step_s == pytest.approx(0.01) and "204,800 tokens/s" in text
    train.set_value("batch_size", "8")                  # another step time: nothing measured for it
    pump(app.root, lambda: "not measured" in train.runtime_label.cget("text"), what="the new settings")


@pytest.mark.gui
def test_measure_times_the_settings_in_a_scratch_run(make_app):
    app = make_app()
    train = app.tabs["train"]
    train.measure_btn.invoke()
    assert str(train.start_btn.cget("state")) == "disabled" and "measuring" in train.runtime_label.cget("text")
    pump(app.root, lambda: "(a measurement at" in train.runtime_label.cget("text"), what="the measurement")
    assert list((app.workspace / ".bitttt-gui" / "calibration").iterdir()) == []     # the scratch run is gone
    assert str(train.start_btn.cget("state")) == "normal"
    # kept for the workspace: a new window knows it without measuring again
    key = runtime.speed_key(dataclasses.asdict(train.settings))
    assert runtime.TimingSource(app.workspace).calibrated(key).steps_timed == runtime.CALIBRATION_STEPS - 1


# -- the real trainer ------------------------------------------------------------------------

SMALL = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--seq-len", "32", "--batch-size", "4",
         "--eval-tokens", "256", "--sample-tokens", "8", "--threads", "1", "--warmup", "2", "--save-every", "0",
         "--log-every", "1", "--log-format", "jsonl"]


@pytest.mark.integration
@pytest.mark.slow
def test_the_real_trainers_events_price_a_run(tmp_path):
    """A calibration-shaped real run, then a longer one: the estimate from the first is recorded beside
    the second's wall time in tests/artifacts/runtime_estimate.json (timing is never asserted)."""
    import subprocess
    import sys
    import time

    from bitttt_gui.events import read_events

    def train(name, steps, eval_every, sample_every):
        launched, t0 = time.time(), time.monotonic()
        subprocess.run([sys.executable, "-m", "bitttt", "train", *SMALL, "--steps", str(steps), "--eval-every",
                        str(eval_every), "--sample-every", str(sample_every), "--run-dir", str(tmp_path / name)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return launched, time.monotonic() - t0, list(read_events(tmp_path / name / "events.jsonl"))

    launched, cal_wall, events = train("cal", 6, 0, 6)
    start = events[0]
    assert start["event"] == "start" and launched - 1 < start["process_start"] <= start["time"]
    t = runtime.measure(events, "calibration")          # the start-up from the event's process_start
    assert t is not None and t.steps_timed == 5 and t.eval_s is not None and t.sample_s is not None
    assert 0 < t.startup_s < cal_wall and t.save_s is not None
    estimate = runtime.predict(t, runtime.plan(40, 20, 20, 0), 256)
    _, wall, _ = train("run", 40, 20, 20)
    record = {"estimate_s": round(estimate, 2), "actual_s": round(wall, 2), "ratio": round(estimate / wall, 3),
              "calibration": dataclasses.asdict(t)}
    artifacts = Path(__file__).resolve().parents[1] / "artifacts"  # tests/artifacts, as tests/gui/conftest.py's
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "runtime_estimate.json").write_text(json.dumps(record, indent=1) + "\n")
    print("run-time estimate vs actual:", record)
