"""The one line that says what an optimization run won: size, speed with its interval, accuracy, on which CPU.

Computed from the report JSON (kind ``optimize``), so the terminal summary, Markdown, HTML and
``onnxopt report`` of a saved JSON all open with the same sentence::

    int8: 3.9x smaller; latency 0.97x [0.95, 0.99] of the original (faster); accuracy -0.13 pts
    (744 samples); Intel Xeon (avx2, avx512_vnni)

A latency interval that spans 1 reads "no measurable difference"; without a benchmark the line says
how to get one. Without labels the accuracy part is the top-1 agreement with the original, or the
worst output SNR and the largest output drift for non-classifiers -- read from the report's ``comparison``
(per output), never from a key it does not hold. When nothing was compared the line says so and states no
number; when the run's comparisons cannot vouch for the result (``untrusted``: the guard's reference outputs
said nothing, say), the line says that too.
"""

from __future__ import annotations

import math
from typing import Any


def verdict(report: dict[str, Any]) -> str:
    """The verdict line of an ``optimize`` report."""
    recipe = report.get("recipe_name") or "passes " + ",".join(e["name"] for e in report.get("recipe", []))
    return "; ".join([f"{recipe}: {_size(report)}", _latency(report), _quality(report), _machine(report)])


def _size(report: dict[str, Any]) -> str:
    before, after = report["input"]["file_bytes"], report["output"].get("file_bytes")
    if not after or not before:
        return "no file written"
    ratio = before / after
    if abs(ratio - 1) < 0.005:
        return "same file size"
    return f"{ratio:.2f}x smaller" if ratio > 1 else f"{1 / ratio:.2f}x larger"


def _latency(report: dict[str, Any]) -> str:
    latency = report.get("latency")
    measured = [m for m in (latency or {}).get("measurements", []) if m.get("ratio")]
    if not measured:
        return "latency not measured (add --bench)"
    m = measured[0]
    ratio = m["ratio"]
    interval = f"{ratio['median']:.2f}x [{ratio['low']:.2f}, {ratio['high']:.2f}]"
    if ratio["low"] <= 1 <= ratio["high"]:
        judged = "no measurable difference"
    else:
        judged = "faster" if ratio["high"] < 1 else "slower"
    return f"latency {interval} of the original at batch {m['batch']} ({judged})"


def _quality(report: dict[str, Any]) -> str:
    """Accuracy, top-1 agreement or the outputs' worst SNR and drift -- each read from the comparison the report
    holds (a missing key is a bug in the report, and raises); no number when nothing was compared."""
    cmp = report["comparison"]
    untrusted = report.get("untrusted") or []  # reports written before it existed had none
    if cmp["samples"] == 0 or not cmp["outputs"]:
        return "outputs NOT compared (random inputs could not run the model; give --data or --input-shape)"
    samples = f"{cmp['samples']} samples"
    if cmp["random_inputs"]:
        samples += " of random inputs"
    elif report["held_out"]:
        samples = f"{cmp['samples']} held-out samples"
    else:
        samples += " of --data, which the passes also fitted on"
    if untrusted:
        samples += f"; NOT trustworthy: {untrusted[0]}"
    if cmp["reference_accuracy"] is not None and cmp["candidate_accuracy"] is not None:
        points = 100 * (cmp["candidate_accuracy"] - cmp["reference_accuracy"])
        return f"accuracy {points:+.2f} pts ({samples})"
    outputs = cmp["outputs"]
    agreements = [o["top1_agreement"] for o in outputs if o["top1_agreement"] is not None]
    if agreements:
        return f"top-1 agreement with the original {min(agreements):.4f} ({samples})"
    snr = min(float(o["snr_db"]) for o in outputs)  # "inf" (identical outputs) is written as a string in JSON
    drift = max(float(o["max_rel"]) for o in outputs)
    worst = "outputs identical" if math.isinf(snr) else f"worst output SNR {snr:.1f} dB"
    return f"{worst}, max output drift {drift:.3g} of the output range ({samples})"


def _machine(report: dict[str, Any]) -> str:
    machine = report.get("machine") or {}
    features = ", ".join(machine.get("cpu_features") or []) or "no integer features reported"
    return f"{machine.get('cpu', 'unknown CPU')} ({features})"
