"""Helpers for the checkpoint tests: a small text corpus, folder digests, a trainer built in
process (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import torch

from bitttt import cli
from bitttt import train as train_mod
from bitttt.stop import StopFlag
from bitttt.events import Emitter

from trainlib import MICRO

LEFTOVER_PREFIXES = (".tmp-", ".old-", ".del-")


def write_corpus(path, seed: int = 0, n_bytes: int = 60_000) -> str:
    """Plain English-like text, different for each seed (the pydoc topics, rotated)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    start = (seed * 7919) % (len(text) - n_bytes)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text[start:start + n_bytes])
    return str(path)


def folder_digest(folder) -> str:
    """One hash of a checkpoint folder's content: every file's bytes, except the save time in
    trainer_state.json and optimizer.pt's random serialization id."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        h.update(name.encode())
        if name == "trainer_state.json":
            with open(path) as f:
                state = json.load(f)
            state.pop("time", None)
            h.update(json.dumps(state, sort_keys=True).encode())
        elif name == "optimizer.pt":  # a zip; every member but the random id
            with zipfile.ZipFile(path) as z:
                for member in sorted(z.namelist()):
                    if not member.endswith("serialization_id"):
                        h.update(member.encode() + z.read(member))
        else:
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def leftovers(*folders) -> list[str]:
    return sorted(os.path.join(str(d), e) for d in folders if os.path.isdir(d) for e in os.listdir(d)
                  if e.startswith(LEFTOVER_PREFIXES))


def make_trainer(run_dir, *extra: str) -> train_mod.Trainer:
    """A Trainer as `bitttt train MICRO ...` builds it, without running it."""
    args = cli.build_parser().parse_args(["train", *MICRO, "--run-dir", str(run_dir), *extra])
    flags = {k: v for k, v in vars(args).items() if k not in ("func", "command", "argv", "nproc")}
    model_keys, t = train_mod.resolve(flags)
    t.run_dir = str(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    emitter = Emitter("text", stream=open(os.devnull, "w"), events_path=os.path.join(run_dir, "events.jsonl"))
    trainer = train_mod.Trainer(model_keys, t, str(run_dir), emitter, [], None, StopFlag())
    trainer.start_up()
    return trainer


def final_tensors(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(run_dir, "final", "model.safetensors"))
