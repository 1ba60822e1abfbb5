"""Execution providers: short names, availability, and how inputs reach the device.

Only providers that the installed onnxruntime reports as available can be
chosen; asking for another is an error that lists the available ones. The
GPU providers come with onnxruntime-gpu (the ``gpu`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnxruntime as ort

from onnxopt.errors import OnnxoptError

#: Short names accepted by ``--ep`` (the full onnxruntime names work too).
SHORT_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}

#: Providers whose inputs and outputs are bound on the device (IO binding),
#: so timings exclude host<->device copies: provider -> OrtValue device name.
DEVICE_OF = {
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "cuda",
}


def available() -> list[str]:
    """Providers the installed onnxruntime can use, in its order of preference."""
    return list(ort.get_available_providers())


def resolve(names: Sequence[str]) -> list[str]:
    """Full onnxruntime names of ``names`` (short or full); unknown or unavailable ones are an error."""
    have = available()
    short_of = {full: short for short, full in SHORT_NAMES.items() if short != "trt"}
    listing = ", ".join(short_of.get(p, p) for p in have)
    resolved = []
    for name in names:
        full = SHORT_NAMES.get(name.strip().lower(), name.strip())
        if full not in have:
            raise OnnxoptError(f"execution provider '{name}' is not available here (available: {listing})")
        if full not in resolved:
            resolved.append(full)
    if not resolved:
        raise OnnxoptError(f"no execution provider given (available: {listing})")
    return resolved


def session_providers(provider: str) -> list[str]:
    """The provider list for a session on ``provider``: GPU providers fall back to the CPU for unsupported ops."""
    if provider == "TensorrtExecutionProvider":
        return [provider, "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]


def short_name(provider: str) -> str:
    """``cuda`` for ``CUDAExecutionProvider``; unknown providers keep their full name."""
    for short, full in SHORT_NAMES.items():
        if full == provider and short != "trt":
            return short
    return provider
