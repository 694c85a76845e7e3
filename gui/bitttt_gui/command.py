"""The training form as data: settings dataclass → ``bitttt train`` argv, validation, JSON files.

tkinter-free. ``FIELDS`` describes every option once (flag, type, label, tooltip);
the form in ``tabs/train.py`` is generated from it. ``build_train_argv`` follows
DESIGN §6b; a flag is sent only where the value differs from the chosen preset.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bitttt import config as trainer_config   # torch-free: the trainer's own presets and defaults
from bitttt.devices import DEVICE_CHOICES

CMD_ENV = "BITTTT_GUI_CMD"  # replaces "python -m bitttt" (tests point it at a fake trainer)


@dataclass(frozen=True)
class Field:
    name: str
    flag: str | None          # None: not a CLI flag (handled specially)
    kind: str                 # "int", "float", "bool", "choice", "path", "text"
    label: str
    section: str
    tip: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None


FIELDS: tuple[Field, ...] = (
    Field("preset", "--preset", "choice", "Preset", "Run", "Model size and training defaults; the other fields start from it.",
          tuple(trainer_config.PRESETS)),
    Field("run_name", None, "text", "Run name", "Run", "Folder name under <workspace>/runs/; empty = a timestamp."),
    Field("data", "--data", "path", "Data", "Run", "A text file or a folder of them; empty = the corpus that ships with bitttt."),
    Field("resume", "--resume", "path", "Resume from", "Run", "A run folder or checkpoint to continue from; empty = start fresh."),
    Field("mixer", "--mixer", "choice", "Mixer", "Model", "Sequence mixer: TTT-Linear, TTT-MLP, or softmax attention (the baseline).",
          trainer_config.MIXERS),
    Field("ternary", "--ternary", "bool", "Ternary weights", "Model", "BitNet b1.58 ternary linears; off = the full-precision twin."),
    Field("n_layer", "--n-layer", "int", "Layers", "Model", "Number of blocks.", minimum=1),
    Field("n_embd", "--n-embd", "int", "Hidden size", "Model", "Width of the residual stream; a multiple of the head count.", minimum=8),
    Field("n_head", "--n-head", "int", "Heads", "Model", "Attention/TTT heads; head size = hidden size / heads.", minimum=1),
    Field("mini_batch", "--mini-batch", "int", "TTT mini-batch", "Model", "Tokens per TTT inner update (b in the paper, 16).", minimum=1),
    Field("tokenizer", "--tokenizer", "choice", "Tokenizer", "Model", "byte: 256 symbols, nothing to train; bpe: trained on the data.",
          trainer_config.RULES["tokenizer"].choices),
    Field("vocab_size", "--vocab-size", "int", "Vocabulary", "Model", "Vocabulary size (256 for byte; BPE trains this many).", minimum=256),
    Field("steps", "--steps", "int", "Steps", "Optimisation", "Optimizer steps in total.", minimum=1),
    Field("batch_size", "--batch-size", "int", "Batch size", "Optimisation", "Sequences per micro-batch.", minimum=1),
    Field("seq_len", "--seq-len", "int", "Sequence length", "Optimisation", "Tokens per sequence.", minimum=2),
    Field("lr", "--lr", "float", "Learning rate", "Optimisation", "Peak AdamW learning rate (after warmup, then cosine decay).", minimum=0),
    Field("warmup", "--warmup", "int", "Warmup steps", "Optimisation", "Linear warmup steps.", minimum=0),
    Field("grad_accum", "--grad-accum", "int", "Grad. accumulation", "Optimisation", "Micro-batches per optimizer step.", minimum=1),
    Field("device", "--device", "choice", "Device", "Schedule", "auto = CUDA when available, else CPU.", DEVICE_CHOICES),
    Field("seed", "--seed", "int", "Seed", "Schedule", "Random seed (data order, initialisation).", minimum=0),
    Field("nproc", "--nproc", "int", "Processes", "Schedule", "Data-parallel processes on this machine (one per GPU, "
          "or CPU cores shared out); the batch size is per process, so the global batch is batch × accumulation × "
          "processes. 1 = a single process.", minimum=1),
    Field("eval_every", "--eval-every", "int", "Eval every", "Schedule", "Steps between validation losses (0 = never).", minimum=0),
    Field("save_every", "--save-every", "int", "Checkpoint every", "Schedule", "Steps between checkpoints (0 = only at the end).", minimum=0),
    Field("sample_every", "--sample-every", "int", "Sample every", "Schedule", "Steps between generated samples (0 = never).", minimum=0),
    # Under "More settings…": what most runs leave at the preset's values.
    Field("min_lr", "--min-lr", "float", "Final learning rate", "More", "Where the cosine decay ends.", minimum=0),
    Field("weight_decay", "--weight-decay", "float", "Weight decay", "More", "AdamW weight decay.", minimum=0),
    Field("grad_clip", "--grad-clip", "float", "Gradient clip", "More", "Gradient norm clip.", minimum=0),
    Field("eval_tokens", "--eval-tokens", "int", "Eval tokens", "More", "Validation tokens per evaluation.", minimum=1),
    Field("keep_last", "--keep-last", "int", "Keep checkpoints", "More", "Step checkpoints kept besides the best one.",
          minimum=0),
    Field("threads", "--threads", "int", "CPU threads", "More", "torch threads per process; 0 = one per core.",
          minimum=0),
    Field("compile", "--compile", "bool", "torch.compile", "More", "Compile the model (slow start, faster steps on "
          "some machines)."),
    Field("sample_prompt", "--sample-prompt", "text", "Sample prompt", "More", "The text the samples continue "
          "(spaces kept)."),
)
FIELD_BY_NAME = {f.name: f for f in FIELDS}
# What a resumed run cannot change: the architecture, its tokenizer, its data and its folder.
LOCKED_ON_RESUME = ("preset", "run_name", "data", "mixer", "ternary", "n_layer", "n_embd", "n_head",
                    "mini_batch", "tokenizer", "vocab_size")
PRESETS = tuple(trainer_config.PRESETS)
DEFAULT_PRESET = trainer_config.TrainConfig.preset
BYTE_SYMBOLS = 256   # the form's vocabulary for the byte tokenizer (the model pads it with specials)


def preset_values(preset: str) -> dict:
    """The form's fields as ``bitttt train --preset <preset>`` sets them (``bitttt.config.defaults``)."""
    d = trainer_config.defaults(preset)
    d["vocab_size"] = BYTE_SYMBOLS if d["tokenizer"] == "byte" else d["bpe_vocab_size"]
    return {f.name: d[f.name] for f in FIELDS if f.name in d and f.name not in ("preset", "data", "run_dir")}


_DEFAULTS = preset_values(DEFAULT_PRESET)


@dataclass
class TrainSettings:
    """Everything the form holds. Defaults are the ``tiny`` preset's."""
    preset: str = DEFAULT_PRESET
    run_name: str = ""
    data: str = ""
    resume: str = ""
    mixer: str = _DEFAULTS["mixer"]
    ternary: bool = _DEFAULTS["ternary"]
    n_layer: int = _DEFAULTS["n_layer"]
    n_embd: int = _DEFAULTS["n_embd"]
    n_head: int = _DEFAULTS["n_head"]
    mini_batch: int = _DEFAULTS["mini_batch"]
    tokenizer: str = _DEFAULTS["tokenizer"]
    vocab_size: int = _DEFAULTS["vocab_size"]
    steps: int = _DEFAULTS["steps"]
    batch_size: int = _DEFAULTS["batch_size"]
    seq_len: int = _DEFAULTS["seq_len"]
    lr: float = _DEFAULTS["lr"]
    warmup: int = _DEFAULTS["warmup"]
    grad_accum: int = _DEFAULTS["grad_accum"]
    device: str = _DEFAULTS["device"]
    seed: int = _DEFAULTS["seed"]
    eval_every: int = _DEFAULTS["eval_every"]
    save_every: int = _DEFAULTS["save_every"]
    sample_every: int = _DEFAULTS["sample_every"]
    nproc: int = 1
    min_lr: float = _DEFAULTS["min_lr"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    grad_clip: float = _DEFAULTS["grad_clip"]
    eval_tokens: int = _DEFAULTS["eval_tokens"]
    keep_last: int = _DEFAULTS["keep_last"]
    threads: int = _DEFAULTS["threads"]
    compile: bool = _DEFAULTS["compile"]
    sample_prompt: str = _DEFAULTS["sample_prompt"]

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step over all processes (what a single process would need)."""
        return self.batch_size * self.grad_accum * self.nproc

    @classmethod
    def for_preset(cls, preset: str, **overrides) -> "TrainSettings":
        """Settings with every preset-controlled field taken from ``preset``."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**preset_values(preset), "preset": preset, **overrides})


class SettingsError(ValueError):
    """A form or config file with bad values; ``errors`` maps field name → message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{FIELD_BY_NAME[k].label if k in FIELD_BY_NAME else k}: {v}"
                                   for k, v in errors.items()))


def _parse_value(field: Field, raw) -> object:
    """One field's value from a form string (or JSON value); raises ValueError with a short reason."""
    if field.kind == "bool":
        if isinstance(raw, bool):
            return raw
        s = str(raw).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if field.kind in ("int", "float"):
        if isinstance(raw, bool):
            raise ValueError("expected a number")
        s = str(raw).strip()
        if not s:
            raise ValueError("required")
        try:
            v = int(s) if field.kind == "int" else float(s)
        except ValueError:
            raise ValueError("expected a whole number" if field.kind == "int" else "expected a number") from None
        if field.kind == "float" and not (v == v and abs(v) != float("inf")):
            raise ValueError("expected a finite number")
        if field.minimum is not None and v < field.minimum:
            raise ValueError(f"must be at least {field.minimum:g}")
        if field.name in ("lr", "grad_clip") and v <= 0:
            raise ValueError("must be greater than 0")
        return v
    if field.name == "sample_prompt":   # its spaces are the prompt's ("The " continues a new word)
        if not raw:
            raise ValueError("required")
        return str(raw)
    s = "" if raw is None else str(raw).strip()
    if field.kind == "choice" and s not in field.choices:
        raise ValueError(f"choose one of {', '.join(field.choices)}")
    if field.name == "run_name" and s and (s in (".", "..") or any(c in s for c in '/\\:*?"<>|')):
        raise ValueError("a plain folder name: no / \\ : * ? \" < > |")
    return s


def parse_settings(values: dict, base: TrainSettings | None = None) -> TrainSettings:
    """Settings from form strings (or JSON values); every bad field is reported at once.

    Raises ``SettingsError`` whose ``errors`` maps each bad field to its reason.
    Unknown keys are errors too (a config file with a typo must not silently lose it).
    """
    errors: dict[str, str] = {}
    out = dataclasses.asdict(base or TrainSettings())
    for key, raw in values.items():
        field = FIELD_BY_NAME.get(key)
        if field is None:
            errors[key] = f"unknown setting; valid ones: {', '.join(FIELD_BY_NAME)}"
            continue
        try:
            out[key] = _parse_value(field, raw)
        except ValueError as e:
            errors[key] = str(e)
    for key, msg in check_settings(TrainSettings(**out)).items():   # bad fields still hold base values
        errors.setdefault(key, msg)
    if errors:
        raise SettingsError(errors)
    return TrainSettings(**out)


def check_settings(s: TrainSettings) -> dict[str, str]:
    """Cross-field checks; field name → message (empty when fine)."""
    errors = {}
    if s.n_head and s.n_embd % s.n_head:
        errors["n_head"] = f"hidden size {s.n_embd} is not a multiple of {s.n_head} heads"
    if s.tokenizer == "byte" and s.vocab_size != 256:
        errors["vocab_size"] = "the byte tokenizer has exactly 256 symbols"
    if s.data and not s.resume and not Path(s.data).expanduser().exists():   # a resumed run keeps its own data
        errors["data"] = f"{s.data} does not exist"
    if s.resume and not Path(s.resume).expanduser().exists():
        errors["resume"] = f"{s.resume} does not exist"
    return errors


def python_executable() -> str:
    """The interpreter for children: ours, but python.exe instead of a windowless pythonw.exe."""
    exe = sys.executable
    p = Path(exe)
    if p.name.lower() == "pythonw.exe":
        console = p.with_name("python.exe")
        if console.exists():
            return str(console)
    return exe


def bitttt_command() -> list[str]:
    """What stands for ``bitttt``: ``$BITTTT_GUI_CMD`` (split like a shell) or ``python -m bitttt``."""
    override = os.environ.get(CMD_ENV, "").strip()
    if override:
        return shlex.split(override, posix=os.name != "nt")
    return [python_executable(), "-m", "bitttt"]


def default_run_name() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def run_dir_for(s: TrainSettings, workspace: str | os.PathLike) -> Path:
    """The run folder this launch writes: <workspace>/runs/<name or timestamp>."""
    return Path(workspace) / "runs" / (s.run_name or default_run_name())


def train_args(s: TrainSettings, run_dir: str | os.PathLike) -> list[str]:
    """The arguments after ``bitttt``: ``train ... --log-format jsonl --log-every 1``.

    Only fields differing from the preset are sent, so the command reads like
    a diff against it; ``--run-dir`` is always explicit (the launcher writes STOP there).
    """
    preset = preset_values(s.preset) if s.preset in PRESETS else {}
    if s.resume:
        # A resumed run takes its architecture, tokenizer and data from its checkpoint, and every other
        # setting from the run unless a flag says otherwise: so each shown value is sent, even one
        # equal to the preset's, or the run's own value would silently win over the form.
        args = ["train", "--run-dir", str(run_dir), "--resume", str(Path(s.resume).expanduser())]
        skip, preset = set(LOCKED_ON_RESUME), {}
    else:
        args = ["train", "--preset", s.preset]
        if s.data:
            args += ["--data", str(Path(s.data).expanduser())]
        args += ["--run-dir", str(run_dir)]
        skip = set()
    for f in FIELDS:
        if f.flag is None or f.name in ("preset", "data", "resume") or f.name in skip:
            continue
        value = getattr(s, f.name)
        if f.name in preset and value == preset[f.name] or (f.name == "nproc" and value == 1):
            continue
        if f.kind == "bool":
            args.append(f.flag if value else "--no-" + f.flag[2:])
        elif f.kind == "float":
            args += [f.flag, repr(float(value))]
        else:
            args += [f.flag, str(value)]
    # Every step's event: the loss curve draws them all (thinned for drawing), not one in ten.
    args += ["--log-format", "jsonl", "--log-every", "1"]
    return args


def build_train_argv(s: TrainSettings, run_dir, base: list[str] | None = None) -> list[str]:
    return list(base if base is not None else bitttt_command()) + train_args(s, run_dir)


def build_chat_argv(model: str | os.PathLike, base: list[str] | None = None) -> list[str]:
    return list(base if base is not None else bitttt_command()) + ["chat", "--model", str(model), "--protocol", "jsonl"]


def format_command(argv: list[str]) -> str:
    """A copyable command line for this platform's shell."""
    return subprocess.list2cmdline(argv) if os.name == "nt" else shlex.join(argv)


def settings_to_json(s: TrainSettings) -> str:
    return json.dumps({"bitttt_gui_config": 1, **dataclasses.asdict(s)}, indent=2) + "\n"


def save_settings(s: TrainSettings, path: str | os.PathLike) -> None:
    """Write the form as JSON atomically (a temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(settings_to_json(s), encoding="utf-8")
    os.replace(tmp, path)


def load_settings(path: str | os.PathLike) -> TrainSettings:
    """Read a JSON config written by ``save_settings``; raises SettingsError naming what is wrong."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise SettingsError({"file": f"cannot read {path}: {e.strerror or e}"}) from None
    except ValueError as e:
        raise SettingsError({"file": f"{path} is not valid JSON: {e}"}) from None
    if not isinstance(data, dict):
        raise SettingsError({"file": f"{path} does not hold a JSON object"})
    data.pop("bitttt_gui_config", None)
    preset = data.get("preset", DEFAULT_PRESET)
    base = TrainSettings.for_preset(preset) if preset in PRESETS else TrainSettings()
    return parse_settings(data, base)
