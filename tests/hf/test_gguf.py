"""The GGUF writer (bitttt.hf.gguf): what `gguf`'s own reader and dequantizers read back is the
bitttt model's ternary weights times their per-tensor scale, exactly, and its embedding/head in
each head type (bf16, f16, f32 exactly; q8_0 as gguf's own quantizer makes it); llama.cpp, where
installed, computes the logits such a file implies."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from bitttt import ops  # noqa: E402
from bitttt.errors import ConfigError  # noqa: E402
from bitttt.hf import load_bitnet  # noqa: E402
from bitttt.hf.gguf import HEAD_TYPES, tq2_0_bytes, write_gguf  # noqa: E402

# A tiny tied BitNet with 256-multiple rows (TQ2_0's block) and float16-exact scales.
C, I, H, HKV, V, L = 256, 512, 4, 2, 320, 2


def write_folder(path: str, scales: tuple[float, ...] = (32.0, 16.0, 64.0), zero: bool = False) -> dict[str, torch.Tensor]:
    """A packed HF folder (4 rows per byte, weight_scale divides); returns q int8 per linear.
    zero: every ternary weight 0, so each block adds nothing and the logits are the head times
    the final norm of the last token's embedding (a model whose output is known in closed form)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    D = C // H
    shapes = {"self_attn.q_proj": (C, C), "self_attn.k_proj": (HKV * D, C), "self_attn.v_proj": (HKV * D, C),
              "self_attn.o_proj": (C, C), "mlp.gate_proj": (I, C), "mlp.up_proj": (I, C), "mlp.down_proj": (C, I)}
    t = {"model.embed_tokens.weight": torch.randn(V, C, generator=g).bfloat16(),
         "model.norm.weight": (1 + torch.rand(C, generator=g)).bfloat16()}
    qs = {}
    for i in range(L):
        for j, (name, (N, K)) in enumerate(shapes.items()):
            q = torch.randint(-1, 2, (N, K), generator=g, dtype=torch.int8)
            if zero:
                q.zero_()
            codes = (q + 1).to(torch.uint8).view(4, N // 4, K)
            t[f"model.layers.{i}.{name}.weight"] = codes[0] | codes[1] << 2 | codes[2] << 4 | codes[3] << 6
            t[f"model.layers.{i}.{name}.weight_scale"] = torch.tensor([scales[j % len(scales)]], dtype=torch.bfloat16)
            qs[f"{i}.{name}"] = q
        for name, n in (("input_layernorm", C), ("post_attention_layernorm", C), ("self_attn.attn_sub_norm", C),
                        ("mlp.ffn_sub_norm", I)):
            t[f"model.layers.{i}.{name}.weight"] = (1 + torch.rand(n, generator=g)).bfloat16()
    os.makedirs(path, exist_ok=True)
    save_file(t, os.path.join(path, "model.safetensors"))
    config = dict(model_type="bitnet", vocab_size=V, hidden_size=C, intermediate_size=I, num_hidden_layers=L,
                  num_attention_heads=H, num_key_value_heads=HKV, tie_word_embeddings=True, dtype="bfloat16",
                  max_position_embeddings=256,
                  quantization_config={"quant_method": "bitnet", "linear_class": "bitlinear",
                                       "quantization_mode": "offline"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return {**qs, **{k: v for k, v in t.items() if "norm" in k or "embed" in k}}


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}
SCALES = {"self_attn.q_proj": 1 / 32, "self_attn.k_proj": 1 / 16, "self_attn.v_proj": 1 / 64,
          "self_attn.o_proj": 1 / 32, "mlp.gate_proj": 1 / 16, "mlp.up_proj": 1 / 64, "mlp.down_proj": 1 / 32}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    src = write_folder(str(root / "hf"))
    model = load_bitnet(str(root / "hf"))
    path = str(root / "model.gguf")
    sizes = write_gguf(model, path)
    return src, model, path, sizes, gguf.GGUFReader(path)


def test_ternary_tensors_dequantize_to_the_checkpoint_weights(written):
    src, _, _, _, reader = written
    tensors = {t.name: t for t in reader.tensors}
    for i in range(L):
        for hf_name, gguf_name in GGUF_NAMES.items():
            t = tensors[f"blk.{i}.{gguf_name}.weight"]
            assert t.tensor_type == gguf.GGMLQuantizationType.TQ2_0
            got = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
            q = src[f"{i}.{hf_name}"]
            assert tuple(got.shape) == tuple(q.shape)
            assert torch.equal(got, q.float() * SCALES[hf_name])  # ternary values and scale, exactly


def test_code_bytes_are_the_bt2_bytes_bitttt_runs(written):
    _, model, _, _, reader = written
    t = next(t for t in reader.tensors if t.name == "blk.0.attn_output.weight")
    blocks = torch.from_numpy(t.data.copy()).view(C, C // 256, 66)
    bt2 = model.layers[0].self_attn.o_proj.packed.view(C, C // 256, 64)
    assert torch.equal(blocks[:, :, :64], bt2)


def test_float_tensors_and_metadata(written):
    src, _, _, sizes, reader = written
    tensors = {t.name: t for t in reader.tensors}
    emb = tensors["token_embd.weight"]
    assert emb.tensor_type == gguf.GGMLQuantizationType.BF16
    got = torch.from_numpy(emb.data.copy()).view(torch.bfloat16).view(V, C)
    assert torch.equal(got, src["model.embed_tokens.weight"])
    norm = torch.from_numpy(tensors["blk.1.ffn_sub_norm.weight"].data.copy())
    assert torch.equal(norm, src["model.layers.1.mlp.ffn_sub_norm.weight"].float())
    assert "output.weight" not in tensors  # llama.cpp's bitnet graph ties the head
    fields = reader.fields
    arch = bytes(fields["general.architecture"].parts[-1]).decode()
    assert arch == "bitnet"
    assert int(fields["bitnet.block_count"].parts[-1][0]) == L
    assert int(fields["bitnet.attention.head_count_kv"].parts[-1][0]) == HKV
    assert int(fields["bitnet.vocab_size"].parts[-1][0]) == V
    ternary_weights = sum(q.numel() for k, q in src.items() if "." in k and k.split(".")[0].isdigit())
    assert sizes["ternary"] == ternary_weights // 256 * 66


def test_a_scale_float16_cannot_hold_is_refused():
    packed = ops.pack_ternary(torch.ones(4, 256, dtype=torch.int8))
    assert tq2_0_bytes(packed, 256, 0.25).shape == (4, 66)
    with pytest.raises(ConfigError, match="float16"):
        tq2_0_bytes(packed, 256, 1 / 30)
    with pytest.raises(ConfigError, match="multiple of 256"):
        tq2_0_bytes(ops.pack_ternary(torch.ones(4, 200, dtype=torch.int8)), 200, 0.25)


@pytest.fixture(scope="module")
def model_and_src(written):
    src, model, _, _, _ = written
    return src, model


@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_head_types_read_back(model_and_src, head_type, tmp_path):
    src, model = model_and_src
    path = str(tmp_path / f"{head_type}.gguf")
    sizes = write_gguf(model, path, head_type=head_type)
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")
    want_type = {"bf16": "BF16", "f16": "F16", "f32": "F32", "q8_0": "Q8_0"}[head_type]
    assert t.tensor_type == gguf.GGMLQuantizationType[want_type]
    raw = t.data.copy()
    emb = src["model.embed_tokens.weight"].float()  # bf16-exact values
    if head_type == "bf16":
        got = torch.from_numpy(raw).view(torch.bfloat16).view(V, C).float()
    else:
        got = torch.from_numpy(gguf.quants.dequantize(raw, t.tensor_type).copy()).float().view(V, C)
    if head_type == "q8_0":
        # gguf's own numpy quantizer is the oracle for the bytes; the dequantized values are
        # within half a step (d / 2, d = absmax / 127 per block of 32) of the source, plus the
        # float16 rounding of the stored d times |q| <= 127
        assert np.array_equal(raw.reshape(-1), gguf.quants.quantize(emb.numpy(), t.tensor_type).reshape(-1))
        d = emb.view(V, C // 32, 32).abs().amax(-1, keepdim=True) / 127
        assert ((got.view(V, C // 32, 32) - emb.view(V, C // 32, 32)).abs() <= d * (0.5 + 127 * 2**-11) + 1e-7).all()
        assert sizes["embedding"] == V * C // 32 * 34
    else:
        want = emb.half().float() if head_type == "f16" else emb
        assert torch.equal(got, want)
        assert sizes["embedding"] == V * C * {"bf16": 2, "f16": 2, "f32": 4}[head_type]
    fields = gguf.GGUFReader(path).fields
    assert bytes(fields["bitttt.head_type"].parts[-1]).decode() == head_type


def test_an_unknown_head_type_is_refused(model_and_src, tmp_path):
    with pytest.raises(ConfigError, match="head type"):
        write_gguf(model_and_src[1], str(tmp_path / "x.gguf"), head_type="q4_0")


@pytest.mark.parametrize("head_type", ["f32", "q8_0", "bf16"])
def test_llama_cpp_logits_of_a_model_with_zero_ternary_weights(tmp_path, head_type):
    """All ternary weights 0: every block adds 0 to the residual, so the logits are
    head @ (norm_w * e / rms(e)) for the last token's embedding e, computed here from the source
    tensors (through the head type's dequantized bytes): llama.cpp must reproduce them."""
    llama_cpp = pytest.importorskip("llama_cpp")
    src = write_folder(str(tmp_path / "hf"), zero=True)
    model = load_bitnet(str(tmp_path / "hf"))
    path = str(tmp_path / "zero.gguf")
    write_gguf(model, path, head_type=head_type)
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")
    if head_type == "bf16":
        head = torch.from_numpy(t.data.copy()).view(torch.bfloat16).view(V, C).double()
    else:
        head = torch.from_numpy(gguf.quants.dequantize(t.data.copy(), t.tensor_type).copy()).double().view(V, C)
    e = src["model.embed_tokens.weight"][7].double()
    h = e / torch.sqrt((e * e).mean() + model.config.rms_norm_eps) * src["model.norm.weight"].double()
    want = head @ h
    llm = llama_cpp.Llama(path, n_ctx=64, n_threads=1, verbose=False)
    llm.eval([3, 1, 7])
    got = torch.tensor(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(V,))).double()  # the last token's
    # llama.cpp rounds the activations to its head's matmul type (q8_0: Q8_0 blocks; bf16: bf16)
    tol = {"f32": 1e-3, "q8_0": 3e-2, "bf16": 3e-2}[head_type] * want.abs().max()
    assert (got - want).abs().max() <= tol


def test_a_byte_vocabulary_for_llama_cpp_servers(model_and_src, tmp_path):
    """tokenizer="bytes": a SentencePiece vocabulary llama.cpp can tokenize any text into (byte
    fallback) and detokenize any id from, at the model's vocabulary size (a server needs both;
    the default "none" vocabulary asserts in llama.cpp's detokenizer)."""
    model = model_and_src[1]
    path = str(tmp_path / "bytes.gguf")
    write_gguf(model, path, tokenizer="bytes")
    fields = gguf.GGUFReader(path).fields
    assert bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() == "llama"
    tokens = fields["tokenizer.ggml.tokens"]
    words = [bytes(tokens.parts[i]).decode() for i in tokens.data]
    types = [int(fields["tokenizer.ggml.token_type"].parts[i][0]) for i in fields["tokenizer.ggml.token_type"].data]
    assert len(words) == len(types) == V
    assert words[0] == "<unk>" and words[1 + 0x41] == "<0x41>" and types[1 + 0x41] == gguf.TokenType.BYTE
    assert len(set(words)) == V  # every id its own piece
    with pytest.raises(ConfigError, match="tokenizer"):
        write_gguf(model, str(tmp_path / "x.gguf"), tokenizer="bpe")
