"""The configurations, free of torch so that `bitttt --help` (and the launcher) can read them:
the model's BitTTTConfig (saved as config.json) and the trainer's TrainConfig, each with its
presets, what every setting accepts (`RULES`), and the resolution of `bitttt train`'s settings.

Resolution order: defaults < preset < --config FILE < command-line flags (on --resume: the
checkpoint's settings < --config FILE < flags). Every bad key or value is a ConfigError whose
one-line message names the setting, where it came from and what it accepts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from bitttt.errors import ConfigError, OutOfMemoryError

MIXERS = ("ttt_linear", "ttt_mlp", "attention")
MODEL_TYPE = "bitttt"
MAX_INT = 2**63 - 1  # what numpy and torch take as a seed or a size; larger is a mistake
# The largest BPE vocabulary to train: Llama 3's is 128k, Gemma's 256k. tokenizers' trainer
# aborts the whole process (a Rust allocation failure, exit 134, no event) at 100M.
MAX_BPE_VOCAB = 2**20

# Presets: small overrides of the model defaults below (training overrides: TRAIN_PRESETS).
PRESETS: dict[str, dict[str, Any]] = {
    # 4 x 256: learns visibly in minutes on 2 CPU cores. SwiGLU 2 x 256 wide, not 8/3 (768): the
    # default run's held-out bits/byte stayed put (1.614 vs 1.616, same seed, 500 steps) with
    # 22% fewer matmul FLOPs per token, ~1.2x the training steps/s (issue 26)
    "tiny": {"intermediate_size": 512},
    "small": {"n_layer": 8, "n_embd": 512, "n_head": 8},
    "base": {"n_layer": 12, "n_embd": 768, "n_head": 12},  # the TTT paper's 125M shape
}


# ---------------------------------------------------------------------------------------
# What each setting accepts
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepts:
    """One setting's type and bounds or choices; `check` returns the value or raises."""

    kind: type  # int, float, bool, str, or list (of strings)
    low: float | None = None  # for str and list: the least length
    high: float | None = None
    open_low: bool = False  # low < value (else low <= value)
    open_high: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False  # None allowed: "the default behaviour"

    def describe(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        elif self.kind is bool:
            text = "true or false"
        elif self.kind is list:
            text = "a path or a non-empty list of paths" if self.low else "a list of paths"
        elif self.kind is str:
            text = "a non-empty string" if self.low else "a string"
        else:
            text = ("an integer" if self.kind is int else "a number") + self._range()
        return text + (", or null" if self.optional else "")

    def _range(self) -> str:
        low, high = self.low, self.high
        if low is not None and high is not None:
            return f" in {'(' if self.open_low else '['}{_g(low)}, {_g(high)}{')' if self.open_high else ']'}"
        parts = []
        if low is not None:
            parts.append(f"{'>' if self.open_low else '>='} {_g(low)}")
        if high is not None:
            parts.append(f"{'<' if self.open_high else '<='} {_g(high)}")
        return (" " + " and ".join(parts)) if parts else ""

    def check(self, value: Any) -> Any:
        """The value, converted where that loses nothing (3.0 -> 3, "a.txt" -> ["a.txt"]);
        ValueError naming what it accepts otherwise."""
        if value is None and self.optional:
            return None
        v = self._typed(value)
        if self.kind in (int, float) and not self._in_range(v):
            raise ValueError
        if self.kind in (str, list) and self.low and len(v) < self.low:
            raise ValueError
        if self.choices and v not in self.choices:
            raise ValueError
        return v

    def _typed(self, value: Any) -> Any:
        if self.kind is bool:
            if isinstance(value, bool):
                return value
        elif self.kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) <= MAX_INT:
                return int(value)
        elif self.kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                return float(value)
        elif self.kind is str:
            if isinstance(value, str):
                return value
        elif self.kind is list:
            if isinstance(value, str):
                return [value]
            if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
                return list(value)
        raise ValueError

    def _in_range(self, v: float) -> bool:
        high = self.high if self.high is not None else (MAX_INT if self.kind is int else math.inf)
        if self.low is not None and (v <= self.low if self.open_low else v < self.low):
            return False
        return v < high if self.open_high else v <= high


def _g(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _int(low: int, high: int | None = None) -> Accepts:
    return Accepts(int, low, high)


def _num(low: float, open_low: bool = False, high: float | None = None, open_high: bool = False) -> Accepts:
    return Accepts(float, low, high, open_low, open_high)


BOOL = Accepts(bool)
POSITIVE_INT, COUNT = _int(1), _int(0)  # a size; a count or interval where 0 means never/none
POSITIVE = _num(0, open_low=True)

RULES: dict[str, Accepts] = {
    # the model (BitTTTConfig)
    "vocab_size": POSITIVE_INT, "n_layer": POSITIVE_INT, "n_embd": POSITIVE_INT, "n_head": POSITIVE_INT,
    "intermediate_size": COUNT, "mixer": Accepts(str, choices=MIXERS), "ternary": BOOL, "tie_embeddings": BOOL,
    "rope_theta": POSITIVE, "norm_eps": POSITIVE, "init_std": POSITIVE, "mini_batch": POSITIVE_INT,
    "ttt_base_lr": _num(0), "use_gate": BOOL, "conv_kernel": COUNT,
    # the trainer (TrainConfig)
    "preset": Accepts(str, choices=tuple(PRESETS)), "data": Accepts(list, low=1, optional=True),
    "run_dir": Accepts(str, low=1, optional=True), "steps": POSITIVE_INT, "batch_size": POSITIVE_INT,
    "seq_len": POSITIVE_INT, "grad_accum": POSITIVE_INT, "lr": POSITIVE, "min_lr": _num(0), "warmup": COUNT,
    "weight_decay": _num(0), "beta1": _num(0, high=1, open_high=True), "beta2": _num(0, high=1, open_high=True),
    "grad_clip": POSITIVE, "eval_every": COUNT, "eval_tokens": POSITIVE_INT, "save_every": COUNT,
    "keep_last": COUNT, "sample_every": COUNT, "sample_tokens": POSITIVE_INT, "sample_prompt": Accepts(str, low=1),
    "log_every": POSITIVE_INT, "val_fraction": _num(0, True, 0.5, True),
    "device": Accepts(str, choices=("auto", "cpu", "cuda")), "threads": COUNT, "seed": _int(0, 2**32 - 1),
    "tokenizer": Accepts(str, choices=("byte", "bpe")), "bpe_vocab_size": _int(261, MAX_BPE_VOCAB),
    "compile": BOOL, "stop_after": COUNT, "log_format": Accepts(str, choices=("text", "jsonl")),
    "dist_timeout": POSITIVE,
}
FLAG_NAMES = {"bpe_vocab_size": "--vocab-size"}  # where a flag is not --<key with dashes>


def flag_name(key: str) -> str:
    return FLAG_NAMES.get(key, "--" + key.replace("_", "-"))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_value(key: str, value: Any, source: str = "") -> Any:
    """The checked (and converted) value of one setting; ConfigError naming it otherwise."""
    rule = RULES.get(key)
    if rule is None:  # a setting without a rule yet (tests/fuzz/test_fuzz_config.py asks for one)
        return value
    try:
        return rule.check(value)
    except ValueError:
        where = f"{source}: " if source else ""
        huge = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_INT
        raise ConfigError(f"{where}{key}: expected {rule.describe()}{' below 2**63' if huge else ''}, "
                          f"got {_short(value)}",
                          hint=f"fix {key} ({flag_name(key)})") from None


def _check_fields(obj: Any) -> None:
    """A config dataclass's own check: each field against its rule, converted in place."""
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, check_value(f.name, getattr(obj, f.name)))


def swiglu_width(n_embd: int, intermediate_size: int = 0) -> int:
    """The SwiGLU hidden size: intermediate_size when set, else 8/3 n_embd rounded up to 256
    (BT2 pads K to 256). The launcher's estimate counts with it too."""
    if intermediate_size > 0:
        return intermediate_size
    return -(-8 * n_embd // 3 // 256) * 256


@dataclass
class BitTTTConfig:
    """The architecture. Saved as HF-style config.json with "model_type": "bitttt"."""

    vocab_size: int = 320  # the byte tokenizer's 256 bytes + specials, padded to a multiple of 64
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4  # head size 64, the TTT paper's
    intermediate_size: int = 0  # SwiGLU width; 0: 8/3 n_embd rounded up to 256 (BT2 pads K to 256)
    mixer: str = "ttt_linear"  # ttt_linear | ttt_mlp | attention
    ternary: bool = True  # False: the full-precision twin, for comparisons
    tie_embeddings: bool = False  # untied trains better at small vocabularies; tying saves V*C
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02  # GPT-2's
    mini_batch: int = 16  # TTT mini-batch b (design §3); the paper's
    ttt_base_lr: float = 1.0  # TTT-Linear's inner base learning rate (the paper's 1.0)
    use_gate: bool = True  # TTT output gate, as in the paper's "Mamba backbone" variant
    conv_kernel: int = 4  # TTT causal conv on q/k (the paper's Mamba backbone); 0: none. For bytes it
    # matters: tiny at step 100, 2.3 bits/byte with it, 2.9 without

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}",
                              hint="choose n_embd = n_head * head size")

    @property
    def hidden_size(self) -> int:
        return swiglu_width(self.n_embd, self.intermediate_size)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {"model_type": MODEL_TYPE, **d}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> BitTTTConfig:
        """Builds a config; unknown keys raise ConfigError naming the valid ones."""
        d = dict(d)
        model_type = d.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ConfigError(f"{source}: model_type is {model_type!r}, not {MODEL_TYPE!r}",
                              hint="point --model at a bitttt run, checkpoint or export")
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f"{source}: unknown model config key(s) {', '.join(unknown)}; "
                              f"valid keys: {', '.join(cls.field_names())}", hint="fix or remove those keys")
        return cls(**d)


# ---------------------------------------------------------------------------------------
# Memory: refuse a run that cannot fit before allocating it
# ---------------------------------------------------------------------------------------

BYTES_PER_PARAM = 16  # float32 weight + gradient + AdamW's two moments


def vocab_of(t: TrainConfig) -> int:
    """The model's vocabulary as the tokenizer will make it: the byte one's 320, or the BPE's size
    padded to 64 (bitttt.tokenizer.padded_vocab)."""
    return 320 if t.tokenizer == "byte" else -(-t.bpe_vocab_size // 64) * 64


def training_bytes_lower_bound(model: dict[str, Any], t: TrainConfig, vocab_size: int) -> dict[str, int]:
    """A lower bound on what training this model takes, in bytes: parameters (weight, gradient,
    two AdamW moments), and activations (the logits and their gradient, one [B, T, C] tensor per
    block). Only what surely gets allocated is counted, so a run refused by it cannot fit."""
    C, L, V = model["n_embd"], model["n_layer"], vocab_size
    ttt = model["mixer"] != "attention"
    # mixer projections: q, k, v, o (a TTT conv shares q/k; a gate adds one), then SwiGLU's three
    projections = 4 - (ttt and model["conv_kernel"] > 0) + (ttt and model["use_gate"])
    per_block = projections * C * C + 3 * C * swiglu_width(C, model["intermediate_size"])
    if ttt:  # token_scale offsets, and the fast weights W0 (TTT-MLP: W1 and W2, 4x wide)
        per_block += model["mini_batch"] + C * (C // model["n_head"]) * (8 if model["mixer"] == "ttt_mlp" else 1)
    params = V * C * (1 if model["tie_embeddings"] else 2) + L * per_block
    tokens = t.batch_size * t.seq_len
    return {"parameters": params * BYTES_PER_PARAM, "activations": 2 * tokens * V * 4 + L * tokens * C * 4}


def available_memory(device_type: str) -> int | None:
    """Bytes free for a new run on this device: CUDA's free memory, or on CPU the system's
    MemAvailable plus free swap, capped by a cgroup limit; None where it cannot be told."""
    if device_type == "cuda":
        import torch  # only here: this module stays torch-free at import

        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as f:
            info = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f if ":" in line)}
        free = info["MemAvailable"] + info.get("SwapFree", 0)
    except (OSError, KeyError, ValueError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free


def check_memory(model: dict[str, Any], t: TrainConfig, device_type: str) -> None:
    """OutOfMemoryError (exit 4) before anything is allocated when the run surely cannot fit
    on the device: `--n-embd 1000000` was a CPU allocation failure reported as a bug (exit 1),
    or the kernel's OOM killer with no event at all."""
    need = training_bytes_lower_bound(model, t, vocab_of(t))
    have = available_memory(device_type)
    total = sum(need.values())
    if have is not None and total > have:
        gib = 2**30
        raise OutOfMemoryError(
            f"this run needs at least {total / gib:,.1f} GiB ({need['parameters'] / gib:,.1f} GiB for "
            f"parameters, gradients and optimizer, {need['activations'] / gib:,.1f} GiB for activations); "
            f"{device_type} has {have / gib:,.1f} GiB free",
            hint="use a smaller model (--n-embd, --n-layer, intermediate_size, --mini-batch, --vocab-size) "
                 "or fewer tokens per micro-batch (--batch-size, --seq-len)")


def preset_config(name: str, **overrides: Any) -> BitTTTConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}", hint="choose " + ", ".join(PRESETS))
    return BitTTTConfig(**{**PRESETS[name], **overrides})


@dataclass
class TrainConfig:
    """The trainer's settings (the model's are in BitTTTConfig). Saved under "training"."""

    preset: str = "tiny"
    data: list[str] | None = None  # files, folders or globs; None: CPython's pydoc topics
    run_dir: str | None = None  # None: runs/<timestamp>
    steps: int = 500  # the default run: <= 15 min on 2 CPU cores, about 2.3 bits/byte (tiny, attention)
    batch_size: int = 16
    seq_len: int = 128  # bytes of context; longer costs time the default run does not have
    grad_accum: int = 1
    lr: float = 3e-3  # ternary weights want a larger step than float ones (BitNet b1.58)
    min_lr: float = 3e-4  # cosine decay ends here
    warmup: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_tokens: int = 16384  # validation tokens per evaluation (evenly spread windows)
    save_every: int = 250
    keep_last: int = 3  # step checkpoints kept, besides the best one
    sample_every: int = 250
    sample_tokens: int = 160
    sample_prompt: str = "The "
    log_every: int = 10  # step events
    val_fraction: float = 0.1
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads; 0: torch's default (one per core)
    seed: int = 1337
    tokenizer: str = "byte"  # byte | bpe
    bpe_vocab_size: int = 4096  # --tokenizer bpe: the vocabulary to train (--vocab-size)
    compile: bool = False
    stop_after: int = 0  # stop (as on request) after this many steps of this run; 0: never
    dist_timeout: float = 1800.0  # torchrun: seconds a rank waits for the others (rank 0 alone saves and
    # samples meanwhile) before the job fails; torch's own gloo default
    log_format: str = "text"  # text | jsonl

    def __post_init__(self) -> None:
        # 0 for eval_every/save_every means never: validation still runs at the end, and the
        # final checkpoint is always saved.
        _check_fields(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Training presets: overrides of TrainConfig per model preset.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "small": {"steps": 5000, "batch_size": 16, "seq_len": 512, "lr": 2e-3, "min_lr": 2e-4, "warmup": 200,
              "eval_every": 500, "save_every": 1000, "sample_every": 1000, "eval_tokens": 65536},
    "base": {"steps": 20000, "batch_size": 32, "seq_len": 1024, "lr": 1.5e-3, "min_lr": 1.5e-4, "warmup": 500,
             "eval_every": 1000, "save_every": 2000, "sample_every": 2000, "eval_tokens": 131072},
}


def defaults(preset: str) -> dict[str, Any]:
    """Model and training defaults of a preset, one flat dict."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}", hint="choose " + ", ".join(PRESETS))
    model = {**dataclasses.asdict(BitTTTConfig()), **PRESETS[preset]}
    model.pop("vocab_size")  # the tokenizer's, padded; never set by hand
    train = {**TrainConfig().to_dict(), **TRAIN_PRESETS[preset], "preset": preset}
    return {**model, **train}


# ---------------------------------------------------------------------------------------
# Resolution: defaults < preset < --config FILE < flags (resume: the checkpoint's < ...)
# ---------------------------------------------------------------------------------------

MODEL_KEYS = [k for k in BitTTTConfig.field_names() if k != "vocab_size"]  # the tokenizer sets vocab_size
NOT_SETTINGS = ("config", "resume", "print_config")  # flags of `bitttt train` that are not settings


def valid_keys() -> list[str]:
    return MODEL_KEYS + TrainConfig.field_names()


def check_keys(d: dict[str, Any], source: str) -> None:
    unknown = sorted(set(d) - set(valid_keys()), key=str)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(map(_short, unknown))}; "
                          f"valid keys: {', '.join(valid_keys())}", hint="fix or remove those keys")


def check_settings(d: dict[str, Any], source: str) -> dict[str, Any]:
    """Known keys with checked values, or ConfigError naming the first bad one."""
    check_keys(d, source)
    return {k: check_value(k, v, source) for k, v in d.items()}


def read_config_file(path: str) -> dict[str, Any]:
    """A flat JSON object of model and training keys, or a run's config.json (whose training
    settings are under "training"), checked key by key."""
    source = f"--config {path}"
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or not UTF-8
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ConfigError(f"{source}: cannot read a JSON object ({reason})",
                          hint="pass a JSON file of settings, like {\"steps\": 1000}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a JSON object of settings, got {type(d).__name__}",
                          hint="write the settings as {\"key\": value, ...}")
    d = dict(d)
    if d.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise ConfigError(f"{source}: model_type is {_short(d['model_type'])}, not {MODEL_TYPE!r}")
    d.pop("model_type", None)
    d.pop("vocab_size", None)  # a run's config.json: the vocabulary follows the tokenizer
    d.pop("format", None)  # an export's
    if "training" in d and isinstance(d.get("data"), dict):
        d.pop("data")  # a run's config.json: what its data held ({"chat": ...}); where it is: training
    training = d.pop("training", None)
    if training is not None:
        if not isinstance(training, dict):
            raise ConfigError(f"{source}: training: expected a JSON object of settings, got {_short(training)}")
        d.update(training)
    return check_settings(d, source)


def check_run_dir(path: str) -> None:
    """ConfigError unless a run can be written at path: an existing folder, or a new one whose
    nearest existing ancestor is a writable folder (a file there was a traceback, exit 1)."""
    import os

    full = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(full) and not os.path.isdir(full):
        raise ConfigError(f"--run-dir {path}: is a file, not a folder", hint="give a folder (new or a run's)")
    ancestor = full
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ConfigError(f"--run-dir {path}: cannot be made, {ancestor} is a file", hint="give a folder path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"--run-dir {path}: cannot be made, {ancestor} is not writable",
                          hint="give a folder you can write to")


def resolve(flags: dict[str, Any], resume_from: dict[str, Any] | None = None) -> tuple[dict, TrainConfig]:
    """flags: the options given on the command line (None = not given) plus "config" and
    "resume". Returns (model keys, TrainConfig), or raises ConfigError naming the bad setting."""
    given = {k: v for k, v in flags.items() if v is not None and k not in NOT_SETTINGS}
    check_keys(given, "flags")
    given = {k: check_value(k, v, flag_name(k)) for k, v in given.items()}
    from_file = read_config_file(flags["config"]) if flags.get("config") else {}
    if resume_from is not None:
        asked = {**from_file, **given}
        changed = [k for k in MODEL_KEYS if k in asked and asked[k] != resume_from[k]]
        if changed:
            raise ConfigError(f"--resume: cannot change the architecture ({', '.join(changed)})",
                              hint="drop those options, or start a new run")
        merged = {**resume_from, **from_file, **given}
    else:
        preset = given.get("preset") or from_file.get("preset") or TrainConfig.preset
        merged = {**defaults(preset), **from_file, **given}
    train = TrainConfig(**{k: merged[k] for k in TrainConfig.field_names() if k in merged})
    if train.run_dir:
        check_run_dir(train.run_dir)
    model = {k: merged[k] for k in MODEL_KEYS}
    BitTTTConfig(**model)  # checks the model's cross-field rules (n_embd a multiple of n_head)
    return model, train
