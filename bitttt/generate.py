"""Generation and chat: sampling, the prefill + decode loop over the model's cache, and the
chat session whose TTT state (the model's memory) carries over between turns (design §6).
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

import torch

from bitttt import chat_memory
from bitttt.errors import ConfigError
from bitttt.model import BitTTTForCausalLM, ModelCache
from bitttt.tokenizer import Tokenizer


MAX_NEW_TOKENS = 100_000  # the most one request may ask for (a reply can always be cancelled)
# temperature (other than 0) and repetition_penalty divide or multiply logits: past these bounds
# a logit overflows float32 (1e-300 made every logit inf and softmax NaN); no sampler needs more.
SCALE_RANGE = (1e-4, 1e4)
MAX_POSITION = 2**40  # a conversation position past this is a damaged memory file, not a long chat


@dataclass
class SamplingParams:
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off (CTRL's: divides positive logits of seen tokens)
    no_repeat_ngram: int = 0  # 0: off; n: never complete an n-token sequence already in the text (HF's)
    seed: int | None = None
    stop: list[str] | None = None  # stop strings (the end-of-text token always stops)

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "top_k", "no_repeat_ngram"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be a whole number >= 0, got {v!r}")
        for name in ("temperature", "top_p", "repetition_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
                raise ConfigError(f"{name} must be a number, got {v!r}")
        if self.max_new_tokens > MAX_NEW_TOKENS:
            raise ConfigError(f"max_new_tokens must be <= {MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        low, high = SCALE_RANGE
        if self.temperature != 0 and not low <= self.temperature <= high:
            raise ConfigError(f"temperature must be 0 (greedy) or in [{low:g}, {high:g}], got {self.temperature}",
                              hint="use 0 for greedy decoding")
        if not low <= self.repetition_penalty <= high:
            raise ConfigError(f"repetition_penalty must be in [{low:g}, {high:g}] (1 = off), got "
                              f"{self.repetition_penalty}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**63):
            raise ConfigError(f"seed must be a whole number in [0, 2**63) or null, got {self.seed!r}")
        if self.stop is not None and (not isinstance(self.stop, list) or not all(isinstance(s, str) for s in self.stop)):
            raise ConfigError(f"stop must be a string or a list of strings, got {str(self.stop)[:60]}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplingParams:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown sampling parameter(s) {', '.join(map(str, unknown))[:200]}",
                              hint="valid: " + ", ".join(sorted(names)))
        stop = d.get("stop")
        return cls(**{**d, "stop": [stop] if isinstance(stop, str) else stop})


class NgramBan:
    """The tokens that would complete an n-gram already seen (no_repeat_ngram), kept incrementally:
    prefix (n−1 tokens) -> the tokens that followed it."""

    def __init__(self, n: int, ids: list[int]) -> None:
        self.n, self.ids, self.follow = n, [], {}
        for t in ids:
            self.add(t)

    def add(self, token: int) -> None:
        self.ids.append(token)
        if self.n > 0 and len(self.ids) >= self.n:
            self.follow.setdefault(tuple(self.ids[-self.n:-1]), set()).add(token)

    def banned(self) -> list[int]:
        if self.n <= 0 or len(self.ids) < self.n - 1:
            return []
        return sorted(self.follow.get(tuple(self.ids[len(self.ids) - self.n + 1:]), ()))


def greedy_token(logits: torch.Tensor) -> int:
    """The id of the first largest logit (the first NaN if any), as torch.argmax gives it. On the
    CPU numpy's argmax does it: torch's took ~0.2 ms on a 128256-entry row (BitNet 2B's vocab),
    ~10x numpy's, once per stream and step in bitttt serve."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return int(logits.numpy().argmax())
    return int(logits.argmax())


def sample_next(logits: torch.Tensor, p: SamplingParams, seen: torch.Tensor | None,
                generator: torch.Generator | None, banned: list[int] | None = None) -> int:
    """logits [V] float32 -> the next token id; `banned` ids are never chosen (unless all are)."""
    logits = logits.detach().float()
    penalize = p.repetition_penalty != 1.0 and seen is not None and seen.numel()
    ban = bool(banned) and len(banned) < logits.numel()
    if penalize or ban:
        logits = logits.clone()  # the caller's logits stay as they were
    if penalize:
        prev = logits[seen]
        logits[seen] = torch.where(prev > 0, prev / p.repetition_penalty, prev * p.repetition_penalty)
    if ban:
        logits[banned] = float("-inf")
    if p.temperature == 0:
        return greedy_token(logits)
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
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def run_model(model: BitTTTForCausalLM, ids: list[list[int]], cache: ModelCache | None, use_cache: bool = False):
    """One forward over token ids on the model's device; its logits are the last position's only
    ([B, 1, V]: every caller samples from it, and a prefill chunk of a 2B model would otherwise
    pay a 128256-row head per prompt token). On CUDA the float layers run under bf16 autocast
    (as in training); the ternary and TTT ops run their own CUDA kernels."""
    device = model_device(model)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return model(torch.tensor(ids, device=device), cache=cache, use_cache=use_cache, logits_to_keep=1)


def decode_rows(model: BitTTTForCausalLM, tokens: list[int], caches: list[ModelCache]) -> tuple[torch.Tensor, list[ModelCache]]:
    """One token for each of B independent sequences in one forward (bitttt serve's batch): row
    i feeds tokens[i] after caches[i], a batch-1 cache at its own position. Returns the logits
    [B, V] float32 and the rows' new caches. Every linear runs once with M = B rows; each
    mixer's position-dependent core (attention over the row's past, the TTT inner step) runs
    row by row (a ModelCache whose pos is a list: bitttt.model.ModelCache); an HF BitNet model
    runs the whole batch in one call of its decode op instead (bitttt.hf.bitnet). The caches
    passed in are consumed as by a one-token step (TTT states are updated in place)."""
    n_layers, B = len(caches[0].states), len(caches)
    rows = ModelCache([[c.states[i] for c in caches] for i in range(n_layers)], [c.pos for c in caches])
    out = run_model(model, [[t] for t in tokens], rows)
    new = [ModelCache([out.cache.states[i][r] for i in range(n_layers)], caches[r].pos + 1) for r in range(B)]
    return out.logits[:, -1], new


@torch.no_grad()
def generate_ids(model: BitTTTForCausalLM, prompt_ids: list[int], p: SamplingParams,
                 cache: ModelCache | None = None, eos_ids: int | Collection[int] = (), state: dict | None = None,
                 should_stop: Callable[[], bool] | None = None) -> Iterator[int]:
    """Yields sampled tokens. The prompt goes in one prefill call (continuing `cache` if
    given), then one decode call per token. Stops at any of eos_ids (one id or several, as HF
    configs list them; not yielded), max_new_tokens or
    when should_stop() says so (asked before each token; state["cancelled"] is then True);
    callers stop on stop strings by closing the iterator. `state` gets "cache" (everything fed
    so far) and "pending" (the last sampled token, not fed yet, or None)."""
    if not prompt_ids:
        raise ConfigError("generate: empty prompt", hint="give some text to continue")
    generator = torch.Generator(device="cpu").manual_seed(p.seed) if p.seed is not None else None
    state = state if state is not None else {}
    stop_ids = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids)
    seen = torch.tensor(prompt_ids, dtype=torch.long)
    ban = NgramBan(p.no_repeat_ngram, prompt_ids)
    out = run_model(model, [prompt_ids], cache, use_cache=True)
    logits = out.logits[0, -1].float().cpu()
    state.update(cache=out.cache, pending=None, cancelled=False)
    for _ in range(p.max_new_tokens):
        if should_stop is not None and should_stop():
            state["cancelled"] = True
            return
        token = sample_next(logits, p, seen, generator, ban.banned())
        state["pending"] = token
        if token in stop_ids:
            return
        yield token
        seen = torch.cat((seen, torch.tensor([token])))
        ban.add(token)
        out = run_model(model, [[token]], state["cache"])
        logits = out.logits[0, -1].float().cpu()
        state.update(cache=out.cache, pending=None)


class StopText:
    """The text of generated tokens as it becomes safe to show: feed(token) returns the new
    text and whether a stop string appeared (the stop string and what follows are never
    returned); text that could still be the start of a stop string is held back until it
    cannot, and flush() returns the rest at the end."""

    def __init__(self, tokenizer: Tokenizer, stops: list[str] | None) -> None:
        self.dec = tokenizer.stream_decoder()
        self.stops = [s for s in (stops or []) if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1  # chars kept back while a stop may be forming
        self.text, self.emitted = "", 0

    def feed(self, token: int) -> tuple[str, bool]:
        self.text += self.dec.feed(token)
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            piece = self.text[self.emitted:cut] if cut > self.emitted else ""
            self.emitted = len(self.text)
            return piece, True
        upto = max(self.emitted, len(self.text) - self.hold)
        piece, self.emitted = self.text[self.emitted:upto], upto
        return piece, False

    def flush(self) -> str:
        self.text += self.dec.flush()
        piece, self.emitted = self.text[self.emitted:], len(self.text)
        return piece


def stream_text(model: BitTTTForCausalLM, tokenizer: Tokenizer, prompt_ids: list[int], p: SamplingParams,
                cache: ModelCache | None = None, result: dict | None = None,
                should_stop: Callable[[], bool] | None = None) -> Iterator[str]:
    """Text pieces as they complete; stops at a stop string (not included). result gets
    "ids" (generated), "cache", "pending" (see generate_ids) and "n_tokens"."""
    out, ids = StopText(tokenizer, p.stop), []
    result = result if result is not None else {}
    result.update(ids=ids, n_tokens=0)
    for token in generate_ids(model, prompt_ids, p, cache, tokenizer.eos_ids, result, should_stop):
        ids.append(token)
        result["n_tokens"] = len(ids)
        piece, stopped = out.feed(token)
        if piece:
            yield piece
        if stopped:
            return
    if rest := out.flush():
        yield rest


def generate_text(model: BitTTTForCausalLM, tokenizer: Tokenizer, prompt: str, max_new_tokens: int,
                  **sampling: Any) -> str:
    p = SamplingParams(max_new_tokens=max_new_tokens, **sampling)
    return "".join(stream_text(model, tokenizer, tokenizer.encode(prompt) or [tokenizer.bos_id], p))


# ---------------------------------------------------------------------------------------
# Chat
# ---------------------------------------------------------------------------------------


def chat_turn_ids(tokenizer: Tokenizer, messages: list[dict[str, str]], chat_format: bool) -> list[int]:
    """The tokens of new chat turns, ending where the assistant's reply starts (no leading bos).
    chat_format: the tokenizer's chat template (<|user|>... or an HF folder's); otherwise plain
    "User: ..." / "Assistant:" lines for models trained on plain text."""
    if chat_format:
        return tokenizer.encode_chat(messages, add_assistant=True)
    text = "".join(f"\n{m.get('role', 'user').capitalize()}: {m['content']}\n" for m in messages)
    return tokenizer.encode(text + "Assistant:")


def chat_stop_strings(chat_format: bool) -> list[str]:
    """Where a reply ends besides the end-of-text token: the next "User:" line in plain text."""
    return [] if chat_format else ["\nUser:"]


@dataclass
class TurnResult:
    """What one reply did: tokens generated, whether it was cancelled, how the memory moved."""

    n_tokens: int = 0
    cancelled: bool = False
    memory: dict[str, list] = field(default_factory=dict)


class ChatSession:
    """A conversation with one model. Each turn feeds only the new tokens on top of the cache,
    so the TTT fast weights keep learning from the whole conversation until reset().

    A turn that fails (out of memory, a bad request) leaves the session as it was before it;
    a cancelled turn keeps what was generated (it is fed like a finished reply)."""

    def __init__(self, model: BitTTTForCausalLM, tokenizer: Tokenizer, chat_format: bool, defaults: SamplingParams):
        self.model, self.tokenizer, self.chat_format, self.defaults = model, tokenizer, chat_format, defaults
        self.last_turn = TurnResult()
        self.reset()
        self._start_weights = chat_memory.fast_weights(model, self.cache)  # what drift is measured from

    @torch.no_grad()
    def reset(self) -> None:
        """Back to the initial state: only <|bos|> fed."""
        self.cache = run_model(self.model, [[self.tokenizer.bos_id]], None, use_cache=True).cache
        self.history: list[dict[str, str]] = []
        self._last_weights = None  # the memory report after this says 0 for every layer

    def memory(self) -> dict[str, list]:
        """Per TTT layer: `drift` = ‖W − W_start‖/‖W_start‖, W_start the fast weights a fresh
        conversation starts from, and `turn_change` = ‖W − W_prev‖/‖W_start‖ since the previous
        report (design §6). Calling it makes now the previous report."""
        now = chat_memory.fast_weights(self.model, self.cache)
        start, prev = self._start_weights, self._last_weights or self._start_weights
        change = chat_memory.relative_change
        layers = sorted(now)
        report = {"layers": layers,
                  "drift": [round(change(now[i], start[i], start[i]), 6) for i in layers],
                  "turn_change": [round(change(now[i], prev[i], start[i]), 6) for i in layers]}
        self._last_weights = now
        return report

    def _turn_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return chat_turn_ids(self.tokenizer, messages, self.chat_format)

    def stop_strings(self) -> list[str]:
        return chat_stop_strings(self.chat_format)

    def reply(self, messages: list[dict[str, str]], p: SamplingParams | None = None,
              should_stop: Callable[[], bool] | None = None, max_prompt_tokens: int | None = None) -> Iterator[str]:
        """Streams the reply to the new messages; the cache then holds the whole exchange and
        last_turn says what happened. should_stop() is asked before each token (cancel)."""
        p = p or self.defaults
        p = SamplingParams(**{**p.__dict__, "stop": (p.stop or []) + self.stop_strings()})
        ids = self._turn_ids(messages)
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            raise ConfigError(f"the new turn is {len(ids)} tokens; at most {max_prompt_tokens} per request",
                              hint="send long text in several turns")
        result: dict[str, Any] = {}
        pieces = []
        for piece in stream_text(self.model, self.tokenizer, ids, p, self.cache, result, should_stop):
            pieces.append(piece)
            yield piece
        # Feed what was sampled but not fed yet, and the turn's end marker.
        eos, pending = self.tokenizer.eos_id, result.get("pending")
        tail = [] if pending is None else [pending]
        if self.chat_format and pending not in self.tokenizer.eos_ids:
            tail.append(eos)
        elif not self.chat_format:
            tail = [t for t in tail if t not in self.tokenizer.eos_ids] + self.tokenizer.encode("\n")
        with torch.no_grad():
            self.cache = run_model(self.model, [tail], result["cache"]).cache
        self.history += messages + [{"role": "assistant", "content": "".join(pieces)}]
        self.last_turn = TurnResult(result["n_tokens"], result.get("cancelled", False), self.memory())

    def save(self, path: str | Path) -> Path:
        """Writes the memory to a chat memory file (chat_memory); returns the resolved path."""
        p = chat_memory.resolve_state_path(str(path))
        chat_memory.write_memory(p, self.model, self.cache, self.history)
        return p

    def load(self, path: str | Path) -> Path:
        """Takes the memory of a chat memory file; on any error (another model's file, a damaged
        or old pickled one) raises MemoryFileError and keeps the current memory."""
        p = chat_memory.resolve_state_path(str(path))
        cache, history = chat_memory.read_memory(p, self.model, self.cache)
        check_positions(cache, p)
        self.cache, self.history, self._last_weights = cache, history, None
        return p


def check_positions(cache: Any, path: Path) -> None:
    """MemoryFileError unless every position in a loaded cache (ModelCache.pos and the layers'
    own) is a whole number in [0, MAX_POSITION]: a `pos` of 2**64 loaded fine, then failed every
    generate after it."""
    def walk(node: Any, where: str) -> None:
        if isinstance(node, bool) or isinstance(node, (torch.Tensor, str, float)) or node is None:
            return
        if isinstance(node, int):
            if not 0 <= node <= MAX_POSITION:
                raise chat_memory.MemoryFileError(f"{path}: {where} is {node}, outside [0, 2**40]",
                                                  hint=chat_memory.STATE_HINT)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{where}.{i}")
        elif dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                walk(getattr(node, f.name), f"{where}.{f.name}")
    walk(cache, "cache")


CHAT_HELP = """commands: /reset (forget the conversation, restore the initial state), /save PATH, /load PATH,
          /temp X (sampling temperature), /help, /quit (or Ctrl-D)"""


def chat_text(session: ChatSession, stdin: TextIO, stdout: TextIO) -> int:
    if hasattr(stdin, "reconfigure"):
        stdin.reconfigure(errors="replace")  # bytes that are not UTF-8 become U+FFFD, not an exit 1
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
                    stdout.write(f"(saved to {session.save(arg.strip())})\n")
                elif cmd == "/load":
                    stdout.write(f"(loaded {session.load(arg.strip())})\n")
                elif cmd == "/temp":
                    session.defaults = dataclasses.replace(session.defaults, temperature=float(arg))
                    stdout.write(f"(temperature {session.defaults.temperature})\n")
                else:
                    stdout.write(CHAT_HELP + "\n")
            except (ValueError, OSError, ConfigError) as e:
                stdout.write(f"(error: {e})\n")
            continue
        stdout.write("model> ")
        try:
            for piece in session.reply([{"role": "user", "content": line}]):
                stdout.write(piece)
                stdout.flush()
        except (ConfigError, RuntimeError, MemoryError) as e:  # the session is as before the turn
            stdout.write(f"\n(error: {type(e).__name__}: {e})")
        stdout.write("\n")


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
