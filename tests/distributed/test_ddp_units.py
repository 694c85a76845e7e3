"""bitttt.distributed in one process: the batch share, torchrun's environment, the --nproc
argument handling, the test hook, and the property DDP's settings rely on (every parameter
gets a gradient, for every mixer)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from bitttt import cli, data
from bitttt.distributed import FAULT_ENV, World
from bitttt.errors import ConfigError
from bitttt.model import BitTTTConfig, BitTTTForCausalLM


def test_rank_shares_are_the_global_batch_in_order():
    tokens = np.arange(10_000, dtype=np.uint16)
    B, W, T = 3, 4, 16
    x_all, y_all = data.get_batch(tokens, B * W, T, seed=7, step=5, micro=1, device=torch.device("cpu"))
    shares = [data.get_batch(tokens, B, T, 7, 5, 1, torch.device("cpu"), rank=r, world_size=W) for r in range(W)]
    assert torch.equal(torch.cat([x for x, _ in shares]), x_all)
    assert torch.equal(torch.cat([y for _, y in shares]), y_all)
    # disjoint rows: no window is drawn twice (the starts of the 12 windows are distinct here)
    assert len({int(r[0]) for r in x_all}) == B * W


def test_world_from_torchrun_env(monkeypatch):
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # restored after the test
    w = World.from_env({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "4"})
    assert (w.rank, w.local_rank, w.size, w.is_main, w.is_distributed) == (0, 0, 4, True, True)
    out = sys.stdout
    w = World.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert not w.is_main and sys.stdout is not out and sys.stdout.name == os.devnull  # other ranks are quiet
    assert World.from_env({}) == World()


@pytest.mark.parametrize("env", [{"RANK": "x", "WORLD_SIZE": "2"}, {"RANK": "2", "WORLD_SIZE": "2"}])
def test_world_rejects_a_bad_env(env):
    with pytest.raises(ConfigError, match="RANK"):
        World.from_env(env)


def test_one_process_world_passes_values_through():
    class Stop:
        signal = None

        def requested(self):
            return "STOP file"

    w = World()
    assert w.mean(2.5) == 2.5 and w.sum(3.0) == 3.0 and w.agree_stop(Stop()) == "STOP file"
    assert w.first_error("oom", "out of memory", "smaller batch", 4) == ("oom", "out of memory", "smaller batch", 4, {})
    assert w.batch_share == (0, 1) and list(w.eval_share(np.arange(5))) == [0, 1, 2, 3, 4]
    model = torch.nn.Linear(2, 2)
    assert w.wrap(model) is model


def test_eval_shares_cover_the_windows_once():
    starts = np.arange(11)
    shares = [World(rank=r, size=3).eval_share(starts) for r in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(11))


def test_fault_hook_raises_on_its_rank_and_step_only():
    env = {FAULT_ENV: "1:step=2"}
    World(rank=0, size=2).inject_test_fault(2, env)
    World(rank=1, size=2).inject_test_fault(1, env)
    with pytest.raises(RuntimeError, match="test fault on rank 1 at step 2"):
        World(rank=1, size=2).inject_test_fault(2, env)


def test_nproc_is_taken_out_of_the_workers_arguments():
    assert cli._without_nproc(["train", "--nproc", "2", "--steps", "3", "--nproc=4", "--seed", "1"]) == \
        ["train", "--steps", "3", "--seed", "1"]


def test_nproc_inside_a_torchrun_job_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["train", "--nproc", "2", "--steps", "1"]) == 2
    assert "already a process of a torchrun job" in capsys.readouterr().err


def test_print_config_with_nproc_starts_no_job(capsys):
    assert cli.main(["train", "--nproc", "2", "--print-config", "--dist-timeout", "60"]) == 0
    assert '"dist_timeout": 60.0' in capsys.readouterr().out


@pytest.mark.parametrize("ternary", [True, False], ids=["ternary", "float"])
@pytest.mark.parametrize("mixer", ["ttt_linear", "ttt_mlp", "attention"])
def test_every_parameter_gets_a_gradient(mixer, ternary):
    # DDP runs with find_unused_parameters=False: a parameter without a gradient would leave its
    # bucket unreduced and fail the next step. The TTT fast weights and the fake-quant ternary
    # weights are computed from parameters inside forward, so they need no gradient of their own.
    torch.manual_seed(0)
    config = BitTTTConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=2, mixer=mixer, ternary=ternary, mini_batch=4)
    model = BitTTTForCausalLM(config)
    x = torch.randint(0, 64, (2, 11))
    model(x, labels=x).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []
    buffers = {name for name, b in model.named_buffers() if b.is_floating_point()}
    assert all(name.endswith(("inv_freq", "token_idx")) for name in buffers)  # constants: no buffer sync needed


class _RankOf2:
    """The parts of a World that evaluate.score uses, for rank `rank` of 2, without a process
    group: counts the stop checks (a collective under data parallel) and sums nothing."""

    def __init__(self, rank: int) -> None:
        self.rank, self.size, self.checks = rank, 2, 0

    def eval_share(self, starts):
        return starts[self.rank::self.size]

    def sum(self, value: float) -> float:
        return value


@pytest.mark.parametrize("n_windows", [1, 16, 17, 33, 48])
def test_every_rank_checks_for_a_stop_equally_often_in_an_evaluation(n_windows):
    """The stop check is a collective: a rank with one batch fewer (33 windows: 17 and 16, so 2
    batches and 1) would leave the other waiting in it."""
    from bitttt.evaluate import EVAL_BATCH, HeldOut, score

    seq_len = 4
    held = HeldOut(np.arange(n_windows * seq_len + 1, dtype=np.int64) % 7, np.arange(n_windows) * seq_len, seq_len, 1)
    model = BitTTTForCausalLM(BitTTTConfig(vocab_size=8, n_embd=16, n_head=2, n_layer=1))
    counts = []
    for rank in (0, 1):
        world = _RankOf2(rank)
        score(model, held, torch.device("cpu"), world, check=lambda w=world: setattr(w, "checks", w.checks + 1))
        counts.append(world.checks)
    largest_share = -(-n_windows // 2)  # ceil: rank 0's share
    assert counts == [-(-largest_share // EVAL_BATCH)] * 2
