"""The launcher's run-time estimate against the real run (issue 26's floor: within 25%).

Does what the Train tab does: a calibration run of the form's settings (``runtime.calibration_overrides``),
its timings (``runtime.measure``), the prediction for the target run (``runtime.plan`` and ``predict``);
then runs the target as the launcher would (``command.build_train_argv``: jsonl events, every step
logged) and times it from launch to exit. It also records the estimate the launcher would give
the next identical run, from this run's own events (the "newest finished run" path).

    python benchmarks/runtime_estimate.py                   # the default run (tiny, 500 steps)
    python benchmarks/runtime_estimate.py --steps 100 --json benchmarks/results/MACHINE/runtime_estimate.json

Timing on a shared machine is noisy: the record keeps the load average before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gui"))

from bitttt.bench.harness import Record, Result, load_average  # noqa: E402
from bitttt_gui import command, runtime  # noqa: E402
from bitttt_gui.events import read_events  # noqa: E402


def run(argv: list[str]) -> tuple[float, float, int]:
    """(launch wall time, seconds from launch to exit, exit code)."""
    launched = time.time()
    t0 = time.monotonic()
    code = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return launched, time.monotonic() - t0, code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, help="the target run's steps (default: the preset's, 500 for tiny)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--json", metavar="PATH", help="write the result record here")
    args = p.parse_args(argv)
    s = command.TrainSettings.for_preset(args.preset)
    if args.steps:
        s = dataclasses.replace(s, steps=args.steps)
    work = Path(tempfile.mkdtemp(prefix="bitttt-runtime-"))
    record = Record(bench="runtime_estimate", settings={"preset": args.preset, "steps": s.steps,
                                                        "eval_every": s.eval_every, "sample_every": s.sample_every,
                                                        "save_every": s.save_every, "threads": s.threads})
    try:
        cal = dataclasses.replace(s, **runtime.calibration_overrides())
        cal_dir = work / "calibration"
        launched, cal_wall, code = run(command.build_train_argv(cal, cal_dir))
        if code != 0:
            print(f"calibration run failed (exit {code})", file=sys.stderr)
            return 1
        t_cal = runtime.measure(list(read_events(cal_dir / "events.jsonl")), "calibration", launched_at=launched)
        plan = runtime.plan(s.steps, s.eval_every, s.sample_every, s.save_every)
        estimate = runtime.predict(t_cal, plan, s.eval_tokens)
        print(f"calibration: {cal_wall:.1f} s wall; {t_cal}", flush=True)
        print(f"estimate for {s.steps} steps: {estimate:.1f} s ({runtime.fmt_duration(estimate)})", flush=True)
        target = work / "target"
        _, actual, code = run(command.build_train_argv(s, target))
        if code != 0:
            print(f"target run failed (exit {code})", file=sys.stderr)
            return 1
        t_run = runtime.measure(list(read_events(target / "events.jsonl")), "run")
        from_run = runtime.predict(t_run, plan, s.eval_tokens)
        print(f"actual: {actual:.1f} s; estimate/actual {estimate / actual:.3f}; "
              f"from the run's own events: {from_run:.1f} s ({from_run / actual:.3f})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cases = [Result(case=f"{args.preset}-{s.steps}-steps", contender=name, threads=s.threads or os.cpu_count(),
                    wait_policy="passive", median=value, min=value, max=value, unit="s", rounds=1,
                    extra=extra)
             for name, value, extra in (
                 ("calibration_estimate", estimate, {"ratio_to_actual": round(estimate / actual, 4),
                                                     "calibration_wall_s": round(cal_wall, 2),
                                                     "timings": dataclasses.asdict(t_cal)}),
                 ("actual", actual, {}),
                 ("estimate_from_the_run", from_run, {"ratio_to_actual": round(from_run / actual, 4),
                                                      "timings": dataclasses.asdict(t_run)}))]
    record.finish(cases)
    if args.json:
        record.write(args.json)
    print(f"load before {record.load_before}, after {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
