"""Loads a Hugging Face BitNet b1.58 folder (config.json `model_type: "bitnet"` + safetensors,
single or sharded) into bitttt.hf.bitnet.BitNetForCausalLM, repacking the ternary weights to BT2.

The two forms HF publishes, as transformers reads them (transformers/integrations/bitnet.py):
- packed (`quantization_config.quant_method: "bitnet"`): `weight` uint8 [N/4, K], where row
  r of byte-plane j (bits 2j..2j+1) is output row j*N/4 + r, code = q + 1; and `weight_scale`
  [1]. linear_class "bitlinear" divides by it (y = x_q·q / (s_x · weight_scale)),
  "autobitlinear" multiplies. A code of 3 is not a weight: the loader rejects it.
- master weights (bf16/fp32 [N, K], no `weight_scale`): absmean-quantized here exactly as
  transformers' online WeightQuant does: q = clamp(round(W · (1 / mean|W|)), -1, 1).

Every problem with the folder is one ConfigError naming the file or tensor; nothing is written.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from bitttt import ops
from bitttt.errors import ConfigError
from bitttt.hf.bitnet import (MODEL_TYPE, Attention, BitNetConfig, BitNetForCausalLM, DecoderLayer, MLP,
                              PackedTernaryLinear, RMSNorm)

CONFIG_FILE, SINGLE_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"
HINT = "the folder is damaged or not a BitNet b1.58 checkpoint; download it again with your own tools"
HF_CODES_PER_BYTE = 4  # transformers' VALUES_PER_ITEM
RUN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ABSMEAN_FLOOR = 1e-5  # transformers' WeightQuant clamp


def read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: missing", hint=HINT)
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable JSON ({e})", hint=HINT) from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a JSON object", hint=HINT)
    return d


def is_hf_folder(path: str) -> bool:
    """A folder whose config.json names a model_type other than bitttt's own (so its errors,
    a wrong model_type included, come from this loader)."""
    from bitttt.config import MODEL_TYPE as BITTTT_TYPE

    cfg = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(cfg):
        return False
    try:
        with open(cfg, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and d.get("model_type") not in (None, BITTTT_TYPE)


def _hf_rules() -> dict[str, Any]:
    """What each config.json field bitttt reads accepts, in bitttt.config's terms (its own
    config's checks): a bad type or range is one ConfigError naming field, value and expectation."""
    from bitttt.config import POSITIVE_INT, Accepts

    count = Accepts(int, 0, optional=True)
    return {"vocab_size": POSITIVE_INT, "hidden_size": POSITIVE_INT, "intermediate_size": POSITIVE_INT,
            "num_hidden_layers": POSITIVE_INT, "num_attention_heads": POSITIVE_INT,
            "num_key_value_heads": Accepts(int, 1, optional=True), "head_dim": count,
            "hidden_act": Accepts(str, choices=("relu2",), optional=True), "rms_norm_eps": Accepts(float, 0, 1, True, optional=True),
            "rope_theta": Accepts(float, 0, open_low=True, optional=True), "max_position_embeddings": Accepts(int, 1, optional=True),
            "tie_word_embeddings": Accepts(bool, optional=True), "attention_bias": Accepts(bool, optional=True),
            "bos_token_id": count, "dtype": Accepts(str, optional=True), "torch_dtype": Accepts(str, optional=True)}


def _checked(cfg_path: str, d: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:
    """d's fields that have a rule and a value, checked (and converted: 1e-5 stays a float, 64.0 -> 64)."""
    out = {}
    for key, rule in rules.items():
        if key not in d:
            continue
        try:
            out[key] = rule.check(d[key])
        except ValueError:
            text = repr(d[key])
            raise ConfigError(f"{cfg_path}: {key}: expected {rule.describe()}, got "
                              f"{text if len(text) <= 60 else text[:57] + '...'}", hint=HINT) from None
    return out


def _dict_field(cfg_path: str, d: dict[str, Any], key: str) -> dict[str, Any]:
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{cfg_path}: {key}: expected a JSON object or null, got {str(value)[:60]!r}", hint=HINT)
    return value


def _eos_ids(cfg_path: str, value: Any) -> Any:
    ids = [value] if isinstance(value, int) else value
    if value is not None and not (isinstance(ids, list) and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)):
        raise ConfigError(f"{cfg_path}: eos_token_id: expected an id >= 0, a list of ids or null, "
                          f"got {str(value)[:60]!r}", hint=HINT)
    return value


def read_config(path: str) -> BitNetConfig:
    """config.json of an HF folder -> BitNetConfig; ConfigError for another model, an unsupported
    option, or a field of the wrong type or range."""
    cfg_path = os.path.join(path, CONFIG_FILE)
    d = read_json(cfg_path)
    if d.get("model_type") != MODEL_TYPE:
        raise ConfigError(f"{cfg_path}: model_type {str(d.get('model_type'))[:60]!r} is not {MODEL_TYPE!r}",
                          hint="bitttt loads BitNet b1.58 folders (model_type bitnet) and its own runs")
    rope = _dict_field(cfg_path, d, "rope_parameters")
    rope_scaling = d.get("rope_scaling")
    if rope_scaling or rope.get("rope_type", "default") != "default":
        raise ConfigError(f"{cfg_path}: rope scaling {str(rope_scaling or rope)[:100]} is not supported",
                          hint="only the default RoPE of BitNet b1.58 is implemented")
    quant = _dict_field(cfg_path, d, "quantization_config")
    if quant and (quant.get("quant_method") != "bitnet" or quant.get("use_rms_norm")
                  or quant.get("linear_class", "bitlinear") not in ("bitlinear", "autobitlinear")
                  or quant.get("quantization_mode", "offline") not in ("offline", "online")):
        raise ConfigError(f"{cfg_path}: quantization_config {str(quant)[:200]} is not supported",
                          hint="expected quant_method bitnet, linear_class bitlinear|autobitlinear, no use_rms_norm")
    rules = _hf_rules()
    fields = _checked(cfg_path, d, rules)
    if "rope_theta" in rope:
        fields["rope_theta"] = _checked(cfg_path, {"rope_parameters.rope_theta": rope["rope_theta"]},
                                        {"rope_parameters.rope_theta": rules["rope_theta"]})["rope_parameters.rope_theta"]
    names = set(BitNetConfig.__dataclass_fields__) - {"dtype", "quantization", "ternary"}
    kwargs = {k: v for k, v in fields.items() if k in names and v is not None}
    kwargs["eos_token_id"] = _eos_ids(cfg_path, d.get("eos_token_id"))
    if "bos_token_id" in d:
        kwargs["bos_token_id"] = fields["bos_token_id"]
    try:
        config = BitNetConfig(**kwargs, dtype=fields.get("dtype") or fields.get("torch_dtype") or "bfloat16",
                              quantization=quant)
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ConfigError(f"{cfg_path}: bad value ({e})", hint=HINT) from None
    if config.num_attention_heads * config.head_dim != config.hidden_size:
        raise ConfigError(f"{cfg_path}: num_attention_heads * head_dim ({config.num_attention_heads} * "
                          f"{config.head_dim}) != hidden_size ({config.hidden_size})", hint=HINT)
    return config


# ---------------------------------------------------------------------------------------
# Safetensors, single file or sharded
# ---------------------------------------------------------------------------------------


class Tensors:
    """The folder's tensors by name; get() checks shape and dtype and names the tensor on error."""

    def __init__(self, path: str) -> None:
        from safetensors import safe_open

        index = os.path.join(path, INDEX_FILE)
        if os.path.isfile(index):
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ConfigError(f"{index}: no weight_map", hint=HINT)
            bad = [f for f in weight_map.values() if not isinstance(f, str) or not f or "\x00" in f
                   or os.path.basename(f) != f or f in (".", "..")]
            if bad:  # a shard is a file name in this folder: not a number, a path elsewhere, or empty
                raise ConfigError(f"{index}: weight_map names {str(bad[0])[:80]!r}, not a file of this folder",
                                  hint=HINT)
            files = sorted(set(weight_map.values()))
        elif os.path.isfile(os.path.join(path, SINGLE_FILE)):
            files = [SINGLE_FILE]
        else:
            raise ConfigError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE}", hint=HINT)
        self._where: dict[str, Any] = {}
        self._files = []
        for name in files:
            fpath = os.path.join(path, name)
            if not os.path.isfile(fpath):
                raise ConfigError(f"{fpath}: missing shard", hint=HINT)
            try:
                handle = safe_open(fpath, framework="pt")
                keys = list(handle.keys())
            except Exception as e:  # safetensors raises its own error types for bad headers
                raise ConfigError(f"{fpath}: not a readable safetensors file ({type(e).__name__}: {e})",
                                  hint=HINT) from None
            self._files.append(handle)
            self._where.update({k: (handle, fpath) for k in keys})
        self.used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def names(self) -> set[str]:
        return set(self._where)

    def get(self, name: str, shape: tuple[int, ...] | None = None, kind: str = "float") -> torch.Tensor:
        """kind: "float" (any floating dtype), "uint8", or "any"."""
        if name not in self._where:
            raise ConfigError(f"missing tensor {name}", hint=HINT)
        handle, fpath = self._where[name]
        try:
            t = handle.get_tensor(name)
        except Exception as e:
            raise ConfigError(f"{fpath}: cannot read {name} ({type(e).__name__}: {e})", hint=HINT) from None
        if kind == "float" and not t.is_floating_point() or kind == "uint8" and t.dtype != torch.uint8:
            raise ConfigError(f"tensor {name}: dtype {t.dtype}, expected {kind}", hint=HINT)
        if shape is not None and tuple(t.shape) != shape:
            raise ConfigError(f"tensor {name}: shape {tuple(t.shape)}, expected {shape}", hint=HINT)
        self.used.add(name)
        return t


# ---------------------------------------------------------------------------------------
# HF ternary layouts -> (q, w_scale)
# ---------------------------------------------------------------------------------------


def unpack_hf_codes(packed: torch.Tensor, name: str = "weight") -> torch.Tensor:
    """transformers' packed uint8 [N/4, K] -> q int8 [N, K]; row j*N/4 + r sits in bits 2j..2j+1
    of packed row r (transformers' unpack_weights). ConfigError for a code of 3."""
    R, K = packed.shape
    codes = torch.stack([(packed >> (2 * j)) & 3 for j in range(HF_CODES_PER_BYTE)])  # [4, R, K]
    bad = (codes == 3).nonzero()
    if len(bad):
        j, r, k = (int(v) for v in bad[0])
        raise ConfigError(f"tensor {name}: 2-bit code 3 (not a ternary weight) at row {j * R + r}, column {k} "
                          f"({len(bad)} such codes)", hint=HINT)
    return codes.reshape(HF_CODES_PER_BYTE * R, K).to(torch.int8) - 1


def quantize_master(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary as transformers' WeightQuant: (q int8 [N, K], s_w float32 scalar)."""
    wf = w.float()
    scale = 1.0 / wf.abs().mean().clamp(min=ABSMEAN_FLOOR)
    q = (wf * scale).round().clamp(-1, 1).to(torch.int8)
    return q, 1.0 / scale


def hf_scale(t: torch.Tensor, name: str, divide: bool) -> torch.Tensor:
    """weight_scale [1] -> s_w as bitttt multiplies it (1/weight_scale where HF divides)."""
    if t.numel() != 1 or not torch.isfinite(t).all() or float(t) == 0:
        raise ConfigError(f"tensor {name}: expected one finite non-zero scale, got shape {tuple(t.shape)}", hint=HINT)
    s = t.float().reshape(())
    return 1.0 / s if divide else s


def ternary_weight(tensors: Tensors, prefix: str, N: int, K: int, quant: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear `prefix` as (q int8 [N, K], s_w float32 [N]), from whichever form the folder holds."""
    name, scale_name = f"{prefix}.weight", f"{prefix}.weight_scale"
    divide = quant.get("linear_class", "bitlinear") == "bitlinear"
    w = tensors.get(name, kind="any")
    if w.dtype == torch.uint8:
        if not quant:
            raise ConfigError(f"tensor {name} is packed (uint8) but config.json has no quantization_config", hint=HINT)
        if N % HF_CODES_PER_BYTE or tuple(w.shape) != (N // HF_CODES_PER_BYTE, K):
            raise ConfigError(f"tensor {name}: shape {tuple(w.shape)}, expected {(N // HF_CODES_PER_BYTE, K)} "
                              f"(4 rows per byte)", hint=HINT)
        q = unpack_hf_codes(w, name)
        s = hf_scale(tensors.get(scale_name), scale_name, divide)
    elif w.is_floating_point():
        if tuple(w.shape) != (N, K):
            raise ConfigError(f"tensor {name}: shape {tuple(w.shape)}, expected {(N, K)}", hint=HINT)
        if scale_name in tensors:  # autobitlinear offline, unpacked: ternary floats times the scale
            q = w.to(torch.int8)
            if not torch.equal(q.to(w.dtype), w) or q.abs().max() > 1:
                raise ConfigError(f"tensor {name}: has a weight_scale, so it must hold only -1, 0, 1", hint=HINT)
            s = hf_scale(tensors.get(scale_name), scale_name, divide)
        elif quant and quant.get("quantization_mode", "offline") == "offline":
            raise ConfigError(f"tensor {name}: a float weight without weight_scale in a packed checkpoint "
                              "(a module kept in full precision?) is not supported", hint=HINT)
        else:
            q, s = quantize_master(w)
    else:
        raise ConfigError(f"tensor {name}: dtype {w.dtype}, expected uint8 (packed) or a float", hint=HINT)
    return q, s.expand(N)


def fused_linear(tensors: Tensors, prefixes: list[str], sizes: list[int], K: int, quant: dict[str, Any],
                 bias: bool) -> PackedTernaryLinear:
    """One BT2 layer from several HF linears with the same input (q|k|v, gate|up); rows keep their scales."""
    parts = [ternary_weight(tensors, p, n, K, quant) for p, n in zip(prefixes, sizes)]
    q = torch.cat([p[0] for p in parts])
    w_scale = torch.cat([p[1] for p in parts]).contiguous()
    b = torch.cat([tensors.get(f"{p}.bias", (n,)).float() for p, n in zip(prefixes, sizes)]) if bias else None
    return PackedTernaryLinear(ops.pack_ternary(q), w_scale, K, b)


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


def run_dtype(config: BitNetConfig, dtype: torch.dtype | str | None) -> torch.dtype:
    """The activations' dtype: asked for, else the checkpoint's when the kernels take it, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    return RUN_DTYPES.get(dtype or config.dtype, torch.float32)


def load_bitnet(path: str, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                lm_head: str = "float") -> BitNetForCausalLM:
    """The folder's model in eval mode on `device`, ternary layers in BT2.

    dtype: float32 or bfloat16 activations (default: the checkpoint's dtype if bfloat16, else float32).
    lm_head: "float" (the checkpoint's) or "int8" (per-row scales, Int8Linear).
    Raises ConfigError for a bad config, a missing/extra/misshapen tensor, a code 3 or a damaged file.
    """
    if lm_head not in ("float", "int8"):
        raise ConfigError(f"--lm-head {lm_head!r}: expected float or int8")
    c = read_config(path)
    tensors = Tensors(path)
    dt = run_dtype(c, dtype)
    C, I, H, Hkv, D = c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    quant = c.quantization

    def norm(name: str, n: int) -> RMSNorm:
        return RMSNorm(tensors.get(name, (n,)).to(dt), c.rms_norm_eps)

    layers = []
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}"
        qkv = fused_linear(tensors, [f"{p}.self_attn.{n}_proj" for n in "qkv"], [H * D, Hkv * D, Hkv * D], C,
                           quant, c.attention_bias)
        o = fused_linear(tensors, [f"{p}.self_attn.o_proj"], [C], H * D, quant, c.attention_bias)
        gate_up = fused_linear(tensors, [f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj"], [I, I], C, quant, False)
        down = fused_linear(tensors, [f"{p}.mlp.down_proj"], [C], I, quant, False)
        attn = Attention(c, qkv, o, norm(f"{p}.self_attn.attn_sub_norm.weight", C))
        mlp = MLP(gate_up, down, norm(f"{p}.mlp.ffn_sub_norm.weight", I))
        layers.append(DecoderLayer(attn, mlp, norm(f"{p}.input_layernorm.weight", C),
                                   norm(f"{p}.post_attention_layernorm.weight", C)))
    embed = tensors.get("model.embed_tokens.weight", (c.vocab_size, C)).to(dt)
    head = None
    if not c.tie_word_embeddings:
        head = tensors.get("lm_head.weight", (c.vocab_size, C)).to(dt)
    model = BitNetForCausalLM(c, embed, layers, norm("model.norm.weight", C), head)
    extra = sorted(n for n in tensors.names() - tensors.used
                   if not n.endswith("rotary_emb.inv_freq") and not (c.tie_word_embeddings and n == "lm_head.weight"))
    if extra:
        raise ConfigError(f"{path}: tensors config.json does not account for: {', '.join(extra[:3])}"
                          f"{' ...' if len(extra) > 3 else ''}", hint=HINT)
    if lm_head == "int8":
        model.use_int8_lm_head()
    del tensors
    release_free_heap()
    return model.to(device).eval()


def release_free_heap() -> None:
    """Hands the heap the repacking freed back to the OS (glibc's malloc_trim): the per-layer
    int8 temporaries leave ~0.6 GB of free but resident heap after a 2B load. No-op elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
