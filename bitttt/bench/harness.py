"""The one benchmark harness: validate, interleave, take medians, write one record shape.

Every `bitttt bench ...` declares cases and contenders; this module does the rest.

- **Validate before timing** (llm.c): each contender's `check` runs first, for every case of
  a run, and any failure (an exception) stops the run before a single call is timed.
- **Interleave**: each round calls every contender of a case once, in an order that rotates
  by one between rounds (`rotation`), so drift (frequency, another process on a shared
  machine) hits all of them alike. At least `Settings.rounds` rounds (5 by default); with a
  `budget_s` more, up to `max_rounds`.
- **Median with min-max**: each contender's result is the median over its rounds, with the
  fastest and slowest round beside it (`summarize`).
- **Warm and cold weights**: a warm contender reuses one weight (and, with `prewarm`, runs once
  untimed right before each timed call, so the other contenders' calls in between do not evict
  it); a cold one cycles through distinct copies totalling at least `COLD_BYTES` (256 MB, far
  above any L3), so each call reads its weights from memory (`cold_copies`, `Cycle`).
- **Thread-wait policy**: OpenMP reads `OMP_WAIT_POLICY` once, when torch's OpenMP runtime
  starts, so a process cannot switch policy afterwards. A case whose `wait_policy` differs from
  this process's (`current_wait_policy`) therefore runs in a child process started with that
  policy's environment (`Child`): the child builds its contenders from an importable factory
  ("module:function" and JSON kwargs), answers `check` and `call` requests over its stdin and
  stdout, and times each call itself. The parent still rotates the order across rounds.
- **Timers**: `time.perf_counter_ns` on the CPU; CUDA events (recorded on the current stream,
  synchronised after each call) when the case's device is CUDA.
- **The record** (`Record`, schema "bitttt-bench/1", the shape COMMON to every bench): the
  machine (CPU model, ISA list, cores, and peaks measured in the same run), versions (bitttt's
  git commit, torch, transformers, llama-cpp-python and its build flags where installed), the
  load average before and after, the date and the command line, then one entry per (case,
  contender). "% of peak" goes through `Peaks.percent`, which never reports more than 100%:
  a rate above the peak re-measures the peak, and if the rate still exceeds it, the peak is
  raised to the rate and the entry is flagged (`peak_exceeded`).
"""

from __future__ import annotations

import datetime
import importlib
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from bitttt.errors import BitttError

SCHEMA = "bitttt-bench/1"
COLD_BYTES = 256 * 10**6  # cold copies per contender total at least this: far above a 32 MB L3
# OpenMP wait policies a case can ask for; each is the environment a child starts with.
# passive: threads sleep at once (what every bitttt command sets); active: they spin;
# spin: a short spin before sleeping (~30k pause loops in libgomp, 1 ms in LLVM's libomp).
WAIT_POLICIES: dict[str, dict[str, str]] = {
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "spin": {"GOMP_SPINCOUNT": "30000", "KMP_BLOCKTIME": "1"},
}
OMP_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
TIME_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


class BenchValidationError(BitttError):
    """A contender's output is wrong: its timings would be meaningless, so nothing is timed."""


# ---------------------------------------------------------------------------------------
# Cases and contenders
# ---------------------------------------------------------------------------------------


@dataclass
class Contender:
    """Something to time: `run()` is one call.

    `check()` validates the output (raises on a wrong one) and runs before any timing.
    `self_timed`: `run()` returns its own seconds (a child process, or an engine that must
    subtract a warm-up). `prewarm`: one untimed call right before each timed one (warm weights
    that others' calls may have evicted).
    """
    name: str
    run: Callable[[], Any]
    check: Callable[[], Any] | None = None
    prewarm: bool = False
    self_timed: bool = False
    wait_policy: str | None = None  # set by Child.contender: the policy its process runs under
    extra: dict[str, Any] = field(default_factory=dict)  # copied into each of its result entries


@dataclass
class Case:
    """One row of a benchmark: contenders timed against each other under the same conditions.

    Results are times per call in `unit` ("s", "ms", "us", "ns"), or rates when `work` is given:
    `work` units of `unit` (e.g. "tok/s") per call, so a rate is work / seconds.
    """
    name: str
    contenders: list[Contender]
    threads: int = 1
    # None: this process's. A policy other than this process's needs contenders from a Child (module doc).
    wait_policy: str | None = None
    device: str = "cpu"  # "cuda": CUDA-event timer
    unit: str = "us"
    work: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # copied into every entry of the case


@dataclass
class Settings:
    """How many rounds each case gets."""
    rounds: int = 5  # at least this many (the floor)
    max_rounds: int = 100
    budget_s: float = 0.0  # > 0: add rounds while one case's rounds fit this many seconds
    warmup: int = 1  # untimed calls per contender before the rounds

    def validate(self) -> None:
        if not (1 <= self.rounds <= self.max_rounds) or self.warmup < 0 or self.budget_s < 0:
            raise BitttError(f"bench: need 1 <= rounds <= max_rounds, warmup >= 0, budget_s >= 0; got {self}")


def rotation(n: int, r: int) -> list[int]:
    """The order of n contenders in round r: rotated left by r (round 0: 0, 1, ..., n-1)."""
    return [(r + i) % n for i in range(n)]


def choose_rounds(settings: Settings, seconds_per_round: float) -> int:
    """settings.rounds, or more while they fit budget_s, never over max_rounds."""
    if settings.budget_s <= 0:
        return settings.rounds
    fit = int(settings.budget_s / max(seconds_per_round, 1e-9))
    return max(settings.rounds, min(settings.max_rounds, fit))


# ---------------------------------------------------------------------------------------
# Cold weights
# ---------------------------------------------------------------------------------------


def copies_needed(bytes_per_copy: int, cold_bytes: int = COLD_BYTES) -> int:
    """Distinct copies whose total reaches cold_bytes (one copy that large is cold alone)."""
    return max(1, math.ceil(cold_bytes / max(bytes_per_copy, 1)))


def cold_copies(first: Any, bytes_per_copy: int, clone: Callable[[Any], Any],
                cold_bytes: int = COLD_BYTES) -> list[Any]:
    """`first` and enough clones of it to cycle through >= cold_bytes."""
    return [first] + [clone(first) for _ in range(copies_needed(bytes_per_copy, cold_bytes) - 1)]


class Cycle:
    """Hands out items in turn: `next()` gives copy 0, 1, ..., n-1, 0, ...; `again()` the last one."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items, self.i = list(items), -1

    def next(self) -> Any:
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]

    def again(self) -> Any:
        return self.items[max(self.i, 0)]

    def __len__(self) -> int:
        return len(self.items)


# ---------------------------------------------------------------------------------------
# Timers
# ---------------------------------------------------------------------------------------


def cpu_time(fn: Callable[[], Any]) -> float:
    """Seconds of one call, wall clock."""
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e9


def cuda_time(fn: Callable[[], Any]) -> float:
    """Seconds of one call on the current CUDA stream, from CUDA events around it."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def timer_for(device: str) -> Callable[[Callable[[], Any]], float]:
    return cuda_time if device.startswith("cuda") else cpu_time


def time_once(c: Contender, timer: Callable[[Callable[[], Any]], float]) -> float:
    """Seconds of one timed call of c (after its untimed prewarm call, if any)."""
    if c.prewarm:
        c.run()
    if c.self_timed:
        return float(c.run())
    return timer(c.run)


# ---------------------------------------------------------------------------------------
# Wait policies and child processes
# ---------------------------------------------------------------------------------------


def current_wait_policy(env: dict[str, str] | None = None) -> str:
    """This process's OpenMP wait policy, as set at its start: a WAIT_POLICIES name or "default"."""
    env = os.environ if env is None else env
    mine = {k: env[k].upper() for k in OMP_WAIT_VARS if k in env}
    return next((name for name, want in WAIT_POLICIES.items() if mine == want), "other" if mine else "default")


def policy_env(policy: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """base (default: os.environ) with only `policy`'s OpenMP wait settings."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in OMP_WAIT_VARS}
    return {**env, **WAIT_POLICIES[policy]}


class Child:
    """A child process, started with one wait policy's environment, hosting the contenders that
    `factory(**kwargs)` builds (a dict: case name -> Contender). One line per request on its
    stdin ("check CASE", "call CASE", "quit"); one JSON line per answer on its stdout."""

    def __init__(self, factory: str, kwargs: dict[str, Any], policy: str, threads: int = 1) -> None:
        self.factory, self.policy = factory, policy
        cmd = [sys.executable, "-m", "bitttt.bench.harness", "--serve", factory, json.dumps(kwargs),
               "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=policy_env(policy))
        self.info = self._ask(None)  # the child's first line, once its factory has run

    def _ask(self, request: str | None) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if request is not None:
            self.proc.stdin.write(request + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise BitttError(f"bench: child {self.factory} ({self.policy}) died on {request!r} "
                             f"(exit {self.proc.wait()})", hint="run the factory in process to see its error")
        answer = json.loads(line)
        if "error" in answer:
            cls = BenchValidationError if answer.get("validation") else BitttError
            raise cls(f"bench: child {self.factory} ({self.policy}): {answer['error']}")
        return answer

    def contender(self, case: str, name: str, extra: dict[str, Any] | None = None) -> Contender:
        """A parent-side contender that runs `case` in the child; the child times the call (and
        makes its own prewarm call, if its contender has one)."""
        return Contender(name, lambda: self._ask(f"call {case}")["seconds"],
                         check=lambda: self._ask(f"check {case}"), self_timed=True, wait_policy=self.policy,
                         extra={**(extra or {}), **self.info.get("case_extra", {}).get(case, {}),
                                **self.info.get("extra", {})})

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._ask("quit")
            except BitttError:
                pass
            self.proc.wait(timeout=30)


class Hosts:
    """Where a factory's contenders run: in this process when the wait policy asked for is this
    process's own (and `isolate` is not asked), else in a Child started with that policy. A
    context manager: leaving it closes every child."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self, factory: str, kwargs: dict[str, Any], policy: str, threads: int = 1,
              isolate: bool = False) -> dict[str, Contender]:
        """Case name -> Contender, each tagged with `policy`."""
        if policy not in WAIT_POLICIES:
            raise BitttError(f"bench: wait policy {policy!r} is not one of {', '.join(WAIT_POLICIES)}")
        if not isolate and policy == current_wait_policy():
            contenders = load_factory(factory)(**kwargs)
            for c in contenders.values():
                c.wait_policy = policy
            return contenders
        child = Child(factory, kwargs, policy, threads)
        self.children.append(child)
        return {case: child.contender(case, name) for case, name in child.info["cases"].items()}

    def close(self) -> None:
        while self.children:
            self.children.pop().close()


def load_factory(spec: str) -> Callable[..., dict[str, Contender]]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def serve(factory: str, kwargs: dict[str, Any], threads: int, stdin: TextIO, stdout: TextIO) -> int:
    """The child's loop (module doc): build the contenders, then answer requests until "quit"."""
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if stdout is sys.stdout:  # the protocol gets a private copy of fd 1; what the factory prints goes to stderr
        stdout = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
    contenders = load_factory(factory)(**kwargs)
    env = {k: os.environ[k] for k in OMP_WAIT_VARS if k in os.environ}
    hello = {"load_s": time.perf_counter() - t0, "cases": {case: c.name for case, c in contenders.items()},
             "extra": {"omp_env": env},
             # each contender's own extra (bytes per token, ...) travels with its results
             "case_extra": {case: _jsonable(c.extra) for case, c in contenders.items()}}
    print(json.dumps(hello), file=stdout, flush=True)
    for line in stdin:
        verb, _, case = line.strip().partition(" ")
        if verb == "quit":
            print("{}", file=stdout, flush=True)
            return 0
        try:
            c = contenders[case]
            if verb == "check":
                print(json.dumps({"ok": True, "result": _jsonable(c.check() if c.check else None)}),
                      file=stdout, flush=True)
            elif verb == "call":
                print(json.dumps({"seconds": time_once(c, cpu_time)}), file=stdout, flush=True)
            else:
                raise BitttError(f"unknown request {verb!r}")
        except Exception as e:  # noqa: BLE001 - the parent raises it with the child's message
            print(json.dumps({"error": f"{type(e).__name__}: {e}",
                              "validation": isinstance(e, BenchValidationError)}), file=stdout, flush=True)
    return 0


def _jsonable(x: Any) -> Any:
    try:
        json.dumps(x)
        return x
    except TypeError:
        return repr(x)


# ---------------------------------------------------------------------------------------
# Running cases
# ---------------------------------------------------------------------------------------


@dataclass
class Result:
    """One contender in one case; what a record's "cases" list holds."""
    case: str
    contender: str
    threads: int
    wait_policy: str
    median: float
    min: float
    max: float
    unit: str
    rounds: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {**{k: v for k, v in d.items() if k != "extra"}, **self.extra}


def summarize(seconds: list[float], unit: str, work: float | None) -> tuple[float, float, float]:
    """(median, min, max) of per-call seconds in `unit`: a time, or work / seconds for a rate
    (whose min comes from the slowest call)."""
    if not seconds:
        raise BitttError("bench: no timings to summarize")
    med, lo, hi = statistics.median(seconds), min(seconds), max(seconds)
    if work is not None:
        return work / med, work / hi, work / lo
    scale = TIME_UNITS[unit]
    return med * scale, lo * scale, hi * scale


def check_case(case: Case) -> None:
    """Runs every contender's check at the case's thread count; BenchValidationError names the
    first that fails."""
    import torch

    old_threads = torch.get_num_threads()
    torch.set_num_threads(case.threads)
    try:
        for c in case.contenders:
            if c.check is None:
                continue
            try:
                c.check()
            except BenchValidationError:
                raise
            except Exception as e:  # a wrong output may raise anything: the run must stop all the same
                raise BenchValidationError(f"bench: {case.name}: {c.name} failed its check: {e}") from e
    finally:
        torch.set_num_threads(old_threads)


def time_case(case: Case, settings: Settings, on_round: Callable[[int, list[str]], None] | None = None
              ) -> list[Result]:
    """Warm-up, then interleaved rounds in rotating order; one Result per contender.

    `on_round(r, order)` (tests) sees the contender names in the order round r calls them.
    Validation is `check_case`'s job, before any case is timed (`run_cases`).
    """
    import torch

    if case.unit not in TIME_UNITS and case.work is None:
        raise BitttError(f"bench: case {case.name}: unit {case.unit!r} is a rate but no work per call is given")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(case.threads)
    timer = timer_for(case.device)
    try:
        per_round = 0.0
        for c in case.contenders:
            best = math.inf
            for _ in range(settings.warmup):
                best = min(best, time_once(c, timer))
            per_round += best if best < math.inf else 0.0
        rounds = choose_rounds(settings, per_round) if settings.warmup else settings.rounds
        # By position: one engine under two wait policies is two contenders with one name.
        times: list[list[float]] = [[] for _ in case.contenders]
        for r in range(rounds):
            order = rotation(len(case.contenders), r)
            if on_round:
                on_round(r, [case.contenders[i].name for i in order])
            for i in order:
                times[i].append(time_once(case.contenders[i], timer))
    finally:
        torch.set_num_threads(old_threads)
    policy = case.wait_policy or current_wait_policy()
    out = []
    for c, ts in zip(case.contenders, times, strict=True):
        med, lo, hi = summarize(ts, case.unit, case.work)
        out.append(Result(case.name, c.name, case.threads, c.wait_policy or policy, med, lo, hi, case.unit, len(ts),
                          {**case.extra, **c.extra}))
    return out


def run_cases(cases: list[Case], settings: Settings, out: TextIO | None = None) -> list[Result]:
    """Checks every case (nothing is timed if one fails), then times each in turn."""
    settings.validate()
    for case in cases:
        check_case(case)
    results = []
    for case in cases:
        rs = time_case(case, settings)
        results += rs
        if out is not None:
            print(format_results(rs), file=out, flush=True)
    return results


def format_results(results: list[Result]) -> str:
    """One line per entry: case, contender, threads, wait policy, median [min-max] unit."""
    return "\n".join(f"{r.case:<32} {r.contender:<22} thr {r.threads} {r.wait_policy:<7} "
                     f"{_num(r.median):>10} [{_num(r.min)}-{_num(r.max)}] {r.unit} ({r.rounds} rounds)"
                     for r in results)


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


# ---------------------------------------------------------------------------------------
# Machine, versions, peaks
# ---------------------------------------------------------------------------------------


def cpu_isa_list() -> list[str]:
    """The CPU's SIMD features bitttt's kernels care about (from bitttt._C.cpu_features)."""
    from bitttt._native import _C

    return sorted(k for k, v in dict(_C.cpu_features()).items() if v is True)


def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX); else bf16 GEMMs are emulated
    and fp32 is the meaningful baseline."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if any(f in flags for f in ("avx512_bf16", "amx_bf16")):
        return True
    try:
        import torch

        return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX")
    except Exception:  # noqa: BLE001 - an old torch without the query
        return False


def git_commit() -> str | None:
    """bitttt's source commit (with "-dirty" for local changes), or None outside a clone."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def versions() -> dict[str, Any]:
    """bitttt (commit and version), torch, transformers, llama-cpp-python (with its build
    flags) where installed."""
    import importlib.metadata as md

    import torch

    import bitttt

    out: dict[str, Any] = {"bitttt": git_commit(), "bitttt_version": bitttt.__version__,
                           "torch": torch.__version__, "python": sys.version.split()[0]}
    for dist, key in (("transformers", "transformers"), ("llama_cpp_python", "llama-cpp-python")):
        try:
            out[key] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    if "llama-cpp-python" in out:
        try:
            import llama_cpp

            out["llama-cpp-python_system_info"] = llama_cpp.llama_print_system_info().decode().strip()
        except Exception as e:  # noqa: BLE001 - record why, never fail the bench
            out["llama-cpp-python_system_info"] = f"unavailable: {type(e).__name__}"
    return out


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


class Peaks:
    """The machine's peaks, measured in this run (bitttt/bench/peak.py), by key and thread count:
    "read_gbs", "int8_<isa>_gmacs", "fp32_<isa>_gflops". Each is the best of `passes` passes.

    `percent(rate, key, threads)` is the only way a bench turns a rate into "% of peak": when
    the rate exceeds the peak, the peak is measured again (another pass); if the rate still
    exceeds it, the peak becomes the rate (so the share is 100%) and the key is flagged in
    `exceeded`, which the record keeps."""

    def __init__(self, threads: list[int], quick: bool = False, passes: int = 2,
                 measure: Callable[[list[int]], dict[str, dict[int, float]]] | None = None) -> None:
        self.threads, self.quick = list(threads), quick
        self.measure = measure or (lambda t: measure_peaks(t, quick))
        self.values: dict[str, dict[int, float]] = {}
        self.exceeded: list[dict[str, Any]] = []
        for _ in range(passes):
            self._merge(self.measure(self.threads))

    def _merge(self, new: dict[str, dict[int, float]]) -> None:
        for key, per in new.items():
            for t, v in per.items():
                old = self.values.setdefault(key, {}).get(t)
                self.values[key][t] = v if old is None else max(old, v)

    def get(self, key: str, threads: int) -> float | None:
        return self.values.get(key, {}).get(threads)

    def percent(self, rate: float, key: str, threads: int) -> float | None:
        """100 * rate / peak, never above 100 (class doc); None when there is no such peak."""
        peak = self.get(key, threads)
        if peak is None or peak <= 0:
            return None
        if rate > peak:
            self._merge(self.measure([threads]))
            peak = self.get(key, threads) or peak
        if rate > peak:
            self.exceeded.append({"key": key, "threads": threads, "measured_peak": peak, "rate": rate})
            self.values[key][threads] = peak = rate
        return 100 * rate / peak

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: {str(t): round(v, 3) for t, v in sorted(per.items())}
                               for k, per in self.values.items()}
        if self.exceeded:
            out["exceeded"] = self.exceeded
        return out


def measure_peaks(threads: list[int], quick: bool = False) -> dict[str, dict[int, float]]:
    """One pass of bitttt/bench/peak.py's kernels, keyed as `Peaks` keys them."""
    from bitttt.bench import peak

    p = peak.measure_peaks(threads, peak.QUICK_READ_BYTES if quick else peak.READ_BYTES,
                           peak.QUICK_RUN_S if quick else peak.RUN_S)
    out: dict[str, dict[int, float]] = {}
    for x in p.peaks:
        if x.value is None:
            continue
        key = "read_gbs" if x.kind == "read" else f"{x.kind}_{x.isa}_{'gmacs' if x.kind == 'int8' else 'gflops'}"
        out.setdefault(key, {})[x.threads] = x.value
    return out


def machine(peaks: Peaks | None) -> dict[str, Any]:
    """CPU model, ISA list, cores, the ternary kernel set in use, and the peaks (if measured)."""
    from bitttt import info

    out: dict[str, Any] = {"cpu": info.cpu_model(), "isa": cpu_isa_list(), "cores": os.cpu_count(),
                           "l3_bytes": info.l3_cache_bytes(), "kernel_isa": info.active_isa()[0],
                           "native_bf16": native_bf16(), "peaks": peaks.to_json() if peaks else {}}
    cuda = info.cuda_info()
    if cuda.get("device_name"):
        out["gpu"] = cuda["device_name"]
    return out


# ---------------------------------------------------------------------------------------
# The record
# ---------------------------------------------------------------------------------------


@dataclass
class Record:
    """One bench run (COMMON.md's record shape). Start it before timing (load_before), finish it
    after (load_after, the peaks' final values), then `to_json`/`write`."""
    bench: str
    settings: dict[str, Any]
    peaks: Peaks | None = None
    command: str = field(default_factory=lambda: shlex.join([os.path.basename(sys.argv[0]), *sys.argv[1:]]))
    date: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc)
                      .isoformat(timespec="seconds"))
    load_before: list[float] = field(default_factory=load_average)
    load_after: list[float] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)

    def finish(self, results: list[Result]) -> Record:
        self.results = list(results)
        self.load_after = load_average()
        return self

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "bench": self.bench, "date": self.date, "command": self.command,
                "machine": machine(self.peaks), "versions": versions(), "load_before": self.load_before,
                "load_after": self.load_after, "settings": self.settings,
                "cases": [r.to_json() for r in self.results]}

    def write(self, path: str) -> None:
        write_json(self.to_json(), path)


def record_of(bench: str, command: str, load_before: list[float], settings: dict[str, Any],
              cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The result record of a bench that builds its own cases (bench serve, benchmarks/*.py),
    in the shape Report.to_json writes: dated now, on this machine (no peaks), load measured
    now as load_after."""
    return {"schema": SCHEMA, "bench": bench,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "machine": machine(None), "versions": versions(), "load_before": load_before,
            "load_after": load_average(), "settings": settings, "cases": cases}


def write_json(record: dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


REQUIRED_FIELDS = ("schema", "bench", "date", "command", "machine", "versions", "load_before", "load_after",
                   "settings", "cases")
REQUIRED_CASE_FIELDS = ("case", "contender", "threads", "wait_policy", "median", "min", "max", "unit", "rounds")


def check_record(record: dict[str, Any]) -> list[str]:
    """What a record lacks (empty when it has COMMON.md's shape)."""
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    missing += [f"machine.{k}" for k in ("cpu", "isa", "cores", "peaks") if k not in record.get("machine", {})]
    missing += [f"versions.{k}" for k in ("bitttt", "torch") if k not in record.get("versions", {})]
    for i, c in enumerate(record.get("cases", [])):
        missing += [f"cases[{i}].{k}" for k in REQUIRED_CASE_FIELDS if k not in c]
    return missing


def main(argv: list[str] | None = None) -> int:
    """`python -m bitttt.bench.harness --serve MODULE:FUNCTION KWARGS_JSON --threads N`: a Child."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bitttt.bench.harness")
    ap.add_argument("--serve", nargs=2, metavar=("FACTORY", "KWARGS"), required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    return serve(args.serve[0], json.loads(args.serve[1]), args.threads, sys.stdin, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
