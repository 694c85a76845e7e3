"""The one-call decode step (ops.bitnet_decode_, csrc/decode/bitnet_decode_cpu.cpp) against the
per-op layers it replaces (BITTTT_FUSED_DECODE=0: bitttt.hf.bitnet's Attention and MLP, the
oracle) on tiny HF BitNet folders: same greedy tokens, logits and KV cache, in float32 and
bfloat16, with non-default GQA groups, rope_theta, rms_norm_eps and head sizes."""

from __future__ import annotations

import pytest
import torch

from bitttt import ops
from bitttt.generate import decode_rows
from bitttt.hf import bitnet, load_bitnet
from bitttt.model import ModelCache
from hf_folders import tiny_config, write_packed

# Both paths run the same ternary kernels on the same quantized inputs; only the attention's
# float32 sums are in another order (~1e-7 relative per layer), so float32 logits of ~3.5
# agree to ~1e-6 (measured 9.5e-7). 1e-5 leaves 10x room.
F32_ATOL = 1e-5
# In bfloat16 every step rounds to 8 bits, as the per-op path rounds: a float32 attention sum a
# few ulp apart rounds to the same bfloat16 almost always (measured: identical logits); a rare
# flip moves one value by one bf16 step (~0.4%), which the tiny model's logits carry as < 0.05.
BF16_ATOL = 0.05
STEPS = 40

CONFIGS = {
    "default": {},
    "gqa4-theta1234-eps1e-3": dict(num_attention_heads=8, num_key_value_heads=2, intermediate_size=96,
                                   rope_theta=1234.0, rms_norm_eps=1e-3),
    "mqa-D20-I300": dict(num_attention_heads=4, num_key_value_heads=1, hidden_size=80, intermediate_size=300),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny) -> dict[str, str]:
    from transformers import BitNetForCausalLM

    out = {}
    for i, (name, kw) in enumerate(CONFIGS.items()):
        torch.manual_seed(10 + i)
        out[name] = str(tmp_path_factory.mktemp("fused") / name)
        write_packed(out[name], BitNetForCausalLM(tiny_config(**kw)).float().eval())
    return out


def decode(model, fused: bool, monkeypatch, steps: int = STEPS, prompt_len: int = 8):
    """Greedy steps after a prompt: (logits [steps, V], tokens, final cache)."""
    monkeypatch.setenv(bitnet.FUSED_DECODE_ENV, "1" if fused else "0")
    ids = torch.randint(0, 290, (1, prompt_len), generator=torch.Generator().manual_seed(3))
    logits, tokens = [], []
    with torch.no_grad():
        out = model(ids, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            out = model(token, cache=out.cache)
            logits.append(out.logits[0, -1])
            token = out.logits[:, -1:].argmax(-1)
            tokens.append(int(token))
    return torch.stack(logits), tokens, out.cache


def count_calls(monkeypatch) -> list[int]:
    calls = [0]
    real = ops.bitnet_decode_

    def counted(*args):
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(ops, "bitnet_decode_", counted)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_fused_decode_matches_the_per_op_layers(folders, config, dtype, monkeypatch):
    model = load_bitnet(folders[config], dtype=dtype)
    want_logits, want_tokens, want_cache = decode(model, False, monkeypatch)
    calls = count_calls(monkeypatch)
    got_logits, got_tokens, got_cache = decode(model, True, monkeypatch)
    assert calls[0] == STEPS  # the fused op ran every step (else this test compares a path with itself)
    assert got_tokens == want_tokens
    torch.testing.assert_close(got_logits, want_logits, atol=F32_ATOL if dtype == torch.float32 else BF16_ATOL,
                               rtol=0)
    assert got_cache.pos == want_cache.pos
    # Layer 0's k, v come from the same input through the same kernel, norm and RoPE roundings:
    # bit for bit. Later layers see the attention's summation order through x.
    for got, want in zip(got_cache.states[0], want_cache.states[0]):
        assert got.dtype == dtype and torch.equal(got, want)
    for (gk, gv), (wk, wv) in zip(got_cache.states, want_cache.states):
        torch.testing.assert_close(gk.float(), wk.float(), atol=1e-5 if dtype == torch.float32 else 0.05, rtol=0)
        torch.testing.assert_close(gv.float(), wv.float(), atol=1e-5 if dtype == torch.float32 else 0.05, rtol=0)


def test_fused_decode_gives_the_same_bits_on_any_thread_count(folders, monkeypatch):
    """Tasks, not threads, decide what each output is: 1 and 2 threads give the same bits (the
    int8 head is exact; the float one is a BLAS GEMV whose sums follow the thread count)."""
    model = load_bitnet(folders["gqa4-theta1234-eps1e-3"], dtype=torch.float32, lm_head="int8")
    monkeypatch.setenv(bitnet.FUSED_DECODE_ENV, "1")
    threads = torch.get_num_threads()
    runs = []
    with torch.no_grad():
        prefill = model(torch.tensor([[5, 6, 7, 8]]), use_cache=True)  # one prefill for both
        try:
            for n in (1, 2):
                torch.set_num_threads(n)
                out, logits = prefill, []
                for token in (9, 10, 11, 12, 13, 14):  # the first step copies the prefill's k, v
                    out = model(torch.tensor([[token]]), cache=out.cache)
                    logits.append(out.logits)
                runs.append(torch.cat(logits))
        finally:
            torch.set_num_threads(threads)
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_fused_decode_on_lut16_layouts_gives_the_bt2_bits(folders, dtype, monkeypatch):
    """BITTTT_LUT16=1 gives the layers lut16 layouts and the op the lookup kernels: the same
    int32 dot products as BT2's (issue 25), so the same logits bit for bit."""
    from bitttt.nn.bitlinear import LUT16_ENV

    runs = []
    for setting in ("0", "1"):
        monkeypatch.setenv(LUT16_ENV, setting)
        model = load_bitnet(folders["mqa-D20-I300"], dtype=dtype, lm_head="int8")
        assert (len(model.decode_weights()[1]) > 0) == (setting == "1")
        runs.append(decode(model, True, monkeypatch, steps=8))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


def test_fused_decode_matches_transformers_greedy(tiny, monkeypatch):
    """The HF oracle itself, beside the per-op one: transformers' greedy tokens."""
    from test_loader import hf_greedy, prompts

    from bitttt.generate import SamplingParams, generate_ids

    model = load_bitnet(tiny.packed, dtype=torch.float32)
    prompt = prompts()[2, :8].tolist()
    calls = count_calls(monkeypatch)
    got = list(generate_ids(model, prompt, SamplingParams(max_new_tokens=24, temperature=0)))
    assert calls[0] == 24 and got == hf_greedy(tiny.hf_model("packed"), prompt, 24)


def test_bad_kv_buffers_are_a_clear_error(folders):
    model = load_bitnet(folders["default"], dtype=torch.float32)
    c = model.config
    weights, lut16 = model.decode_weights()
    x = torch.zeros(c.hidden_size)
    cos = sin = torch.zeros(c.head_dim)
    kv = [torch.zeros(1, c.num_key_value_heads, 4, c.head_dim) for _ in range(2 * c.num_hidden_layers)]
    args = (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size, c.rms_norm_eps)
    with pytest.raises(RuntimeError, match=r"bitnet_decode_: the KV buffers of layer 0 \(row 0\) must be"):
        ops.bitnet_decode_(x, weights, lut16, kv, cos, sin, [4], *args)  # pos 4 does not fit 4 positions
    with pytest.raises(RuntimeError, match=r"bitnet_decode_: weights must hold 12 tensors per layer"):
        ops.bitnet_decode_(x, weights[:-1], lut16, kv, cos, sin, [0], *args)
    x2, cos2 = torch.zeros(2, c.hidden_size), torch.zeros(2, c.head_dim)
    with pytest.raises(RuntimeError, match=r"kv 2 \(k, v\) per layer and row"):
        ops.bitnet_decode_(x2, weights, lut16, kv, cos2, cos2, [0, 0], *args)  # one row's buffers for two rows
    with pytest.raises(RuntimeError, match=r"KV buffers of its own"):
        ops.bitnet_decode_(x2, weights, lut16, kv + kv, cos2, cos2, [0, 0], *args)  # two rows, one buffer
    with pytest.raises(RuntimeError, match=r"x must be contiguous \[B, C\]"):
        ops.bitnet_decode_(x, weights, lut16, kv + [t.clone() for t in kv], cos2, cos2, [0, 0], *args)


def test_fused_decode_stays_off_where_it_does_not_apply(folders, monkeypatch):
    """Autograd, and a model whose layers have biases, run the per-op layers."""
    model = load_bitnet(folders["default"], dtype=torch.float32)
    calls = count_calls(monkeypatch)
    out = model(torch.tensor([[1, 2]]), use_cache=True)
    model(torch.tensor([[3]]), cache=out.cache)  # grad mode on
    model.layers[0].self_attn.qkv.bias = torch.zeros(model.layers[0].self_attn.qkv.out_features)
    model._decode_weights = None
    with torch.no_grad():
        model(torch.tensor([[3]]), cache=out.cache)
        decode_rows(model, [4, 5], [model(torch.tensor([[1, 2, 3]]), use_cache=True).cache for _ in range(2)])
    assert calls[0] == 0


# ---------------------------------------------------------------------------------------
# B rows in one call (bitttt serve's batch, through bitttt.generate.decode_rows)
# ---------------------------------------------------------------------------------------

PROMPTS = [[5, 6, 7], [9] * 11, [1], [30, 31, 32, 33, 34, 35, 36]]  # rows at positions 3, 11, 1, 7


def copy_cache(cache):
    return ModelCache([(k.clone(), v.clone()) for k, v in cache.states], cache.pos)


def row_steps(model, steps: int, one_row: bool):
    """Greedy steps of the PROMPTS' rows after their prefills: one decode_rows call per step
    (one_row False), or each row as its own one-token call (one_row True, the oracle).
    Returns (logits [steps, B, V], the final caches)."""
    with torch.no_grad():
        prefills = [model(torch.tensor([p]), use_cache=True) for p in PROMPTS]
    caches = [copy_cache(o.cache) for o in prefills]
    tokens = [int(o.logits[0, -1].argmax()) for o in prefills]
    out = []
    with torch.no_grad():
        for _ in range(steps):
            if one_row:
                outs = [model(torch.tensor([[t]]), cache=c) for t, c in zip(tokens, caches)]
                logits, caches = torch.stack([o.logits[0, -1] for o in outs]), [o.cache for o in outs]
            else:
                logits, caches = decode_rows(model, tokens, caches)
            out.append(logits)
            tokens = logits.argmax(-1).tolist()
    return torch.stack(out), caches


@pytest.mark.parametrize("lut16", ["0", "1"], ids=["bt2", "lut16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_rows_in_one_call_equal_one_call_per_row(folders, dtype, lut16, monkeypatch):
    """Row b of a B-row call is the one-row call on row b, bit for bit: logits and KV caches,
    rows at different positions, over several steps (each projection is one GEMM over the rows,
    whose int32 sums do not depend on M)."""
    from bitttt.nn.bitlinear import LUT16_ENV

    monkeypatch.setenv(LUT16_ENV, lut16)
    model = load_bitnet(folders["gqa4-theta1234-eps1e-3"], dtype=dtype, lm_head="int8")
    assert (len(model.decode_weights()[1]) > 0) == (lut16 == "1")
    monkeypatch.setenv(bitnet.FUSED_DECODE_ENV, "1")
    want_logits, want_caches = row_steps(model, 6, one_row=True)
    calls = count_calls(monkeypatch)
    got_logits, got_caches = row_steps(model, 6, one_row=False)
    assert calls[0] == 6  # one call per step for all rows
    assert torch.equal(got_logits, want_logits)
    for got, want in zip(got_caches, want_caches):
        assert got.pos == want.pos
        for (gk, gv), (wk, wv) in zip(got.states, want.states):
            assert torch.equal(gk, wk) and torch.equal(gv, wv)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_rows_in_one_call_match_the_per_op_rows(folders, dtype, monkeypatch):
    """The per-op row batch (BITTTT_FUSED_DECODE=0: each mixer's attention row by row) is the
    second oracle: the same tokens, logits within the attention's summation order."""
    model = load_bitnet(folders["mqa-D20-I300"], dtype=dtype)
    monkeypatch.setenv(bitnet.FUSED_DECODE_ENV, "0")
    want, _ = row_steps(model, 8, one_row=False)
    monkeypatch.setenv(bitnet.FUSED_DECODE_ENV, "1")
    calls = count_calls(monkeypatch)
    got, _ = row_steps(model, 8, one_row=False)
    assert calls[0] == 8
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    torch.testing.assert_close(got, want, atol=F32_ATOL if dtype == torch.float32 else BF16_ATOL, rtol=0)


def test_rows_sharing_a_cache_each_get_their_own_copy(folders, monkeypatch):
    """Two rows continuing the same cache (a fork: two requests resumed from one cached prefix)
    write their tokens into buffers of their own, as two one-row calls would."""
    model = load_bitnet(folders["default"], dtype=torch.float32, lm_head="int8")
    monkeypatch.setenv(bitnet.FUSED_DECODE_ENV, "1")
    with torch.no_grad():
        cache = model(torch.tensor([[3, 4, 5]]), use_cache=True).cache
        want = [model(torch.tensor([[t]]), cache=copy_cache(cache)).logits[0, -1] for t in (7, 8)]
        got, caches = decode_rows(model, [7, 8], [cache, cache])
    assert torch.equal(got, torch.stack(want))
    assert caches[0].states[0][0].data_ptr() != caches[1].states[0][0].data_ptr()
