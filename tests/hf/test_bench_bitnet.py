"""`bitttt bench bitnet`: its parser, what each engine's cases feed it and report (a fake clock, no
timing asserted), and a whole run through the harness into one record."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

from bitttt.bench import bitnet, harness
from bitttt.cli import build_parser
from bitttt.hf import load_bitnet

pytest.importorskip("gguf")
from test_gguf import write_folder  # noqa: E402  (tests/hf is on sys.path: rootdir conftest layout)


def test_bench_bitnet_is_a_bench_subcommand():
    args = build_parser().parse_args(["bench", "bitnet", "--layers", "2", "--threads", "1", "--engines", "bitttt",
                                      "llama.cpp", "--prefill", "32"])
    assert (args.func.__name__, args.bench) == ("_run_bench_module", "bitnet")
    assert (args.layers, args.threads, args.engines, args.prefill) == (2, [1], ["bitttt", "llama.cpp"], [32])


def test_prefill_keeps_only_the_last_logits(tmp_path):
    write_folder(str(tmp_path / "hf"))
    model = load_bitnet(str(tmp_path / "hf"), dtype=torch.float32)
    ids = torch.randint(0, 300, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, last = model(ids).logits, model(ids, logits_to_keep=1).logits
    assert last.shape == (1, 1, full.shape[-1])
    # The same row through the LM head, equal up to the float32 GEMM's order of summation (M=1
    # vs M=9: oneDNN blocks them differently; 2e-5 seen on an AVX-512 CPU). Another row of the
    # prompt differs from this one by O(1).
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(full[:, -2:-1], full[:, -1:], rtol=1e-2, atol=1e-2)


def write_tiny(tmp_path) -> str:
    from bitttt.hf.gguf import write_gguf

    folder = str(tmp_path / "hf")
    write_folder(folder)
    sizes = write_gguf(load_bitnet(folder), os.path.join(folder, bitnet.GGUF_FILE))
    with open(os.path.join(folder, "gguf_sizes.json"), "w") as f:
        json.dump(sizes, f)
    return folder


def record_calls(engine, calls: list[int]):
    """Makes the engine's model (or llama.cpp's eval) log how many tokens each call feeds it."""
    if hasattr(engine, "llm"):
        real_eval = engine.llm.eval
        engine.llm.eval = lambda tokens: (calls.append(len(tokens)), real_eval(tokens))[1]
        return engine
    real = engine.model

    class Counting:
        def __call__(self, ids, **kw):
            calls.append(ids.shape[-1])
            return real(ids, **kw)

    engine.model = Counting()
    return engine


@pytest.mark.parametrize("engine", ["bitttt", "bitttt-int8", "llama.cpp"])
def test_each_engine_feeds_each_case_its_tokens_and_reports_seconds_per_token(engine, tmp_path, monkeypatch):
    if engine == "llama.cpp":
        pytest.importorskip("llama_cpp")
    folder = write_tiny(tmp_path)
    calls: list[int] = []
    real_make = bitnet.make_engine
    monkeypatch.setattr(bitnet, "make_engine", lambda *a: record_calls(real_make(*a), calls))
    clock = iter(range(10**6))  # every clock read in bitnet advances one "second"
    monkeypatch.setattr(bitnet, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    cs = bitnet.engine_contenders(engine, folder, 1, prompt=5, new_tokens=3, prefill=[8, 16])
    assert set(cs) == {"prefill 8", "prefill 16", "decode"}
    assert cs["prefill 8"].run() == pytest.approx(1 / 8)  # one second over 8 tokens
    assert calls == [8]
    calls.clear()
    assert cs["decode"].run() == pytest.approx(1 / 3)  # one second over 3 decoded tokens
    assert calls == [5, 1, 1, 1]  # the prompt, then one token per step
    assert cs["decode"].extra["decode_bytes_per_token"] > 0


def test_run_interleaves_engines_and_wait_policies_into_one_record(tmp_path):
    folder = write_tiny(tmp_path)
    path = tmp_path / "bitnet.json"
    args = build_parser().parse_args(["bench", "bitnet", "--folder", folder, "--engines", "bitttt", "bitttt-int8",
                                      "--threads", "1", "--prompt", "4", "--new-tokens", "2", "--prefill", "4",
                                      "--wait-policy", "passive", "active", "--no-peaks", "--json", str(path)])
    assert bitnet.run(args) == 0
    d = json.loads(path.read_text())
    assert harness.check_record(d) == [] and d["bench"] == "bitnet"
    got = {(c["case"], c["contender"], c["wait_policy"]) for c in d["cases"]}
    assert got == {(case, e, p) for case in ("prefill 4", "decode") for e in ("bitttt", "bitttt-int8")
                   for p in ("passive", "active")}
    for c in d["cases"]:
        assert c["omp_env"] == harness.WAIT_POLICIES[c["wait_policy"]] and c["rounds"] == 5
        assert c["unit"] == "tok/s" and c["min"] <= c["median"] <= c["max"]


def test_roofline_is_read_bandwidth_over_bytes_per_token():
    peaks = harness.Peaks([1], measure=lambda t: {"read_gbs": {1: 10.0}})
    decode = harness.Result("decode", "bitttt", 1, "passive", 4.0, 3.0, 5.0, "tok/s", 5,
                            {"decode_bytes_per_token": 10**9})
    hf = harness.Result("decode", "transformers", 1, "passive", 1.0, 1.0, 1.0, "tok/s", 5,
                        {"decode_bytes_per_token": None})
    bitnet.roofline([decode, hf], peaks)
    assert decode.extra["roofline_tok_s"] == pytest.approx(10.0) and decode.extra["pct_of_roofline"] == 40.0
    assert hf.extra["pct_of_roofline"] == 10.0  # no bytes of its own: bitttt's float head's
    assert "40%" in bitnet.format_table([decode])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_token_attention_is_sdpa_with_gqa(dtype):
    from bitttt.hf.bitnet import one_token_attention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 1, 16, generator=g).to(dtype)
    k, v = (torch.randn(2, 2, 37, 16, generator=g).to(dtype) for _ in range(2))
    want = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: the q k^T product and the output round to bf16
    torch.testing.assert_close(one_token_attention(q, k, v).float(), want, rtol=tol, atol=tol)


def test_busy_processes_run_until_the_block_ends():
    with bitnet.busy_processes(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)
