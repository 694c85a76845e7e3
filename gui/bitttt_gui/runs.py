"""The workspace's runs: status, final loss, latest checkpoint, read from ``events.jsonl``; tkinter-free."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from bitttt.runlock import RunLocked, acquire, describe, live_owner, live_trainer, release

from .events import num, read_events

STATUSES = ("running", "completed", "stopped", "failed", "interrupted", "empty")
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class RunInfo:
    path: Path
    name: str
    status: str                 # one of STATUSES
    step: int | None = None
    total_steps: int | None = None
    final_loss: float | None = None
    val_loss: float | None = None
    message: str = ""           # the error message of a failed run
    checkpoint: Path | None = None
    mtime: float = 0.0


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """``final/`` if the run finished, else the highest ``checkpoints/step-N``, else None."""
    run_dir = Path(run_dir)
    final = run_dir / "final"
    if final.is_dir():
        return final
    best, best_step = None, -1
    try:
        for p in (run_dir / "checkpoints").iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir() and int(m.group(1)) > best_step:
                best, best_step = p, int(m.group(1))
    except OSError:
        pass
    return best


def run_settings(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> dict:
    """The launcher form's values of a run, from its ``config.json`` (the checkpoint's, else the run's):
    model keys at the top level, the trainer's under "training" (DESIGN §5). Fields it cannot tell are
    left out; a missing or unreadable file gives {}."""
    for folder in ([Path(checkpoint)] if checkpoint else []) + [Path(run_dir)]:
        try:
            d = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(d, dict):
            break
    else:
        return {}
    training = d.get("training") if isinstance(d.get("training"), dict) else {}
    out = {k: d[k] for k in ("mixer", "ternary", "n_layer", "n_embd", "n_head", "mini_batch") if k in d}
    out.update({k: training[k] for k in ("preset", "steps", "batch_size", "seq_len", "lr", "warmup", "grad_accum",
                                         "device", "seed", "eval_every", "save_every", "sample_every",
                                         "tokenizer", "min_lr", "weight_decay", "grad_clip", "eval_tokens",
                                         "keep_last", "threads", "compile", "sample_prompt") if k in training})
    if training.get("tokenizer") == "bpe" and "bpe_vocab_size" in training:
        out["vocab_size"] = training["bpe_vocab_size"]
    elif training.get("tokenizer") == "byte":
        out["vocab_size"] = 256
    data = training.get("data")
    out["data"] = data[0] if isinstance(data, list) and len(data) == 1 else "" if not data else "; ".join(map(str, data))
    return out


def read_run(run_dir: str | os.PathLike, running: bool = False) -> RunInfo:
    """Summarise one run folder. ``running``: the launcher knows its trainer is alive."""
    run_dir = Path(run_dir)
    events_path = run_dir / "events.jsonl"
    info = RunInfo(path=run_dir, name=run_dir.name, status="empty")
    try:
        info.mtime = events_path.stat().st_mtime
    except OSError:
        info.mtime = 0.0
    done = error = None
    seen = False
    for ev in read_events(events_path):
        seen = True
        kind = ev["event"]
        if kind == "start":
            done = error = None   # a resumed run appends a new start: the latest session decides
            info.total_steps = ev.get("total_steps") if isinstance(ev.get("total_steps"), int) else info.total_steps
        elif kind == "step":
            if isinstance(ev.get("step"), int):
                info.step = ev["step"]
            if isinstance(ev.get("total_steps"), int):
                info.total_steps = ev["total_steps"]
            info.final_loss = num(ev.get("loss"), info.final_loss)
        elif kind == "eval":
            info.val_loss = num(ev.get("val_loss"), info.val_loss)
        elif kind == "error":
            error = ev
        elif kind == "done":
            done = ev
    info.checkpoint = latest_checkpoint(run_dir)
    if running or live_trainer(run_dir) is not None:   # also a trainer this window did not start
        info.status = "running"
    elif done is not None:
        reason = done.get("reason")
        info.status = {"completed": "completed", "stopped": "stopped"}.get(reason, "failed")
    elif error is not None:
        info.status = "failed"
    elif seen:
        info.status = "interrupted"   # no done event and no live trainer: killed or crashed hard
    if error is not None and info.status == "failed":
        info.message = str(error.get("message", ""))
    return info


def owned_elsewhere(run_dir: str | os.PathLike) -> str | None:
    """Why the launcher must not train, delete or replace ``run_dir``: another live process trains
    it (``bitttt.runlock``); None when nobody does."""
    owner = live_owner(run_dir)
    if owner is None:
        return None
    return (f"{Path(run_dir).name} is being trained by another process ({describe(owner)}): it is left alone. "
            "Choose another run name, or wait for that run to end.")


def delete_run(run_dir: str | os.PathLike) -> str | None:
    """Deletes a run folder unless another live process trains it; an error sentence, or None.
    The launcher takes the run's lock first, so no trainer can start in it while it goes."""
    try:
        acquire(run_dir, ["bitttt-gui", "delete", str(run_dir)])
    except RunLocked:
        return owned_elsewhere(run_dir) or f"{Path(run_dir).name} is being trained by another process."
    except OSError as e:
        return f"Could not delete {run_dir}: {e}"
    try:
        shutil.rmtree(run_dir)
    except OSError as e:
        release(run_dir)
        return f"Could not delete {run_dir}: {e}"
    return None


def scan_runs(workspace: str | os.PathLike, running: set[str] | frozenset = frozenset(),
              cache: dict | None = None) -> list[RunInfo]:
    """Every folder in ``<workspace>/runs`` (newest first); ``running`` holds run paths that are live.

    ``cache`` (a dict the caller keeps) skips re-reading runs whose events.jsonl and
    checkpoints are unchanged, so refreshing beside a long run stays cheap.
    """
    root = Path(workspace) / "runs"
    try:
        dirs = [p for p in root.iterdir() if p.is_dir()]
    except OSError:
        return []
    live = {str(Path(r).resolve()) for r in running}
    infos = []
    for d in dirs:
        is_live = str(d.resolve()) in live or live_trainer(d) is not None
        key = (_stamp(d / "events.jsonl"), _stamp(d / "checkpoints"), _stamp(d / "final"), is_live)
        hit = cache.get(str(d)) if cache is not None else None
        if hit is not None and hit[0] == key:
            infos.append(hit[1])
            continue
        info = read_run(d, running=is_live)
        if cache is not None:
            cache[str(d)] = (key, info)
        infos.append(info)
    infos.sort(key=lambda r: (r.mtime, r.name), reverse=True)
    return infos


def _stamp(path: Path):
    try:
        st = path.stat()
        return st.st_mtime_ns, st.st_size
    except OSError:
        return None
