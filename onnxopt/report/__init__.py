"""Reports: one versioned JSON schema for every run, rendered for people as Markdown or HTML.

Schema ``onnxopt.report/2``. Every report has

* ``schema`` (this string), ``kind`` (``optimize``, ``compare``, ``bench`` or ``tune``),
  ``created`` (UTC, ISO 8601), ``versions`` (onnxopt, onnx, onnx_ir,
  onnxruntime, numpy), ``machine`` (cpu, cores, system, python, providers).

``kind: optimize`` adds

* ``input`` / ``output``: ``{path, file_bytes}``; ``recipe``: ``[{name, params}]``;
  ``data``: description; ``seed``; ``held_out``, ``fit_data``; ``untrusted``: why the run's comparisons
  cannot vouch for the result (the guard's reference outputs said nothing, or the quantizer's weights-only
  yardstick was itself far off); empty when they can
* ``before`` / ``after``: ``{nodes, parameters, bytes}``
* ``passes``: one record per pass -- ``name, params, status, seconds, before,
  after, max_drift, counts, skipped, notes``; ``guard_max_drift``; ``notes``
* ``comparison``: ``samples, reference_accuracy, candidate_accuracy``,
  ``data`` (what the models ran on), ``random_inputs`` (true: seeded random
  inputs, so agreement only, never accuracy), per output
  ``{name, max_abs, mean_abs, max_rel, cosine, snr_db, top1_agreement}``, and
  ``layers`` (null, or the per-layer report: ``threshold_db, samples,
  unmatched, first_bad, largest_added`` and per layer ``{tensor,
  candidate_tensor, op_type, node, snr_db, cosine, max_rel, own_snr_db}``)
* ``latency``: null, or a ``bench`` object (below) over input and output.
* ``runtime``: null, or -- whenever a ``quantize`` pass applied -- the runtime audit of the written model
  (:mod:`onnxopt.bench.runtime_audit`): what onnxruntime runs after its own graph optimizations, in the
  session the benchmark builds. ``provider, threads, onnxruntime`` (its version); ``kernels``: kernel ->
  count (``op_type``, prefixed by its domain outside ``ai.onnx``, e.g. ``com.microsoft.QLinearConv``);
  ``quantize_linear``, ``dequantize_linear``: QuantizeLinear / DequantizeLinear kernels left running;
  ``weight_dequantize_linear``: those of them that dequantize a constant for a float op at every inference;
  ``quantized``: per quantized node of the written model (a node reading a DequantizeLinear output)
  ``{node, op_type, kernel, int8, runtime_node, matched_by, reason}`` -- ``kernel`` is what runs it
  (``QLinearConv``, ``QLinearMatMul``, ``QGemm``, ``QLinearAdd``, ``MaxPool on int8``, ``float:
  DequantizeLinear -> op -> QuantizeLinear``, ``removed: ...``), ``matched_by`` how onnxruntime's node was
  found (``name``, ``tensors``, ``neighbours`` or ``none``), ``reason`` why it runs float; ``left``: per
  QuantizeLinear, DequantizeLinear, Transpose, ReorderInput or ReorderOutput kernel running on its own
  ``{op_type, node, tensor, reason, weight}``.

``kind: compare`` adds ``reference``, ``candidate`` (paths) and ``comparison``, whose ``thresholds`` (null,
or ``{atol, rtol, min_snr, min_top1}`` as asked), ``passed`` (null without thresholds) and ``failures`` (per
missed threshold ``{output, check, measured, threshold, message}``) say how ``--atol``/``--rtol``/
``--min-snr``/``--min-top1`` went.

``kind: bench`` adds ``bench``: ``config`` (providers, batches, threads,
warmup, runs, seconds, memory, seed), ``data``, ``seconds`` and
``measurements``: per model × provider × batch ``{model, path, provider,
batch, file_bytes, session_s, latency: {runs, mean_ms, std_ms, min_ms,
p50_ms, p90_ms, p99_ms, throughput}, ratio: null | {median, low, high},
peak_rss_bytes, session_bytes, active_providers}``.

``kind: tune`` (:meth:`onnxopt.tune.TuneResult.to_dict`) adds ``input``, ``output`` (the model, its recipe and
plan), ``objective``, ``max_drop``, ``split``, ``trials`` (:meth:`onnxopt.tune.trial.TrialRecord.to_dict`),
``chosen`` (its trial, without the cached model's path), ``held_out``, ``notes`` and ``reproduce``.

JSON has no infinity: an infinite SNR is written as the string ``"inf"``.
``onnxopt report A.json B.json ...`` reads reports of any kind back
(:func:`load_report`) and compares them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxopt.errors import OutputError, RecipeError, one_line
from onnxopt.io.writing import write_bytes
from onnxopt.report.document import to_html, to_markdown
from onnxopt.report.render import percent_change, render
from onnxopt.report.schema import KINDS, SCHEMA, envelope, json_safe

if TYPE_CHECKING:
    from onnxopt.bench import BenchResult
    from onnxopt.evaluate.compare import Comparison

FORMATS = (".json", ".md", ".html")


def optimize_report(result: Any) -> dict[str, Any]:
    """An optimization run, an :class:`onnxopt.optimizer.run.OptimizeResult` (schema :data:`SCHEMA`, kind
    ``optimize``). Typed loosely: the report stands below the optimizer and never imports it."""
    pipeline = result.pipeline
    return envelope(
        "optimize",
        input={"path": str(result.input_path), "file_bytes": result.input_file_bytes},
        output={
            "path": str(result.output_path) if result.output_path else None,
            "file_bytes": result.output_file_bytes,
        },
        recipe_name=result.recipe_name,
        recipe=[{"name": name, "params": params} for name, params in result.recipe],
        data=result.data,
        held_out=result.held_out,
        fit_data=result.fit_data,
        untrusted=result.untrusted,
        seed=result.seed,
        before=dataclasses.asdict(pipeline.original),
        after=dataclasses.asdict(pipeline.final),
        passes=[r.to_dict() for r in pipeline.records],
        guard_max_drift=pipeline.max_drift,
        comparison=result.comparison.to_dict(),
        latency=result.latency.to_dict() if result.latency else None,
        runtime=result.runtime.to_dict() if getattr(result, "runtime", None) is not None else None,
        notes=pipeline.notes,
        plan=result.plan,
    )


def compare_report(reference: str, candidate: str, comparison: Comparison) -> dict[str, Any]:
    """A comparison of two models (kind ``compare``)."""
    return envelope("compare", reference=reference, candidate=candidate, comparison=comparison.to_dict())


def bench_report(result: BenchResult) -> dict[str, Any]:
    """A benchmark (kind ``bench``)."""
    return envelope("bench", bench=result.to_dict())


def check_report_path(path: str | Path) -> Path:
    """Refuse a report path that cannot be written, before any work is done."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise OutputError(f"{path}: report must end in {', '.join(FORMATS)}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{folder}: report folder does not exist")
    return path


def format_report(reports: list[dict[str, Any]], suffix: str) -> str:
    """``reports`` (one, or several to compare) as JSON, Markdown or HTML text."""
    if suffix == ".json":
        document = reports[0] if len(reports) == 1 else {"schema": SCHEMA, "kind": "collection", "reports": reports}
        return json.dumps(json_safe(document), indent=2, default=str) + "\n"
    title, blocks = render(reports)
    return to_markdown(blocks) if suffix == ".md" else to_html(blocks, title)


def write_report(reports: dict[str, Any] | list[dict[str, Any]], path: str | Path) -> Path:
    """Write one report (or several, compared) as ``.json``, ``.md`` or ``.html``, atomically."""
    path = check_report_path(path)
    text = format_report(reports if isinstance(reports, list) else [reports], path.suffix)
    return write_bytes(path, text.encode("utf-8"))


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a report written by onnxopt; a clear error for anything else."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such report") from None
    except (OSError, ValueError) as e:
        raise RecipeError(f"{path}: not a JSON report ({one_line(e, 120)})") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("kind") not in KINDS:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise RecipeError(f"{path}: not an {SCHEMA} report (schema: {found})")
    data.setdefault("source", str(path))
    return data


__all__ = [
    "KINDS",
    "SCHEMA",
    "bench_report",
    "check_report_path",
    "compare_report",
    "envelope",
    "format_report",
    "json_safe",
    "load_report",
    "optimize_report",
    "percent_change",
    "write_report",
]
