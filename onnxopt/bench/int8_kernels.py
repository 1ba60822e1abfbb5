"""Which int8 kernels this machine's onnxruntime CPU provider runs, and where they compute what a QDQ file says.

onnxruntime's x86 int8 GEMM/Conv multiply uint8 activations by int8 weights. With VNNI (AVX512-VNNI, AVX-VNNI,
AMX) the products accumulate straight into int32; on an x86 CPU without it the kernel adds two ``u8 * s8``
products into a saturating int16 (``vpmaddubsw``): 255·127·2 = 64,770 overflows 32,767, so 8-bit weights can
read wrong there, where 7-bit ones (255·63·2 = 32,130) cannot. ARM's ``sdot``/``udot`` and widening multiplies do
not saturate.
"""

from __future__ import annotations

import functools
import platform

import onnx_ir as ir

from onnxopt.bench.machine import cpu_flags

_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8", "avx512vnni", "avxvnni"}
_INTEGER_GEMMS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def integer_kernels(cpuinfo: str | None = None, machine: str | None = None) -> str:
    """This machine's kind of int8 kernels: ``arm``, ``vnni`` or ``avx2`` (x86 without VNNI; also an x86 CPU
    whose flags cannot be read, the safe assumption)."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64") or machine.startswith("arm"):
        return "arm"
    flags = cpu_flags(cpuinfo)
    if not flags:  # not Linux: assume the safe choice
        return "avx2"
    return "vnni" if flags & _VNNI_FLAGS else "avx2"


@functools.cache
def this_host() -> str:
    """:func:`integer_kernels` of this machine, read once."""
    return integer_kernels()


def saturating_host(providers: tuple[str, ...] = ("CPUExecutionProvider",), host: str | None = None) -> bool:
    """Whether sessions on ``providers`` run int8 kernels that saturate on 8-bit weights: the CPU provider first, on
    an x86 CPU without VNNI (``host``, :func:`this_host` by default)."""
    return bool(providers) and providers[0] == "CPUExecutionProvider" and (host or this_host()) == "avx2"


def saturates_here(
    model: ir.Model, providers: tuple[str, ...] = ("CPUExecutionProvider",), host: str | None = None
) -> bool:
    """Whether onnxruntime's fused int8 kernels would compute something else than ``model`` says: a
    :func:`saturating_host`, and some Conv, ConvTranspose, MatMul or Gemm of int8 compute (both inputs read through
    DequantizeLinear, subgraphs included) whose int8 weight holds a level beyond the 7-bit range (a model quantized
    for ``vnni``, ``arm`` or ``gpu``). Int8 weights of float-compute nodes (stored, decoded to float) do not count.
    Such a model is scored as written (QDQ in float: what an exact int32 kernel computes, up to one requantization
    level per tensor), not by this CPU's fused kernels."""
    if not saturating_host(providers, host):
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


def _dequantized(value: ir.Value | None) -> ir.Value | None:
    """The quantized input of the DequantizeLinear writing ``value``, or None where no DequantizeLinear writes it."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "DequantizeLinear" or producer.domain not in ("", "ai.onnx"):
        return None
    return producer.inputs[0]
