"""`bitttt export`: a packed inference model (design §5). (`bitttt eval` is bitttt.evaluate.)"""

from __future__ import annotations

import json
import os
from typing import Any

from bitttt import checkpoint as ckpt_io
from bitttt.errors import ConfigError

EXPORT_FORMAT = {"weights": "bt2", "version": 1}


def export(path: str, out: str, force: bool = False) -> dict[str, Any]:
    """Writes the model at `path` (run, checkpoint or export) to `out`: ternary weights in BT2
    (uint8) + scales, everything else in its own dtype, config.json and tokenizer.json.
    `out` must be new, an empty folder, or (with force) an earlier export: never a run, a
    run's checkpoint or anything else (ConfigError)."""
    src = ckpt_io.resolve(path)
    if os.path.abspath(out) in (os.path.abspath(src), os.path.abspath(path)):
        raise ConfigError(f"--out {out} is the model being exported", hint="choose another folder")
    check_out(out, force)
    model, tokenizer, info = ckpt_io.load_model(src, "cpu", pack=True)
    sections = info["sections"]
    extra = {"format": EXPORT_FORMAT, **{k: v for k, v in sections.items() if k in ("training", "data")}}
    ckpt_io.write_folder(out, model, tokenizer, extra)
    size = os.path.getsize(os.path.join(out, ckpt_io.MODEL_FILE))
    from bitttt.nn.bitlinear import BitLinear

    n_float = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    n_ternary = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, BitLinear))
    fp16 = 2 * (n_float + n_ternary)  # the same model with every weight in float16 (scales aside)
    return {"source": src, "out": out, "bytes": size, "float16_bytes_estimate": fp16}


def is_export(path: str) -> bool:
    """A folder `export` wrote: packed weights, no optimizer or trainer state."""
    try:
        with open(os.path.join(path, ckpt_io.CONFIG_FILE)) as f:
            fmt = json.load(f).get("format")
    except (OSError, ValueError, AttributeError):
        return False
    return (isinstance(fmt, dict) and fmt.get("weights") == EXPORT_FORMAT["weights"]
            and not any(os.path.lexists(os.path.join(path, f)) for f in (ckpt_io.OPTIM_FILE, ckpt_io.STATE_FILE)))


def _is_run_dir(path: str) -> bool:
    return any(os.path.lexists(os.path.join(path, f)) for f in ("checkpoints", "final", "events.jsonl"))


def check_out(out: str, force: bool) -> None:
    """ConfigError unless `export` may write `out` (see export)."""
    parent, name = os.path.split(os.path.abspath(out))
    if os.path.basename(parent) == "checkpoints" or (name == "final" and _is_run_dir(parent)) \
            or (ckpt_io.STEP_DIR.match(name) and _is_run_dir(os.path.dirname(parent))):
        raise ConfigError(f"--out {out} is a checkpoint place of a run", hint="export to a folder outside the run")
    if not os.path.lexists(out):
        return
    if os.path.isdir(out) and not os.path.islink(out) and not os.listdir(out):
        return
    if _is_run_dir(out):
        raise ConfigError(f"--out {out} is a run directory; export never writes over a run",
                          hint="choose a new folder")
    if not os.path.isdir(out) or os.path.islink(out) or not is_export(out):
        raise ConfigError(f"--out {out} exists and is not an earlier export; export writes over nothing else",
                          hint="choose a new or empty folder")
    if not force:
        raise ConfigError(f"--out {out} holds an earlier export", hint="pass --force to replace it, or choose "
                          "another folder")

