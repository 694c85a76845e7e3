"""`bitttt bench bitnet`: its parser, and one child per engine on a tiny folder (no timing asserted)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bitttt.bench import bitnet
from bitttt.cli import build_parser
from bitttt.hf import load_bitnet

pytest.importorskip("gguf")
from test_gguf import write_folder  # noqa: E402  (tests/hf is on sys.path: rootdir conftest layout)


def test_bench_bitnet_is_a_bench_subcommand():
    args = build_parser().parse_args(["bench", "bitnet", "--layers", "2", "--threads", "1", "--engines", "bitttt",
                                      "llama.cpp", "--prefill", "32"])
    assert args.func.__name__ == "_run_bench_bitnet"
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


@pytest.mark.parametrize("engine", ["bitttt", "bitttt-int8", "llama.cpp"])
def test_each_engine_reports_every_case(engine, tmp_path):
    if engine == "llama.cpp":
        pytest.importorskip("llama_cpp")
    from bitttt.hf.gguf import write_gguf

    folder = str(tmp_path / "hf")
    write_folder(folder)
    sizes = write_gguf(load_bitnet(folder), os.path.join(folder, bitnet.GGUF_FILE))
    with open(os.path.join(folder, "gguf_sizes.json"), "w") as f:
        json.dump(sizes, f)
    row = bitnet.run_engine(engine, folder, 1, prompt=8, new_tokens=3, prefill=[8, 16])
    for key in ("prefill_8_tokens_per_s", "prefill_16_tokens_per_s", "decode_tokens_per_s",
                "read_bandwidth_bytes_per_s"):
        assert row[key] > 0
    assert row["decode_bytes_per_token"] > 0 and row["rss_bytes"] > 0
    table = bitnet.format_table([row], [8, 16])
    assert engine in table and row["roofline_fraction"] > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_token_attention_is_sdpa_with_gqa(dtype):
    from bitttt.hf.bitnet import one_token_attention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 1, 16, generator=g).to(dtype)
    k, v = (torch.randn(2, 2, 37, 16, generator=g).to(dtype) for _ in range(2))
    want = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: the q k^T product and the output round to bf16
    torch.testing.assert_close(one_token_attention(q, k, v).float(), want, rtol=tol, atol=tol)


def test_each_wait_policy_reaches_the_child(tmp_path, monkeypatch):
    from bitttt.hf.gguf import write_gguf

    folder = str(tmp_path / "hf")
    write_folder(folder)
    write_gguf(load_bitnet(folder), os.path.join(folder, bitnet.GGUF_FILE))
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the caller's own setting must not leak into a child
    args = build_parser().parse_args(["bench", "bitnet", "--threads", "1", "--prompt", "4", "--new-tokens", "2",
                                      "--prefill", "4", "--wait-policy", "passive", "spin", "--busy", "1"])
    rows = [bitnet.run_child(args, "bitttt", 1, folder, policy) for policy in args.wait_policy]
    assert rows[0]["omp_env"] == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert rows[1]["omp_env"] == {"GOMP_SPINCOUNT": "30000", "KMP_BLOCKTIME": "1"}
    assert [(r["wait_policy"], r["busy"]) for r in rows] == [("passive", 1), ("spin", 1)]
    assert "spin" in bitnet.format_table(rows, [4]).splitlines()[2]


def test_busy_processes_run_until_the_block_ends():
    with bitnet.busy_processes(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)
