"""Checkpoints and model loading (docs/design.md §5).

A checkpoint is a folder: model.safetensors, optimizer.pt, trainer_state.json, config.json,
tokenizer.json. Every save is crash-safe (design §5 "Crash-safe saves"): the files are written
and fsynced in a temporary sibling `.tmp-NAME-PID`, an existing NAME is renamed aside to
`.old-NAME-PID`, the new folder renamed into place, and the old one removed through a
`.del-NAME-PID` rename; the parent folder is fsynced after each rename. A folder under its own
name is therefore always complete, and in the one instant where NAME is missing its previous
version is complete under `.old-NAME-PID`: the loader takes it. Only writers recover (put it back
or remove what a killed save left): the trainer holding the run's lock (`recover_run`) and
`write_folder` for the NAME it writes; loaders only read. `resolve` turns a run directory, a checkpoint folder or an export into the folder to load.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import time
from typing import Any

import torch

from bitttt import hf
from bitttt.errors import BitttError, ConfigError
from bitttt.ops import validate_packed
from bitttt.model import BitTTTConfig, BitTTTForCausalLM, load_config, save_config
from bitttt.tokenizer import Tokenizer, load_tokenizer

MODEL_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "optimizer.pt", "trainer_state.json"
CONFIG_FILE, TOKENIZER_FILE = "config.json", "tokenizer.json"
STEP_DIR = re.compile(r"^step-(\d+)$")
LEFTOVER = re.compile(r"^\.(tmp|old|del)-(.+)-(\d+)$")  # what a save in progress (or killed) leaves beside NAME
BAD_CHECKPOINT_HINT = "the checkpoint is damaged or from another model; use an earlier checkpoint or retrain"
# Fault injection for tests/train/test_fault_injection.py: "POINT:N" makes the N-th arrival at a
# named point of a save write the file named by SAVE_PAUSE_FILE_ENV and sleep until killed.
SAVE_PAUSE_ENV, SAVE_PAUSE_FILE_ENV = "BITTTT_TEST_SAVE_PAUSE", "BITTTT_TEST_SAVE_PAUSE_FILE"


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def _model_tensors(model: BitTTTForCausalLM) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)  # the same tensor as embed.weight; safetensors stores it once
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


# ---------------------------------------------------------------------------------------
# Crash-safe writes
# ---------------------------------------------------------------------------------------


def _test_pause(point: str) -> None:
    """The fault-injection hook (see SAVE_PAUSE_ENV); the countdown lives in the variable itself."""
    spec = os.environ.get(SAVE_PAUSE_ENV)
    if not spec:
        return
    name, _, n = spec.rpartition(":")
    if name != point:
        return
    if int(n) > 1:
        os.environ[SAVE_PAUSE_ENV] = f"{name}:{int(n) - 1}"
        return
    with open(os.environ[SAVE_PAUSE_FILE_ENV], "w") as f:
        f.write(point)
    while True:
        time.sleep(60)


def _fsync_dir(path: str) -> None:
    """Makes the folder's entries (a rename, a new file) durable, not only its files' contents."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_files(folder: str, model: BitTTTForCausalLM, tokenizer: Tokenizer, config_extra: dict[str, Any],
                 optimizer_state: dict | None, trainer_state: dict | None) -> None:
    from safetensors.torch import save_file

    writers = [(MODEL_FILE, lambda p: save_file(_model_tensors(model), p, metadata={"format": "pt"}))]
    if optimizer_state is not None:
        writers.append((OPTIM_FILE, lambda p: torch.save(optimizer_state, p)))
    if trainer_state is not None:
        writers.append((STATE_FILE, lambda p: _write_json(p, trainer_state)))
    writers.append((CONFIG_FILE, lambda p: save_config(model.config, p, config_extra)))
    writers.append((TOKENIZER_FILE, tokenizer.save))
    for fname, write in writers:
        path = os.path.join(folder, fname)
        write(path)
        with open(path, "rb") as f:  # on disk before the rename makes the folder visible
            os.fsync(f.fileno())
        _test_pause(f"wrote-{fname}")
    _fsync_dir(folder)


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def write_folder(path: str, model: BitTTTForCausalLM, tokenizer: Tokenizer, config_extra: dict[str, Any],
                 optimizer_state: dict | None = None, trainer_state: dict | None = None) -> str:
    """Writes a complete checkpoint (or export) folder at `path`, replacing one that is there,
    crash-safely (module docstring)."""
    if not isinstance(model, BitTTTForCausalLM):  # e.g. a Hugging Face BitNet folder: already packed
        raise ConfigError(f"cannot write a {type(model).__name__} as a bitttt checkpoint", hint="use the folder as it is")
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    recover_folder(parent, name)  # the writer of NAME finishes or undoes what killed saves of NAME left
    tmp = os.path.join(parent, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    _test_pause("made-tmp")
    _write_files(tmp, model, tokenizer, config_extra, optimizer_state, trainer_state)
    old = None
    if os.path.lexists(path):
        old = os.path.join(parent, f".old-{name}-{os.getpid()}")
        remove_tree(old)
        os.replace(path, old)
        _fsync_dir(parent)
        _test_pause("moved-old")
    os.replace(tmp, path)
    _fsync_dir(parent)
    _test_pause("renamed-new")
    if old:
        remove_tree(old)
    return path


def remove_tree(path: str) -> None:
    """Removes a folder so that no half of it is ever seen under its name: renamed to
    `.del-NAME-PID` first (atomic), then deleted."""
    if not os.path.lexists(path):
        return
    parent, name = os.path.split(os.path.abspath(path))
    m = LEFTOVER.match(name)
    trash = os.path.join(parent, f".del-{m.group(2) if m else name}-{os.getpid()}")
    if trash != os.path.abspath(path):
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
        _fsync_dir(parent)
    _test_pause("renamed-to-del")
    shutil.rmtree(trash, ignore_errors=True)
    _test_pause("deleted")


def _owner_alive(pid: int) -> bool:
    """Whether the process that left a `.tmp/.old/.del` folder may still be saving."""
    if pid == os.getpid():
        return False  # our own saves run to the end before anything else here looks
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def recover_folder(folder: str, name: str | None = None) -> None:
    """Undoes or finishes what killed saves left in `folder` (only those of NAME if given): a
    `.old-NAME-PID` whose NAME is missing was renamed aside by a save killed before the new
    folder took its place, and is put back; every other leftover is removed. Leftovers of a
    live process are left alone (it may be saving now). Best effort: a read-only folder stays."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return
    for entry in entries:
        m = LEFTOVER.match(entry)
        if not m or (name is not None and m.group(2) != name) or _owner_alive(int(m.group(3))):
            continue
        leftover, target = os.path.join(folder, entry), os.path.join(folder, m.group(2))
        try:
            if m.group(1) == "old" and not os.path.lexists(target):
                os.replace(leftover, target)
            else:
                shutil.rmtree(leftover)
            _fsync_dir(folder)
        except OSError:
            pass


def recover_run(run_dir: str) -> None:
    """Recovery of a run directory and its checkpoints/: only for the process that holds the
    run's lock (train.own_run). Readers never recover: on a run directory shared by several
    machines, a pid that is dead here may be a live saver on another host."""
    recover_folder(run_dir)
    recover_folder(os.path.join(run_dir, "checkpoints"))


def complete_version(path: str) -> str | None:
    """path if it is a complete checkpoint; else its previous version that a save renamed aside
    (`.old-NAME-PID`, complete); else None."""
    return _complete(*os.path.split(os.path.abspath(path)))


def after_recovery(path: str) -> str:
    """Where a checkpoint found as `.old-NAME-PID` is once recovery put it back as NAME."""
    parent, name = os.path.split(path)
    m = LEFTOVER.match(name)
    if m and m.group(1) == "old" and not os.path.lexists(path) and is_checkpoint(os.path.join(parent, m.group(2))):
        return os.path.join(parent, m.group(2))
    return path


def _complete(folder: str, name: str) -> str | None:
    """The complete checkpoint folder for NAME in `folder`: NAME itself, or during the instant a
    live save replaces it, its previous version `.old-NAME-PID`."""
    path = os.path.join(folder, name)
    if is_checkpoint(path):
        return path
    try:
        olds = sorted(e for e in os.listdir(folder) if (m := LEFTOVER.match(e)) and m.group(1) == "old"
                      and m.group(2) == name)
    except OSError:
        return None
    return next((os.path.join(folder, e) for e in olds if is_checkpoint(os.path.join(folder, e))), None)


# ---------------------------------------------------------------------------------------
# Finding checkpoints
# ---------------------------------------------------------------------------------------


def list_step_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the run's complete step checkpoints, oldest first."""
    ckdir = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(ckdir):
        return []
    names = set()
    for entry in os.listdir(ckdir):
        m = LEFTOVER.match(entry)
        names.add(m.group(2) if m else entry)
    found = []
    for name in names:
        m = STEP_DIR.match(name)
        path = _complete(ckdir, name) if m else None
        if path:
            found.append((int(m.group(1)), path))
    return sorted(found)


def prune(run_dir: str, keep_last: int) -> None:
    """Keeps the last `keep_last` step checkpoints and the one with the best validation loss."""
    found = list_step_checkpoints(run_dir)
    best, best_loss = None, float("inf")
    for _, path in found:
        loss = read_trainer_state(path).get("val_loss") if os.path.isfile(os.path.join(path, STATE_FILE)) else None
        if loss is not None and loss < best_loss:
            best, best_loss = path, loss
    for _, path in found[:-keep_last] if keep_last > 0 else found:
        if path != best:
            remove_tree(path)


def is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MODEL_FILE)) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def resolve(path: str, prefer_final: bool = True) -> str:
    """A checkpoint/export folder, or a run directory -> the folder to load (final, else the latest step).
    Reads only: where a save was killed (or is running) it finds the complete previous version."""
    if is_checkpoint(path):
        return path
    previous = _complete(*os.path.split(os.path.abspath(path)))  # while a live save replaces it
    if previous:
        return previous
    if not os.path.exists(path):
        raise ConfigError(f"{path}: no such run, checkpoint or export", hint="check the path")
    final = _complete(path, "final")
    steps = list_step_checkpoints(path)
    candidates = ([final] if final else []) + [p for _, p in reversed(steps)]
    if not prefer_final and steps:
        candidates = [steps[-1][1]]
    if not candidates:
        raise ConfigError(f"{path}: holds no checkpoint ({MODEL_FILE} + {CONFIG_FILE})",
                          hint="pass a run directory with checkpoints, a checkpoint folder or an export")
    return candidates[0]


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def read_trainer_state(ckpt: str) -> dict[str, Any]:
    path = os.path.join(ckpt, STATE_FILE)
    try:
        with open(path) as f:
            state = json.load(f)
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        for key in ("step", "total_steps"):
            value = state.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{key} is {state.get(key)!r}, not a step number")
        if "step" not in state:
            raise ValueError("no step")
        _check_state_fields(state)
        return state
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable trainer state ({e})", hint=BAD_CHECKPOINT_HINT) from None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_state_fields(state: dict[str, Any]) -> None:
    """ValueError unless the fields the trainer reads have their types: numbers or null, and
    lr_decay null or {"from_step": a step, "from_lr": a number >= 0} (design §5)."""
    for key in ("lr", "val_loss", "best_val_loss", "tokens_seen", "time"):
        value = state.get(key)
        if value is not None and not (_number(value) or key != "lr" and isinstance(value, float)):  # a NaN loss is one
            raise ValueError(f"{key} is {str(value)[:40]}, not a number")
    decay = state.get("lr_decay")
    if decay is None:
        return
    if not (isinstance(decay, dict) and set(decay) == {"from_step", "from_lr"}
            and isinstance(decay["from_step"], int) and not isinstance(decay["from_step"], bool)
            and decay["from_step"] >= 0 and _number(decay["from_lr"]) and decay["from_lr"] >= 0):
        raise ValueError(f"lr_decay is {str(decay)[:60]}, not null or {{from_step, from_lr}}")


def load_optimizer_state(ckpt: str) -> dict[str, Any]:
    """optimizer.pt -> {"optimizer": AdamW state dict, "torch_rng": uint8 tensor}. Read with
    weights_only=True: tensors and plain containers only, so a crafted file cannot run code."""
    path = os.path.join(ckpt, OPTIM_FILE)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first_line = (str(e).splitlines() or [""])[0][:200]  # a 0-byte file's error has no message
        raise ConfigError(f"{path}: unreadable optimizer state ({type(e).__name__}: {first_line})",
                          hint=BAD_CHECKPOINT_HINT) from None
    rng = state.get("torch_rng") if isinstance(state, dict) else None
    if not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and isinstance(state.get("optimizer"), dict)):
        raise ConfigError(f"{path}: not a bitttt optimizer state (expected optimizer and torch_rng)",
                          hint=BAD_CHECKPOINT_HINT)
    return state


def read_config(ckpt: str) -> tuple[BitTTTConfig, dict[str, Any]]:
    path = os.path.join(ckpt, CONFIG_FILE)
    try:
        config, sections = load_config(path)
    except BitttError:
        raise
    except (TypeError, ValueError, AttributeError) as e:  # a value of the wrong type
        raise ConfigError(f"{path}: bad model config ({e})", hint=BAD_CHECKPOINT_HINT) from None
    if not all(isinstance(v, dict) for v in sections.values()):
        raise ConfigError(f"{path}: training, format and data must be JSON objects", hint=BAD_CHECKPOINT_HINT)
    return config, sections


def read_tensors(ckpt: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = os.path.join(ckpt, MODEL_FILE)
    try:
        return load_file(path, device=device)
    except Exception as e:
        raise ConfigError(f"{path}: cannot read weights ({type(e).__name__}: {str(e)[:200]})",
                          hint=BAD_CHECKPOINT_HINT) from None


def check_sizes(ckpt: str, config: BitTTTConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """Before a model is built from config.json: its sizes must be those of the weights (name ->
    shape), so a damaged number (n_layer = 10**9) is an error, not an allocation that never ends."""
    embed = shapes.get("embed.weight")
    if embed is None or tuple(embed) != (config.vocab_size, config.n_embd):
        raise ConfigError(f"{ckpt}: weights do not fit config.json (embed.weight is "
                          f"{list(embed) if embed is not None else 'missing'}, config.json says "
                          f"[{config.vocab_size}, {config.n_embd}])", hint=BAD_CHECKPOINT_HINT)
    layers = {k.split(".")[1] for k in shapes if k.startswith("blocks.")}
    largest = 4 * max((d for shape in shapes.values() for d in shape), default=0)  # BT2 holds K/4 per byte
    too_big = [f.name for f in dataclasses.fields(config) if type(getattr(config, f.name)) is int
               and f.name != "n_layer" and getattr(config, f.name) > largest]
    if len(layers) != config.n_layer or too_big:
        raise ConfigError(f"{ckpt}: weights do not fit config.json ({len(layers)} blocks of weights, n_layer "
                          f"{config.n_layer}{'; too large: ' + ', '.join(too_big) if too_big else ''})",
                          hint=BAD_CHECKPOINT_HINT)


def weight_shapes(ckpt: str) -> dict[str, tuple[int, ...]]:
    """name -> shape of model.safetensors' tensors, from its header alone."""
    from safetensors import safe_open

    path = os.path.join(ckpt, MODEL_FILE)
    try:
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise ConfigError(f"{path}: cannot read weights ({type(e).__name__}: {str(e)[:200]})",
                          hint=BAD_CHECKPOINT_HINT) from None


def _kind(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"


def load_weights(ckpt: str, model: BitTTTForCausalLM, tensors: dict[str, torch.Tensor]) -> None:
    """Loads `tensors` (read from ckpt) into `model`: every name, shape and dtype must be the
    model's, and packed BT2 weights must hold valid codes. ConfigError otherwise."""
    expected = model.state_dict()
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight", None)  # stored once, as embed.weight
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [f"{k} {_kind(t)} (expected {_kind(expected[k])})" for k, t in tensors.items()
             if k in expected and _kind(t) != _kind(expected[k])]
    if missing or unexpected or wrong:
        raise ConfigError(f"{ckpt}: weights do not fit config.json (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}, wrong {wrong[:2]})", hint=BAD_CHECKPOINT_HINT)
    for name, t in tensors.items():
        if name.endswith(".packed"):
            try:
                validate_packed(t)
            except ValueError as e:
                raise ConfigError(f"{os.path.join(ckpt, MODEL_FILE)}: {name}: {e}", hint=BAD_CHECKPOINT_HINT) from None
    model.load_state_dict(tensors, strict=not model.config.tie_embeddings)


def load_model(path: str, device: str | torch.device = "cpu", pack: bool | None = None, lm_head: str = "float",
               ) -> tuple[BitTTTForCausalLM, Tokenizer, dict[str, Any]]:
    """Loads a run directory, checkpoint or export.

    pack: True gives the BT2 kernel path, False the fake-quant path (impossible for an export,
    which has no float weights), None: whatever the folder holds. lm_head "int8": an int8 copy of
    the LM head with per-row scales (bitttt.hf.bitnet.Int8Linear) instead of the float one.
    Returns (model in eval mode, tokenizer, {"path", "sections"}). Raises ConfigError naming the
    file for a missing or damaged config, tokenizer or weights; never writes.
    """
    if hf.is_hf_folder(path):  # a Hugging Face BitNet b1.58 folder (design §6), repacked to BT2
        return hf.load(path, device, pack, lm_head=lm_head)
    ckpt = resolve(path)
    config, sections = read_config(ckpt)
    tokenizer = load_tokenizer(os.path.join(ckpt, TOKENIZER_FILE))
    if tokenizer.vocab_size > config.vocab_size:
        raise ConfigError(f"{ckpt}: tokenizer has {tokenizer.n_tokens} tokens, the model only {config.vocab_size}",
                          hint="the tokenizer.json does not belong to this model")
    packed_on_disk = sections.get("format", {}).get("weights") == "bt2"
    if packed_on_disk and pack is False:
        raise ConfigError(f"{ckpt}: an export holds packed weights only", hint="use a training checkpoint for fake quant")
    tensors = read_tensors(ckpt)
    check_sizes(ckpt, config, {k: tuple(t.shape) for k, t in tensors.items()})
    try:
        model = BitTTTForCausalLM(config)
    except (TypeError, ValueError, RuntimeError) as e:  # a value config.json's checks let through
        raise ConfigError(f"{ckpt}: config.json does not make a model ({type(e).__name__}: {str(e)[:200]})",
                          hint=BAD_CHECKPOINT_HINT) from None
    if packed_on_disk:
        model.pack()
    load_weights(ckpt, model, tensors)
    if pack and config.ternary:
        model.pack()
    if lm_head == "int8":
        model.lm_head = hf.bitnet.Int8Linear(model.lm_head.weight)
    model.to(device).eval()
    return model, tokenizer, {"path": ckpt, "sections": sections}


def model_config_of(path: str) -> BitTTTConfig:
    if hf.is_hf_folder(path):
        return hf.read_config(path)
    return read_config(resolve(path))[0]
