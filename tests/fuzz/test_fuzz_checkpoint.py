"""Fuzzing the checkpoint and export loaders (issue 12): damaged model.safetensors (truncated,
bit-flipped, wrong dtypes and shapes, missing and extra tensors, crafted headers), config.json,
tokenizer.json, trainer_state.json and optimizer.pt. Fixed seed, a bounded number of cases.

Every case goes through the CLI (`bitttt generate`, or `bitttt train --resume` for the training
state) and must end in exit 0 (a harmless change, e.g. a flipped bit in a float weight) or in a
one-line error with exit 2/3: never a traceback, never exit 1, never a hang, and no file of the
run changed (events.jsonl aside, where a failed resume logs its error) unless a resume succeeded.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from bitttt import cli

pytestmark = pytest.mark.slow

SEED = 12
CASE_TIMEOUT_S = 30  # a hang guard, not a speed check
MICRO = ["--mixer", "ttt_linear", "--n-layer", "2", "--n-embd", "64", "--n-head", "2", "--seq-len", "64",
         "--batch-size", "8", "--eval-tokens", "1024", "--threads", "1", "--warmup", "5", "--log-format", "jsonl",
         "--sample-every", "0", "--eval-every", "100"]
COUNTS: dict[str, int] = {}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A finished 10-step run (its final/ is the checkpoint) and an export of it."""
    root = tmp_path_factory.mktemp("fuzz")
    torch.set_num_threads(1)
    assert cli.main(["train", *MICRO, "--steps", "10", "--save-every", "100", "--run-dir", str(root / "run")]) == 0
    assert cli.main(["export", str(root / "run"), "--out", str(root / "export")]) == 0
    return root


def tree_digest(folder) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(folder)):
        dirnames.sort()
        for name in sorted(filenames):
            if name == "events.jsonl":
                continue
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, folder).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


# -- the mutations: each takes a file path and a Random, and damages the file ------------------


def truncate_to(n: int | float):
    def damage(path, rng):
        data = open(path, "rb").read()
        size = int(n * len(data)) if isinstance(n, float) else n
        open(path, "wb").write(data[:size])
    return damage


def flip_bits(count: int, region: str):
    def damage(path, rng):
        data = bytearray(open(path, "rb").read())
        header_end = 8 + struct.unpack("<Q", data[:8])[0] if region != "any" else 0
        lo, hi = {"header": (0, header_end), "data": (header_end, len(data)), "any": (0, len(data))}[region]
        for _ in range(count):
            i = rng.randrange(lo, hi)
            data[i] ^= 1 << rng.randrange(8)
        open(path, "wb").write(bytes(data))
    return damage


def rewrite_tensors(edit):
    def damage(path, rng):
        tensors = load_file(path)
        edit(tensors, rng)
        save_file(tensors, path, metadata={"format": "pt"})
    return damage


def _pick(tensors, rng, want=None):
    names = sorted(k for k in tensors if want is None or want(tensors[k]))
    return rng.choice(names)


def to_dtype(dtype):
    def edit(tensors, rng):
        name = _pick(tensors, rng)
        tensors[name] = tensors[name].to(dtype)
    return edit


def flatten(tensors, rng):
    name = _pick(tensors, rng, lambda t: t.dim() >= 2)
    tensors[name] = tensors[name].reshape(-1).contiguous()


def drop(tensors, rng):
    del tensors[_pick(tensors, rng)]


def extra(tensors, rng):
    tensors["blocks.99.extra.weight"] = torch.zeros(3)


def everything_gone(tensors, rng):
    tensors.clear()
    tensors["nothing"] = torch.zeros(1)


def raw_header(header: bytes, body: bytes = b""):
    def damage(path, rng):
        open(path, "wb").write(struct.pack("<Q", len(header)) + header + body)
    return damage


def replace_with(content: bytes):
    def damage(path, rng):
        open(path, "wb").write(content)
    return damage


def remove(path, rng):
    os.remove(path)


def edit_json(**changes):
    def damage(path, rng):
        with open(path) as f:
            d = json.load(f)
        d.update(changes)
        with open(path, "w") as f:
            json.dump(d, f)
    return damage


def garbage(path, rng):
    open(path, "wb").write(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))


def torch_object(obj_fn):
    def damage(path, rng):
        torch.save(obj_fn(), path)
    return damage


WEIGHTS = ([("truncate", truncate_to(n)) for n in (0, 1, 7, 8, 9, 64, 0.25, 0.5, 0.9, 0.999)]
           + [("flip-header", flip_bits(1, "header"))] * 10 + [("flip-data", flip_bits(1, "data"))] * 8
           + [("flip-many", flip_bits(16, "any"))] * 4
           + [(f"dtype-{d}", rewrite_tensors(to_dtype(d))) for d in (torch.float16, torch.int32, torch.float64,
                                                                    torch.uint8, torch.bfloat16)]
           + [("flatten", rewrite_tensors(flatten))] * 2 + [("drop", rewrite_tensors(drop))] * 3
           + [("extra", rewrite_tensors(extra)), ("empty", rewrite_tensors(everything_gone))]
           + [("header-list", raw_header(b"[]")), ("header-junk", raw_header(b"{\"a\": 1}")),
              ("header-offsets", raw_header(b'{"embed.weight": {"dtype": "F32", "shape": [320, 64], '
                                            b'"data_offsets": [0, 81920]}}', b"\0" * 100)),
              ("header-huge", replace_with(struct.pack("<Q", 2**62) + b"{}")),
              ("not-safetensors", replace_with(b"PK\3\4 not a safetensors file")), ("missing", remove)])
CONFIG = [("missing", remove), ("empty", replace_with(b"")), ("garbage", garbage), ("list", replace_with(b"[]")),
          ("null", replace_with(b"null")), ("bad-utf8", replace_with(b"{\"n_embd\": \"\xff\xfe\"}")),
          ("n_embd-str", edit_json(n_embd="abc")), ("n_embd-float", edit_json(n_embd=2.7)),
          ("n_embd-negative", edit_json(n_embd=-1)), ("n_embd-huge", edit_json(n_embd=10**9)),
          ("n_layer-huge", edit_json(n_layer=10**9)), ("n_layer-str", edit_json(n_layer="2")),
          ("n_head-0", edit_json(n_head=0)), ("vocab-huge", edit_json(vocab_size=10**12)),
          ("mini_batch-huge", edit_json(mini_batch=10**9)), ("hidden-huge", edit_json(intermediate_size=10**8)),
          ("mixer", edit_json(mixer="bogus")), ("model_type", edit_json(model_type="gpt2")),
          ("unknown-key", edit_json(surprise=1)), ("format-str", edit_json(format="bt2")),
          ("training-list", edit_json(training=[])), ("ternary-str", edit_json(ternary="yes")),
          ("n_layer-null", edit_json(n_layer=None))]
TOKENIZER = [("missing", remove), ("garbage", garbage), ("list", replace_with(b"[]")),
             ("bad-utf8", replace_with(b"\xff\xfe\xfd")), ("other-kind", replace_with(b'{"bitttt_tokenizer": "bpe"}')),
             ("hf-junk", replace_with(b'{"model": 1, "version": "1.0"}')), ("empty", replace_with(b""))]
STATE_KEYS = ["step", "total_steps", "lr", "lr_decay", "val_loss", "best_val_loss", "tokens_seen", "time"]
ODD_VALUES = [None, True, -1, 0, 2**70, 1.5, -0.5, "x", "", [], [1], {}, {"from_step": 1}, {"from_lr": 1.0},
              {"from_step": -1, "from_lr": 0.1}, {"from_step": 1, "from_lr": -1.0}, {"a": {"b": [None]}}]
STATE = [("missing", remove), ("garbage", garbage), ("list", replace_with(b"[]")), ("empty-object", replace_with(b"{}")),
         ("step-str", edit_json(step="abc")), ("step-negative", edit_json(step=-1)), ("step-float", edit_json(step=1.5)),
         ("step-bool", edit_json(step=True)), ("total-str", edit_json(total_steps="x")),
         ("zero-bytes", replace_with(b"")),  # issue 27: 0-byte and wrong-typed fields the trainer reads
         ("lr_decay-int", edit_json(lr_decay=5)), ("lr_decay-empty", edit_json(lr_decay={})),
         ("lr_decay-list", edit_json(lr_decay=[1, 2])),
         ("lr_decay-str-step", edit_json(lr_decay={"from_step": "x", "from_lr": 0.1})),
         ("lr_decay-null-lr", edit_json(lr_decay={"from_step": 1, "from_lr": None})),
         ("lr_decay-extra", edit_json(lr_decay={"from_step": 1, "from_lr": 0.1, "x": 1})),
         ("lr-str", edit_json(lr="fast")), ("lr-list", edit_json(lr=[1])), ("val_loss-str", edit_json(val_loss="x")),
         ("best-dict", edit_json(best_val_loss={})), ("tokens-str", edit_json(tokens_seen="many"))]
STATE += [(f"random-{i}", lambda path, rng: edit_json(**{rng.choice(STATE_KEYS): rng.choice(ODD_VALUES)})(path, rng))
          for i in range(12)]
OPTIMIZER = [("missing", remove), ("garbage", garbage), ("truncate", truncate_to(0.5)),
             ("zero-bytes", replace_with(b"")), ("one-byte", truncate_to(1)),  # issue 27: IndexError at a 0-byte file
             ("list", torch_object(lambda: [1, 2])),
             ("no-rng", torch_object(lambda: {"optimizer": {"state": {}, "param_groups": []}})),
             ("rng-float", torch_object(lambda: {"optimizer": {"state": {}, "param_groups": []},
                                                 "torch_rng": torch.zeros(3)})),
             ("wrong-groups", torch_object(lambda: {"optimizer": {"state": {}, "param_groups": [{"params": [0]}]},
                                                    "torch_rng": torch.get_rng_state()}))]

TARGETS = ([("export", "model.safetensors", name, d) for name, d in WEIGHTS]
           + [("ckpt", "model.safetensors", name, d) for name, d in WEIGHTS]
           + [(kind, "config.json", name, d) for kind in ("export", "ckpt") for name, d in CONFIG]
           + [(kind, "tokenizer.json", name, d) for kind in ("export", "ckpt") for name, d in TOKENIZER]
           + [("resume", "trainer_state.json", name, d) for name, d in STATE]
           + [("resume", "optimizer.pt", name, d) for name, d in OPTIMIZER]
           + [("resume", "model.safetensors", name, d) for name, d in WEIGHTS[::4] + WEIGHTS[-16:-11]]
           + [("resume", "config.json", name, d) for name, d in CONFIG[::3]]
           + [("resume", "tokenizer.json", name, d) for name, d in TOKENIZER[::2]])


def _on_alarm(signum, frame):
    raise TimeoutError(f"a case ran past {CASE_TIMEOUT_S} s")


def test_damaged_files_give_clean_errors(pristine, tmp_path, capsys):
    rng = random.Random(SEED)
    old = signal.signal(signal.SIGALRM, _on_alarm)
    failures = []
    try:
        for kind, fname, name, damage in TARGETS:
            root = tmp_path / "case"
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(pristine / ("export" if kind == "export" else "run"), root)
            folder = root if kind == "export" else root / "final"
            damage(str(folder / fname), rng)
            before = tree_digest(root)
            if kind == "resume":
                argv = ["train", "--resume", str(folder), "--steps", "12", "--log-format", "jsonl"]
            else:
                argv = ["generate", "--model", str(folder), "--prompt", "a", "--max-new-tokens", "1",
                        "--temperature", "0"]
            signal.alarm(CASE_TIMEOUT_S)
            try:
                code = cli.main(argv)
            finally:
                signal.alarm(0)
            err = capsys.readouterr().err
            case = f"{kind} {fname} {name}"
            errors = [line for line in err.splitlines() if line.startswith("bitttt: error")]
            if code not in (0, 2, 3) or "Traceback" in err or (code != 0 and len(errors) != 1):
                failures.append(f"{case}: exit {code}: {err[-300:]}")
            if (code != 0 or kind != "resume") and tree_digest(root) != before:
                failures.append(f"{case}: changed the run's files")
            COUNTS[f"{kind} {fname}"] = COUNTS.get(f"{kind} {fname}", 0) + 1
    finally:
        signal.signal(signal.SIGALRM, old)
    print("fuzz cases:", json.dumps(COUNTS), "total", sum(COUNTS.values()))
    assert not failures, "\n".join(failures)
