"""Which integer kernels the deployment CPU has, and what that means for int8 weights.

onnxruntime's x86 int8 GEMM/Conv multiply uint8 activations by int8 weights.
With VNNI (AVX512-VNNI, AVX-VNNI, AMX) the products accumulate straight into
int32. On AVX2-only CPUs the kernel uses ``vpmaddubsw``, which adds two
``u8 * s8`` products into a *saturating int16*: 255·127·2 = 64,770 overflows
32,767, and accuracy silently collapses on layers with large activations
(onnxruntime leaves the fix, ``reduce_range``, to the user). Weights limited
to 7 bits (±63) keep every pair sum below 32,767 (255·63·2 = 32,130).

Targets:

* ``vnni`` -- x86 with VNNI or AMX: 8-bit weights;
* ``avx2`` -- x86 without VNNI: 7-bit weights (reduce range);
* ``arm`` -- AArch64 (``sdot``/``udot`` or widening multiplies, no saturation): 8-bit;
* ``gpu`` -- CUDA/TensorRT int8 (``dp4a``/tensor cores accumulate in int32): 8-bit;
* ``auto`` -- this machine's CPU, from ``/proc/cpuinfo`` (or the platform).
"""

from __future__ import annotations

import dataclasses

from onnxopt.bench.int8_kernels import integer_kernels

TARGETS = ("auto", "vnni", "avx2", "arm", "gpu")


@dataclasses.dataclass(frozen=True)
class IntegerTarget:
    """The resolved target and the weight range it can use safely."""

    name: str  # vnni, avx2, arm or gpu
    weight_max: int  # 127 (8 bits) or 63 (7 bits, reduce range)
    reason: str

    @property
    def weight_bits(self) -> int:
        return 8 if self.weight_max == 127 else 7


def detect(cpuinfo: str | None = None, machine: str | None = None) -> str:
    """This machine's target: ``arm``, ``vnni`` or ``avx2`` (x86 without VNNI), as
    :func:`~onnxopt.bench.int8_kernels.integer_kernels` reads it."""
    return integer_kernels(cpuinfo, machine)


def resolve(target: str, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> IntegerTarget:
    """The weight range for ``target`` (``auto``: a GPU provider if one is asked for, else this CPU)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    name = target
    how = "given"
    if target == "auto":
        gpu = any(p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in providers)
        name, how = ("gpu", "a GPU provider was asked for") if gpu else (detect(), "detected on this CPU")
    if name == "avx2":
        return IntegerTarget(
            name, 63, f"x86 without VNNI ({how}): 7-bit weights so u8*s8 pair sums cannot saturate int16"
        )
    return IntegerTarget(name, 127, f"{name} ({how}): 8-bit weights, int32 accumulation")
