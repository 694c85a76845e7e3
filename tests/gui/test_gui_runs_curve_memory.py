import json
import queue
import subprocess
import sys
import time

from bitttt_gui import memory
from bitttt_gui.curve import LossCurve, decimate, smooth
from bitttt_gui.runs import latest_checkpoint, read_run, scan_runs


def write_run(root, name, events, ckpts=(), final=False):
    d = root / "runs" / name
    d.mkdir(parents=True)
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + "not json\n")
    for s in ckpts:
        (d / "checkpoints" / f"step-{s:06d}").mkdir(parents=True)
    if final:
        (d / "final").mkdir()
    return d


START = {"event": "start", "total_steps": 10}
STEPS = [{"event": "step", "step": i, "total_steps": 10, "loss": 5.0 - i / 10} for i in range(1, 6)]


def test_run_statuses(tmp_path):
    write_run(tmp_path, "done", [START, *STEPS, {"event": "eval", "step": 5, "val_loss": 4.7},
                                 {"event": "done", "step": 5, "reason": "completed"}], final=True)
    write_run(tmp_path, "stopped", [START, *STEPS, {"event": "done", "reason": "stopped"}], ckpts=(2, 10, 4))
    write_run(tmp_path, "oom", [START, {"event": "error", "kind": "oom", "message": "CUDA OOM"}])
    write_run(tmp_path, "killed", [START, *STEPS])
    live = write_run(tmp_path, "live", [START, *STEPS])
    (tmp_path / "runs" / "empty").mkdir()
    runs = {r.name: r for r in scan_runs(tmp_path, running={str(live)})}
    assert {k: v.status for k, v in runs.items()} == {"done": "completed", "stopped": "stopped", "oom": "failed",
                                                    "killed": "interrupted", "live": "running", "empty": "empty"}
    assert runs["done"].final_loss == 4.5 and runs["done"].val_loss == 4.7 and runs["done"].step == 5
    assert runs["done"].checkpoint.name == "final"
    assert runs["stopped"].checkpoint.name == "step-000010"
    assert runs["oom"].message == "CUDA OOM"
    assert scan_runs(tmp_path / "nowhere") == []


def test_resumed_run_is_judged_by_its_latest_session(tmp_path):
    d = write_run(tmp_path, "r", [START, {"event": "error", "kind": "oom"}, {"event": "done", "reason": "error"},
                                  START, *STEPS, {"event": "done", "reason": "completed"}])
    assert read_run(d).status == "completed"
    assert latest_checkpoint(tmp_path) is None


def test_curve_from_events_file(tmp_path):
    d = write_run(tmp_path, "c", [START, *STEPS, {"event": "eval", "step": 5, "val_loss": 4.6},
                                  {"event": "step", "step": 6, "loss": "nan?"}])
    c = LossCurve.from_events_file(d / "events.jsonl")
    assert c.train_steps == [1, 2, 3, 4, 5] and c.val_loss == [4.6] and len(c) == 6


def test_smooth_and_decimate():
    assert smooth([1.0, 2.0, 3.0], 0) == [1.0, 2.0, 3.0]
    s = smooth([4.0, 4.0, 4.0], 0.9)
    assert all(abs(v - 4.0) < 1e-9 for v in s)     # debiased: a constant stays constant
    noisy = [1.0, 3.0] * 50
    assert max(smooth(noisy, 0.9)[20:]) - min(smooth(noisy, 0.9)[20:]) < 0.5
    xs, ys = decimate(list(range(10001)), list(range(10001)), 1000)
    assert len(xs) <= 1001 and xs[-1] == 10000 and ys == xs


def test_process_tree_rss_counts_children():
    code = "import subprocess,sys,time; subprocess.Popen([sys.executable,'-c','import time; b=bytearray(60<<20); time.sleep(30)']); time.sleep(30)"
    p = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        rss = 0
        while time.monotonic() < deadline and rss < 60 << 20:
            time.sleep(0.2)
            rss = memory.tree_rss(p.pid) or 0
        assert rss >= 60 << 20     # the grandchild's 60 MiB is in the tree total
        assert len(memory.process_tree(p.pid)) == 2
    finally:
        for child in memory.process_tree(p.pid)[::-1]:
            child.kill()
        p.wait()
    assert memory.tree_rss(p.pid) is None


def test_gpu_readout_never_raises_and_explains_itself():
    g = memory.Gpus()
    if not g.available:
        assert g.note.startswith("GPU memory:") and g.read({1}) == [] and g.total_free() is None
    else:
        r = g.read()
        assert r and all(0 <= x.used <= x.total for x in r)
    g.close()


def test_gpu_readout_without_pynvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)   # import pynvml → ImportError
    g = memory.Gpus()
    assert not g.available and "not installed" in g.note


def test_sampler_posts_snapshots():
    q = queue.Queue()
    s = memory.MemorySampler(q, interval_s=0.05).start()
    import os
    s.pid = os.getpid()
    try:
        snaps = [q.get(timeout=5) for _ in range(3)]
    finally:
        s.stop()
    assert snaps[-1].rss and snaps[-1].rss > 10 << 20 and snaps[-1].host_total


def test_scan_cache_rereads_only_changed_runs(tmp_path, monkeypatch):
    d = write_run(tmp_path, "a", [START, *STEPS])
    write_run(tmp_path, "b", [START])
    cache = {}
    assert {r.name: r.status for r in scan_runs(tmp_path, cache=cache)} == {"a": "interrupted", "b": "interrupted"}
    import bitttt_gui.runs as runs_mod
    reads = []
    real = runs_mod.read_run
    monkeypatch.setattr(runs_mod, "read_run", lambda p, running=False: reads.append(p.name) or real(p, running))
    scan_runs(tmp_path, cache=cache)
    assert reads == []
    with open(d / "events.jsonl", "a") as f:
        f.write(json.dumps({"event": "done", "reason": "completed"}) + "\n")
    assert {r.name: r.status for r in scan_runs(tmp_path, cache=cache)}["a"] == "completed"
    assert reads == ["a"]
