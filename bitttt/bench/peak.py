"""Peaks measured, not assumed: this machine's int8 and FP32 throughput and read bandwidth.

Per thread count, with kernels that ship in the extension (csrc/peak/; no compiler at run time):
- int8, G int8-MAC/s: `vpdpbusd zmm` (AVX-512 VNNI, the avx512 ternary kernel's instruction) and
  `vpmaddubsw`+`vpaddw ymm` with the int16 sums widened by `vpmaddwd` (the avx2 kernel's step);
- fp32, GFLOP/s (2 per FMA lane): `vfmadd231ps` on zmm (AVX-512) and ymm (AVX2);
- read, GB/s: a streaming read of a buffer far larger than L3 (1 GiB by default), with ymm
  loads where the CPU has AVX2 (faster than SSE2 and zmm on Zen 5), else portable C++.

Each compute kernel keeps many independent accumulator chains per thread, so latency never
limits. Its iteration count grows until one run lasts `run_s`; then the best of `reps` runs
counts. The threads are std::threads, exactly as many as asked (torch's pool may use fewer).
Every run's checksum is compared with its closed form (csrc/peak/peak.h) before its time is
believed: a kernel that skipped work fails instead of looking fast. A kernel whose ISA this
CPU lacks is reported as "not on this CPU" and never run.

`measure_peaks` is what the harness calls for every record's machine peaks (bitttt/bench/harness.py
`Peaks`: best of two passes, re-measured when a bench's rate exceeds one); `run` is `bitttt bench
peak`, which interleaves the kernels over passes on the harness and writes the common record.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from bitttt import info
from bitttt._native import _C
from bitttt.bench import harness
from bitttt.bench.harness import Case, Contender, Record, Result, Settings, run_cases
from bitttt.errors import BitttError, ConfigError

GiB = 2**30
MiB = 2**20
READ_BYTES = 1 * GiB  # 32x a 32 MB L3: what is read comes from DRAM
QUICK_READ_BYTES = 256 * MiB  # still 8x that L3
RUN_S = 0.1  # one timed run of a compute kernel
QUICK_RUN_S = 0.02
REPS = 5
FP32_EXACT_COUNT = 2**24  # an FP32 lane holding 2^24 gains nothing from + 1 (peak.h)
UNITS = {"int8": "G int8-MAC/s", "fp32": "GFLOP/s", "read": "GB/s"}
NOT_ON_CPU = "not on this CPU"


class PeakCheckError(BitttError):
    """A peak kernel's checksum is not its closed form: it did not do the work it is timed for."""


@dataclass
class Peak:
    """One measurement at one thread count."""
    name: str  # "int8_avx512vnni", "int8_avx2", "fp32_avx512", "fp32_avx2" or "read"
    kind: str  # "int8", "fp32" or "read"
    isa: str | None  # the kernel set it bounds ("avx512", "avx2"); None for the read
    what: str  # the instruction, or "read 1 GiB, avx2" (buffer and read kernel)
    unit: str  # UNITS[kind]
    threads: int
    value: float | None  # in `unit`; None when not on this CPU
    seconds: float | None  # the best run
    work: int  # int8 MACs, FLOPs or bytes of one run (all threads)
    note: str = ""  # NOT_ON_CPU when it did not run


@dataclass
class Peaks:
    """Every peak at every thread count, with the machine that produced them."""
    machine: str  # one line: CPU model, logical CPUs, ISA, thread counts
    cpu: dict[str, Any]  # model, logical_cpus, l3_cache_bytes, features
    isa: str | None  # the ternary kernel set in use (bitttt._C.isa())
    threads: list[int]
    peaks: list[Peak]
    load_before: float | None = None  # 1-minute load average when `bitttt bench peak` started

    def get(self, name: str, threads: int) -> float | None:
        """The value of peak `name` at `threads`, or None (not measured, or not on this CPU)."""
        return next((p.value for p in self.peaks if p.name == name and p.threads == threads), None)

    def int8(self, isa: str, threads: int) -> float | None:
        """G int8-MAC/s of kernel set `isa`'s instruction ("avx512", "avx2"); None for others."""
        return self.get(f"int8_{isa}vnni" if isa == "avx512" else f"int8_{isa}", threads)

    def fp32(self, isa: str, threads: int) -> float | None:
        """GFLOP/s of `isa`'s FMA ("avx512": zmm, "avx2": ymm); None for others (scalar)."""
        return self.get(f"fp32_{isa}", threads)

    def read_gbs(self, threads: int) -> float | None:
        return self.get("read", threads)

    def to_json(self) -> dict[str, Any]:
        """The machine line and one entry per thread count, each peak by name."""
        entries = []
        for t in self.threads:
            peaks = {p.name: {k: v for k, v in asdict(p).items() if k not in ("name", "threads")}
                     for p in self.peaks if p.threads == t}
            entries.append({"threads": t, "peaks": peaks})
        return {"benchmark": "peak", "machine": self.machine, "cpu": self.cpu, "isa": self.isa,
                "load_before": self.load_before, "threads": self.threads, "entries": entries}


# ---------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------


def expected_compute_checksum(kernel: dict[str, Any], threads: int, iters: int) -> int:
    """The closed form of peak.h: every lane gains 1 per instruction (FP32 lanes stop at 2^24)."""
    per_lane = min(iters, FP32_EXACT_COUNT) if kernel["kind"] == "fp32" else iters
    return threads * kernel["lanes_per_iter"] * per_lane


def read_words(threads: int, nbytes: int) -> int:
    """uint64 words the read covers: bytes rounded down to 8 * threads (csrc/peak/peak.h)."""
    return nbytes // (8 * threads) * threads


def expected_read_checksum(threads: int, nbytes: int) -> int:
    """Word i holds i: the wrapping uint64 sum of one read of the whole buffer."""
    n = read_words(threads, nbytes)
    return n * (n - 1) // 2 % 2**64


def compute_run(kernel: dict[str, Any], threads: int, iters: int, reps: int) -> float:
    """Best seconds of `reps` runs; PeakCheckError unless the checksum is the closed form."""
    seconds, checksum = _C.peak_compute(kernel["name"], threads, iters, reps)
    expected = expected_compute_checksum(kernel, threads, iters)
    if checksum != expected:
        raise PeakCheckError(f"bench peak: {kernel['name']} at {threads} threads, {iters} iterations: checksum "
                             f"{checksum}, expected {expected}", hint="the peak kernel is broken; report it")
    return seconds


def calibrate(kernel: dict[str, Any], threads: int, run_s: float) -> int:
    """Iterations for one run of about run_s seconds (at least)."""
    iters = 1024
    while True:
        seconds = compute_run(kernel, threads, iters, 1)
        if seconds >= run_s:
            return iters
        iters = int(iters * min(16.0, max(1.5, 1.2 * run_s / max(seconds, 1e-7))))


def measure_compute(kernel: dict[str, Any], threads: int, run_s: float = RUN_S, reps: int = REPS) -> Peak:
    """One compute peak; value None (never run) when this CPU lacks the kernel's ISA."""
    kind = kernel["kind"]
    peak = Peak(kernel["name"], kind, kernel["isa"], kernel["instruction"], UNITS[kind], threads, None, None, 0)
    if not kernel["available"]:
        peak.note = NOT_ON_CPU
        return peak
    iters = calibrate(kernel, threads, run_s)
    peak.seconds = compute_run(kernel, threads, iters, reps)
    peak.work = threads * iters * kernel["lanes_per_iter"] * kernel["ops_per_lane"]
    peak.value = peak.work / peak.seconds / 1e9
    return peak


def measure_read(threads: int, nbytes: int = READ_BYTES, reps: int = REPS) -> Peak:
    """Streaming read bandwidth (GB/s, 10^9 bytes) over a buffer of nbytes, best of reps."""
    seconds, checksum = _C.peak_read(threads, nbytes, reps)
    expected = expected_read_checksum(threads, nbytes)
    if checksum != expected:
        raise PeakCheckError(f"bench peak: read of {nbytes} bytes at {threads} threads: checksum {checksum}, "
                             f"expected {expected}", hint="the read kernel is broken; report it")
    work = 8 * read_words(threads, nbytes)
    what = f"read {format_bytes(nbytes)}, {_C.peak_read_kernel()}"
    return Peak("read", "read", None, what, UNITS["read"], threads,
                work / seconds / 1e9, seconds, work)


def format_bytes(n: int) -> str:
    return f"{n / GiB:g} GiB" if n >= GiB else f"{n / MiB:g} MiB"


def machine_line(threads: list[int]) -> str:
    """CPU model, logical CPUs, L3, the ternary ISA in use and the thread counts measured."""
    l3 = info.l3_cache_bytes()
    isa, _ = info.active_isa()
    return (f"{info.cpu_model()}, {os.cpu_count()} logical CPUs" + (f", L3 {l3 // MiB} MiB" if l3 else "") +
            f", ISA {isa or '?'} (available: {', '.join(_C.available_isas())}), "
            f"threads {', '.join(map(str, threads))}")


def check_args(threads: list[int], read_bytes: int, run_s: float, reps: int) -> None:
    """ConfigError for values the peaks cannot be measured with."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"bench peak: {what}", hint="see bitttt bench peak --help")
    need(bool(threads) and all(0 < t <= 4096 for t in threads), f"threads must be in 1..4096, got {threads}")
    need(read_bytes >= 8 * max(threads), f"read bytes must be at least 8 per thread, got {read_bytes}")
    need(run_s > 0 and reps > 0, f"run_s and reps must be > 0, got {run_s}, {reps}")


def measure_peaks(threads: list[int], read_bytes: int = READ_BYTES, run_s: float = RUN_S, reps: int = REPS,
                  out: TextIO | None = None) -> Peaks:
    """Every peak at every thread count; with `out`, prints the table as rows complete.

    Raises ConfigError for bad arguments and PeakCheckError when a kernel's checksum is wrong.
    """
    check_args(threads, read_bytes, run_s, reps)
    table = Table(threads, out) if out is not None else None
    if table:
        table.header()
    peaks = []
    for kernel in _C.peak_kernels():
        row = [measure_compute(kernel, t, run_s, reps) for t in threads]
        peaks += row
        if table:
            table.row(row)
    row = [measure_read(t, read_bytes, reps) for t in threads]
    peaks += row
    if table:
        table.row(row)
    cpu = {"model": info.cpu_model(), "logical_cpus": os.cpu_count(), "l3_cache_bytes": info.l3_cache_bytes(),
           "features": dict(_C.cpu_features())}
    return Peaks(machine_line(threads), cpu, info.active_isa()[0], list(threads), peaks)


# ---------------------------------------------------------------------------------------
# Table and entry point
# ---------------------------------------------------------------------------------------


class Table:
    """One line per peak, one column per thread count; printed as each line is measured."""

    def __init__(self, threads: list[int], out: TextIO) -> None:
        self.threads, self.out = threads, out

    def header(self) -> None:
        cols = "".join(f"{f'{t} thread' + ('s' if t > 1 else ''):>16}" for t in self.threads)
        print(f"{'peak':<17}{'what':<25}{'unit':<14}{cols}", file=self.out, flush=True)

    def row(self, peaks: list[Peak]) -> None:
        p = peaks[0]
        cells = "".join(f"{x.value:>16.1f}" if x.value is not None else f"{x.note:>16}" for x in peaks)
        print(f"{p.name:<17}{p.what:<25}{p.unit:<14}{cells}", file=self.out, flush=True)


def peak_contenders(threads: int, read_bytes: int, run_s: float, reps: int) -> dict[str, list[Contender]]:
    """Per kind ("int8", "fp32", "read"), one contender per kernel this CPU has, at `threads`.
    Each call is the best of `reps` runs (of about run_s each; the read: of the whole buffer) and
    returns its seconds per 10^9 units of work (MACs, FLOPs or bytes), so a case's rate is G/s.
    Each check is one run whose checksum must be the closed form (PeakCheckError otherwise)."""
    out: dict[str, list[Contender]] = {}
    for kernel in _C.peak_kernels():
        if not kernel["available"]:
            continue
        iters = calibrate(kernel, threads, run_s)
        work = threads * iters * kernel["lanes_per_iter"] * kernel["ops_per_lane"]
        out.setdefault(kernel["kind"], []).append(Contender(
            kernel["name"], lambda k=kernel, i=iters, w=work: compute_run(k, threads, i, reps) / (w / 1e9),
            check=lambda k=kernel, i=iters: compute_run(k, threads, i, 1), self_timed=True,
            extra={"what": kernel["instruction"], "isa": kernel["isa"]}))
    read_work = 8 * read_words(threads, read_bytes)
    out["read"] = [Contender("read", lambda: measure_read(threads, read_bytes, reps).seconds / (read_work / 1e9),
                             check=lambda: measure_read(threads, read_bytes, 1), self_timed=True,
                             extra={"what": f"read {format_bytes(read_bytes)}, {_C.peak_read_kernel()}"})]
    return out


def record_peaks(results: list[Result]) -> dict[str, dict[int, float]]:
    """The best pass of every (kernel, threads), keyed as harness.Peaks keys them."""
    out: dict[str, dict[int, float]] = {}
    for r in results:
        kind = r.case.split()[0]
        key = "read_gbs" if kind == "read" else f"{kind}_{r.extra['isa']}_{'gmacs' if kind == 'int8' else 'gflops'}"
        out.setdefault(key, {})[r.threads] = r.max
    return out


def run(threads: list[int], read_bytes: int | None = None, quick: bool = False, json_path: str | None = None,
        out: TextIO = sys.stdout, rounds: int = 5, shared: bool = False) -> Record:
    """`bitttt bench peak`: every kernel at every thread count, interleaved over `rounds` passes by
    the harness (bitttt/bench/harness.py); each pass is itself the best of REPS runs. Prints
    median [min-max] per peak; the record's machine peaks are the best pass."""
    read_bytes = read_bytes or (QUICK_READ_BYTES if quick else READ_BYTES)
    run_s = QUICK_RUN_S if quick else RUN_S
    check_args(threads, read_bytes, run_s, REPS)
    print(f"bitttt bench peak: kernels in bitttt._C on std::threads; {rounds} interleaved passes, each the best "
          f"of {REPS} runs of >= {run_s:g} s (reads: of {format_bytes(read_bytes)})", file=out)
    print(f"machine: {machine_line(threads)}", file=out, flush=True)
    record = Record("peak", {"threads": threads, "read_bytes": read_bytes, "run_s": run_s, "reps": REPS,
                             "rounds": rounds, "quick": quick, "shared_machine": shared})
    cases = []
    for t in threads:
        for kind, contenders in peak_contenders(t, read_bytes, run_s, REPS).items():
            cases.append(Case(f"{kind} thr{t}", contenders, threads=t, unit=UNITS[kind], work=1))
    results = run_cases(cases, Settings(rounds=rounds, warmup=0), out=out)
    values = record_peaks(results)
    record.peaks = harness.Peaks(threads, passes=1, measure=lambda t: values)
    record.finish(results)
    if json_path:
        record.write(json_path)
        print(f"wrote {json_path}", file=out)
    return record
