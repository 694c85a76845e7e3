"""Generation and chat: sampling, the prefill + decode loop over the model's cache, and the
chat session whose TTT state (the model's memory) carries over between turns (design §6).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, TextIO

import torch

from bitttt.errors import ConfigError
from bitttt.model import BitTTTForCausalLM, ModelCache
from bitttt.tokenizer import Tokenizer


@dataclass
class SamplingParams:
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off (CTRL's: divides positive logits of seen tokens)
    seed: int | None = None
    stop: list[str] | None = None  # stop strings (the end-of-text token always stops)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0 or self.temperature < 0 or self.top_k < 0:
            raise ConfigError("max_new_tokens, temperature and top_k must be >= 0")
        if not 0 < self.top_p <= 1 or self.repetition_penalty <= 0:
            raise ConfigError(f"top_p must be in (0, 1] and repetition_penalty > 0, got {self.top_p}, "
                              f"{self.repetition_penalty}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplingParams:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown sampling parameter(s) {', '.join(unknown)}", hint="valid: " + ", ".join(sorted(names)))
        stop = d.get("stop")
        return cls(**{**d, "stop": [stop] if isinstance(stop, str) else stop})


def sample_next(logits: torch.Tensor, p: SamplingParams, seen: torch.Tensor | None,
                generator: torch.Generator | None) -> int:
    """logits [V] float32 -> the next token id."""
    logits = logits.float().clone()
    if p.repetition_penalty != 1.0 and seen is not None and seen.numel():
        prev = logits[seen]
        logits[seen] = torch.where(prev > 0, prev / p.repetition_penalty, prev * p.repetition_penalty)
    if p.temperature == 0:
        return int(logits.argmax())
    logits = logits / p.temperature
    if p.top_k > 0:
        kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
        logits[logits < kth] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < p.top_p  # the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def model_device(model: BitTTTForCausalLM) -> torch.device:
    return next(model.parameters(), next(model.buffers())).device


def run_model(model: BitTTTForCausalLM, ids: list[list[int]], cache: ModelCache | None, use_cache: bool = False):
    """One forward over token ids on the model's device. On CUDA the float layers run under
    bf16 autocast (as in training); the ternary and TTT ops run their own CUDA kernels."""
    device = model_device(model)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return model(torch.tensor(ids, device=device), cache=cache, use_cache=use_cache)


@torch.no_grad()
def generate_ids(model: BitTTTForCausalLM, prompt_ids: list[int], p: SamplingParams,
                 cache: ModelCache | None = None, eos_id: int | None = None, state: dict | None = None,
                 ) -> Iterator[int]:
    """Yields sampled tokens. The prompt goes in one prefill call (continuing `cache` if
    given), then one decode call per token. Stops at eos_id (not yielded) or max_new_tokens;
    callers stop on stop strings by closing the iterator. `state` gets "cache" (everything fed
    so far) and "pending" (the last sampled token, not fed yet, or None)."""
    if not prompt_ids:
        raise ConfigError("generate: empty prompt", hint="give some text to continue")
    generator = torch.Generator(device="cpu").manual_seed(p.seed) if p.seed is not None else None
    state = state if state is not None else {}
    seen = torch.tensor(prompt_ids, dtype=torch.long)
    out = run_model(model, [prompt_ids], cache, use_cache=True)
    logits = out.logits[0, -1].float().cpu()
    state.update(cache=out.cache, pending=None)
    for _ in range(p.max_new_tokens):
        token = sample_next(logits, p, seen, generator)
        state["pending"] = token
        if token == eos_id:
            return
        yield token
        seen = torch.cat((seen, torch.tensor([token])))
        out = run_model(model, [[token]], state["cache"])
        logits = out.logits[0, -1].float().cpu()
        state.update(cache=out.cache, pending=None)


def stream_text(model: BitTTTForCausalLM, tokenizer: Tokenizer, prompt_ids: list[int], p: SamplingParams,
                cache: ModelCache | None = None, result: dict | None = None) -> Iterator[str]:
    """Text pieces as they complete; stops at a stop string (not included). result gets
    "ids" (generated), "cache", "pending" (see generate_ids) and "n_tokens"."""
    dec = tokenizer.stream_decoder()
    text, emitted, ids = "", 0, []
    stops = [s for s in (p.stop or []) if s]
    hold = max((len(s) for s in stops), default=1) - 1  # chars kept back while a stop may be forming
    result = result if result is not None else {}
    result.update(ids=ids, n_tokens=0)
    for token in generate_ids(model, prompt_ids, p, cache, tokenizer.eos_id, result):
        ids.append(token)
        result["n_tokens"] = len(ids)
        text += dec.feed(token)
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            if cut > emitted:
                yield text[emitted:cut]
            return
        upto = max(emitted, len(text) - hold)
        if upto > emitted:
            yield text[emitted:upto]
            emitted = upto
    text += dec.flush()
    if len(text) > emitted:
        yield text[emitted:]


def generate_text(model: BitTTTForCausalLM, tokenizer: Tokenizer, prompt: str, max_new_tokens: int,
                  **sampling: Any) -> str:
    p = SamplingParams(max_new_tokens=max_new_tokens, **sampling)
    return "".join(stream_text(model, tokenizer, tokenizer.encode(prompt) or [tokenizer.bos_id], p))


# ---------------------------------------------------------------------------------------
# Chat
# ---------------------------------------------------------------------------------------


class ChatSession:
    """A conversation with one model. Each turn feeds only the new tokens on top of the cache,
    so the TTT fast weights keep learning from the whole conversation until reset()."""

    def __init__(self, model: BitTTTForCausalLM, tokenizer: Tokenizer, chat_format: bool, defaults: SamplingParams):
        self.model, self.tokenizer, self.chat_format, self.defaults = model, tokenizer, chat_format, defaults
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """Back to the initial state: only <|bos|> fed."""
        self.cache = run_model(self.model, [[self.tokenizer.bos_id]], None, use_cache=True).cache
        self.history: list[dict[str, str]] = []

    def _turn_ids(self, messages: list[dict[str, str]]) -> list[int]:
        if self.chat_format:
            return self.tokenizer.encode_chat(messages, add_assistant=True)
        text = "".join(f"\n{m.get('role', 'user').capitalize()}: {m['content']}\n" for m in messages)
        return self.tokenizer.encode(text + "Assistant:")

    def stop_strings(self) -> list[str]:
        return [] if self.chat_format else ["\nUser:"]

    def reply(self, messages: list[dict[str, str]], p: SamplingParams | None = None) -> Iterator[str]:
        """Streams the reply to the new messages; the cache then holds the whole exchange."""
        p = p or self.defaults
        p = SamplingParams(**{**p.__dict__, "stop": (p.stop or []) + self.stop_strings()})
        result: dict[str, Any] = {}
        pieces = []
        for piece in stream_text(self.model, self.tokenizer, self._turn_ids(messages), p, self.cache, result):
            pieces.append(piece)
            yield piece
        # Feed what was sampled but not fed yet, and the turn's end marker.
        eos, pending = self.tokenizer.eos_id, result.get("pending")
        tail = [] if pending is None else [pending]
        if self.chat_format and pending != eos:
            tail.append(eos)
        elif not self.chat_format:
            tail = [t for t in tail if t != eos] + self.tokenizer.encode("\n")
        with torch.no_grad():
            self.cache = run_model(self.model, [tail], result["cache"]).cache
        self.history += messages + [{"role": "assistant", "content": "".join(pieces)}]
        self.last_n_tokens = result["n_tokens"]

    def save(self, path: str) -> None:
        torch.save({"cache": _cache_to_cpu(self.cache), "history": self.history}, path)

    def load(self, path: str) -> None:
        try:
            obj = torch.load(path, map_location=model_device(self.model), weights_only=False)
            self.cache, self.history = obj["cache"], obj["history"]
        except Exception as e:
            raise ConfigError(f"{path}: not a saved chat state ({type(e).__name__}: {e})",
                              hint="use a file written by /save or save_state") from None


def _cache_to_cpu(cache: ModelCache) -> ModelCache:
    def move(x):
        if isinstance(x, torch.Tensor):
            return x.cpu()
        if isinstance(x, (list, tuple)):
            return type(x)(move(v) for v in x) if not hasattr(x, "_fields") else type(x)(*(move(v) for v in x))
        if hasattr(x, "__dataclass_fields__"):
            return type(x)(**{f: move(getattr(x, f)) for f in x.__dataclass_fields__})
        return x
    return move(cache)


CHAT_HELP = """commands: /reset (forget the conversation, restore the initial state), /save PATH, /load PATH,
          /temp X (sampling temperature), /help, /quit (or Ctrl-D)"""


def chat_text(session: ChatSession, stdin: TextIO, stdout: TextIO) -> int:
    stdout.write(f"chatting with the model; {CHAT_HELP}\n")
    while True:
        stdout.write("you> ")
        stdout.flush()
        line = stdin.readline()
        if not line:
            stdout.write("\n")
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            try:
                if cmd in ("/quit", "/exit"):
                    return 0
                elif cmd == "/reset":
                    session.reset()
                    stdout.write("(state reset)\n")
                elif cmd == "/save":
                    session.save(arg.strip())
                    stdout.write(f"(saved to {arg.strip()})\n")
                elif cmd == "/load":
                    session.load(arg.strip())
                    stdout.write(f"(loaded {arg.strip()})\n")
                elif cmd == "/temp":
                    session.defaults.temperature = float(arg)
                    stdout.write(f"(temperature {session.defaults.temperature})\n")
                else:
                    stdout.write(CHAT_HELP + "\n")
            except (ValueError, OSError, ConfigError) as e:
                stdout.write(f"(error: {e})\n")
            continue
        stdout.write("model> ")
        for piece in session.reply([{"role": "user", "content": line}]):
            stdout.write(piece)
            stdout.flush()
        stdout.write("\n")


def chat_jsonl(session: ChatSession, stdin: TextIO, stdout: TextIO) -> int:
    """The machine interface of design §6: one request per line, events out."""
    def send(event: str, **fields: Any) -> None:
        stdout.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")
        stdout.flush()

    send("ready", chat_format=session.chat_format)
    for line in stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("expected a JSON object")
            op = req.pop("op", None)
            if op == "stop":
                send("bye")
                return 0
            if op == "reset":
                session.reset()
                send("ok", op=op)
            elif op in ("save_state", "load_state"):
                (session.save if op == "save_state" else session.load)(str(req["path"]))
                send("ok", op=op, path=req["path"])
            elif op == "generate":
                messages = req.pop("messages", None)
                prompt = req.pop("prompt", None)
                if messages is None:
                    if not isinstance(prompt, str):
                        raise ValueError('generate needs "prompt" (text) or "messages"')
                    messages = [{"role": "user", "content": prompt}]
                params = SamplingParams.from_dict({**{k: v for k, v in session.defaults.__dict__.items()}, **req})
                t0, n = time.time(), 0
                for piece in session.reply(messages, params):
                    send("token", text=piece)
                n = session.last_n_tokens
                send("done", n_tokens=n, tokens_per_s=n / max(time.time() - t0, 1e-9))
            else:
                raise ValueError(f"unknown op {op!r}; use generate, reset, save_state, load_state, stop")
        except (ValueError, KeyError, TypeError, ConfigError, OSError) as e:
            send("error", kind="request", message=str(e))
    return 0


def run_generate(model: BitTTTForCausalLM, tokenizer: Tokenizer, prompt: str, p: SamplingParams,
                 out: TextIO | None = None) -> dict[str, Any]:
    out = out or sys.stdout
    ids = tokenizer.encode(prompt) or [tokenizer.bos_id]
    t0, result = time.time(), {}
    out.write(prompt)
    for piece in stream_text(model, tokenizer, ids, p, None, result):
        out.write(piece)
        out.flush()
    out.write("\n")
    return {"n_tokens": result.get("n_tokens", 0), "seconds": time.time() - t0}
