"""The chat server protocol (DESIGN §6, ``bitttt chat --protocol jsonl``) as data; tkinter-free."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .command import SettingsError


@dataclass
class Sampling:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    no_repeat_ngram: int = 16       # bitttt chat's default: breaks the temperature-0 loops of small models
    max_new_tokens: int = 200

    LIMITS = {  # name: (type, low, high)
        "temperature": (float, 0.0, 5.0),
        "top_k": (int, 0, 100000),
        "top_p": (float, 0.0, 1.0),
        "repetition_penalty": (float, 0.5, 3.0),
        "no_repeat_ngram": (int, 0, 1000),
        "max_new_tokens": (int, 1, 100000),
    }

    @classmethod
    def parse(cls, values: dict) -> "Sampling":
        """From form strings; SettingsError names every bad field."""
        errors, out = {}, {}
        for name, (typ, lo, hi) in cls.LIMITS.items():
            raw = str(values.get(name, getattr(cls, name))).strip()
            try:
                v = typ(raw)
            except ValueError:
                errors[name] = "expected a whole number" if typ is int else "expected a number"
                continue
            if not (lo <= v <= hi):
                errors[name] = f"between {lo:g} and {hi:g}"
                continue
            out[name] = v
        if errors:
            raise SettingsError(errors)
        return cls(**out)


def generate_request(prompt: str, sampling: Sampling) -> dict:
    """``{"op": "generate", "prompt": ..., <sampling params>}``: only the new turn is sent,
    the server's TTT state already holds the conversation so far."""
    return {"op": "generate", "prompt": prompt, **asdict(sampling)}


def reset_request() -> dict:
    return {"op": "reset"}


def cancel_request() -> dict:
    """Ends the reply being generated; the server, the model and its memory stay."""
    return {"op": "cancel"}


def stop_request() -> dict:
    """Ends the server."""
    return {"op": "stop"}


def save_state_request(path: str) -> dict:
    return {"op": "save_state", "path": str(path)}


def load_state_request(path: str) -> dict:
    return {"op": "load_state", "path": str(path)}


@dataclass
class MemoryTrace:
    """The fast-weight drift the server reports (``memory`` in ``done``/``ok``/``ready``), one
    point per report: x is the turn count, a reset adds a point at zero."""

    turns: list[int] = field(default_factory=list)
    drift: list[list[float]] = field(default_factory=list)   # per point, one value per TTT layer
    layers: list[int] = field(default_factory=list)
    turn: int = 0

    def add(self, memory, new_turn: bool) -> bool:
        """Takes a ``memory`` field; False (and nothing kept) if it is not one."""
        if not isinstance(memory, dict) or not isinstance(memory.get("drift"), list):
            return False
        drift = [float(d) for d in memory["drift"] if isinstance(d, (int, float))]
        if len(drift) != len(memory["drift"]):
            return False
        if self.layers != list(memory.get("layers", [])):
            self.turns, self.drift, self.layers = [], [], list(memory.get("layers", []))
        self.turn += 1 if new_turn else 0
        self.turns.append(self.turn)
        self.drift.append(drift)
        return True

    def series(self, i: int) -> list[float]:
        return [d[i] for d in self.drift]
