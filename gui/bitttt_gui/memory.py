"""Memory readings: the run's process tree (psutil) and GPUs (pynvml); tkinter-free, never raises.

``MemorySampler`` reads both on its own thread every ``interval_s`` and puts a
``MemorySnapshot`` into a queue, so a slow NVML call never stalls the window.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

try:
    import psutil
except ImportError:  # a dependency, but the window must still open without it
    psutil = None


@dataclass
class GpuReading:
    index: int
    name: str
    used: int
    total: int
    run_used: int | None    # bytes NVML attributes to the run's processes; None = not reported


@dataclass
class MemorySnapshot:
    rss: int | None                 # the run's process tree resident memory (None: no run)
    gpus: list[GpuReading] = field(default_factory=list)
    gpu_note: str = ""              # why there are no GPU readings
    host_total: int | None = None
    host_available: int | None = None


def process_tree(pid: int):
    """The process and its descendants as psutil.Process objects ([] if gone)."""
    if psutil is None or not pid:
        return []
    try:
        p = psutil.Process(pid)
        return [p] + p.children(recursive=True)
    except (psutil.Error, OSError):
        return []


def tree_rss(pid: int) -> int | None:
    """Resident memory of ``pid`` and its children, bytes; None if it is gone."""
    procs = process_tree(pid)
    if not procs:
        return None
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.Error, OSError):
            pass
    return total


def host_memory() -> tuple[int | None, int | None]:
    """(total, available) host memory in bytes."""
    if psutil is None:
        return None, None
    try:
        vm = psutil.virtual_memory()
        return vm.total, vm.available
    except (psutil.Error, OSError):
        return None, None


# Why NVML could not start, in words: its exception's class name is no message for a user.
NVML_REASONS = {
    "NVMLError_LibraryNotFound": "no NVIDIA driver is installed on this computer",
    "NVMLError_DriverNotLoaded": "the NVIDIA driver is not loaded",
    "NVMLError_NoPermission": "no permission to read the NVIDIA GPUs",
    "NVMLError_InsufficientPower": "the NVIDIA GPU lacks power",
}


def nvml_note(error: BaseException) -> str:
    """The GPU panel's note when NVML fails to start."""
    reason = NVML_REASONS.get(type(error).__name__, "no NVIDIA GPU or driver was found")
    return f"GPU memory: {reason}."


class Gpus:
    """NVML access that degrades to a note: no pynvml, no driver, no GPU."""

    def __init__(self):
        self.note = ""
        self._nvml = None
        try:
            import pynvml
        except ImportError:
            self.note = "GPU memory: NVML is not available (nvidia-ml-py not installed)"
            return
        try:
            pynvml.nvmlInit()
            self._count = pynvml.nvmlDeviceGetCount()
        except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, …
            self.note = nvml_note(e)
            return
        if self._count == 0:
            self.note = "GPU memory: no NVIDIA GPU found"
            pynvml.nvmlShutdown()
            return
        self._nvml = pynvml

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def read(self, pids: set[int] = frozenset()) -> list[GpuReading]:
        nv = self._nvml
        if nv is None:
            return []
        out = []
        try:
            for i in range(self._count):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                name = nv.nvmlDeviceGetName(h)
                if isinstance(name, bytes):
                    name = name.decode(errors="replace")
                run_used = None
                if pids:
                    try:
                        procs = nv.nvmlDeviceGetComputeRunningProcesses(h)
                        mine = [p.usedGpuMemory for p in procs if p.pid in pids and p.usedGpuMemory]
                        run_used = sum(mine) if mine else None
                    except Exception:
                        run_used = None
                out.append(GpuReading(i, str(name), int(mem.used), int(mem.total), run_used))
        except Exception as e:
            self.note = f"GPU memory: NVML read failed ({type(e).__name__}: {e})"
            return []
        return out

    def total_free(self) -> int | None:
        """Free memory of GPU 0 (what a --device cuda run would use), or None."""
        r = self.read()
        return (r[0].total - r[0].used) if r else None

    def close(self):
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None


def snapshot(gpus: Gpus, pid: int | None) -> MemorySnapshot:
    procs = process_tree(pid) if pid else []
    pids = {p.pid for p in procs}
    total, avail = host_memory()
    return MemorySnapshot(rss=tree_rss(pid) if pid else None, gpus=gpus.read(pids), gpu_note=gpus.note,
                          host_total=total, host_available=avail)


class MemorySampler:
    """A daemon thread that puts a MemorySnapshot into ``out`` every ``interval_s``."""

    def __init__(self, out: queue.Queue, interval_s: float = 1.5):
        self.out = out
        self.interval_s = interval_s
        self.pid: int | None = None      # set from the Tk thread; read here (an int swap is atomic)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        gpus = Gpus()
        try:
            while not self._stop.is_set():
                self.out.put(snapshot(gpus, self.pid))
                self._stop.wait(self.interval_s)
        finally:
            gpus.close()

    def stop(self):
        self._stop.set()
