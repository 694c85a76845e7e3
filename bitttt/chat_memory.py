"""Chat memory files and the fast-weight drift report (design §6 "Chat server").

A memory file is one safetensors file: the tensors of the model cache (the TTT fast weights,
conv and KV caches) plus, in its header's metadata, a small JSON document under the key
"bitttt_chat_memory": format version, the model's fingerprint, the cache position, the
cache's structure and the conversation. Nothing is unpickled: the structure is rebuilt from
a fixed set of types, and every tensor is checked against the running model's own cache
before the session takes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from bitttt.errors import ConfigError
from bitttt.model import BitTTTForCausalLM, ModelCache
from bitttt.nn.bitlinear import BitLinear
from bitttt.nn.ttt import TTTCache
from bitttt.ops import TTTMLPState, TTTState

FORMAT = "bitttt-chat-memory"
FORMAT_VERSION = 1
META_KEY = "bitttt_chat_memory"
MODEL_FILES = ("model.safetensors", "optimizer.pt", "trainer_state.json")
STATE_HINT = "use a file written by /save or save_state for this model"
# The only classes a memory file can name; anything else is refused (no pickles, no imports).
_TYPES: dict[str, type] = {"ModelCache": ModelCache, "TTTCache": TTTCache, "TTTState": TTTState,
                           "TTTMLPState": TTTMLPState}


class MemoryFileError(ConfigError):
    """A memory file that cannot be written or loaded; the session keeps its state."""


# ---------------------------------------------------------------------------------------
# Model fingerprint
# ---------------------------------------------------------------------------------------


def model_fingerprint(model: BitTTTForCausalLM) -> str:
    """sha256 of the config and of each full-precision parameter's name, shape, dtype and first
    values. BitLinear weights are left out, so a checkpoint and its packed export (the same
    model, the same memory) share a fingerprint."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    ternary = {name for name, m in model.named_modules() if isinstance(m, BitLinear)}
    for name, p in sorted(model.named_parameters()):
        if name.rpartition(".")[0] in ternary:
            continue
        head = p.detach().flatten()[:8].float().cpu().tolist()
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}:{head}".encode())
    return h.hexdigest()[:32]


# ---------------------------------------------------------------------------------------
# Cache <-> (JSON structure, flat tensors)
# ---------------------------------------------------------------------------------------


def flatten_cache(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able structure of obj; its tensors go to `tensors` under dotted names."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().to("cpu", copy=True).contiguous()
        return {"tensor": prefix}
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj
    name = type(obj).__name__
    if name in _TYPES and isinstance(obj, _TYPES[name]):
        names = obj._fields if isinstance(obj, tuple) else list(obj.__dataclass_fields__)
        return {"type": name, "fields": {f: flatten_cache(getattr(obj, f), f"{prefix}.{f}", tensors) for f in names}}
    if isinstance(obj, (list, tuple)):
        kind = "list" if isinstance(obj, list) else "tuple"
        return {kind: [flatten_cache(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    raise TypeError(f"chat memory: cannot store a {name} in a memory file")


def build_cache(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of flatten_cache, over the fixed types only; ValueError on anything else."""
    if node is None or isinstance(node, (bool, int, float)):
        return node
    if not isinstance(node, dict) or len(node) not in (1, 2):
        raise ValueError(f"unexpected structure node {str(node)[:60]}")
    if "tensor" in node:
        if node["tensor"] not in tensors:
            raise ValueError(f"tensor {node['tensor']!r} is missing")
        return tensors[node["tensor"]]
    if "list" in node or "tuple" in node:
        items = [build_cache(v, tensors) for v in node.get("list", node.get("tuple"))]
        return items if "list" in node else tuple(items)
    cls = _TYPES.get(node.get("type"))
    if cls is None or not isinstance(node.get("fields"), dict):
        raise ValueError(f"unknown structure type {str(node.get('type'))[:40]!r}")
    names = cls._fields if issubclass(cls, tuple) else list(cls.__dataclass_fields__)
    if sorted(node["fields"]) != sorted(names):
        raise ValueError(f"{cls.__name__} fields {sorted(node['fields'])} are not {sorted(names)}")
    return cls(**{f: build_cache(v, tensors) for f, v in node["fields"].items()})


def _check_like(saved: Any, current: Any, pos: tuple[int, int], where: str = "cache") -> None:
    """saved must have current's structure, dtypes and shapes; a dimension may differ only where
    it counts positions (an attention KV cache grows with the conversation)."""
    if isinstance(current, torch.Tensor):
        if not isinstance(saved, torch.Tensor) or saved.dtype != current.dtype or saved.dim() != current.dim():
            raise ValueError(f"{where}: expected a {current.dtype} tensor of {current.dim()} dims")
        for a, b in zip(saved.shape, current.shape):
            if a != b and not (a == pos[0] and b == pos[1]):
                raise ValueError(f"{where}: shape {tuple(saved.shape)} does not fit this model's {tuple(current.shape)}")
        if saved.is_floating_point() and not torch.isfinite(saved).all():
            raise ValueError(f"{where}: holds NaN or infinite values")
    elif isinstance(current, (list, tuple)):
        if type(saved) is not type(current) or len(saved) != len(current):
            raise ValueError(f"{where}: expected a {type(current).__name__} of {len(current)}")
        for i, (s, c) in enumerate(zip(saved, current)):
            _check_like(s, c, pos, f"{where}.{i}")
    elif hasattr(current, "__dataclass_fields__"):
        if type(saved) is not type(current):
            raise ValueError(f"{where}: expected a {type(current).__name__}")
        for f in current.__dataclass_fields__:
            _check_like(getattr(saved, f), getattr(current, f), pos, f"{where}.{f}")
    elif current is None or saved is None:
        if saved is not current:
            raise ValueError(f"{where}: expected {'nothing' if current is None else 'a value'}")
    elif type(saved) is not type(current):
        raise ValueError(f"{where}: expected {type(current).__name__}")


def _adopt_mlp_states(saved: Any, current: Any) -> Any:
    """saved with each plain 9-tuple standing where current holds a TTTMLPState made one: files
    written before TTT-MLP had its C++ op stored that state as a plain tuple of the same fields."""
    if isinstance(current, TTTMLPState):
        if type(saved) is tuple and len(saved) == len(TTTMLPState._fields):
            return TTTMLPState(*saved)
        return saved
    if isinstance(current, (list, tuple)) and type(saved) is type(current) and len(saved) == len(current):
        items = [_adopt_mlp_states(s, c) for s, c in zip(saved, current)]
        return type(current)(*items) if hasattr(current, "_fields") else type(current)(items)
    if hasattr(current, "__dataclass_fields__") and type(saved) is type(current):
        return type(current)(**{f: _adopt_mlp_states(getattr(saved, f), getattr(current, f))
                                for f in current.__dataclass_fields__})
    return saved


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return type(obj)(**{f: _to_device(getattr(obj, f), device) for f in obj.__dataclass_fields__})
    return obj


# ---------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------


def resolve_state_path(path: Any, root: str | None = None) -> Path:
    """The absolute, symlink-free path a chat request names; with `root`, relative paths are
    taken inside it and anything resolving outside it is refused."""
    if not isinstance(path, str) or not path.strip() or "\x00" in path:
        raise MemoryFileError(f"path must be a non-empty string, got {str(path)[:80]!r}")
    p = Path(path).expanduser()
    if root is not None:
        base = Path(root).resolve()
        p = (base / p).resolve()
        if not p.is_relative_to(base):
            raise MemoryFileError(f"{path}: outside the chat state folder {base}", hint="save memory files inside it")
        return p
    return p.resolve()


def is_model_folder(d: Path) -> bool:
    """A checkpoint or export folder (or a folder a bitttt config.json lives in)."""
    if any((d / f).exists() for f in MODEL_FILES):
        return True
    try:
        cfg = json.loads((d / "config.json").read_text())
        return isinstance(cfg, dict) and "model_type" in cfg
    except (OSError, ValueError):
        return False


def is_memory_file(p: Path) -> bool:
    try:
        return read_meta(p) is not None
    except MemoryFileError:
        return False


def check_save_path(p: Path) -> None:
    """Refuses what a save must never touch: folders, model and checkpoint folders, files that
    are not chat memory files, and a place whose folder does not exist."""
    if p.is_dir():
        raise MemoryFileError(f"{p}: is a folder", hint="give a file name, e.g. memory.safetensors")
    if not p.parent.is_dir():
        raise MemoryFileError(f"{p}: the folder {p.parent} does not exist", hint="create it first")
    for d in p.parents:
        if is_model_folder(d):
            raise MemoryFileError(f"{p}: inside the model or checkpoint folder {d}",
                                  hint="save chat memory outside model folders")
    if p.exists() and not (p.is_file() and is_memory_file(p)):
        raise MemoryFileError(f"{p}: exists and is not a chat memory file; not overwriting it",
                              hint="pick a new file name")


# ---------------------------------------------------------------------------------------
# Write and read
# ---------------------------------------------------------------------------------------


def write_memory(p: Path, model: BitTTTForCausalLM, cache: ModelCache, history: list[dict[str, str]]) -> None:
    """Writes cache and history to p atomically (a temporary sibling renamed over it)."""
    from safetensors.torch import save_file

    check_save_path(p)
    tensors: dict[str, torch.Tensor] = {}
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "fingerprint": model_fingerprint(model),
            "pos": cache.pos, "structure": flatten_cache(cache, "cache", tensors), "history": history}
    tmp = p.parent / f".{p.name}.tmp-{os.getpid()}"
    try:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as e:
        raise MemoryFileError(f"{p}: cannot write ({e.strerror or e})", hint="pick a folder you can write to") from None
    finally:
        tmp.unlink(missing_ok=True)


def read_meta(p: Path) -> dict[str, Any] | None:
    """The memory metadata of a safetensors file; None for another safetensors file."""
    from safetensors import safe_open

    if not p.is_file():
        raise MemoryFileError(f"{p}: no such file", hint=STATE_HINT)
    try:
        with open(p, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise MemoryFileError(f"{p}: cannot read ({e.strerror or e})", hint=STATE_HINT) from None
    if not _safetensors_head(head, size) and (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise MemoryFileError(f"{p}: an old pickled memory file; bitttt no longer unpickles files (a crafted one "
                              "runs code)", hint="start the conversation again and save it with this version")
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise MemoryFileError(f"{p}: not a chat memory file ({type(e).__name__}: {str(e)[:120]})",
                              hint=STATE_HINT) from None
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        raise MemoryFileError(f"{p}: damaged chat memory header", hint=STATE_HINT) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MemoryFileError(f"{p}: not a chat memory file", hint=STATE_HINT)
    return meta


def _safetensors_head(head: bytes, size: int) -> bool:
    """Whether a file starts like safetensors: a little-endian u64 header length that fits the
    file, then a JSON object. Checked before the pickle signatures: the length's low byte can be
    0x80, pickle's first byte (a header of 3712 bytes is 0x0E80)."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 8 + n <= size and head[8:9] == b"{"


def read_memory(p: Path, model: BitTTTForCausalLM, like: ModelCache) -> tuple[ModelCache, list[dict[str, str]]]:
    """(cache on the model's device, history) from p, checked against `like` (a cache of this
    model); MemoryFileError names what is wrong."""
    from safetensors.torch import load_file

    meta = read_meta(p)
    if meta is None:
        raise MemoryFileError(f"{p}: a safetensors file but not a chat memory file", hint=STATE_HINT)
    if meta.get("version") != FORMAT_VERSION:
        raise MemoryFileError(f"{p}: memory format version {meta.get('version')!r}, this bitttt reads "
                              f"{FORMAT_VERSION}", hint="save it again with this version")
    if meta.get("fingerprint") != model_fingerprint(model):
        raise MemoryFileError(f"{p}: saved from another model (fingerprint {str(meta.get('fingerprint'))[:12]}…, "
                              f"this model's {model_fingerprint(model)[:12]}…)",
                              hint="load it with the model it was saved from")
    history = meta.get("history")
    if not isinstance(history, list) or not all(isinstance(m, dict) for m in history):
        raise MemoryFileError(f"{p}: damaged conversation history", hint=STATE_HINT)
    try:
        tensors = load_file(str(p))
        cache = build_cache(meta.get("structure"), tensors)
        if not isinstance(cache, ModelCache) or not isinstance(cache.pos, int) or cache.pos < 1:
            raise ValueError("not a model cache")
        cache = _adopt_mlp_states(cache, like)
        _check_like(cache, like, (cache.pos, like.pos))
    except Exception as e:  # a damaged file in any way: a clear refusal, never a half-loaded state
        raise MemoryFileError(f"{p}: damaged chat memory ({type(e).__name__}: {str(e)[:160]})",
                              hint=STATE_HINT) from None
    return _to_device(cache, like_device(like)), history


def like_device(cache: ModelCache) -> torch.device:
    stack = [cache]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            return x.device
        if isinstance(x, (list, tuple)):
            stack.extend(x)
        elif hasattr(x, "__dataclass_fields__"):
            stack.extend(getattr(x, f) for f in x.__dataclass_fields__)
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------
# How far the fast weights moved
# ---------------------------------------------------------------------------------------


def fast_weights(model: BitTTTForCausalLM, cache: ModelCache) -> dict[int, list[torch.Tensor]]:
    """Per TTT layer (block index): the fast weights the last token used, float32 on the CPU.
    Inside a mini-batch these are W − token_scale·gW (design §3), on a boundary the carried W."""
    from bitttt.nn.ttt import TTTLinear, TTTMLP

    out: dict[int, list[torch.Tensor]] = {}
    blocks = getattr(model, "blocks", None)  # a Hugging Face BitNet model has attention only: no TTT layers
    states = getattr(cache, "states", None)
    if blocks is None or states is None:
        return out
    for i, (block, layer_cache) in enumerate(zip(blocks, states)):
        layer = getattr(block.mixer, "layer", None)
        state = getattr(layer_cache, "state", None)
        if state is None or not isinstance(layer, (TTTLinear, TTTMLP)):
            continue
        pos = state[-1]
        ts = float(layer.token_scale().detach()[(pos - 1) % layer.mini_batch_size]) if pos % layer.mini_batch_size else 0.0
        if isinstance(layer, TTTLinear):
            pairs = [(state.W, state.gW)]
        else:
            pairs = [(state.W1, state.gW1), (state.W2, state.gW2)]
        out[i] = [(w[0] - ts * g[0]).detach().float().cpu() for w, g in pairs]
    return out


def relative_change(a: list[torch.Tensor], b: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """‖a − b‖ / ‖ref‖ over all fast-weight tensors of a layer (Frobenius)."""
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b))
    den = sum(float(r.pow(2).sum()) for r in ref)
    return (num / den) ** 0.5 if den > 0 else 0.0
