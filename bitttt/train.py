"""`bitttt train`: the training loop, evaluation, checkpoints, stop, divergence and OOM
handling (docs/design.md §5, §6). Settings are resolved by bitttt.config.

`run(settings, argv, stop)` returns the exit code. Errors before the run directory exists raise
(the CLI maps them to exit codes); afterwards they become an `error` event, then `done`.
The run directory is created only once the settings, the device and the --data paths check out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from bitttt import checkpoint as ckpt_io
from bitttt import runlock
from bitttt.diagnostics import TernaryMonitor
from bitttt import config as cfg
from bitttt import data as data_mod
from bitttt import distributed
from bitttt import ops
from bitttt import evaluate as eval_mod
from bitttt.config import MODEL_KEYS, check_keys, resolve
from bitttt.devices import mem_bytes, pick_device
from bitttt.errors import EXIT_OK, EXIT_OOM, BitttError, ConfigError, DivergedError, is_out_of_memory
from bitttt.events import Emitter, safe_print
from bitttt.model import BitTTTConfig, BitTTTForCausalLM
from bitttt.stop import StopFlag, StopRequested, process_start_time
from bitttt.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer

OOM_HINT = "use a smaller --batch-size or --seq-len (with --grad-accum to keep the batch), or a smaller model"
TMP_INFIX = ".tmp-"  # write_atomic's temporary files: .NAME.tmp-PID
PER_INVOCATION = ("stop_after", "log_format", "run_dir")  # not inherited by --resume


def lr_at(step: int, t: cfg.TrainConfig, decay: dict[str, Any] | None = None) -> float:
    """Linear warmup to t.lr over t.warmup steps, then cosine decay to t.min_lr at t.steps (step
    1-based). After a resume that changed the total, `decay` = {"from_step", "from_lr"}: from
    that step on, a cosine from the learning rate it had down to t.min_lr at t.steps (design §5)."""
    if decay is not None and step > decay["from_step"]:
        progress = min(1.0, (step - decay["from_step"]) / max(t.steps - decay["from_step"], 1))
        return t.min_lr + 0.5 * (decay["from_lr"] - t.min_lr) * (1 + math.cos(math.pi * progress))
    if step <= t.warmup:
        return t.lr * step / max(t.warmup, 1)
    progress = min(1.0, (step - t.warmup) / max(t.steps - t.warmup, 1))
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * progress))


def resumed_decay(state: dict[str, Any], t: cfg.TrainConfig) -> dict[str, Any] | None:
    """The `decay` of lr_at for a run resumed from a checkpoint's trainer state with settings t.
    The same total continues the checkpoint's own schedule (bit for bit); a new total (a longer
    run, or extending a finished one) decays from the learning rate the checkpoint had, never
    jumping back towards the peak; a run still in its warmup just gets the longer cosine."""
    step, old_total, decay = state["step"], state.get("total_steps", t.steps), state.get("lr_decay")
    if old_total == t.steps:
        return decay
    if decay is None and step <= t.warmup:
        return None
    last_lr = state.get("lr")
    if not isinstance(last_lr, (int, float)):  # checkpoints from before the "lr" field
        last_lr = lr_at(step, dataclasses.replace(t, steps=old_total), decay)
    return {"from_step": step, "from_lr": float(last_lr)}


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """write(tmp) into a temporary sibling, then renamed over path: a reader (the launcher) sees
    the old file or the new one, never half of one. A killed write leaves `.NAME.tmp-PID`, which
    the run's next owner removes (own_run)."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}{TMP_INFIX}{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_writes(run_dir: str) -> None:
    """Removes the temporary files of killed write_atomic calls (only for the run's owner)."""
    try:
        entries = os.listdir(run_dir)
    except OSError:
        return
    for entry in entries:
        if entry.startswith(".") and TMP_INFIX in entry and not entry.endswith(f"{TMP_INFIX}{os.getpid()}") \
                and os.path.isfile(os.path.join(run_dir, entry)):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(run_dir, entry))


def every(interval: int, step: int) -> bool:
    """True on multiples of interval; an interval of 0 means never."""
    return interval > 0 and step % interval == 0


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------

SAMPLING = {"temperature": 0.8, "top_k": 40}  # the samples' settings (and the run's seed + step)
MAX_ABS_WEIGHT = 1e8  # trained weights here are O(1); one this large has diverged (float32 overflows soon after)
DIVERGED_HINT = ("lower --lr (it is {lr:g}; try {lower:g}) or check the data; the last good checkpoint is kept: "
                 "continue from it with --resume and a lower --lr")


def make_optimizer(model: torch.nn.Module, t: cfg.TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only (not on norms, biases, scales)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        # fused: one kernel per parameter group; torch's CPU default loops in Python over every
        # parameter (~30 ops each: 3x the time of the fused step on the tiny TTT model, issue 26)
        lr=t.lr, betas=(t.beta1, t.beta2), fused=device.type in ("cuda", "cpu"))


def _one_pass(tensors: list[torch.Tensor]) -> bool:
    """Whether ops.clip_grad_norm_ and ops.max_abs take these: contiguous float32 on the CPU."""
    return bool(tensors) and ops.uses_train_kernel(*tensors) and all(t.is_contiguous() for t in tensors)


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_ of the model's gradients (the norm before clipping). On the
    CPU in float32 it is one C++ pass (ops.clip_grad_norm_) where torch's foreach path takes ~4 ops
    per parameter, each a thread wake-up (issue 26)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if _one_pass(grads):
        return ops.clip_grad_norm_(grads, max_norm).item()
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True).item()


def largest_weight(model: torch.nn.Module) -> float:
    """max |w| over every parameter (NaN if any is NaN)."""
    params = [p.detach() for p in model.parameters()]
    if _one_pass(params):
        return ops.max_abs(params).item()
    # aminmax per tensor: torch's inf-norm is not vectorized on the CPU (12.8 ms per step
    # for tiny's 87 tensors on one thread, against 3.8 ms this way; issue 26)
    ends = [torch.aminmax(p) for p in params]
    return torch.stack([torch.maximum(-lo, hi) for lo, hi in ends]).max().item()


class Trainer:
    """One run. `start_up()` builds everything (honouring a stop request between its phases and
    inside tokenizing); `run()` trains."""

    def __init__(self, model_keys: dict, t: cfg.TrainConfig, run_dir: str, emitter: Emitter, argv: list[str],
                 resume_ckpt: str | None, stop: StopFlag, world: distributed.World | None = None) -> None:
        self.t, self.run_dir, self.emit, self.argv = t, run_dir, emitter.emit, argv
        self.model_keys, self.resume_ckpt, self.stop = model_keys, resume_ckpt, stop
        self.world = world or distributed.World()
        self.step = int(ckpt_io.read_trainer_state(resume_ckpt)["step"]) if resume_ckpt else 0
        self.val_loss, self.best_val, self.last_ckpt = None, None, resume_ckpt
        self.lr_decay: dict[str, Any] | None = None  # lr_at's decay (a resumed run with a new total)

    def start_up(self) -> None:
        """Device, tokenizer, token cache, model, optimizer, held-out set, resumed state.
        Raises StopRequested if a stop is asked for on the way."""
        t, check = self.t, self.stop.check
        self.device = self.world.place(pick_device(t.device))
        if t.threads:
            torch.set_num_threads(t.threads)
        with self.world.rank0_first():  # rank 0 writes the tokenizer and token cache; the others reuse them
            self.tokenizer = self._tokenizer()
            check()
            self.data = data_mod.prepare(os.path.join(self.run_dir, data_mod.CACHE_DIR), t.data, self.tokenizer, t.val_fraction,
                                         t.seq_len + 2, check=self.stop.poll)
        check()
        self.config = BitTTTConfig(vocab_size=self.tokenizer.vocab_size, **self.model_keys)
        torch.manual_seed(t.seed)
        self.model = BitTTTForCausalLM(self.config).to(self.device)
        check()
        self.forward = self.world.wrap(self.model)
        self.optimizer = make_optimizer(self.model, t, self.device)
        self.held_out = eval_mod.HeldOut.build(self.data.val, t.seq_len, t.eval_tokens, self.tokenizer)
        self.ternary_monitor = TernaryMonitor()
        if self.resume_ckpt:
            self._load(self.resume_ckpt)
        check()
        self.compile_s: float | None = None  # seconds --compile took; None: eager
        self.compile_error: str | None = None  # why --compile fell back to eager
        if t.compile:
            self._compile()
            check()

    def _compile(self) -> None:
        """--compile: the forward torch.compile'd (its backward through AOTAutograd), compiled
        here on one batch of the run's shape, forward and backward (its gradients are dropped),
        so the first step's rate is a step's. Where compiling fails (no C++ compiler, an op
        Inductor cannot lower) the run stays eager and says why (one warning, at the start)."""
        t, eager = self.t, self.forward
        compiled = torch.compile(eager)
        x, y = data_mod.get_batch(self.data.train, t.batch_size, t.seq_len, t.seed, 0, 0, self.device,
                                  *self.world.batch_share)  # the real batches' layout: no recompile at step 1
        start = time.perf_counter()
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                loss = compiled(x, labels=y).loss
            loss.backward()
        except Exception as e:  # whatever the compiler raises, eager still trains
            torch._dynamo.reset()  # drop what was half compiled
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            self.compile_error = f"--compile: torch.compile failed ({type(e).__name__}: {first[:200]}); training eagerly"
        else:
            self.forward, self.compile_s = compiled, round(time.perf_counter() - start, 1)
        finally:
            self.model.zero_grad(set_to_none=True)

    def _tokenizer(self) -> Tokenizer:
        path = os.path.join(self.run_dir, "tokenizer.json")
        if self.resume_ckpt:
            return load_tokenizer(os.path.join(self.resume_ckpt, "tokenizer.json"))
        if not self.world.is_main and os.path.isfile(path):
            return load_tokenizer(path)  # rank 0's, just written (distributed.World.rank0_first)
        if self.t.tokenizer == "byte":
            tok: Tokenizer = ByteTokenizer()
        else:
            tok = data_mod.train_bpe(self.t.data, self.t.bpe_vocab_size, check=self.stop.poll)
        if self.world.is_main:
            write_atomic(path, tok.save)
        return tok

    def _load(self, path: str) -> None:
        state = ckpt_io.read_trainer_state(path)
        ckpt_io.load_weights(path, self.model, ckpt_io.read_tensors(path, str(self.device)))
        largest = largest_weight(self.model)
        if not largest <= MAX_ABS_WEIGHT:  # no save writes such weights: the file is damaged
            raise ConfigError(f"{path}: holds a weight of {largest:.3g} (finite and at most {MAX_ABS_WEIGHT:g} "
                              "expected)", hint=ckpt_io.BAD_CHECKPOINT_HINT)
        opt = ckpt_io.load_optimizer_state(path)
        try:
            self.optimizer.load_state_dict(opt["optimizer"])
            torch.set_rng_state(opt["torch_rng"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise ConfigError(f"{path}: optimizer state does not fit ({e})", hint=ckpt_io.BAD_CHECKPOINT_HINT) from None
        self.step = int(state["step"])
        self.lr_decay = resumed_decay(state, self.t)
        self.val_loss, self.best_val = state.get("val_loss"), state.get("best_val_loss")
        self.last_ckpt = path

    # -- pieces --------------------------------------------------------------------------

    def train_step(self, step: int) -> tuple[float, float]:
        t = self.t
        lr = lr_at(step, t, self.lr_decay)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(t.grad_accum):
            if micro:  # a stop inside a long accumulation (ranks agree at each micro-step)
                self.world.check_stop(self.stop)
            x, y = data_mod.get_batch(self.data.train, t.batch_size, t.seq_len, t.seed, step, micro, self.device,
                                      *self.world.batch_share)
            with self.world.sync_grads(micro == t.grad_accum - 1):  # DDP all-reduces on the last micro-step
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                    loss = self.forward(x, labels=y).loss
                (loss / t.grad_accum).backward()
            total += loss.item() / t.grad_accum
        total = self.world.mean(total)  # every rank decides on the same loss (and so diverges together)
        grad_norm = clip_grad_norm(self.model, t.grad_clip)
        if not (math.isfinite(total) and math.isfinite(grad_norm)):  # before the step: weights stay finite
            self.optimizer.zero_grad(set_to_none=True)
            raise DivergedError(f"training diverged at step {step}: the loss is {total}, the gradient norm "
                                f"{grad_norm}", hint=DIVERGED_HINT.format(lr=t.lr, lower=t.lr / 10))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._check_weights(step)
        return total, grad_norm

    def _check_weights(self, step: int) -> None:
        """DivergedError unless every weight is finite and below MAX_ABS_WEIGHT: a step can turn
        finite gradients into weights that overflow at the next forward (--lr 1e30)."""
        largest = largest_weight(self.model)
        if not largest <= MAX_ABS_WEIGHT:  # NaN compares False too
            raise DivergedError(f"training diverged at step {step}: a weight reached {largest:.3g} (the loss was "
                                "finite before it)", hint=DIVERGED_HINT.format(lr=self.t.lr, lower=self.t.lr / 10))

    def _check_usable(self) -> None:
        """DivergedError unless the weights in memory give a finite loss on held-out windows: what a
        checkpoint is saved from must load and evaluate finite (the last good one is then kept)."""
        held = self.held_out
        x, y = data_mod.window_batch(held.tokens, held.starts[:2], held.seq_len, self.device)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss = self.model(x, labels=y).loss.item()
        self.model.train(was_training)
        if not math.isfinite(loss):
            raise DivergedError(f"training diverged at step {self.step}: the weights give a held-out loss of {loss}",
                                hint=DIVERGED_HINT.format(lr=self.t.lr, lower=self.t.lr / 10))

    def evaluate(self) -> eval_mod.Score:
        return eval_mod.score(self.model, self.held_out, self.device, self.world,
                              check=lambda: self.world.check_stop(self.stop))

    def sample(self) -> str:
        """The sample text; StopRequested if a stop is asked for while it is generated. Only rank 0
        samples, so under data parallel a stop just cuts the text short: the ranks agree on it
        after the step (a rank that stopped alone would leave the others in a collective)."""
        from bitttt.generate import SamplingParams, stream_text

        p = SamplingParams(max_new_tokens=self.t.sample_tokens, **SAMPLING, seed=self.t.seed + self.step)
        ids = self.tokenizer.encode(self.t.sample_prompt) or [self.tokenizer.bos_id]
        self.model.eval()
        try:
            text = "".join(stream_text(self.model, self.tokenizer, ids, p,
                                       should_stop=lambda: self.stop.requested() is not None))
        finally:
            self.model.train()
        if not self.world.is_distributed:
            self.stop.check()
        return text

    def save(self, final: bool = False) -> str:
        self._check_usable()  # never a checkpoint that does not evaluate finite
        path = os.path.join(self.run_dir, "final") if final else \
            os.path.join(self.run_dir, "checkpoints", ckpt_io.step_dir_name(self.step))
        state = {"step": self.step, "total_steps": self.t.steps, "val_loss": self.val_loss,
                 "best_val_loss": self.best_val, "tokens_seen": self.step * self.tokens_per_step, "time": time.time(),
                 "lr": lr_at(self.step, self.t, self.lr_decay), "lr_decay": self.lr_decay}
        optim = {"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
        if self.world.is_main:  # every rank holds the same model and optimizer state
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
        return self.t.batch_size * self.t.seq_len * self.t.grad_accum * self.world.size  # the global batch

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> str:
        """Trains to t.steps; returns the done reason ("completed" or "stopped")."""
        t = self.t
        self.model.train()
        self.emit("start", run_dir=self.run_dir, config={**self.config.to_dict(), **t.to_dict()},
                  n_params=self.model.num_params(), device=str(self.device), total_steps=t.steps, argv=self.argv,
                  start_step=self.step, resumed_from=self.resume_ckpt, world_size=self.world.size,
                  process_start=round(process_start_time(), 3),
                  global_batch_size=self.t.batch_size * self.t.grad_accum * self.world.size,
                  compile_s=self.compile_s)
        if self.compile_error:
            self.emit("warning", message=self.compile_error)
        if self.step == 0:
            self._eval_event()  # a stop during it: StopRequested, nothing trained (the caller's start-up stop)
        t0, first_step, last_log_step = time.time(), self.step, self.step
        train_s = since_log_s = 0.0  # time in train steps only (not evals, samples, saves)
        while self.step < t.steps:
            self.world.inject_test_fault(self.step + 1)
            t_step = time.time()
            try:
                loss, grad_norm = self.train_step(self.step + 1)
            except StopRequested as why:  # inside the accumulation: that step is dropped
                self.optimizer.zero_grad(set_to_none=True)
                return self._stopped(str(why))
            self.step += 1  # only now: a failed step is not a step the run made
            dt = time.time() - t_step
            train_s, since_log_s = train_s + dt, since_log_s + dt
            if self.step % t.log_every == 0 or self.step == t.steps or self.step == first_step + 1:
                rate = (self.step - last_log_step) * self.tokens_per_step / max(since_log_s, 1e-9)
                self.emit("step", step=self.step, total_steps=t.steps, loss=loss,
                          lr=lr_at(self.step, t, self.lr_decay), grad_norm=grad_norm, tokens_per_s=rate, elapsed_s=time.time() - t0,
                          eta_s=train_s / (self.step - first_step) * (t.steps - self.step),
                          mem_bytes=mem_bytes(self.device))
                last_log_step, since_log_s = self.step, 0.0
            try:
                if every(t.eval_every, self.step) or self.step == t.steps:
                    self._eval_event()
                if every(t.sample_every, self.step) and self.world.is_main:
                    self.emit("sample", step=self.step, prompt=t.sample_prompt, text=self.sample())
            except StopRequested as why:  # an evaluation or a sample cut short: the step itself is done
                return self._stopped(str(why))
            if every(t.save_every, self.step) and self.step < t.steps:
                self.save()
            why = self.world.agree_stop(self.stop) or ("--stop-after" if t.stop_after and self.step - first_step >= t.stop_after else None)
            if why and self.step < t.steps:
                return self._stopped(why)
        self.save(final=True)
        return "completed"

    def _stopped(self, why: str) -> str:
        """A stop after at least one step: the last step is saved (once), then "stopped". Before
        the first step of a new run nothing was trained: StopRequested, as in start-up."""
        if self.step == 0:
            raise StopRequested(why)
        if not (self.last_ckpt and self.last_ckpt.endswith(ckpt_io.step_dir_name(self.step))):
            self.save()
        self.emit("warning", message=f"stopping at step {self.step}: {why}")
        return "stopped"

    def _eval_event(self) -> None:
        s = self.evaluate()
        self.val_loss = s.loss
        if self.best_val is None or self.val_loss < self.best_val:
            self.best_val = self.val_loss
        self.emit("eval", step=self.step, val_loss=s.loss, val_bpb=s.bits_per_byte, val_tokens=s.tokens)
        if self.config.ternary and self.world.is_main:  # codes at zero, flipped since the last eval, scales
            self.emit("ternary", step=self.step, groups=self.ternary_monitor.report(self.model))


def find_resume(path: str) -> tuple[str, str]:
    """--resume PATH (a run directory or a checkpoint) -> (checkpoint, its run directory). Reads
    only: what killed saves left is recovered by the run's owner once it holds the lock
    (own_run); until then a checkpoint being replaced is read from its previous version."""
    if not ckpt_io.is_checkpoint(path):
        previous = ckpt_io.complete_version(path)  # NAME renamed aside by a killed or live save
        path = previous or path
    if ckpt_io.is_checkpoint(path):
        ckpt = os.path.abspath(path)
        parent = os.path.dirname(ckpt)
        run_dir = os.path.dirname(parent) if os.path.basename(parent) == "checkpoints" else parent
        return ckpt, run_dir
    if not os.path.isdir(path):
        raise ConfigError(f"--resume {path}: no such run directory or checkpoint", hint="check the path")
    found = [(s, False, p) for s, p in ckpt_io.list_step_checkpoints(path)]
    final = ckpt_io.complete_version(os.path.join(path, "final"))
    if final:
        found.append((ckpt_io.read_trainer_state(final)["step"], True, final))  # final wins a tie
    if not found:
        raise ConfigError(f"--resume {path}: no checkpoint in this run directory", hint="start a new run instead")
    return os.path.abspath(max(found)[2]), os.path.abspath(path)


def own_run(run_dir: str, argv: list[str]) -> None:
    """Makes this process the run's one writer (runlock.acquire: RunLocked, and nothing touched,
    while another live process trains it), then, as its owner, removes what killed processes
    left in it: half saves (checkpoint.recover_run) and half token caches (data.remove_leftovers)."""
    runlock.acquire(run_dir, argv)
    ckpt_io.recover_run(run_dir)  # all best effort: they never raise
    data_mod.remove_leftovers(run_dir)
    remove_stale_writes(run_dir)


def _resume_settings(ckpt: str) -> dict[str, Any]:
    model, sections = ckpt_io.read_config(ckpt)
    ckpt_io.check_sizes(ckpt, model, ckpt_io.weight_shapes(ckpt))  # before building a model of that size
    d = {k: getattr(model, k) for k in MODEL_KEYS}
    training = dict(sections.get("training") or {})
    check_keys(training, os.path.join(ckpt, ckpt_io.CONFIG_FILE))
    for key in PER_INVOCATION:  # how that run was started, not what it is
        training.pop(key, None)
    return {**d, **training}


def _check_more_steps(ckpt: str, given: str, t: cfg.TrainConfig) -> None:
    step = ckpt_io.read_trainer_state(ckpt)["step"]
    if step >= t.steps:
        raise ConfigError(f"--resume {given}: the run is at step {step} already, --steps {t.steps} leaves nothing "
                          "to train", hint=f"pass --steps N with N > {step} (the new total) to train further")


def absolute_paths(paths: list[str] | None) -> list[str] | None:
    """--data as stored in config.json: files, folders and globs made absolute."""
    return [os.path.abspath(os.path.expanduser(p)) for p in paths] if paths else paths


def run(flags: dict[str, Any], argv: list[str], stop: StopFlag | None = None) -> int:
    """`bitttt train`: flags as parsed (None = not given). Returns the exit code.

    stop: the CLI's, with its handlers installed before torch loaded; None: one is installed here."""
    if stop is not None:
        return _run(flags, argv, stop)
    stop = StopFlag()
    stop.install()
    try:
        return _run(flags, argv, stop)
    finally:
        stop.restore()


def _run(flags: dict[str, Any], argv: list[str], stop: StopFlag) -> int:
    world = distributed.World.from_env()
    try:
        resume_ckpt = resume_run = None
        if flags.get("resume"):
            resume_ckpt, resume_run = find_resume(flags["resume"])
        model_keys, t = resolve(flags, _resume_settings(resume_ckpt) if resume_ckpt else None)
        if resume_ckpt:
            _check_more_steps(resume_ckpt, flags["resume"], t)
        t.data = absolute_paths(t.data)  # the same data when resumed from another directory
        if flags.get("print_config"):
            print(json.dumps({**model_keys, **t.to_dict()}, indent=2))
            return EXIT_OK
        cfg.check_memory(model_keys, t, pick_device(t.device).type)  # exit 4 before allocating what cannot fit
        world.start(pick_device(t.device), t.dist_timeout)
        t.run_dir = world.share(_check_inputs(flags, t, resume_ckpt, resume_run))
    except BitttError as e:  # no run directory yet: the event goes to stdout only
        _early_error(flags, e)
        raise
    if stop.requested():  # asked for before there was a run: nothing to save or clean up
        Emitter(t.log_format).emit("done", step=0, reason="stopped", path=None)
        return EXIT_OK
    os.makedirs(t.run_dir, exist_ok=True)
    owner = False
    if world.is_main:
        try:
            own_run(t.run_dir, argv)  # one writer per run: nothing above wrote into it (design §5)
        except BitttError as e:
            _early_error(flags, e)
            raise
        owner = True
        resume_ckpt = ckpt_io.after_recovery(resume_ckpt) if resume_ckpt else None
    emitter = Emitter(t.log_format, events_path=os.path.join(t.run_dir, "events.jsonl") if world.is_main else None)
    stop.watch(t.run_dir)
    trainer = None
    try:
        trainer = Trainer(model_keys, t, t.run_dir, emitter, argv, resume_ckpt, stop, world)
        trainer.start_up()
        from bitttt.model import save_config

        if world.is_main:
            write_atomic(os.path.join(t.run_dir, "config.json"),
                         lambda p: save_config(trainer.config, p, trainer.config_extra()))
        reason = trainer.run()
        world.barrier()  # every rank ends the loop together before the group is torn down (a rank leaving
        # while rank 0 still saves made gloo abort it: "terminate called without an active exception")
        emitter.emit("done", step=trainer.step, reason=reason, path=trainer.last_ckpt)
        return EXIT_OK
    except StopRequested as why:
        emitter.emit("warning", message=f"stopped during start-up ({why}); nothing was trained")
        emitter.emit("done", step=trainer.step, reason="stopped", path=trainer.last_ckpt)
        return EXIT_OK
    except BitttError as e:  # config, data, diverged
        return _fail(emitter, trainer, e.kind, str(e), e.hint, e.exit_code, world)
    except (torch.OutOfMemoryError, MemoryError) as e:
        return _fail(emitter, trainer, "oom", f"out of memory: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                     OOM_HINT, EXIT_OOM, world)
    except KeyboardInterrupt:
        return _fail(emitter, trainer, "exception", "interrupted twice; stopped without saving",
                     "the last checkpoint is kept", 130, world)
    except Exception as e:
        if is_out_of_memory(e):  # the CPU allocator raises a plain RuntimeError
            return _fail(emitter, trainer, "oom", f"out of memory: {str(e).splitlines()[0][:300]}", OOM_HINT,
                         EXIT_OOM, world)
        import traceback

        safe_print(traceback.format_exc().rstrip())
        return _fail(emitter, trainer, "exception", f"{type(e).__name__}: {e}", "this is a bug; please report it", 1, world)
    finally:
        emitter.close()
        world.close()
        if owner:
            runlock.release(t.run_dir)


def _early_error(flags: dict[str, Any], e: BitttError) -> None:
    """An error before this process owns a run directory: on stdout only, never in a run's events."""
    if flags.get("log_format") == "jsonl":
        early = Emitter("jsonl")
        early.emit("error", kind=e.kind, message=str(e), hint=e.hint)
        early.emit("done", step=0, reason="error", path=None)


def _check_inputs(flags: dict[str, Any], t: cfg.TrainConfig, resume_ckpt: str | None, resume_run: str | None) -> str:
    """The run directory to use, once what can fail before training is known to be fine: the
    folder is free (or resumed), the device exists, the --data paths name text files."""
    run_dir = os.path.abspath(flags.get("run_dir") or resume_run or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S")))
    owner = runlock.live_owner(run_dir)
    if owner is not None:  # before anything is written there (own_run takes the lock atomically later)
        raise runlock.RunLocked(run_dir, owner)
    if not resume_ckpt and (ckpt_io.list_step_checkpoints(run_dir) or os.path.exists(os.path.join(run_dir, "final"))):
        raise ConfigError(f"--run-dir {run_dir} already holds a run",
                          hint="pass --resume to continue it, or another --run-dir")
    pick_device(t.device)
    if t.data:
        data_mod.expand_sources(t.data)
    _check_late_settings(t)
    return run_dir


def _check_late_settings(t: cfg.TrainConfig) -> None:
    """Settings that are first used deep in the run (the samples' generation limits) checked
    now, so a mistake costs no training: the checks of the code that uses them, as flags."""
    from bitttt.generate import SamplingParams

    try:
        SamplingParams(max_new_tokens=t.sample_tokens, **SAMPLING, seed=t.seed + t.steps)
    except ConfigError as e:
        raise ConfigError(f"--sample-tokens {t.sample_tokens}: {e}", hint="ask for fewer sample tokens") from None


def _fail(emitter: Emitter, trainer: Trainer | None, kind: str, message: str, hint: str, code: int,
          world: distributed.World) -> int:
    kind, message, hint, code, fields = world.first_error(kind, message, hint, code)  # names the rank under torchrun
    emitter.emit("error", kind=kind, message=message, hint=hint, **fields)
    emitter.emit("done", step=trainer.step if trainer else 0, reason="error", path=trainer.last_ckpt if trainer else None)
    if emitter.log_format == "jsonl":  # text mode printed it already
        safe_print(f"bitttt: error: {message}" + (f" (hint: {hint})" if hint else ""))
    return code
