"""Checkpoints and model loading (docs/design.md §5).

A checkpoint is a folder: model.safetensors, optimizer.pt, trainer_state.json, config.json,
tokenizer.json. It is written into a temporary sibling folder and renamed into place, so a
crash or kill while saving never leaves a half checkpoint where the loader looks. `resolve`
turns a run directory, a checkpoint folder or an export into the folder to load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import torch

from bitttt.errors import ConfigError
from bitttt.model import BitTTTConfig, BitTTTForCausalLM, load_config, save_config
from bitttt.tokenizer import Tokenizer, load_tokenizer

MODEL_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "optimizer.pt", "trainer_state.json"
CONFIG_FILE, TOKENIZER_FILE = "config.json", "tokenizer.json"
STEP_DIR = re.compile(r"^step-(\d+)$")
BAD_CHECKPOINT_HINT = "the checkpoint is damaged or from another model; use an earlier checkpoint or retrain"


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def _model_tensors(model: BitTTTForCausalLM) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)  # the same tensor as embed.weight; safetensors stores it once
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def write_folder(path: str, model: BitTTTForCausalLM, tokenizer: Tokenizer, config_extra: dict[str, Any],
                 optimizer_state: dict | None = None, trainer_state: dict | None = None) -> str:
    """Writes a complete checkpoint (or export) folder at `path`, atomically."""
    from safetensors.torch import save_file

    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file(_model_tensors(model), os.path.join(tmp, MODEL_FILE), metadata={"format": "pt"})
    if optimizer_state is not None:
        torch.save(optimizer_state, os.path.join(tmp, OPTIM_FILE))
    if trainer_state is not None:
        with open(os.path.join(tmp, STATE_FILE), "w") as f:
            json.dump(trainer_state, f, indent=2)
    save_config(model.config, os.path.join(tmp, CONFIG_FILE), config_extra)
    tokenizer.save(os.path.join(tmp, TOKENIZER_FILE))
    for fname in os.listdir(tmp):  # on disk before the rename makes the folder visible
        with open(os.path.join(tmp, fname), "rb") as f:
            os.fsync(f.fileno())
    old = None
    if os.path.exists(path):
        old = os.path.join(parent, f".old-{name}-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_step_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the run's complete step checkpoints, oldest first."""
    ckdir = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(ckdir):
        return []
    found = []
    for name in os.listdir(ckdir):
        m = STEP_DIR.match(name)
        if m and os.path.isfile(os.path.join(ckdir, name, MODEL_FILE)):
            found.append((int(m.group(1)), os.path.join(ckdir, name)))
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
            shutil.rmtree(path, ignore_errors=True)


def is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MODEL_FILE)) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def resolve(path: str, prefer_final: bool = True) -> str:
    """A checkpoint/export folder, or a run directory -> the folder to load (final, else the latest step)."""
    if not os.path.exists(path):
        raise ConfigError(f"{path}: no such run, checkpoint or export", hint="check the path")
    if is_checkpoint(path):
        return path
    final = os.path.join(path, "final")
    steps = list_step_checkpoints(path)
    candidates = ([final] if is_checkpoint(final) else []) + [p for _, p in reversed(steps)]
    if not prefer_final and steps:
        candidates = [steps[-1][1]]
    if not candidates:
        raise ConfigError(f"{path}: holds no checkpoint ({MODEL_FILE} + {CONFIG_FILE})",
                          hint="pass a run directory with checkpoints, a checkpoint folder or an export")
    return candidates[0]


def read_trainer_state(ckpt: str) -> dict[str, Any]:
    path = os.path.join(ckpt, STATE_FILE)
    try:
        with open(path) as f:
            state = json.load(f)
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError("no step")
        return state
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable trainer state ({e})", hint=BAD_CHECKPOINT_HINT) from None


def load_optimizer_state(ckpt: str) -> dict[str, Any]:
    path = os.path.join(ckpt, OPTIM_FILE)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ConfigError(f"{path}: unreadable optimizer state ({type(e).__name__}: {e})", hint=BAD_CHECKPOINT_HINT) from None


def load_model(path: str, device: str | torch.device = "cpu", pack: bool | None = None,
               ) -> tuple[BitTTTForCausalLM, Tokenizer, dict[str, Any]]:
    """Loads a run directory, checkpoint or export.

    pack: True gives the BT2 kernel path, False the fake-quant path (impossible for an export,
    which has no float weights), None: whatever the folder holds.
    Returns (model in eval mode, tokenizer, {"path", "sections"}). Raises ConfigError naming the
    file for a missing or damaged config, tokenizer or weights.
    """
    from safetensors.torch import load_file

    ckpt = resolve(path)
    config, sections = load_config(os.path.join(ckpt, CONFIG_FILE))
    tokenizer = load_tokenizer(os.path.join(ckpt, TOKENIZER_FILE))
    if tokenizer.vocab_size > config.vocab_size:
        raise ConfigError(f"{ckpt}: tokenizer has {tokenizer.n_tokens} tokens, the model only {config.vocab_size}",
                          hint="the tokenizer.json does not belong to this model")
    packed_on_disk = sections.get("format", {}).get("weights") == "bt2"
    if packed_on_disk and pack is False:
        raise ConfigError(f"{ckpt}: an export holds packed weights only", hint="use a training checkpoint for fake quant")
    model = BitTTTForCausalLM(config)
    if packed_on_disk:
        model.pack()
    try:
        tensors = load_file(os.path.join(ckpt, MODEL_FILE))
    except Exception as e:
        raise ConfigError(f"{os.path.join(ckpt, MODEL_FILE)}: cannot read weights ({type(e).__name__}: {e})",
                          hint=BAD_CHECKPOINT_HINT) from None
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        raise ConfigError(f"{ckpt}: weights do not fit config.json ({str(e).splitlines()[0]} ...)",
                          hint=BAD_CHECKPOINT_HINT) from None
    missing = [k for k in missing if not (config.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ConfigError(f"{ckpt}: weights do not fit config.json (missing {missing[:3]}, unexpected {unexpected[:3]})",
                          hint=BAD_CHECKPOINT_HINT)
    if pack and config.ternary:
        model.pack()
    model.to(device).eval()
    return model, tokenizer, {"path": ckpt, "sections": sections}


def model_config_of(path: str) -> BitTTTConfig:
    return load_config(os.path.join(resolve(path), CONFIG_FILE))[0]
