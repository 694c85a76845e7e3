"""`bitttt train`: configuration, the training loop, evaluation, checkpoints, stop and OOM
handling (docs/design.md §5, §6).

`run(settings, argv)` returns the exit code. Errors before the run directory exists raise
(the CLI maps them to exit codes); afterwards they become an `error` event, then `done`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from typing import Any

import torch

from bitttt import checkpoint as ckpt_io
from bitttt import config as cfg
from bitttt import data as data_mod
from bitttt.errors import BitttError, ConfigError, DataError
from bitttt.events import Emitter
from bitttt.model import BitTTTConfig, BitTTTForCausalLM
from bitttt.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer

OOM_HINT = "use a smaller --batch-size or --seq-len (with --grad-accum to keep the batch), or a smaller model"
MODEL_KEYS = [k for k in BitTTTConfig.field_names() if k != "vocab_size"]
LN2 = math.log(2)
PER_INVOCATION = ("stop_after", "log_format", "run_dir")  # not inherited by --resume


# ---------------------------------------------------------------------------------------
# Configuration: defaults < preset < --config FILE < flags (resume: the checkpoint's < ...)
# ---------------------------------------------------------------------------------------


def read_config_file(path: str) -> dict[str, Any]:
    """A flat JSON object of model and training keys, or a run's config.json."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--config {path}: cannot read JSON ({e})", hint="pass a JSON file of settings") from None
    if not isinstance(d, dict):
        raise ConfigError(f"--config {path}: expected a JSON object")
    d = dict(d)
    d.pop("model_type", None)
    d.pop("vocab_size", None)  # a run's config.json: the vocabulary follows the tokenizer
    d.pop("format", None)
    d.update(d.pop("training", None) or {})
    check_keys(d, f"--config {path}")
    return d


def check_keys(d: dict[str, Any], source: str) -> None:
    valid = MODEL_KEYS + cfg.TrainConfig.field_names()
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}",
                          hint="fix or remove those keys")


def resolve(flags: dict[str, Any], resume_from: dict[str, Any] | None = None) -> tuple[dict, cfg.TrainConfig]:
    """flags: the options given on the command line (None = not given) plus "config".
    Returns (model keys, TrainConfig)."""
    given = {k: v for k, v in flags.items() if v is not None and k not in ("config", "resume", "print_config")}
    check_keys(given, "flags")
    from_file = read_config_file(flags["config"]) if flags.get("config") else {}
    if resume_from is not None:
        changed = [k for k in MODEL_KEYS if k in {**from_file, **given} and {**from_file, **given}[k] != resume_from[k]]
        if changed:
            raise ConfigError(f"--resume: cannot change the architecture ({', '.join(changed)})",
                              hint="drop those options, or start a new run")
        merged = {**resume_from, **from_file, **given}
    else:
        preset = given.get("preset") or from_file.get("preset") or cfg.TrainConfig.preset
        merged = {**cfg.defaults(preset), **from_file, **given}
    try:
        train = cfg.TrainConfig(**{k: merged[k] for k in cfg.TrainConfig.field_names() if k in merged})
        model = {k: merged[k] for k in MODEL_KEYS}
        BitTTTConfig(**model)  # validates
    except TypeError as e:
        raise ConfigError(f"bad configuration: {e}") from None
    return model, train


def lr_at(step: int, t: cfg.TrainConfig) -> float:
    """Linear warmup to t.lr over t.warmup steps, then cosine decay to t.min_lr (step 1-based)."""
    if step <= t.warmup:
        return t.lr * step / max(t.warmup, 1)
    progress = min(1.0, (step - t.warmup) / max(t.steps - t.warmup, 1))
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * progress))


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available", hint="use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def mem_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import psutil

    return int(psutil.Process().memory_info().rss)


# ---------------------------------------------------------------------------------------
# Stop requests: a STOP file, SIGINT, SIGTERM
# ---------------------------------------------------------------------------------------



def every(interval: int, step: int) -> bool:
    """True on multiples of interval; an interval of 0 means never."""
    return interval > 0 and step % interval == 0

class StopFlag:
    def __init__(self, run_dir: str) -> None:
        self.stop_file = os.path.join(run_dir, "STOP")
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if os.path.exists(self.stop_file):
            os.remove(self.stop_file)  # a stale request from an earlier run
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: the STOP file still works
                pass

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal = signal.Signals(signum).name

    def requested(self) -> str | None:
        if self.signal:
            return self.signal
        if os.path.exists(self.stop_file):
            os.remove(self.stop_file)
            return "STOP file"
        return None

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, model_keys: dict, t: cfg.TrainConfig, run_dir: str, emitter: Emitter, argv: list[str],
                 resume_ckpt: str | None) -> None:
        self.t, self.run_dir, self.emit, self.argv = t, run_dir, emitter.emit, argv
        self.resume_ckpt = resume_ckpt
        self.device = pick_device(t.device)
        if t.threads:
            torch.set_num_threads(t.threads)
        self.tokenizer = self._tokenizer()
        min_tokens = t.seq_len + 2
        self.data = data_mod.prepare(os.path.join(run_dir, "data"), t.data, self.tokenizer, t.val_fraction, min_tokens)
        self.config = BitTTTConfig(vocab_size=self.tokenizer.vocab_size, **model_keys)
        torch.manual_seed(t.seed)
        self.model = BitTTTForCausalLM(self.config).to(self.device)
        self.forward = torch.compile(self.model) if t.compile else self.model
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=t.lr, betas=(t.beta1, t.beta2), fused=self.device.type == "cuda")
        self.step, self.val_loss, self.best_val, self.last_ckpt = 0, None, None, None
        self.eval_starts = data_mod.eval_windows(self.data.val, t.seq_len, t.eval_tokens)
        if resume_ckpt:
            self._load(resume_ckpt)

    def _tokenizer(self) -> Tokenizer:
        path = os.path.join(self.run_dir, "tokenizer.json")
        if self.resume_ckpt:
            return load_tokenizer(os.path.join(self.resume_ckpt, "tokenizer.json"))
        if self.t.tokenizer == "byte":
            tok: Tokenizer = ByteTokenizer()
        else:
            tok = data_mod.train_bpe(self.t.data, self.t.bpe_vocab_size)
        tok.save(path)
        return tok

    def _load(self, path: str) -> None:
        from safetensors.torch import load_file

        state = ckpt_io.read_trainer_state(path)
        try:
            tensors = load_file(os.path.join(path, ckpt_io.MODEL_FILE), device=str(self.device))
            self.model.load_state_dict(tensors, strict=not self.config.tie_embeddings)
        except Exception as e:
            raise ConfigError(f"{path}: cannot load the model weights ({type(e).__name__}: {str(e)[:200]})",
                              hint=ckpt_io.BAD_CHECKPOINT_HINT) from None
        opt = ckpt_io.load_optimizer_state(path)
        try:
            self.optimizer.load_state_dict(opt["optimizer"])
            torch.set_rng_state(opt["torch_rng"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise ConfigError(f"{path}: optimizer state does not fit ({e})", hint=ckpt_io.BAD_CHECKPOINT_HINT) from None
        self.step = int(state["step"])
        self.val_loss, self.best_val = state.get("val_loss"), state.get("best_val_loss")
        self.last_ckpt = path

    # -- pieces --------------------------------------------------------------------------

    def train_step(self, step: int) -> tuple[float, float]:
        t = self.t
        lr = lr_at(step, t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(t.grad_accum):
            x, y = data_mod.get_batch(self.data.train, t.batch_size, t.seq_len, t.seed, step, micro, self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                loss = self.forward(x, labels=y).loss
            (loss / t.grad_accum).backward()
            total += loss.item() / t.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip).item()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, grad_norm

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        self.model.eval()
        losses, batch = [], self.t.batch_size
        for i in range(0, len(self.eval_starts), batch):
            x, y = data_mod.window_batch(self.data.val, self.eval_starts[i:i + batch], self.t.seq_len, self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                losses.append(self.model(x, labels=y).loss.item() * len(x))
        self.model.train()
        val_loss = sum(losses) / len(self.eval_starts)
        return val_loss, val_loss * self.data.val_tokens_per_byte / LN2

    def sample(self) -> str:
        from bitttt.generate import generate_text

        self.model.eval()
        text = generate_text(self.model, self.tokenizer, self.t.sample_prompt, self.t.sample_tokens,
                             temperature=0.8, top_k=40, seed=self.t.seed + self.step)
        self.model.train()
        return text

    def save(self, final: bool = False) -> str:
        path = os.path.join(self.run_dir, "final") if final else \
            os.path.join(self.run_dir, "checkpoints", ckpt_io.step_dir_name(self.step))
        state = {"step": self.step, "total_steps": self.t.steps, "val_loss": self.val_loss,
                 "best_val_loss": self.best_val, "tokens_seen": self.step * self.tokens_per_step, "time": time.time()}
        optim = {"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
        ckpt_io.write_folder(path, self.model, self.tokenizer, self.config_extra(), optim, state)
        if not final:
            ckpt_io.prune(self.run_dir, self.t.keep_last)
        self.last_ckpt = path
        self.emit("checkpoint", step=self.step, path=path)
        return path

    def config_extra(self) -> dict[str, Any]:
        return {"training": self.t.to_dict(), "data": {"chat": bool(self.data.meta.get("chat"))}}

    @property
    def tokens_per_step(self) -> int:
        return self.t.batch_size * self.t.seq_len * self.t.grad_accum

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: StopFlag) -> str:
        """Trains to t.steps; returns the done reason ("completed" or "stopped")."""
        t = self.t
        self.model.train()
        self.emit("start", run_dir=self.run_dir, config={**self.config.to_dict(), **t.to_dict()},
                  n_params=self.model.num_params(), device=str(self.device), total_steps=t.steps, argv=self.argv,
                  start_step=self.step, resumed_from=self.resume_ckpt)
        if self.step == 0:
            self._eval_event()
        t0, first_step, last_log_step = time.time(), self.step, self.step
        train_s = since_log_s = 0.0  # time in train steps only (not evals, samples, saves)
        while self.step < t.steps:
            self.step += 1
            t_step = time.time()
            loss, grad_norm = self.train_step(self.step)
            dt = time.time() - t_step
            train_s, since_log_s = train_s + dt, since_log_s + dt
            if not math.isfinite(loss):
                self.emit("warning", message=f"loss is {loss} at step {self.step}; lower --lr")
            if self.step % t.log_every == 0 or self.step == t.steps or self.step == first_step + 1:
                rate = (self.step - last_log_step) * self.tokens_per_step / max(since_log_s, 1e-9)
                self.emit("step", step=self.step, total_steps=t.steps, loss=loss, lr=lr_at(self.step, t),
                          grad_norm=grad_norm, tokens_per_s=rate, elapsed_s=time.time() - t0,
                          eta_s=train_s / (self.step - first_step) * (t.steps - self.step),
                          mem_bytes=mem_bytes(self.device))
                last_log_step, since_log_s = self.step, 0.0
            if every(t.eval_every, self.step) or self.step == t.steps:
                self._eval_event()
            if every(t.sample_every, self.step):
                self.emit("sample", step=self.step, prompt=t.sample_prompt, text=self.sample())
            if every(t.save_every, self.step) and self.step < t.steps:
                self.save()
            why = stop.requested() or ("--stop-after" if t.stop_after and self.step - first_step >= t.stop_after else None)
            if why and self.step < t.steps:
                if not (self.last_ckpt and self.last_ckpt.endswith(ckpt_io.step_dir_name(self.step))):
                    self.save()
                self.emit("warning", message=f"stopping at step {self.step}: {why}")
                return "stopped"
        self.save(final=True)
        return "completed"

    def _eval_event(self) -> None:
        self.val_loss, bpb = self.evaluate()
        if self.best_val is None or self.val_loss < self.best_val:
            self.best_val = self.val_loss
        self.emit("eval", step=self.step, val_loss=self.val_loss, val_bpb=bpb)


def find_resume(path: str) -> tuple[str, str]:
    """--resume PATH (a run directory or a checkpoint) -> (checkpoint, its run directory)."""
    if ckpt_io.is_checkpoint(path):
        ckpt = os.path.abspath(path)
        parent = os.path.dirname(ckpt)
        run_dir = os.path.dirname(parent) if os.path.basename(parent) == "checkpoints" else parent
        return ckpt, run_dir
    if not os.path.isdir(path):
        raise ConfigError(f"--resume {path}: no such run directory or checkpoint", hint="check the path")
    found = [(s, p) for s, p in ckpt_io.list_step_checkpoints(path)]
    final = os.path.join(path, "final")
    if ckpt_io.is_checkpoint(final):
        found.append((ckpt_io.read_trainer_state(final)["step"], final))
    if not found:
        raise ConfigError(f"--resume {path}: no checkpoint in this run directory", hint="start a new run instead")
    return os.path.abspath(max(found, key=lambda sp: (sp[0], sp[1].endswith("final")))[1]), os.path.abspath(path)


def _resume_settings(ckpt: str) -> dict[str, Any]:
    from bitttt.model import load_config

    model, sections = load_config(os.path.join(ckpt, ckpt_io.CONFIG_FILE))
    d = {k: getattr(model, k) for k in MODEL_KEYS}
    training = dict(sections.get("training") or {})
    check_keys(training, os.path.join(ckpt, ckpt_io.CONFIG_FILE))
    for key in PER_INVOCATION:  # how that run was started, not what it is
        training.pop(key, None)
    return {**d, **training}


def run(flags: dict[str, Any], argv: list[str]) -> int:
    """`bitttt train`: flags as parsed (None = not given). Returns the exit code."""
    resume_ckpt = resume_run = None
    try:
        if flags.get("resume"):
            resume_ckpt, resume_run = find_resume(flags["resume"])
        model_keys, t = resolve(flags, _resume_settings(resume_ckpt) if resume_ckpt else None)
    except BitttError as e:  # no run directory yet: the event goes to stdout only
        if flags.get("log_format") == "jsonl":
            early = Emitter("jsonl")
            early.emit("error", kind="config", message=str(e), hint=e.hint)
            early.emit("done", step=0, reason="error", path=None)
        raise
    if flags.get("print_config"):
        print(json.dumps({**model_keys, **t.to_dict()}, indent=2))
        return 0
    run_dir = os.path.abspath(flags.get("run_dir") or resume_run or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S")))
    if not resume_ckpt and (ckpt_io.list_step_checkpoints(run_dir) or os.path.exists(os.path.join(run_dir, "final"))):
        raise ConfigError(f"--run-dir {run_dir} already holds a run", hint="pass --resume to continue it, or another --run-dir")
    t.run_dir = run_dir
    os.makedirs(run_dir, exist_ok=True)
    emitter = Emitter(t.log_format, events_path=os.path.join(run_dir, "events.jsonl"))
    stop = StopFlag(run_dir)
    trainer = None
    try:
        trainer = Trainer(model_keys, t, run_dir, emitter, argv, resume_ckpt)
        from bitttt.model import save_config

        save_config(trainer.config, os.path.join(run_dir, "config.json"), trainer.config_extra())
        stop.install()
        reason = trainer.run(stop)
        emitter.emit("done", step=trainer.step, reason=reason, path=trainer.last_ckpt)
        return 0
    except BitttError as e:
        kind = "data" if isinstance(e, DataError) else "config" if isinstance(e, ConfigError) else "exception"
        return _fail(emitter, trainer, kind, str(e), e.hint, 3 if kind == "data" else 2 if kind == "config" else 1)
    except (torch.OutOfMemoryError, MemoryError) as e:
        return _fail(emitter, trainer, "oom", f"out of memory: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                     OOM_HINT, 4)
    except KeyboardInterrupt:
        return _fail(emitter, trainer, "exception", "interrupted twice; stopped without saving",
                     "the last checkpoint is kept", 130)
    except Exception as e:
        import traceback

        traceback.print_exc()
        return _fail(emitter, trainer, "exception", f"{type(e).__name__}: {e}", "this is a bug; please report it", 1)
    finally:
        stop.restore()
        emitter.close()


def _fail(emitter: Emitter, trainer: Trainer | None, kind: str, message: str, hint: str, code: int) -> int:
    emitter.emit("error", kind=kind, message=message, hint=hint)
    emitter.emit("done", step=trainer.step if trainer else 0, reason="error", path=trainer.last_ckpt if trainer else None)
    if emitter.log_format == "jsonl":  # text mode printed it already
        print(f"bitttt: error: {message}" + (f" (hint: {hint})" if hint else ""), file=sys.stderr)
    return code
