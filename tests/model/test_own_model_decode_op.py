"""The one-call decode op of bitttt's own packed models (ops.bitttt_decode_, taken by
bitttt.nn.decode.whole_token) against the per-op path (BITTTT_FUSED_DECODE=0), the oracle:
the same greedy tokens, logits within LOGITS_ATOL (its float steps sum in another order than
torch's reductions, so not bit for bit)."""

from __future__ import annotations

import copy
import unittest.mock as mock

import pytest
import torch

from bitttt import ops
from bitttt.model import BitTTTConfig, BitTTTForCausalLM
from bitttt.nn import decode
from bitttt.nn.attention import KV_MIN_CAPACITY
from bitttt.nn.bitlinear import LUT16_ENV, TRIT5_ENV
from greedy import decode_from, prefill  # noqa: E402  (tests/ is on sys.path)

LOGITS_ATOL = 1e-5  # as tests/hf/test_fused_decode.py's float32 one-call decode

# every layout of the blocks the op runs: attention, TTT with q/k or a conv, with or without the gate
VARIANTS = {
    "attention": dict(mixer="attention"),
    "ttt_linear": dict(mixer="ttt_linear", conv_kernel=0),
    "ttt_linear-gate": dict(mixer="ttt_linear", conv_kernel=0, use_gate=False),
    "ttt_linear+conv": dict(mixer="ttt_linear", conv_kernel=4),
    "ttt_linear+conv2-gate": dict(mixer="ttt_linear", conv_kernel=2, use_gate=False),
}
LAYOUTS = {"bt2": {TRIT5_ENV: "0", LUT16_ENV: "0"}, "trit5": {TRIT5_ENV: "1", LUT16_ENV: "0"},
           "lut16": {TRIT5_ENV: "0", LUT16_ENV: "1"}}


def micro(seed: int = 0, **kw) -> BitTTTForCausalLM:
    torch.manual_seed(seed)
    config = dict(vocab_size=320, n_layer=2, n_embd=64, n_head=2, mini_batch=4, intermediate_size=0)
    config.update(kw)
    return BitTTTForCausalLM(BitTTTConfig(**config)).eval()


def both_paths(model, monkeypatch, ids, steps=19) -> tuple[tuple, tuple, int]:
    """(op path's tokens and logits, per-op path's, calls of the op)."""
    calls = []
    op = ops.bitttt_decode_
    monkeypatch.setattr(ops, "bitttt_decode_", lambda *a: (calls.append(1), op(*a))[1])
    monkeypatch.setenv(decode.FUSED_ENV, "0")
    want = decode_from(model, *prefill(model, ids), steps)
    assert not calls
    monkeypatch.setenv(decode.FUSED_ENV, "1")
    got = decode_from(model, *prefill(model, ids), steps)
    return got, want, len(calls)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_op_decodes_as_the_per_op_path(variant, layout, monkeypatch):
    for name, value in LAYOUTS[layout].items():
        monkeypatch.setenv(name, value)
    model = micro(**VARIANTS[variant]).pack()
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(3))  # 7 + 19: past 6 mini-batches
    (tokens, logits), (want_tokens, want_logits), calls = both_paths(model, monkeypatch, ids)
    assert calls == 19
    assert tokens == want_tokens
    torch.testing.assert_close(logits, want_logits, atol=LOGITS_ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["attention", "ttt_linear+conv"])
def test_the_layouts_give_the_same_bits(variant, monkeypatch):
    """lut16, trit5 and BT2 hold the same weights and their kernels the same integer sums."""
    results = []
    for layout in LAYOUTS:
        for name, value in LAYOUTS[layout].items():
            monkeypatch.setenv(name, value)
        model = micro(**VARIANTS[variant]).pack()
        ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(3))
        results.append(decode_from(model, *prefill(model, ids), 9))
    for tokens, logits in results[1:]:
        assert tokens == results[0][0]
        torch.testing.assert_close(logits, results[0][1], atol=0, rtol=0)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("mixer", ["attention", "ttt_linear"])
def test_the_op_gives_the_same_bits_at_any_thread_count(mixer, threads):
    """Every value is computed by one worker in one order, whoever claims the task."""
    args = op_args(mixer, n_layer=3, n_embd=1024, n_head=8, prompt=list(range(1, 40)))  # stages long enough for every worker to join
    old = torch.get_num_threads()
    try:
        outs = []
        for n in (1, threads):
            torch.set_num_threads(n)
            a = copy.deepcopy(args)
            ops.bitttt_decode_(*a)
            filled = [t[:, :, :a[5] + 1] if mixer == "attention" else t for t in a[2]]  # a KV buffer's written part
            outs.append((a[0], filled))  # x and the state the op updated
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


def test_the_kv_buffer_grows_and_a_fork_keeps_its_past(monkeypatch):
    """Past the first buffer's room the cache moves to a larger one; two continuations of one
    cache (a fork) each see their own tokens, as on the per-op path."""
    model = micro(mixer="attention").pack()
    ids = torch.randint(0, 256, (1, KV_MIN_CAPACITY - 3), generator=torch.Generator().manual_seed(6))
    (tokens, logits), (want_tokens, want_logits), calls = both_paths(model, monkeypatch, ids, steps=8)
    assert calls == 8 and tokens == want_tokens
    torch.testing.assert_close(logits, want_logits, atol=LOGITS_ATOL, rtol=0)
    token, cache = prefill(model, ids[:, :20])
    decode_from(model, token, cache, 1)  # writes position 20 into the buffer
    a = decode_from(model, torch.tensor([[5]]), cache, 4)  # both continue `cache`, after its token
    b = decode_from(model, torch.tensor([[9]]), cache, 4)
    monkeypatch.setenv(decode.FUSED_ENV, "0")
    want_a = decode_from(model, torch.tensor([[5]]), cache, 4)
    want_b = decode_from(model, torch.tensor([[9]]), cache, 4)
    assert a[0] == want_a[0] and b[0] == want_b[0]
    torch.testing.assert_close(b[1], want_b[1], atol=LOGITS_ATOL, rtol=0)


def test_the_ttt_state_is_consumed_as_by_the_python_step(monkeypatch):
    """The op advances the TTT state in place, as ttt_linear_decode_ does (a deep copy taken
    before a step goes back to that point), and writes the conv's next inputs into a tensor of
    its own: the cache passed in keeps its conv inputs, as on the Python step."""
    model = micro(mixer="ttt_linear", conv_kernel=4).pack()
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(8))
    token, cache = prefill(model, ids)
    saved = copy.deepcopy(cache)
    convs = [s.conv.clone() for s in cache.states]
    first = decode_from(model, token, cache, 5)
    assert all(torch.equal(s.conv, c) for s, c in zip(cache.states, convs))
    again = decode_from(model, token, saved, 5)
    assert first[0] == again[0]
    torch.testing.assert_close(first[1], again[1], atol=0, rtol=0)


@pytest.mark.parametrize("change", ["load", "in-place", "cast"])
def test_the_weights_list_follows_the_model(change, monkeypatch):
    """The op's weights list is built once per model: a load, a write into a weight the op reads
    through a copy (the TTT token scale) or a cast round trip must give a new list."""
    model = micro(mixer="ttt_linear", conv_kernel=4).pack()
    ids = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(4))
    decode_from(model, *prefill(model, ids), 3)  # builds the list from seed 0's weights
    with torch.no_grad():
        if change == "load":
            model.load_state_dict(micro(seed=1, mixer="ttt_linear", conv_kernel=4).pack().state_dict())
        elif change == "in-place":
            for block in model.blocks:
                block.mixer.layer.token_scale_offset.add_(0.5)
                block.mixer.layer.conv_q.conv.weight.mul_(-1)
        else:
            model.half().float()
    (tokens, logits), (want_tokens, want_logits), calls = both_paths(model, monkeypatch, ids)
    assert calls == 19 and tokens == want_tokens
    torch.testing.assert_close(logits, want_logits, atol=LOGITS_ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["float-twin", "fake-quant", "ttt_mlp", "batch", "wide-head"])
def test_the_op_is_not_taken_where_it_does_not_apply(kind, monkeypatch):
    calls = []
    monkeypatch.setattr(ops, "bitttt_decode_", lambda *a: calls.append(1))
    wide = dict(n_embd=2 * (decode.MAX_HEAD_DIM + 2), n_head=2) if kind == "wide-head" else {}
    model = micro(mixer="ttt_mlp" if kind == "ttt_mlp" else "attention", ternary=kind != "float-twin", **wide)
    if kind in ("ttt_mlp", "batch", "wide-head"):
        model.pack()
    ids = torch.randint(0, 256, (2 if kind == "batch" else 1, 5), generator=torch.Generator().manual_seed(2))
    token, cache = prefill(model, ids)
    with torch.no_grad():
        model(token, cache=cache)
    assert not calls


def op_args(mixer: str = "attention", prompt: list[int] = [1, 2, 3], **kw) -> list:
    """A valid call's arguments (as bitttt.nn.decode builds them, BT2 layout) for a micro model
    (one layer unless kw says otherwise), after `prompt`."""
    model = micro(mixer=mixer, **{"n_layer": 1, "conv_kernel": 4, **kw}).pack()
    token, cache = prefill(model, torch.tensor([prompt]))
    captured = {}
    op = ops.bitttt_decode_

    def capture(*a):
        captured["args"] = copy.deepcopy(a)
        return op(*a)
    with mock.patch.object(ops, "bitttt_decode_", capture), \
            mock.patch.dict("os.environ", {TRIT5_ENV: "0", LUT16_ENV: "0"}), torch.no_grad():
        model(token, cache=cache)
    return list(captured["args"])


@pytest.mark.parametrize("mixer", ["attention", "ttt_linear"])
def test_the_op_refuses_what_does_not_fit(mixer):
    args = op_args(mixer)
    ops.bitttt_decode_(*copy.deepcopy(args))  # as captured: accepted
    bad = {
        "x dtype": (0, lambda a: a.double()),
        "short weights": (1, lambda w: w[:-1]),
        "short state": (2, lambda s: s[:-1]),
        "mixer": (4, lambda m: 7),
        "layout": (8, lambda v: 3),
        "heads": (6, lambda h: 3),
        "eps": (10, lambda e: 0.0),
    }
    if mixer == "attention":
        bad["pos past the buffer"] = (5, lambda p: 10 ** 6)
        bad["rope"] = (3, lambda r: r[:-1])
    else:
        bad["ttt flags"] = (9, lambda t: t[:2])
        bad["state W"] = (2, lambda s: [s[0][..., :-1]] + s[1:])
    for name, (i, change) in bad.items():
        a = copy.deepcopy(args)
        a[i] = change(a[i])
        with pytest.raises(RuntimeError, match="bitttt_decode_"):
            ops.bitttt_decode_(*a)
        assert name
