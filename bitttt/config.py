"""The configurations, free of torch so that `bitttt --help` stays fast: the model's
BitTTTConfig (saved as config.json) and the trainer's TrainConfig, each with its presets.

Resolution order for `bitttt train`: defaults < preset < --config FILE < command-line flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from bitttt.errors import ConfigError

MIXERS = ("ttt_linear", "ttt_mlp", "attention")
MODEL_TYPE = "bitttt"


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
        if self.mixer not in MIXERS:
            raise ConfigError(f"mixer {self.mixer!r} is not one of {', '.join(MIXERS)}",
                              hint="pass --mixer ttt_linear, ttt_mlp or attention")
        for name in ("vocab_size", "n_layer", "n_embd", "n_head", "mini_batch"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}",
                              hint="choose n_embd = n_head * head size")

    @property
    def hidden_size(self) -> int:
        if self.intermediate_size > 0:
            return self.intermediate_size
        return -(-8 * self.n_embd // 3 // 256) * 256

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


# Presets: small overrides of the defaults above (training settings are in train.py).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},  # 4 x 256: learns visibly in minutes on 2 CPU cores
    "small": {"n_layer": 8, "n_embd": 512, "n_head": 8},
    "base": {"n_layer": 12, "n_embd": 768, "n_head": 12},  # the TTT paper's 125M shape
}


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
    log_format: str = "text"  # text | jsonl

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "log_every", "eval_tokens"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        # 0 means never: validation still runs at the end, and the final checkpoint is always saved.
        for name in ("eval_every", "save_every", "sample_every", "warmup", "stop_after", "keep_last", "threads"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        for name, choices in (("device", ("auto", "cpu", "cuda")), ("tokenizer", ("byte", "bpe")),
                              ("log_format", ("text", "jsonl")), ("preset", tuple(PRESETS))):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} {getattr(self, name)!r} is not one of {', '.join(choices)}")
        if self.lr <= 0 or self.min_lr < 0:
            raise ConfigError(f"lr must be > 0 and min_lr >= 0, got {self.lr}, {self.min_lr}")

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
