"""Report: one versioned JSON schema for a run, rendered as Markdown for people.

Schema ``onnxopt.report/1`` (keys of :func:`build_report`):

* ``schema``, ``created`` (UTC ISO time), ``versions`` (onnxopt, onnx, onnx_ir, onnxruntime, numpy)
* ``input`` / ``output``: ``path``, ``file_bytes``
* ``recipe``: list of ``{name, params}``; ``data``: data description; ``seed``
* ``before`` / ``after``: ``{nodes, parameters, bytes}``
* ``passes``: one PassRecord each -- ``name, params, status, seconds, before,
  after, max_drift, counts, skipped, notes``
* ``guard_max_drift``: final vs original on the guard data (relative)
* ``comparison``: ``samples, reference_accuracy, candidate_accuracy`` and per output
  ``name, max_abs, mean_abs, max_rel, cosine, snr_db, top1_agreement``
* ``notes``: pipeline-level notes
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from pathlib import Path
from typing import Any

from onnxopt.errors import OutputError
from onnxopt.optimize import OptimizeResult

SCHEMA = "onnxopt.report/1"


def build_report(result: OptimizeResult) -> dict[str, Any]:
    """The run as a JSON-serializable dict (schema :data:`SCHEMA`)."""
    pipeline = result.pipeline
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "input": {"path": str(result.input_path), "file_bytes": result.input_file_bytes},
        "output": {
            "path": str(result.output_path) if result.output_path else None,
            "file_bytes": result.output_file_bytes,
        },
        "recipe": [{"name": name, "params": params} for name, params in result.recipe],
        "data": result.data,
        "seed": result.seed,
        "before": dataclasses.asdict(pipeline.original),
        "after": dataclasses.asdict(pipeline.final),
        "passes": [dataclasses.asdict(r) for r in pipeline.records],
        "guard_max_drift": pipeline.max_drift,
        "comparison": json_safe(result.comparison.to_dict()),
        "notes": pipeline.notes,
    }


def check_report_path(path: str | Path) -> Path:
    """Refuse a report path that cannot be written, before any work is done."""
    path = Path(path)
    if path.suffix not in (".json", ".md"):
        raise OutputError(f"{path}: report must end in .json or .md")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{folder}: report folder does not exist")
    return path


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` as JSON (``.json``) or Markdown (``.md``), atomically."""
    path = check_report_path(path)
    folder = path.parent if str(path.parent) else Path(".")
    text = json.dumps(report, indent=2, default=str) + "\n" if path.suffix == ".json" else render_markdown(report)
    tmp = folder / f".{path.name}.tmp"
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write report: {e.strerror or e}") from e
    return path


def render_markdown(report: dict[str, Any]) -> str:
    """A human-readable rendering of ``report``."""
    before, after, cmp = report["before"], report["after"], report["comparison"]
    lines = [
        f"# onnxopt report: `{report['input']['path']}`",
        "",
        f"- output: `{report['output']['path']}`",
        f"- recipe: `{','.join(e['name'] for e in report['recipe'])}`",
        f"- data: {report['data']} ({cmp['samples']} samples compared), seed {report['seed']}",
        f"- created {report['created']} with " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
        "| | before | after | change |",
        "|---|---:|---:|---:|",
    ]
    for key in ("nodes", "parameters", "bytes"):
        lines.append(f"| {key} | {before[key]:,} | {after[key]:,} | {percent_change(before[key], after[key])} |")
    fb, fa = report["input"]["file_bytes"], report["output"]["file_bytes"]
    if fa is not None:
        lines.append(f"| file bytes | {fb:,} | {fa:,} | {percent_change(fb, fa)} |")
    if cmp.get("reference_accuracy") is not None:
        ra, ca = cmp["reference_accuracy"], cmp["candidate_accuracy"]
        lines.append(f"| accuracy | {ra:.4f} | {ca:.4f} | {100 * (ca - ra):+.2f} pts |")
    lines += [
        "",
        "## Outputs against the original",
        "",
        "| output | max abs | max rel | cosine | SNR dB | top-1 agreement |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for out in cmp["outputs"]:
        top1 = "" if out["top1_agreement"] is None else f"{out['top1_agreement']:.4f}"
        cells = [out["name"], f"{out['max_abs']:.3g}", f"{out['max_rel']:.3g}", f"{out['cosine']:.6f}"]
        snr = out["snr_db"] if isinstance(out["snr_db"], str) else f"{out['snr_db']:.1f}"
        lines.append("| " + " | ".join([*cells, snr, top1]) + " |")
    lines += [
        "",
        "## Passes",
        "",
        "| pass | status | nodes | parameters | drift | seconds | counts |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for rec in report["passes"]:
        counts = ", ".join(f"{k}: {v}" for k, v in rec["counts"].items() if v)
        lines.append(
            f"| {rec['name']} | {rec['status']} | {rec['before']['nodes']} → {rec['after']['nodes']} "
            f"| {rec['before']['parameters']:,} → {rec['after']['parameters']:,} | {rec['max_drift']:.2g} "
            f"| {rec['seconds']:.3f} | {counts} |"
        )
    declined = [(rec["name"], s) for rec in report["passes"] for s in rec["skipped"]]
    notes = [(rec["name"], n) for rec in report["passes"] for n in rec["notes"]] + [
        ("pipeline", n) for n in report["notes"]
    ]
    if notes:
        lines += ["", "## Notes", ""] + [f"- **{name}**: {text}" for name, text in notes]
    if declined:
        lines += ["", "## Declined", ""] + [f"- **{name}**: {text}" for name, text in declined]
    return "\n".join(lines) + "\n"


def percent_change(before: float, after: float) -> str:
    return f"{100 * (after - before) / before:+.1f}%" if before else "n/a"


def json_safe(value: Any) -> Any:
    """JSON has no infinity: write it as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def _versions() -> dict[str, str]:
    import numpy
    import onnx
    import onnx_ir
    import onnxruntime

    from onnxopt import __version__

    return {
        "onnxopt": __version__,
        "onnx": onnx.__version__,
        "onnx_ir": onnx_ir.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }
