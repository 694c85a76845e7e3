"""The chat server protocol (DESIGN §6, ``bitttt chat --protocol jsonl``) as data; tkinter-free."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .command import SettingsError


@dataclass
class Sampling:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    max_new_tokens: int = 200

    LIMITS = {  # name: (type, low, high)
        "temperature": (float, 0.0, 5.0),
        "top_k": (int, 0, 100000),
        "top_p": (float, 0.0, 1.0),
        "repetition_penalty": (float, 0.5, 3.0),
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


def stop_request() -> dict:
    return {"op": "stop"}


def save_state_request(path: str) -> dict:
    return {"op": "save_state", "path": str(path)}


def load_state_request(path: str) -> dict:
    return {"op": "load_state", "path": str(path)}
