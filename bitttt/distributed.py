"""Data-parallel training under torchrun (docs/design.md §6): the process group, each rank's
share of the batch, reductions, rank-0-only writing, stop agreement and error reports.

`bitttt train` runs as one process of a job when torchrun's RANK, WORLD_SIZE and LOCAL_RANK
are set (DDP; NCCL on CUDA, gloo on CPU); `bitttt train --nproc N` starts such a job on this
machine (`launch`). A `World` of size 1 (no torchrun) makes every method a no-op, so the
trainer reads the same either way.

- Batches: `--batch-size` is per process. Every rank draws the same seeded global batch of
  batch_size x world_size windows and keeps its own rows (`batch_share`), so a job sees the
  tokens that one process with the global batch size would see.
- Only rank 0 writes events, samples, config and checkpoints; the other ranks' stdout goes to
  /dev/null. The model and optimizer are the same on every rank after each step, so rank 0's
  checkpoint is the job's, and it resumes with any number of processes.
- Failures: a rank that fails writes its error into the rendezvous store before it exits;
  rank 0, whose next collective then fails (or times out after `dist_timeout` seconds if the
  other rank hangs), reports the first error, naming its rank. torchrun's agent ends the
  remaining processes when one exits with an error.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from bitttt.errors import ConfigError
from bitttt.stop import StopRequested

# Test hook: "RANK:step=N" raises on that rank before step N; "RANK:step=N:hang" sleeps there.
FAULT_ENV = "BITTTT_TEST_FAIL_RANK"
ERROR_COUNT_KEY, ERROR_KEY = "errors", "error/{}"  # in the rendezvous store, under "bitttt/<attempt>/"
# What gloo and NCCL raise in a collective when a peer died or did not answer in time.
LOST_PEER = re.compile(r"gloo|NCCL|Connection (closed|reset) by peer|Timed out|timed out|timeout")
LOST_PEER_HINT = ("another rank died or hung: see its output and torchrun's summary; if a rank is only slow "
                  "(rank 0 saving or sampling), raise --dist-timeout")


@dataclass
class World:
    """This process's place in the job; World() is a single process."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    store: Any = None  # the rendezvous store (torch.distributed.Store), once started
    device: torch.device | None = None  # this rank's device, once started
    ddp: Any = None  # the DistributedDataParallel wrapper, once wrapped

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> World:
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK; a single process without them.
        On ranks other than 0, stdout goes to /dev/null: only rank 0 speaks (design §6)."""
        env = os.environ if environ is None else environ
        try:
            world = cls(rank=int(env.get("RANK", 0)), local_rank=int(env.get("LOCAL_RANK", 0)),
                        size=int(env.get("WORLD_SIZE", 1)))
        except ValueError:
            raise ConfigError(f"RANK={env.get('RANK')!r}, LOCAL_RANK={env.get('LOCAL_RANK')!r}, "
                              f"WORLD_SIZE={env.get('WORLD_SIZE')!r}: expected integers",
                              hint="launch with torchrun (or bitttt train --nproc N), which sets them") from None
        if not 0 <= world.rank < world.size:
            raise ConfigError(f"RANK={world.rank} is not in [0, WORLD_SIZE={world.size})", hint="launch with torchrun")
        if not world.is_main:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        return world

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    # -- process group -------------------------------------------------------------------

    def place(self, device: torch.device) -> torch.device:
        """The device of this rank: cuda:LOCAL_RANK for CUDA under torchrun."""
        if not self.is_distributed or device.type != "cuda":
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={self.local_rank} but this machine has {torch.cuda.device_count()} "
                              "CUDA device(s)", hint="start at most one process per GPU (--nproc-per-node)")
        return torch.device("cuda", self.local_rank)

    def start(self, device: torch.device, timeout_s: float) -> None:
        """Joins the job's process group (NCCL for CUDA, gloo for CPU). A collective that waits
        more than timeout_s for another rank raises, so a hung rank cannot stall the job forever."""
        self.device = self.place(device)
        if not self.is_distributed:
            return
        timeout = timedelta(seconds=timeout_s)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", store=store, rank=rank,
                                world_size=size, timeout=timeout)
        # Error reports per attempt: a job that torchrun restarts (--max-restarts) reuses the store.
        self.store = dist.PrefixStore(f"bitttt/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)

    def close(self) -> None:
        if dist.is_initialized():
            with contextlib.suppress(Exception):  # the group may be broken by a failed rank
                dist.destroy_process_group()

    def share(self, value: Any) -> Any:
        """Rank 0's value of a picklable object, on every rank (e.g. the default run directory)."""
        if not self.is_distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    @contextlib.contextmanager
    def rank0_first(self) -> Iterator[None]:
        """Runs the block on rank 0, then on the first process of each other machine, then on
        the rest: caches that rank 0 writes (tokenizer, token cache) are there for the others
        on a shared disk, and each machine builds its own once on a local disk."""
        turn = 0 if self.is_main else 1 if self.local_rank == 0 else 2
        for _ in range(turn):
            self.barrier()
        yield
        for _ in range(2 - turn):
            self.barrier()

    # -- the model and the batch ---------------------------------------------------------

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP around the model (the model itself for one process).

        find_unused_parameters=False: every parameter gets a gradient in every step, for every
        mixer (tests/distributed/test_ddp_units.py checks it). The TTT fast weights and the
        ternary fake-quant weights are activations computed from the parameters on each rank,
        not parameters, so DDP neither buckets nor broadcasts them. No buffer sync before each
        forward: the only buffers (RoPE frequencies, TTT token indices) are constants.
        """
        if not self.is_distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # torch 2.13 renamed broadcast_buffers; both mean "no buffer sync before each forward".
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                   inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False})
        self.ddp = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                           find_unused_parameters=False, **no_sync)
        return self.ddp

    def sync_grads(self, last_micro_step: bool) -> contextlib.AbstractContextManager:
        """Around forward and backward of a micro-step: gradients are all-reduced on the last
        micro-step of an optimizer step only (DDP's no_sync on the others)."""
        if self.ddp is None or last_micro_step:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    @property
    def batch_share(self) -> tuple[int, int]:
        """(rank, world size): which rows of the global batch are this rank's (data.get_batch)."""
        return self.rank, self.size

    def eval_share(self, starts: Any) -> Any:
        """This rank's windows of the evaluation set (every size-th, from its rank)."""
        return starts[self.rank::self.size]

    # -- reductions and agreement --------------------------------------------------------

    def _all_reduce(self, value: float, op: Any) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return float(t.item())

    def mean(self, value: float) -> float:
        """The mean over ranks (the loss of the global batch: every rank has as many tokens)."""
        return self._all_reduce(value, dist.ReduceOp.SUM) / self.size if self.is_distributed else value

    def sum(self, value: float) -> float:
        return self._all_reduce(value, dist.ReduceOp.SUM) if self.is_distributed else value

    def agree_stop(self, stop: Any) -> str | None:
        """Why to stop after this step, the same on every rank (a collective: call it every step).
        Rank 0 alone reads the STOP file; every rank counts the signals it received."""
        mine = stop.requested() if self.is_main else stop.signal
        if not self.is_distributed:
            return mine
        anyone = self._all_reduce(1.0 if mine else 0.0, dist.ReduceOp.MAX)
        return mine or ("a stop request on another rank" if anyone else None)

    def check_stop(self, stop: Any) -> None:
        """Raises StopRequested if a stop was asked for, here or (data parallel) on any rank, so a
        stop acts within one micro-step or evaluation batch. Distributed, it is a collective:
        every rank calls it at the same points (train_step's micro-steps, score's batches)."""
        if not self.is_distributed:
            stop.poll()
            return
        why = self.agree_stop(stop)
        if why:
            raise StopRequested(why)

    # -- failures ------------------------------------------------------------------------

    def first_error(self, kind: str, message: str, hint: str, code: int) -> tuple[str, str, str, int, dict]:
        """Publishes this rank's error and returns the job's first one: (kind, message naming its
        rank, hint, exit code, extra event fields). A peer that failed first has published before
        its exit broke this rank's collective. One process: its own error, unchanged."""
        if self.store is None:
            return kind, message, hint, code, {}
        if kind == "exception" and LOST_PEER.search(message):  # a symptom here: the cause is on another rank
            hint = LOST_PEER_HINT
        first = {"rank": self.rank, "kind": kind, "message": message, "hint": hint, "code": code}
        with contextlib.suppress(Exception):  # the store lives in torchrun's agent; it may be gone
            n = self.store.add(ERROR_COUNT_KEY, 1)
            self.store.set(ERROR_KEY.format(n), json.dumps(first))
            self.store.check([ERROR_KEY.format(n)])  # a round trip: the report is in before this rank exits
            if n > 1:
                first = json.loads(self.store.get(ERROR_KEY.format(1)))
        return (first["kind"], f"rank {first['rank']}: {first['message']}", first["hint"], first["code"],
                {"rank": first["rank"]})

    def inject_test_fault(self, step: int, environ: dict[str, str] | None = None) -> None:
        """The test hook of FAULT_ENV: "1:step=2" raises on rank 1 before step 2; "1:step=2:hang"
        sleeps there, ended by torchrun's SIGTERM once rank 0 gave up (a real hang ignores it
        and is killed 30 s later: the test skips that wait)."""
        spec = (os.environ if environ is None else environ).get(FAULT_ENV)
        if not spec:
            return
        rank, _, rest = spec.partition(":")
        fields = dict(part.partition("=")[::2] for part in rest.split(":"))
        if int(rank) == self.rank and int(fields.get("step", 0)) == step:
            if "hang" in fields:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                time.sleep(10**6)
            raise RuntimeError(f"test fault on rank {self.rank} at step {step} ({FAULT_ENV}={spec})")


# ---------------------------------------------------------------------------------------
# bitttt train --nproc N: a one-machine torchrun job
# ---------------------------------------------------------------------------------------


def launch(nproc: int, train_argv: list[str]) -> int:
    """Runs `python -m bitttt train TRAIN_ARGV` as nproc processes of one torchrun job on this
    machine (rendezvous on 127.0.0.1, a free port). Returns the job's exit code: rank 0's, or
    the first failed rank's (design §6 codes; 1 for a rank killed by a signal)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if "RANK" in os.environ:
        raise ConfigError("--nproc: this is already a process of a torchrun job", hint="drop --nproc")
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    # Threads per process: this machine's cores shared out (torchrun itself sets 1), unless set.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"bitttt-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", local_addr="127.0.0.1", max_restarts=0)
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "bitttt", "train", *train_argv)
    except ChildFailedError as e:
        # A code bitttt chose (rank 0's names the first failure) over a kill by the agent's SIGTERM.
        rank, failure = min(e.failures.items(), key=lambda kv: (kv[1].exitcode <= 0, kv[0] != 0, kv[1].timestamp))
        code = failure.exitcode if failure.exitcode > 0 else 1
        print(f"bitttt: train --nproc {nproc}: rank {rank} exited with {failure.exitcode}; "
              "see its error above", file=sys.stderr)
        return code
    except SignalException:
        return 0  # the workers got the signal too: they stopped at a step and saved (design §6 Stop)
    return 0
