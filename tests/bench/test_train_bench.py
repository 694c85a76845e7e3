"""`bitttt bench train`: contenders through the harness, each checked (a real step) before timing."""

from __future__ import annotations

import io
import json

import pytest
import torch

from bitttt import cli
from bitttt.bench import harness, train
from bitttt.errors import ConfigError


def quick_args(*more: str):
    return cli.build_parser().parse_args(["bench", "train", "--quick", *more])


def test_quick_run_times_every_contender_against_nanogpt(tmp_path):
    path = tmp_path / "train.json"
    out = io.StringIO()
    record = train.run(quick_args("--contenders", "attention-float", "--json", str(path)), out=out)
    assert [(r.contender, r.unit, r.rounds) for r in record.results] == [("nanogpt", "tok/s", 5),
                                                                         ("attention-float", "tok/s", 5)]
    base, twin = record.results
    assert base.extra["vs_nanogpt"] == 1.0 and twin.extra["vs_nanogpt"] == pytest.approx(twin.median / base.median)
    assert twin.extra["n_params"] != base.extra["n_params"]  # two different models
    d = json.loads(path.read_text())
    assert harness.check_record(d) == [] and d["settings"]["batch_size"] == 2


def test_a_step_that_does_not_train_stops_the_bench_before_timing(monkeypatch):
    real = train.make_trainer

    def frozen(name, *a):
        trainer = real(name, *a)
        if name == "attention-float":
            trainer.optimizer.step = lambda *x, **k: None  # the weights never move
        return trainer

    timed = []
    monkeypatch.setattr(train, "make_trainer", frozen)
    monkeypatch.setattr(harness, "time_case", lambda *a, **k: timed.append(a))
    with pytest.raises(harness.BenchValidationError, match="attention-float: .*did not move"):
        train.run(quick_args("--contenders", "attention-float"), out=io.StringIO())
    assert timed == []


def test_the_check_wants_a_fresh_models_loss_near_ln_vocab():
    t = train.resolve(quick_args())[1]
    import numpy as np

    trainer = train.make_trainer("nanogpt", "tiny", t, np.zeros(1 << 12, dtype=np.uint16))
    with torch.no_grad():
        trainer.model.lm_head.weight.mul_(100.0)  # confident logits: far from uniform
    with pytest.raises(harness.BenchValidationError, match="expected ln"):
        train.check_step("nanogpt", trainer, 320)


def test_unknown_contender_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown contenders"):
        train.run(quick_args("--contenders", "gpt5"), out=io.StringIO())
    assert set(train.DEFAULT_CONTENDERS) <= set(train.contender_names())


def test_a_compiled_contender_takes_the_same_first_step_as_its_eager_twin():
    """`+compile`: the same model, its forward torch.compile'd; the check step (which compiles,
    outside the timing) gives eager's loss to float rounding and records how long it took."""
    import numpy as np

    t = train.resolve(quick_args())[1]
    tokens = np.random.default_rng(0).integers(0, 256, size=1 << 12, dtype=np.uint16)
    eager = train.make_trainer("ttt_linear-ternary", "tiny", t, tokens)
    compiled = train.make_trainer("ttt_linear-ternary+compile", "tiny", t, tokens)
    assert isinstance(compiled.forward, torch._dynamo.eval_frame.OptimizedModule)
    assert not isinstance(eager.forward, torch._dynamo.eval_frame.OptimizedModule)
    extra: dict = {}
    first = [train.check_step("ttt_linear-ternary", eager, 320),
             train.timed_check("ttt_linear-ternary+compile", compiled, 320, extra)]
    second = [eager.train_step(10**6 + 1)[0], compiled.train_step(10**6 + 1)[0]]
    assert extra["compile_s"] > 0
    # rel 1e-4, not float rounding: Inductor's absmean of a weight rounds otherwise than torch's
    # mean (the ternary scale moves by ulps), and that moves some activations across an int8
    # rounding boundary (a 1/127 step). Later steps drift further (AdamW's first steps are
    # sign-like); tests/train checks the float twin's step to float rounding.
    assert first[1] == pytest.approx(first[0], rel=1e-4)
    assert second[0] != first[0]  # the step trained: the second loss is another number
