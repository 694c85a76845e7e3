"""The serving engine without HTTP: batched decode equals one sequence at a time, requests
join and leave between steps, cancels free their slot, the state cache resumes exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from servelib import tiny_bitnet, tiny_bitttt

from bitttt.generate import SamplingParams, decode_rows, run_model, stream_text
from bitttt.hf.bitnet import FUSED_DECODE_ENV, Int8Linear
from bitttt.serve.engine import Engine, EngineConfig, PromptTooLong, QueueFull, Request
from bitttt.serve.state_cache import StateCache
from bitttt.tokenizer import ByteTokenizer

PROMPTS = [[1, 2, 3], list(range(5, 16)), [7] * 9, [3], list(range(40, 61))]  # crossing mini-batches of 8
# A float GEMM's rounding depends on how many rows it gets (MKL's M = 1 and M = 4 differ by ~1e-6):
# with the float LM head, a batched row's logits are the lone row's up to this.
FLOAT_HEAD_ATOL = 1e-4


def models(tmp_path) -> dict:
    out = {f"{mixer}-conv{conv}": tiny_bitttt(mixer, conv) for mixer in ("ttt_linear", "ttt_mlp")
           for conv in (0, 4)}
    out["attention"] = tiny_bitttt("attention")
    out["hf-bitnet"] = tiny_bitnet(str(tmp_path / "bitnet"))
    return out


@pytest.mark.parametrize("head", ["int8", "float"])
def test_decode_rows_equals_one_sequence_at_a_time(tmp_path, head, monkeypatch):
    """Oracle: the model's own one-sequence decode (run_model with a batch-1 cache), per row,
    through the same per-op layers: a lone HF BitNet token otherwise takes the one-call decode
    op, whose float steps round in another order (tests/hf/test_fused_decode.py checks that op
    against these layers)."""
    monkeypatch.setenv(FUSED_DECODE_ENV, "0")
    for name, model in models(tmp_path).items():
        if head == "int8":
            model.lm_head = Int8Linear(model.lm_head.weight)
        with torch.no_grad():
            caches = [run_model(model, [p], None, use_cache=True).cache for p in PROMPTS]
            alone = copy.deepcopy(caches)
            for step in range(12):
                tokens = [(step * 7 + i * 3) % 250 for i in range(len(PROMPTS))]
                logits, caches = decode_rows(model, tokens, caches)
                for i, t in enumerate(tokens):
                    out = run_model(model, [[t]], alone[i])
                    alone[i] = out.cache
                    if head == "int8":  # ternary and int8 GEMMs sum exactly: bit for bit
                        assert torch.equal(out.logits[0, -1], logits[i]), (name, step, i)
                    else:
                        torch.testing.assert_close(logits[i], out.logits[0, -1], atol=FLOAT_HEAD_ATOL, rtol=0,
                                                   msg=f"{name} step {step} row {i}")


def engine_for(model, **kw) -> Engine:
    return Engine(model, ByteTokenizer(), EngineConfig(**kw))


def run_all(engine: Engine, handles) -> list[tuple[str, object]]:
    while engine.busy:
        engine.step()
    return [h.result(timeout=0) for h in handles]


def exact_model(mixer="ttt_linear"):
    model = tiny_bitttt(mixer, vocab_size=ByteTokenizer().vocab_size)
    model.lm_head = Int8Linear(model.lm_head.weight)  # batch-invariant logits (see above)
    return model


@pytest.mark.parametrize("mixer", ["ttt_linear", "attention"])
def test_batched_replies_equal_generate_alone(mixer):
    """Five sampled requests (different seeds, lengths, a stop string) batched together give
    the text bitttt.generate's one-request loop gives each of them."""
    model, tok = exact_model(mixer), ByteTokenizer()
    engine = engine_for(model, max_batch=4, state_cache_mb=0)
    reqs = [Request(tok.encode(f"prompt number {i}: "), SamplingParams(max_new_tokens=10 + 3 * i, temperature=0.9,
                                                                       top_k=0, seed=100 + i, stop=["e"] if i == 2 else None))
            for i in range(5)]
    got = run_all(engine, [engine.submit(r) for r in reqs])
    for r, (text, done) in zip(reqs, got):
        want = "".join(stream_text(model, tok, r.prompt_ids, r.sampling))
        assert text == want
        assert done.usage.prompt_tokens == len(r.prompt_ids)
        assert done.finish_reason in ("stop", "length")
    assert engine.stats().batch_size <= 4


def test_cancel_frees_the_slot_within_one_step():
    engine = engine_for(exact_model(), max_batch=2, state_cache_mb=0)
    endless = SamplingParams(max_new_tokens=10_000, temperature=0)
    a, b = engine.submit(Request([1, 2, 3], endless)), engine.submit(Request([4, 5], endless))
    engine.step()
    waiting = engine.submit(Request([6], SamplingParams(max_new_tokens=3, temperature=0)))
    engine.step()
    assert engine.stats().queue_depth == 1  # both slots busy
    a.cancel()
    engine.step()
    assert engine.stats().queue_depth == 0  # a left, the waiting request took its slot in the same step
    text, done = a.result(timeout=0)
    assert done.finish_reason == "cancelled"
    b.cancel()
    run_all(engine, [])
    assert waiting.result(timeout=0)[1].finish_reason == "length"


def test_queue_full_and_prompt_too_long():
    engine = engine_for(exact_model(), max_queue=2, max_prompt_tokens=5)
    p = SamplingParams(max_new_tokens=1)
    with pytest.raises(PromptTooLong):
        engine.submit(Request([1] * 6, p))
    engine.submit(Request([1], p))
    engine.submit(Request([1], p))
    with pytest.raises(QueueFull):
        engine.submit(Request([1], p))


def test_state_cache_resumes_with_the_full_recompute_logits():
    """Turn 2 extends turn 1's prompt and reply: it resumes from the cached state, feeds only
    the new tokens, and its first logits match one prefill over the whole prompt."""
    model, tok = exact_model(), ByteTokenizer()
    engine = engine_for(model, state_cache_mb=16)
    turn1 = tok.encode("hello there, model. ")
    h = engine.submit(Request(turn1, SamplingParams(max_new_tokens=12, temperature=0)))
    run_all(engine, [])
    events = [h.events.get_nowait() for _ in range(h.events.qsize())]
    reply = [e.token for e in events if e.kind == "token"]  # ids: a random model's bytes need not be UTF-8
    assert len(reply) == 12 and events[-1].usage.cached_tokens == 0
    turn2 = turn1 + reply + tok.encode(" and then? ")
    cached, n = engine.state_cache.get(turn2)
    assert n == len(turn1) + 11  # the reply's last token was sampled, never fed
    resumed = run_model(model, [turn2[n:]], cached, use_cache=True).logits[0, -1]
    full = run_model(model, [turn2], None, use_cache=True).logits[0, -1]
    # The dual form over a whole mini-batch and the primal form token by token round differently
    # (design §3); one activation's rounding can flip a ternary input code: so not bit for bit.
    torch.testing.assert_close(resumed, full, atol=2e-3, rtol=1e-3)
    _, done2 = run_all(engine, [engine.submit(Request(turn2, SamplingParams(max_new_tokens=4, temperature=0)))])[0]
    assert done2.usage.cached_tokens == n and done2.usage.prompt_tokens == len(turn2)
    assert engine.stats().cache_hits >= 1


def test_state_cache_is_an_lru_bounded_in_bytes():
    one = run_model(exact_model(), [[1, 2, 3]], None, use_cache=True).cache
    from bitttt.serve.state_cache import cache_nbytes

    size = cache_nbytes(one)
    c = StateCache(int(size * 2.5))
    for i in range(4):
        assert c.put([i, 1, 2], one)
    assert len(c) == 2 and c.nbytes <= c.max_bytes and c.evictions == 2
    assert c.get([3, 1, 2, 9])[1] == 3 and c.get([0, 1, 2, 9]) == (None, 0)
    assert not StateCache(size - 1).put([1], one)


LONG_PROMPT = [(i * 37) % 250 for i in range(200)]


def tokens_of(handle) -> list[int]:
    return [e.token for e in [handle.events.get_nowait() for _ in range(handle.events.qsize())] if e.token is not None]


@pytest.mark.parametrize("mixer", ["ttt_linear", "attention", "hf-bitnet"])
def test_a_long_prompt_is_prefilled_in_chunks_while_the_others_decode(mixer, tmp_path):
    """A 200-token prompt joining a decoding stream, prefill_chunk 32: the stream gets a token
    every step of the 7 the prompt's chunks take, and the prompt's reply is the one an
    unchunked prefill (bitttt.generate's one call) gives."""
    from bitttt.generate import generate_ids

    if mixer == "hf-bitnet":
        model = tiny_bitnet(str(tmp_path / "bitnet"))
        model.lm_head = Int8Linear(model.lm_head.weight)
    else:
        model = exact_model(mixer)
    engine = engine_for(model, max_batch=4, state_cache_mb=0, prefill_chunk=32)
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    short = engine.submit(Request([1, 2, 3], SamplingParams(max_new_tokens=1000, temperature=0)))
    engine.step()
    long = engine.submit(Request(LONG_PROMPT, greedy))
    per_step = []
    while not long.events.qsize():
        before = short.events.qsize()
        engine.step()
        per_step.append(short.events.qsize() - before)
    assert per_step == [1] * 7  # ceil(200 / 32) steps, one token of the short stream in each
    short.cancel()
    run_all(engine, [])
    assert tokens_of(long) == list(generate_ids(model, LONG_PROMPT, greedy))


@pytest.mark.parametrize("mixer", ["ttt_linear", "ttt_mlp", "attention"])
def test_chunked_prefill_gives_the_unchunked_logits(mixer):
    """What the engine's chunks compute: TTT models process the same mini-batches either way
    (chunks of a multiple of mini_batch 8) and agree bit for bit; attention's softmax sums over
    the past and the chunk in another order, within float32 rounding (measured 6e-8)."""
    model = exact_model(mixer)
    with torch.no_grad():
        full = run_model(model, [LONG_PROMPT], None, use_cache=True).logits[0, -1]
        cache = None
        for i in range(0, len(LONG_PROMPT), 32):
            out = run_model(model, [LONG_PROMPT[i:i + 32]], cache, use_cache=True)
            cache = out.cache
    if mixer.startswith("ttt"):
        assert torch.equal(out.logits[0, -1], full)
    else:
        torch.testing.assert_close(out.logits[0, -1], full, atol=1e-5, rtol=0)
