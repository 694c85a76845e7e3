"""The engine of `bitttt serve`: plain Python over the model, no HTTP (llama.cpp's server_slot
and update_slots, in bitttt's terms).

- Requests are submitted to a bounded queue and answered by id through their Handle: a stream
  of Events (text pieces, then one `done` with the finish reason and the usage counts).
- Up to `max_batch` slots are active. Each step samples the next token of every decoding
  slot, then feeds all of them in one forward (bitttt.generate.decode_rows: every linear runs
  with M = B tokens; each slot keeps its own KV cache or TTT state). Queued requests join
  between steps, finished and cancelled ones leave; a cancel (a client that went away) frees
  its slot at the next step.
- Chunked prefill: a joining prompt is fed in chunks of at most `prefill_chunk` tokens, and a
  step feeds at most that many prompt tokens before its decode, so a long prompt delays the
  other slots' next token by one chunk's time, not by its whole prefill. A prompt is always cut
  at the same places (every prefill_chunk tokens from where its cached prefix ends), whatever
  else is running: its output does not depend on the load.
- Prompts that extend a conversation the engine has seen resume from the state cache
  (bitttt.serve.state_cache) and feed only their new tokens.
- Events go to each request's sink, called on the engine's thread; a sink must not block (a
  slow reader buffers its own events and never stalls the other slots).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from bitttt.errors import ConfigError
from bitttt.generate import SamplingParams, StopText, decode_rows, run_model, sample_next
from bitttt.model import ModelCache
from bitttt.serve.state_cache import StateCache
from bitttt.tokenizer import Tokenizer


@dataclass
class EngineConfig:
    max_batch: int = 8  # slots decoded together in one forward
    max_queue: int = 64  # requests waiting for a slot; one more is refused (QueueFull)
    state_cache_mb: float = 256.0  # conversation states kept for resuming (0: off)
    max_prompt_tokens: int = 8192  # a longer prompt is refused (PromptTooLong)
    rate_window_s: float = 10.0  # tokens/s is measured over the last this many seconds
    prefill_chunk: int = 128  # prompt tokens fed per chunk, and per step at most (beside the decode)

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_prompt_tokens", "prefill_chunk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {v!r}")
        if not self.state_cache_mb >= 0:
            raise ConfigError(f"state_cache_mb must be >= 0, got {self.state_cache_mb!r}")


class QueueFull(Exception):
    """The request queue is at max_queue: try again later (HTTP 429)."""


class PromptTooLong(ValueError):
    """A prompt over max_prompt_tokens (HTTP 413)."""


@dataclass
class Request:
    """One completion: the prompt's token ids and how to sample. sampling.stop are stop
    strings; sampling.max_new_tokens the most tokens to generate. presence/frequency penalties
    are OpenAI's: logit -= frequency * count + presence * (count > 0), counts over the tokens
    generated so far."""

    prompt_ids: list[int]
    sampling: SamplingParams
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens resumed from the state cache, not fed again


@dataclass
class Event:
    """kind "token": `text` is the next piece (possibly empty: a token inside a multi-byte
    character or a possible stop string); "done": the last event, with finish_reason "stop"
    (end of text or a stop string), "length" (max tokens), "cancelled" or "error" (`text` says
    what went wrong) and the usage."""

    kind: str
    text: str = ""
    token: int | None = None
    finish_reason: str | None = None
    usage: Usage | None = None


class Handle:
    """A submitted request: its id, its events (queue `events` unless a sink was given) and cancel()."""

    def __init__(self, request_id: int, request: Request, sink: Callable[[Event], None] | None) -> None:
        self.id, self.request = request_id, request
        self.events: queue.Queue[Event] = queue.Queue()
        self.sink = sink or self.events.put
        self.cancelled = threading.Event()
        self.submitted = time.perf_counter()

    def cancel(self) -> None:
        """The slot is freed at the engine's next step; a `done` event with reason cancelled follows."""
        self.cancelled.set()

    def result(self, timeout: float | None = None) -> tuple[str, Event]:
        """Waits for the end (events queue only): (the whole text, the done event)."""
        pieces = []
        while True:
            ev = self.events.get(timeout=timeout)
            if ev.kind == "done":
                return "".join(pieces), ev
            pieces.append(ev.text)


@dataclass
class _Slot:
    handle: Handle
    cache: ModelCache | None  # None: nothing fed yet
    logits: torch.Tensor | None  # [V] float32: the next token's (None while prefilling)
    pending: list[int]  # prompt tokens not fed yet (the slot decodes once this is empty)
    fed: list[int]  # every token id the cache holds
    text: StopText
    generator: torch.Generator | None
    counts: torch.Tensor  # [V] float32: how often each token was generated (penalties)
    usage: Usage
    generated: list[int] = field(default_factory=list)


@dataclass
class Stats:
    """Counters and gauges of the engine (the HTTP layer exports them to Prometheus)."""

    requests: dict[str, int] = field(default_factory=lambda: {r: 0 for r in ("stop", "length", "cancelled", "error")})
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0
    queue_depth: int = 0
    batch_size: int = 0  # active slots at the last step
    tokens_per_s: float = 0.0  # generated tokens over the last rate_window_s
    cache_hits: int = 0
    cache_misses: int = 0
    cache_entries: int = 0
    cache_bytes: int = 0


class Engine:
    """Serves one model: submit() from any thread, a background thread (start()) or step()
    calls (tests) do the work."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, config: EngineConfig | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.config = config or EngineConfig()
        self.eos_ids = set(tokenizer.eos_ids)
        self.vocab_size = int(getattr(model.config, "vocab_size"))
        self.state_cache = StateCache(int(self.config.state_cache_mb * 2**20))
        self._queue: deque[Handle] = deque()
        self._slots: list[_Slot] = []
        self._ids = itertools.count(1)
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._stats = Stats()
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) per step, for tokens/s

    # -- the outside ------------------------------------------------------------------------
    def submit(self, request: Request, sink: Callable[[Event], None] | None = None) -> Handle:
        """Queues a request; raises PromptTooLong, QueueFull or ConfigError (an empty prompt)."""
        n = len(request.prompt_ids)
        if n == 0:
            raise ConfigError("the prompt is empty", hint="give some text to continue")
        if n > self.config.max_prompt_tokens:
            raise PromptTooLong(f"the prompt is {n} tokens; this server takes at most {self.config.max_prompt_tokens}")
        if any(not 0 <= t < self.vocab_size for t in request.prompt_ids):
            raise ConfigError(f"prompt token ids must be in [0, {self.vocab_size})")
        with self._wake:
            if len(self._queue) >= self.config.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting (max_queue {self.config.max_queue})")
            handle = Handle(next(self._ids), request, sink)
            self._queue.append(handle)
            self._wake.notify()
        return handle

    def stats(self) -> Stats:
        with self._wake:
            s = self._stats
            s.queue_depth = len(self._queue)
            now = time.perf_counter()
            while self._recent and self._recent[0][0] < now - self.config.rate_window_s:
                self._recent.popleft()
            s.tokens_per_s = sum(n for _, n in self._recent) / self.config.rate_window_s
            c = self.state_cache
            s.cache_hits, s.cache_misses, s.cache_entries, s.cache_bytes = c.hits, c.misses, len(c), c.nbytes
            return Stats(**{**s.__dict__, "requests": dict(s.requests)})

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._run, name="bitttt-engine", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stops the thread; requests still queued or active end with reason cancelled."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        for h in list(self._queue):
            h.sink(Event("done", finish_reason="cancelled", usage=Usage(len(h.request.prompt_ids))))
        self._queue.clear()
        for slot in self._slots:
            slot.handle.sink(Event("done", finish_reason="cancelled", usage=slot.usage))
        self._slots.clear()

    @property
    def busy(self) -> bool:
        return bool(self._slots or self._queue)

    @property
    def prefilling(self) -> int:
        """Requests not decoding yet: queued, or with prompt tokens still to feed."""
        return len(self._queue) + sum(1 for s in self._slots if s.pending)

    # -- the work -----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closing and not self._slots and not self._queue:
                    self._wake.wait()
                if self._closing:
                    return
            try:
                self.step()
            except Exception as e:  # a bug: what is running fails, the server keeps serving
                for slot in self._slots:
                    self._finish(slot, "error", f"{type(e).__name__}: {str(e)[:500]}", keep_state=False)
                self._slots = []

    @torch.no_grad()
    def step(self) -> None:
        """One round: cancelled slots leave, queued requests join, up to prefill_chunk prompt
        tokens are fed (whole chunks, in join order), every decoding slot gets its next token,
        and the slots still going are fed in one forward."""
        self._slots = [s for s in self._slots if not self._left(s)]
        while len(self._slots) < self.config.max_batch:
            with self._wake:
                if not self._queue:
                    break
                handle = self._queue.popleft()
            slot = self._join(handle)
            if slot is not None:
                self._slots.append(slot)
        self._prefill_chunks()
        if not self._slots:
            self._stats.batch_size = 0
            return
        decoding = [s for s in self._slots if not s.pending]
        going = [s for s in decoding if self._advance(s)]
        self._stats.batch_size = len(self._slots)
        self._stats.steps += 1
        with self._wake:
            self._recent.append((time.perf_counter(), len(decoding)))
        self._slots = [s for s in self._slots if s.pending] + going
        if going:
            try:
                logits, caches = decode_rows(self.model, [s.generated[-1] for s in going], [s.cache for s in going])
            except Exception as e:  # out of memory or a bug: these slots end, the server stays
                for s in going:
                    self._finish(s, "error", f"{type(e).__name__}: {str(e)[:500]}", keep_state=False)
                self._slots = []
                return
            for s, row, cache in zip(going, logits.float().cpu(), caches):
                s.logits, s.cache = row, cache
                s.fed.append(s.generated[-1])

    def _prefill_chunks(self) -> None:
        """Feeds the next chunks of the slots still prefilling, in join order, while the step's
        budget of prefill_chunk prompt tokens allows (the first chunk always goes)."""
        budget = self.config.prefill_chunk
        for slot in [s for s in self._slots if s.pending]:
            while slot.pending:
                chunk = slot.pending[:self.config.prefill_chunk]
                if len(chunk) > budget and budget < self.config.prefill_chunk:
                    return
                try:
                    out = run_model(self.model, [chunk], slot.cache, use_cache=True)
                except Exception as e:  # out of memory, a bug: this request fails, the others go on
                    self._slots.remove(slot)
                    self._finish(slot, "error", f"{type(e).__name__}: {str(e)[:500]}", keep_state=False)
                    break
                slot.cache, slot.pending = out.cache, slot.pending[len(chunk):]
                budget -= len(chunk)
                if not slot.pending:
                    slot.logits = out.logits[0, -1].float().cpu()

    def _left(self, slot: _Slot) -> bool:
        if slot.handle.cancelled.is_set():
            self._finish(slot, "cancelled", keep_state=False)
            return True
        return False

    def _join(self, handle: Handle) -> _Slot | None:
        """A new slot for a request, resumed from the longest cached prefix of its prompt (the
        rest is fed by _prefill_chunks); None if it ended already (cancelled while queued)."""
        req = handle.request
        usage = Usage(prompt_tokens=len(req.prompt_ids))
        if handle.cancelled.is_set():
            self._stats.requests["cancelled"] += 1
            handle.sink(Event("done", finish_reason="cancelled", usage=usage))
            return None
        try:
            cache, n_cached = self.state_cache.get(req.prompt_ids)
        except Exception as e:  # out of memory copying the state: this request fails, the others go on
            self._stats.requests["error"] += 1
            handle.sink(Event("done", text=f"{type(e).__name__}: {str(e)[:500]}", finish_reason="error", usage=usage))
            return None
        usage.cached_tokens = n_cached
        self._stats.prompt_tokens += usage.prompt_tokens
        self._stats.cached_tokens += n_cached
        p = req.sampling
        generator = torch.Generator(device="cpu").manual_seed(p.seed) if p.seed is not None else None
        return _Slot(handle, cache, None, list(req.prompt_ids[n_cached:]), list(req.prompt_ids),
                     StopText(self.tokenizer, p.stop), generator, torch.zeros(self.vocab_size), usage)

    def _advance(self, slot: _Slot) -> bool:
        """Samples the slot's next token and sends its text; False when the slot is done."""
        req, p = slot.handle.request, slot.handle.request.sampling
        logits = slot.logits
        if req.presence_penalty or req.frequency_penalty:
            n = slot.counts
            logits = logits - req.frequency_penalty * n - req.presence_penalty * (n > 0).float()
        # Every token sampled so far has been fed: fed is the prompt and the reply (as generate's `seen`).
        seen = torch.tensor(slot.fed, dtype=torch.long) if p.repetition_penalty != 1.0 else None
        token = sample_next(logits, p, seen, slot.generator)
        if token in self.eos_ids:
            piece = slot.text.flush()
            if piece:
                slot.handle.sink(Event("token", text=piece))
            self._finish(slot, "stop")
            return False
        slot.generated.append(token)
        slot.usage.completion_tokens += 1
        self._stats.completion_tokens += 1
        slot.counts[token] += 1
        piece, stopped = slot.text.feed(token)
        if stopped or len(slot.generated) >= p.max_new_tokens:
            if not stopped:
                piece += slot.text.flush()
            if piece:
                slot.handle.sink(Event("token", text=piece, token=token))
            self._finish(slot, "stop" if stopped else "length")
            return False
        slot.handle.sink(Event("token", text=piece, token=token))
        return True

    def _finish(self, slot: _Slot, reason: str, message: str = "", keep_state: bool = True) -> None:
        """Sends the done event; keeps the slot's state for a conversation that goes on."""
        self._stats.requests[reason] += 1
        if keep_state:
            self.state_cache.put(slot.fed, slot.cache)
        slot.handle.sink(Event("done", text=message, finish_reason=reason, usage=slot.usage))
