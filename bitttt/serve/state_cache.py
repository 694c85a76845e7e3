"""The conversation state cache of `bitttt serve`: model caches keyed by the tokens they hold.

After a completion the engine keeps its model cache (for a TTT model: per layer the fast-weight
state, the conv inputs and the position; for attention: the KV cache) under the token ids it
was fed. A later prompt that extends one of those prefixes starts from a copy of it and feeds
only the new tokens. The cache is an LRU bounded in bytes (the tensors' own sizes); an entry
larger than the whole budget is not kept. Stored caches are compact copies (a KV view into a
bigger decode buffer does not keep the buffer alive) and lookups hand out copies, because a
one-token decode step updates TTT state tensors in place.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import torch

from bitttt.model import ModelCache


def clone_cache(obj: Any) -> Any:
    """A deep copy of a model cache whose tensors are compact clones (lists, tuples, named
    tuples and dataclasses rebuilt, anything else shared)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(clone_cache(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_cache(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: clone_cache(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    return obj


def cache_nbytes(obj: Any) -> int:
    """Bytes of the tensors inside a cache (each counted by its own size, views included)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(cache_nbytes(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(cache_nbytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


class StateCache:
    """LRU of model caches keyed by the token ids fed to reach them, at most `max_bytes` in all.
    Not thread-safe: the engine's thread alone uses it."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[int, ...], tuple[ModelCache, int]] = OrderedDict()
        self.lengths: dict[int, int] = {}  # prefix length -> entries of that length (lookup tries each)
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self.entries)

    def put(self, ids: list[int], cache: ModelCache) -> bool:
        """Keeps a compact copy of `cache` (reached by feeding `ids`); False if it cannot fit."""
        if self.max_bytes <= 0 or not ids:
            return False
        key = tuple(ids)
        self._drop(key)
        copy = clone_cache(cache)
        size = cache_nbytes(copy)
        if size > self.max_bytes:
            return False
        while self.nbytes + size > self.max_bytes:
            self._drop(next(iter(self.entries)))
            self.evictions += 1
        self.entries[key] = (copy, size)
        self.lengths[len(key)] = self.lengths.get(len(key), 0) + 1
        self.nbytes += size
        return True

    def get(self, ids: list[int]) -> tuple[ModelCache | None, int]:
        """(a copy of the cache of the longest stored strict prefix of ids, its length), or
        (None, 0). Strict: at least one token stays to be fed, whose logits the reply needs."""
        for n in sorted(self.lengths, reverse=True):
            if n >= len(ids):
                continue
            key = tuple(ids[:n])
            if key in self.entries:
                self.entries.move_to_end(key)
                self.hits += 1
                return clone_cache(self.entries[key][0]), n
        self.misses += 1
        return None, 0

    def _drop(self, key: tuple[int, ...]) -> None:
        entry = self.entries.pop(key, None)
        if entry is None:
            return
        self.nbytes -= entry[1]
        self.lengths[len(key)] -= 1
        if not self.lengths[len(key)]:
            del self.lengths[len(key)]
