"""What this install of bitttt is and what it will run: versions, ISAs, threads, CUDA.

`bitttt info` prints it; the benchmarks store it beside their numbers, so a result can
always be traced back to the build, kernel path and machine that produced it.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import torch

import bitttt
from bitttt._native import C_cuda, _C, cuda_unavailable_reason


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), or what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_SIZE_SUFFIX = {"K": 2**10, "M": 2**20, "G": 2**30}


def l3_cache_bytes() -> int | None:
    """Size of the L3 cache (Linux sysfs, else glibc's sysconf), or None if unknown."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size", encoding="ascii") as f:
            text = f.read().strip()  # e.g. "32768K"
        return int(text[:-1]) * _SIZE_SUFFIX[text[-1]] if text[-1] in _SIZE_SUFFIX else int(text)
    except (OSError, ValueError, IndexError):
        pass
    try:
        size = os.sysconf("SC_LEVEL3_CACHE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return size if size > 0 else None


def active_isa() -> tuple[str | None, str | None]:
    """(ISA in use, error): a bad BITTTT_ISA makes the extension raise on first use."""
    try:
        return _C.isa(), None
    except RuntimeError as e:
        return None, str(e)


def cuda_info() -> dict[str, Any]:
    """Whether CUDA kernels are here and whether a device is. Creates no CUDA context."""
    build = dict(C_cuda.build_info()) if C_cuda is not None else {}
    # device_count() asks the driver; with no driver or device it is 0, never an error.
    devices = torch.cuda.device_count() if torch.version.cuda else 0
    return {
        "kernels_compiled": C_cuda is not None,
        "kernels_missing_reason": cuda_unavailable_reason or None,
        "archs": build.get("archs"),
        "toolkit": build.get("cuda_compiled"),
        "torch_cuda_version": torch.version.cuda,
        "device_count": devices,
        "devices": [torch.cuda.get_device_name(i) for i in range(devices)],
    }


def cuda_summary(cuda: dict[str, Any]) -> str:
    """One line: 'CUDA compiled (...), no device', 'no kernels (why)', or the devices."""
    if not cuda["kernels_compiled"]:
        return f"no kernels ({cuda['kernels_missing_reason']})"
    where = ", ".join(cuda["devices"]) if cuda["devices"] else "no device"
    return f"CUDA compiled (CUDA {cuda['toolkit']}, archs {cuda['archs']}), {where}"


def collect() -> dict[str, Any]:
    """Everything `bitttt info` reports, as a JSON-ready dict."""
    build = dict(_C.build_info())
    isa, isa_error = active_isa()
    features = dict(_C.cpu_features())
    return {
        "bitttt": {
            "version": bitttt.__version__,
            "extension_version": build.get("version"),  # differs from version: stale build
            "extension_path": _C.__file__,
        },
        "torch": {
            "version": torch.__version__,
            "built_against": build.get("torch"),
            "stable_abi_target": build.get("stable_abi_target"),
            "num_threads": torch.get_num_threads(),
        },
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "cpu": {
            "model": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "l3_cache_bytes": l3_cache_bytes(),
            "features": features,
        },
        "ternary": {
            "compiled_isas": list(build.get("compiled_isas", [])),
            "available_isas": list(_C.available_isas()),
            "isa": isa,
            "isa_error": isa_error,
            "amx_tiles": bool(isa is not None and _C.amx_active()),  # the avx512 set's AMX tiles run
            "BITTTT_ISA": os.environ.get("BITTTT_ISA"),
        },
        "cuda": cuda_info(),
    }


def model_report(path: str) -> dict[str, Any]:
    """`bitttt info --model`: a Hugging Face BitNet folder's sizes and bytes read per decoded token."""
    from bitttt import hf

    return hf.model_info(path)


def format_text(info: dict[str, Any]) -> str:
    """The human-readable `bitttt info` report."""
    b, t, c, tern, cuda = info["bitttt"], info["torch"], info["cpu"], info["ternary"], info["cuda"]
    version = b["version"]
    if b["extension_version"] != b["version"]:
        version += f" (extension built as {b['extension_version']}: reinstall to rebuild)"
    if tern["isa"] is None:
        isa = f"error: {tern['isa_error']}"
    elif tern["BITTTT_ISA"]:
        isa = f"{tern['isa']} (forced by BITTTT_ISA={tern['BITTTT_ISA']})"
    else:
        isa = f"{tern['isa']} (BITTTT_ISA unset: best available)"
    if tern.get("amx_tiles"):
        isa += "; AMX tiles for calls of 8+ tokens (BITTTT_ISA=avx512 turns them off)"
    l3 = f", L3 {c['l3_cache_bytes'] // 2**20} MiB" if c["l3_cache_bytes"] else ""
    detected = [name for name, present in c["features"].items() if present]
    rows = [
        ("bitttt", version),
        ("extension", b["extension_path"]),
        ("torch", f"{t['version']} (extension built against {t['built_against']}, "
                  f"stable ABI target {t['stable_abi_target']})"),
        ("python", f"{info['python']['version']} ({info['python']['executable']})"),
        ("platform", info["platform"]),
        ("cpu", f"{c['model']}, {c['logical_cpus']} logical CPUs{l3}"),
        ("cpu features", " ".join(detected) or "none of interest"),
        ("compiled ISAs", " ".join(tern["compiled_isas"])),
        ("available ISAs", " ".join(tern["available_isas"])),
        ("ternary kernels", isa),
        ("torch threads", str(t["num_threads"])),
        ("torch CUDA", cuda["torch_cuda_version"] or "no (CPU build)"),
        ("CUDA", cuda_summary(cuda)),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k + ':':<{width + 1}} {v}" for k, v in rows]
    lines.append(f"Set BITTTT_ISA={'|'.join(tern['compiled_isas'])} to force a ternary kernel path.")
    if "model" in info:
        from bitttt import hf

        lines.append(hf.format_model_info(info["model"]))
    return "\n".join(lines)
