"""The one line that says what an optimization run won: size, speed with its interval, accuracy, on which CPU.

Computed from the report JSON (kind ``optimize``), so the terminal summary, Markdown, HTML and
``onnxopt report`` of a saved JSON all open with the same sentence::

    int8: 3.9x smaller; latency 0.97x [0.95, 0.99] of the original (faster); accuracy -0.13 pts
    (744 samples); Intel Xeon (avx2, avx512_vnni)

A latency interval that spans 1 reads "no measurable difference"; without a benchmark the line says
how to get one. Without labels the accuracy part is the top-1 agreement with the original, or the
largest output drift for non-classifiers.
"""

from __future__ import annotations

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
    cmp = report["comparison"]
    samples = f"{cmp.get('samples', 0)} samples"
    if cmp.get("random_inputs"):
        samples += " of random inputs"
    elif report.get("held_out"):
        samples = f"{cmp.get('samples', 0)} held-out samples"
    else:
        samples += " of --data, which the passes also fitted on"
    if cmp.get("reference_accuracy") is not None and cmp.get("candidate_accuracy") is not None:
        points = 100 * (cmp["candidate_accuracy"] - cmp["reference_accuracy"])
        return f"accuracy {points:+.2f} pts ({samples})"
    agreements = [o["top1_agreement"] for o in cmp.get("outputs", []) if o.get("top1_agreement") is not None]
    if agreements:
        return f"top-1 agreement with the original {min(agreements):.4f} ({samples})"
    return f"max output drift {cmp.get('max_rel', 0.0):.3g} of the output range ({samples})"


def _machine(report: dict[str, Any]) -> str:
    machine = report.get("machine") or {}
    features = ", ".join(machine.get("cpu_features") or []) or "no integer features reported"
    return f"{machine.get('cpu', 'unknown CPU')} ({features})"
