"""The one-token decode path of bitttt's own models (docs/design.md §4, "the decode step").

A packed `base` model decodes a token through ~2500 torch ops when every module runs its
general (any T, autograd-ready) forward; at one token the dispatch, allocation and the
tensors built per call (RoPE tables, reshaped conv weights) cost more than the ternary
kernels. This path, taken for one token of one sequence without autograd on the CPU in
float32, does the same math with fewer ops:

- the projections that read the same input are one call over their concatenated rows
  (`FusedLinear`): one activation quantization and one ternary kernel call for q/k/v/gate
  (one GEMM in the float twin, which gets the same path: comparisons stay fair);
- tables that depend only on the weights or the config (RoPE cos/sin of the TTT mini-batch
  positions, the causal conv's weights per step) are built once per weights;
- the step runs below autograd (`dispatch_context`): no Python autograd wrapper per custom op;
- attention's step takes RoPE's rotation from a table of positions and runs the scores and
  the output as one bmm each, reading the KV buffer where it lies (the per-op matmul copied
  the transposed keys, O(T) per token).

A packed model with the attention or ttt_linear mixer goes one step further (`whole_token`):
every block of the token is one call of ops.bitttt_decode_ (csrc/decode/bitttt_decode_cpu.cpp),
with no Python, dispatch or thread wake-up between the kernels: 3-4x fewer ms per token than
the Python step at `base`. Its float steps sum in their own order, so its logits agree with the
per-op path's to float rounding (tests/model/test_own_model_decode_op.py), not bit for bit.

BITTTT_FUSED_DECODE=0 turns both off: every module then runs its per-op forward, the path the
tests compare these against (the oracle). The Python step gives the same logits bit for bit
on the test models (every op computes each value as the per-op path does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitttt import ops
from bitttt.errors import ConfigError
from bitttt.nn.attention import kv_filled, kv_room
from bitttt.nn.bitlinear import BitLinear, lut16_layout, packed_linear, trit5_layout

FUSED_ENV = "BITTTT_FUSED_DECODE"  # the same switch as Hugging Face BitNet's one-call decode (bitttt.hf.bitnet)
_SETTINGS = {"": True, "1": True, "on": True, "0": False, "off": False}


def fused_decode_setting() -> bool:
    """BITTTT_FUSED_DECODE as a bool (default on); ConfigError for a value other than 0/1/on/off."""
    value = os.environ.get(FUSED_ENV, "1").strip().lower()
    if value not in _SETTINGS:
        raise ConfigError(f"{FUSED_ENV}={value!r} is not a setting", hint="use 1 (fused decode) or 0 (per-op path)")
    return _SETTINGS[value]


def takes_fused_decode(x: torch.Tensor) -> bool:
    """Whether x, the input of a decode step [1, C] or [1, 1, C], takes the fused path: one token of
    one sequence, float32 on the CPU, no autograd, and BITTTT_FUSED_DECODE not 0."""
    return (x.numel() == x.shape[-1] and x.dtype == torch.float32 and x.device.type == "cpu"
            and not torch.is_grad_enabled() and fused_decode_setting())


def derived(owner: nn.Module, name: str, sources: list[torch.Tensor], build: Callable[[], Any]) -> Any:
    """What build() makes from `sources` (owner's weights), made once and kept on owner until a
    source changes (a load or an optimizer step bumps its version, a move gives a new tensor).
    A plain attribute: never in a state_dict."""
    key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in sources)
    cache = owner.__dict__.setdefault("_decode_tables", {})
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = cache[name] = (key, build())
    return hit[1]


def dispatch_context(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Where a model's one-token step runs: below autograd when x takes the fused path, else as it is.

    A custom op with a registered backward (ternary_linear, rope_heads, ...) is called through
    its Python autograd wrapper even under no_grad (torch/_library/autograd.py: a dataclass, a
    context manager and a redispatch per call); at decode that costs about what a small GEMV
    does. Below autograd the dispatcher goes straight to the kernels, for every op of the step.
    Views keep their base (view tracking sits below autograd), so the KV buffer is still found
    and written in place. torch's own autograd wrappers use this guard the same way."""
    return torch._C._AutoDispatchBelowAutograd() if takes_fused_decode(x) else contextlib.nullcontext()


class FusedLinear:
    """Linear layers that read the same input as one call over their concatenated rows: packed
    BitLinears as one ternary call (one activation quantization; each row's output the same bits
    as its own layer's: the kernel's rows are independent and w_scale is per row), or the float
    twin's nn.Linears as one GEMM (the same products; the BLAS may block the sums otherwise).
    A copy of the weights, small next to the model: the input projections of one layer."""

    def __init__(self, layers: list[nn.Module]) -> None:
        self.packed = isinstance(layers[0], BitLinear)
        biases = [layer.bias for layer in layers]
        if self.packed:
            self.weight = torch.cat([layer.packed for layer in layers])
            self.w_scale = torch.cat([layer.w_scale for layer in layers])
            self.lut16 = lut16_layout(self.weight)  # the decode layouts each layer would use: same bits
            self.trit5 = trit5_layout(self.weight, layers[0].in_features)
        else:
            self.weight = torch.cat([layer.weight.detach() for layer in layers])
        self.bias = None if all(b is None for b in biases) else torch.cat(
            [b.detach() if b is not None else torch.zeros(layer.out_features, device=self.weight.device)
             for b, layer in zip(biases, layers)])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return packed_linear(x, self.weight, self.w_scale, self.bias, self.lut16, self.trit5)
        return F.linear(x, self.weight, self.bias)


def fused_linear(owner: nn.Module, name: str, layers: list[nn.Module]) -> FusedLinear | None:
    """owner's FusedLinear `name` over `layers` (built on first use, rebuilt when their weights
    change), or None unless all are packed BitLinears or all nn.Linear (fake quant keeps its path)."""
    if all(isinstance(layer, BitLinear) and layer.is_packed for layer in layers):
        sources = [t for layer in layers for t in (layer.packed, layer.w_scale)]
    elif all(type(layer) is nn.Linear for layer in layers):
        sources = [layer.weight for layer in layers]
    else:
        return None
    sources += [layer.bias for layer in layers if layer.bias is not None]
    return derived(owner, name, sources, lambda: FusedLinear(layers))


# ---------------------------------------------------------------------------------------
# One call per token: ops.bitttt_decode_ (csrc/decode/bitttt_decode_cpu.cpp)
# ---------------------------------------------------------------------------------------

_LAYOUT_CODES = {"bt2": 0, "lut16": 1, "trit5": 2}
MAX_HEAD_DIM = 512  # the op's limit (its per-head scratch); a wider head keeps the Python step
_MIXER_CODES = {"attention": 0, "ttt_linear": 1}


def _layout(linears: list[Any]) -> str:
    """The one layout every ternary layer of the call has: lut16 where each has one (BitLinear's
    rule builds it where it is the faster M=1 kernel), else trit5, else BT2 (same bits in all)."""
    if all(m.lut16 is not None for m in linears):
        return "lut16"
    if all(m.trit5 is not None for m in linears):
        return "trit5"
    return "bt2"


def _bytes(m: Any, layout: str) -> torch.Tensor:
    """The layer's weights in `layout` (a BitLinear or a FusedLinear)."""
    return {"lut16": m.lut16, "trit5": m.trit5, "bt2": getattr(m, "packed", None) if isinstance(m, BitLinear)
            else m.weight}[layout]


def _block_weights(block: nn.Module, mixer: str) -> tuple[list[Any], list[torch.Tensor]] | None:
    """(the block's four ternary layers, its two norm weights), or None when a layer is not a
    packed BitLinear without bias. The mixer's input projections are one FusedLinear."""
    m = block.mixer
    if mixer == "attention":
        first, out = [m.qkv], m.out
        owner = m
    else:
        layer = owner = m.layer
        names = (["qk_proj"] if layer.use_conv else ["q_proj", "k_proj"]) + ["v_proj"] + (
            ["g_proj"] if layer.use_gate else [])
        first, out = [getattr(layer, n) for n in names], layer.o_proj
    layers = [*first, out, block.mlp.gate_up, block.mlp.down]
    if not all(isinstance(x, BitLinear) and x.is_packed and x.bias is None for x in layers):
        return None
    proj = fused_linear(owner, "in_proj", first) if len(first) > 1 else first[0]
    return [proj, out, block.mlp.gate_up, block.mlp.down], [block.norm1.weight, block.norm2.weight]


def _ttt_tensors(layer: nn.Module) -> list[torch.Tensor]:
    """The TTT mixer's float tensors after the common ten (the op's schema)."""
    empty = layer.ln_w.new_empty(0)
    ts = derived(layer, "token_scale", [layer.token_scale_offset], layer.token_scale)
    if layer.use_conv:
        conv_w, conv_b = derived(layer, "conv", [layer.conv_q.conv.weight, layer.conv_k.conv.weight,
                                                 layer.conv_q.conv.bias, layer.conv_k.conv.bias], layer._conv_tables)
    else:
        conv_w = conv_b = empty
    cos, sin = derived(layer, "rope", [layer.ln_w], layer._rope_tables)
    n = layer.post_norm
    return [layer.lr_proj.weight, layer.lr_proj.bias, ts, layer.ln_w, layer.ln_b, n.weight, n.bias,
            conv_w, conv_b, cos, sin]


@dataclasses.dataclass
class _Plan:
    """What ops.bitttt_decode_ reads of a model besides the states: its weights list and codes,
    and every parameter and buffer of the modules they come from (the dict that holds it, its
    name, the tensor, its version), so a load, a pack or a move (which replace or write them)
    makes a new plan."""

    weights: list[torch.Tensor] | None  # None: the op does not apply (a layer not packed)
    layout: int
    ttt: list[int]
    base_lr: float
    watched: list[tuple[dict, str, torch.Tensor | None, int]]

    def valid(self) -> bool:
        return all(d.get(name) is t and (t is None or t._version == v) for d, name, t, v in self.watched)


def _make_plan(model: nn.Module) -> _Plan:
    """The model's plan (weights None when a ternary layer is not a packed BitLinear without bias)."""
    config = model.config
    watched = [(d, name, t, None if t is None else t._version) for block in model.blocks for m in block.modules()
               for d in (m._parameters, m._buffers) for name, t in d.items()]
    parts = [_block_weights(block, config.mixer) for block in model.blocks]
    if any(p is None for p in parts) or config.n_embd // config.n_head > MAX_HEAD_DIM:
        return _Plan(None, 0, [], 0.0, watched)
    layout = _layout([m for linears, _ in parts for m in linears])
    weights = []
    for block, (linears, (norm1, norm2)) in zip(model.blocks, parts):
        proj, out, gate_up, down = linears
        weights += [norm1, _bytes(proj, layout), proj.w_scale, _bytes(out, layout), out.w_scale, norm2,
                    _bytes(gate_up, layout), gate_up.w_scale, _bytes(down, layout), down.w_scale]
        if config.mixer == "ttt_linear":
            weights += _ttt_tensors(block.mixer.layer)
    ttt, base_lr = [], 0.0
    if config.mixer == "ttt_linear":
        layer = model.blocks[0].mixer.layer
        ttt = [layer.conv_q.kernel if layer.use_conv else 0, int(layer.use_gate), layer.mini_batch_size]
        base_lr = layer.base_lr
    return _Plan(weights, _LAYOUT_CODES[layout], ttt, base_lr, watched)


def whole_token(model: nn.Module, x: torch.Tensor, states: list[Any], pos: int | list[int]
                ) -> tuple[torch.Tensor, list[Any]] | None:
    """Every block of a packed BitTTTForCausalLM for one token of one sequence as one
    ops.bitttt_decode_ call: (x after the last block, the blocks' new states), or None where
    that op does not apply (the Python step then runs): not the fused setting's one token, a
    float or fake-quant model, the ttt_mlp mixer, a state not yet made (no prefill), a mixer
    state at another position. x [1, 1, C] is updated in place. The states are taken as the
    Python step takes them: a KV buffer is written in place, a TTT state consumed."""
    config = model.config
    if (not config.ternary or not isinstance(pos, int) or config.mixer not in _MIXER_CODES
            or not takes_fused_decode(x) or any(s is None or isinstance(s, list) for s in states)):
        return None
    plan = model.__dict__.get("_decode_plan")
    if plan is None or not plan.valid():
        plan = model.__dict__["_decode_plan"] = _make_plan(model)  # a plain attribute: never in a state_dict
    if plan.weights is None:
        return None
    attention = config.mixer == "attention"
    state, new_states = [], []
    limit = model.blocks[0].mixer.max_positions if attention else None
    for s in states:
        if attention:
            if s[0].shape[2] != pos:
                return None
            kv = [kv_room(t, 1, limit) for t in s]
            state += kv
            new_states.append(kv)
        else:
            st = s.state
            if st is None or s.pos != pos or int(st.pos) != pos or (plan.ttt[0] and s.conv is None):
                return None
            conv = s.conv.clone() if plan.ttt[0] else None  # its own: the op updates it in place
            state += [st.W, st.c, st.gW, st.gc, conv if conv is not None else st.c.new_empty(0)]
            new_states.append((s, conv))
    rope = torch.view_as_real(model.blocks[0].mixer._rotation(pos, x.device)) if attention else x.new_empty(0)
    ops.bitttt_decode_(x, plan.weights, state, rope, _MIXER_CODES[config.mixer], pos, config.n_head,
                       config.hidden_size, plan.layout, plan.ttt, config.norm_eps, plan.base_lr)
    if attention:
        return x, [(kv_filled(k, pos + 1), kv_filled(v, pos + 1)) for k, v in new_states]
    result = []
    for s, conv in new_states:
        st = s.state
        result.append(dataclasses.replace(s, state=ops.TTTState(st.W, st.c, st.gW, st.gc, pos + 1), pos=pos + 1,
                                          conv=conv if conv is not None else s.conv))
    return x, result
