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
import functools
import platform

import onnx_ir as ir

from onnxopt.bench.machine import cpu_flags

TARGETS = ("auto", "vnni", "avx2", "arm", "gpu")
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8", "avx512vnni", "avxvnni"}


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
    """This machine's target: ``arm``, ``vnni`` or ``avx2`` (x86 without VNNI)."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64") or machine.startswith("arm"):
        return "arm"
    flags = cpu_flags(cpuinfo)
    if not flags:  # not Linux: assume the safe choice
        return "avx2"
    return "vnni" if flags & _VNNI_FLAGS else "avx2"


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


def saturates_here(
    model: ir.Model, providers: tuple[str, ...] = ("CPUExecutionProvider",), host: str | None = None
) -> bool:
    """Whether onnxruntime's fused int8 kernels on this machine would compute something else than ``model`` says: its
    CPU provider on an x86 CPU without VNNI (``host``: :func:`detect` by default, which also says ``avx2`` for an x86
    CPU whose flags it cannot read), and some Conv, ConvTranspose, MatMul or Gemm of int8 compute (both inputs read
    through DequantizeLinear) whose int8 weight holds a level beyond the 7-bit range (a model quantized for
    ``vnni``, ``arm`` or ``gpu``): its u8*s8 pair sums can saturate int16 there. Such a model is scored as written
    (QDQ in float, which is what an exact int32 kernel computes up to one requantization level per tensor), not by
    this CPU's fused kernels. Int8 weights of float-compute nodes (stored, decoded to float) do not count."""
    if not providers or providers[0] != "CPUExecutionProvider" or (host or this_host()) != "avx2":
        return False
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type not in _INTEGER_GEMMS or len(node.inputs) < 2:
            continue
        data, weight = (_dequantized(v) for v in node.inputs[:2])
        if data is None or weight is None or weight.const_value is None or weight.dtype != ir.DataType.INT8:
            continue
        levels = weight.const_value.numpy()
        if levels.size and (int(levels.min()) < -63 or int(levels.max()) > 63):
            return True
    return False


_INTEGER_GEMMS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _dequantized(value: ir.Value | None) -> ir.Value | None:
    """The quantized input of the DequantizeLinear writing ``value``, or None where no DequantizeLinear writes it."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "DequantizeLinear" or producer.domain not in ("", "ai.onnx"):
        return None
    return producer.inputs[0]


@functools.cache
def this_host() -> str:
    """:func:`detect` for this machine, read once."""
    return detect()
