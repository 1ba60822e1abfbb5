"""Where numbers were measured: the CPU, its integer features, the system and onnxruntime.

int8 speed on x86 depends on the CPU's integer instructions -- without VNNI,
onnxruntime's u8×s8 kernels fall back to AVX2 pair sums -- so every speed
claim names them (:data:`INTEGER_FEATURES` as ``/proc/cpuinfo`` spells them).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: The integer features that decide int8 speed on x86, in the order they are reported.
INTEGER_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (or the text given); empty where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags") or line.startswith("Features"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> dict[str, object]:
    """Where the numbers were measured: CPU model and integer features, cores, system, onnxruntime."""
    import onnxruntime as ort

    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cpu_features": [f for f in INTEGER_FEATURES if f in flags],
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
    }
