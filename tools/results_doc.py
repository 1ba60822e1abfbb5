"""docs/RESULTS.md, generated from the result files the tools write: no number in it is typed by hand.

    python tools/results_doc.py [--out docs/RESULTS.md]

Reads every ``tools/*result*.json``, recognizes its kind by its shape (the suite, pruning and distillation,
tune, tool time, the lossless recipe's cost, per-variant task metrics, the large model, the backend survey, ...)
and renders one section per file: its title, the source file, the date and the machine stored in it, the
command of the tool that writes that kind, and its table. A file of no known kind gets one line saying it was
skipped. Only the standard library is used, so it runs anywhere in a second.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from task_metrics import describe  # tools/ is this script's folder: on sys.path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
Doc = dict[str, Any]


# ---------------------------------------------------------------- formatting


def fmt(value: Any) -> str:
    """One table cell: floats to 4 significant digits, pairs as intervals, nothing for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"[{fmt(float(value[0]))}, {fmt(float(value[1]))}]"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(", ", ": ")) if value else ""
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> list[str]:
    """A Markdown table of dicts: the given columns, else every key in first-seen order."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    columns = [c for c in columns if any(fmt(row.get(c)) for row in rows)]  # no column of empty cells
    lines = ["| " + " | ".join(c.replace("_", " ") for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def ratio(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def machine_line(machine: Any) -> str:
    if not machine:
        return "not stored in the file"
    if isinstance(machine, str):
        return machine
    features = ", ".join(machine.get("cpu_features") or []) or "none reported"
    return (
        f"{machine.get('cpu', '?')} (integer features: {features}), {machine.get('cores', '?')} cores, "
        f"{machine.get('system', '?')}, Python {machine.get('python', '?')}, "
        f"onnxruntime {machine.get('onnxruntime', '?')}"
    )


def date_line(doc: Doc, path: Path) -> str:
    stored = doc.get("date") or doc.get("created")
    if stored:
        return str(stored)
    committed = subprocess.run(
        ["git", "log", "-1", "--format=%cs", "--", path.name], cwd=path.parent, capture_output=True, text=True
    ).stdout.strip()
    return f"not stored in the file (file last committed {committed})" if committed else "not stored in the file"


def usage(tool: str) -> str:
    """The ``python tools/...`` usage line of a tool's docstring (read, not imported)."""
    path = TOOLS / tool
    if not path.exists():
        return f"python tools/{tool}"
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(f"python tools/{tool}"):
            more = [part.strip() for part in lines[i + 1 :] if part.startswith("        ")]
            return " ".join([line.strip(), *more])
    return f"python tools/{tool}"


# ---------------------------------------------------------------- renderers, one per kind


def render_suite(doc: Doc) -> list[str]:
    lines = [
        f"Whole run: {doc.get('suite_seconds', 0):.0f} s. Latency: ratio to fp32 of interleaved medians at the "
        "subject's batch, with its 95 % interval. Size: file bytes over fp32's. Metric and SNR (dB against fp32): "
        "held-out samples only; speed-only subjects have random weights and no metric. Q + DQ run: QuantizeLinear "
        "and DequantizeLinear kernels left in the graph onnxruntime runs.",
        "",
    ]
    kinds = doc.get("kinds", {})
    columns = [
        "model",
        "variant",
        "latency ratio [95% CI]",
        "size ratio",
        "metric (held out)",
        "SNR dB",
        "Q + DQ run",
        "tool s",
    ]
    rows, notes = [], []
    for model, variants in doc["results"].items():
        base = next((v for v in variants if v["variant"] == "fp32"), {})
        samples = {v["task"]["samples"] for v in variants if v.get("task") and "samples" in v["task"]}
        label = f"{model} (speed only)" if kinds.get(model) == "speed-only" else model
        if len(samples) == 1:
            label += f" ({samples.pop()} held out)"
        for v in variants:
            row: dict[str, Any] = {"model": label, "variant": v["variant"], "tool s": v.get("tool_seconds")}
            if v.get("failed"):
                row["latency ratio [95% CI]"] = f"failed: {v['failed']}"
            else:
                row["latency ratio [95% CI]"] = ratio(v.get("latency_ratio"), v.get("ratio_ci"))
                if base.get("file_bytes") and v.get("file_bytes"):
                    row["size ratio"] = f"{v['file_bytes'] / base['file_bytes']:.3f}"
                task = v.get("task") or {}
                row["metric (held out)"] = describe(task)
                row["SNR dB"] = task.get("snr_db")
                row["Q + DQ run"] = f"{v['rt_q']} + {v['rt_dq']}" if "rt_q" in v else None
            rows.append(row)
            notes += [f"- {model}, {v['variant']}: {note}" for note in v.get("notes") or []]
    return [
        *lines,
        *table(rows, columns),
        *suite_summary(doc),
        *(["", "Notes the runs recorded:", "", *notes] if notes else []),
    ]


def suite_summary(doc: Doc) -> list[str]:
    """Per variant, over the subjects with a metric: the range of its size and latency ratios, and how often its
    latency interval lay below 1, spanned it, or lay above it."""
    kinds = doc.get("kinds", {})
    by_variant: dict[str, list[tuple[float, list[float] | None, float]]] = {}
    for model, variants in doc["results"].items():
        base = next((v for v in variants if v["variant"] == "fp32"), {})
        if kinds.get(model) == "speed-only" or not base.get("file_bytes"):
            continue
        for v in variants:
            if v["variant"] != "fp32" and not v.get("failed") and v.get("latency_ratio") is not None:
                entry = (v["latency_ratio"], v.get("ratio_ci"), v["file_bytes"] / base["file_bytes"])
                by_variant.setdefault(v["variant"], []).append(entry)
    rows = []
    for variant, entries in by_variant.items():
        lat = [e[0] for e in entries]
        size = [e[2] for e in entries]
        below = sum(1 for e in entries if e[1] and e[1][1] < 1)
        above = sum(1 for e in entries if e[1] and e[1][0] > 1)
        rows.append(
            {
                "variant": variant,
                "subjects": len(entries),
                "size ratio": f"{min(size):.3f}–{max(size):.3f}",
                "latency ratio": f"{min(lat):.3f}–{max(lat):.3f}",
                "faster / no measurable difference / slower": f"{below} / {len(entries) - below - above} / {above}",
            }
        )
    if not rows:
        return []
    return ["", "Summary over the subjects with a held-out metric (computed from the rows above):", "", *table(rows)]


def render_rows(doc: Doc) -> list[str]:
    """Rows of one measurement each (pruning and distillation, PRelu, prune importance, ...)."""
    rows, notes = [], []
    for row in doc["rows"]:
        row = dict(row)
        if "latency_ratio" in row:
            row["latency_ratio"] = ratio(row["latency_ratio"], row.pop("latency_ci", None) or row.pop("ratio_ci", None))
        for key in ("distill_notes", "low_rank", "notes"):
            notes += [f"- {row.get('model', '')} {row.get('variant', '')}: {fmt(n)}" for n in row.pop(key, None) or []]
        rows.append(row)
    header = [f"{k.replace('_', ' ')}: {fmt(v)}" for k, v in doc.items() if k not in ("rows", "machine", "date")]
    return [*(["; ".join(header), ""] if header else []), *table(rows), *(["", *notes] if notes else [])]


def render_variants(doc: Doc) -> list[str]:
    """Named variants, each a dict of measurements (int8 on many OCR strings, QAT on a MobileNetV2)."""
    key = "variants" if "variants" in doc else "results"
    rows, notes = [], []
    for name, values in doc[key].items():
        values = dict(values)
        notes += [f"- {name}: {n}" for n in values.pop("notes", None) or []]
        rows.append({"variant": name, **values})
    header = [f"{k.replace('_', ' ')}: {fmt(v)}" for k, v in doc.items() if k not in (key, "machine", "date")]
    return [*(["; ".join(header), ""] if header else []), *table(rows), *(["", *notes] if notes else [])]


def render_tool_time(doc: Doc) -> list[str]:
    seconds = doc["seconds"]
    rows = [
        {"step": step, "seconds": s, "ratio to ort": s / seconds["ort"] if seconds.get("ort") else None}
        for step, s in seconds.items()
    ]
    passes = ", ".join(f"{name} {s} s" for name, s in doc.get("plan_run_passes_over_half_a_second", {}).items())
    return [
        f"Model: {doc.get('model')}, {doc.get('calibration_samples')} calibration samples. `ort`: quantize_static; "
        "`plan`: the int8 recipe, planning; `replay`: the same with the saved plan.",
        "",
        *table(rows),
        "",
        f"Replay byte-identical to the planned model: {fmt(doc.get('replay_bytes_identical'))}. "
        f"Passes of the planning run over half a second: {passes or 'none'}.",
    ]


def render_tool_time_no_data(doc: Doc) -> list[str]:
    steps = [{"step": step, "seconds": s} for step, s in doc["slowest_steps"]]
    return [
        f'Model: {doc.get("model")}, {doc.get("parameters"):,} parameters. `optimize(recipe="int8")` without data: '
        f"**{doc['seconds']} s** in all; the slowest steps of its progress line:",
        "",
        *table(steps),
        "",
        *[f"- quantize: {note}" for note in doc.get("quantize_notes", [])],
    ]


def render_lossless(doc: Doc) -> list[str]:
    rows = [
        {"step": "onnx.load + onnx.save", "median s": doc["median_load_save_s"], "runs s": doc["load_save_s"]},
        {"step": "optimize --recipe lossless", "median s": doc["median_lossless_s"], "runs s": doc["lossless_s"]},
    ]
    return [
        f"Generated model: {doc['model_mb']} MB (after `lossless`: {doc['optimized_mb']} MB). Ratio of the medians: "
        f"**{doc['ratio']}x** (target: at most {doc['target_ratio']}x).",
        "",
        *table(rows, ["step", "median s", "runs s"]),
    ]


def render_tune(doc: Doc) -> list[str]:
    counts = doc.get("split", {}).get("counts")
    trials = [{**t, "params": ", ".join(f"{k}={v}" for k, v in (t.get("params") or {}).items())} for t in doc["trials"]]
    columns = [
        "name",
        "status",
        "feasible",
        "drop",
        "size_ratio",
        "latency_ratio",
        "score",
        "finalist",
        "seconds",
        "params",
    ]
    held = doc.get("held_out", {})
    chosen = doc.get("chosen", {})
    return [
        f"Model: `{Path(doc['input']['path']).name}`; objective {doc.get('objective')}, "
        f"max drop {doc.get('max_drop')}; samples to fit / select / hold out: {' / '.join(map(str, counts or []))}; "
        f"tool time {doc.get('tool_seconds')} s.",
        "",
        *table(trials, columns),
        "",
        f"Chosen: **{chosen.get('name')}** (`{chosen.get('spec')}`). "
        f"Held out: {held.get('metric')} {fmt(held.get('value'))} against the original's "
        f"{fmt(held.get('baseline'))} on {held.get('samples')} samples "
        f"(drop {fmt(held.get('drop'))}, within budget: {fmt(held.get('within_budget'))}), size ratio "
        f"{fmt(held.get('size_ratio'))}.",
        *([f"Task metric of the chosen model against fp32 on the held-out part: {doc['task_held_out']}."]
          if doc.get("task_held_out") else []),
        *[f"- {note}" for note in doc.get("notes", [])],
    ]  # fmt: skip


def render_large_model(doc: Doc) -> list[str]:
    model = doc.get("model", {})
    rows = []
    for stage, values in doc["stages"].items():
        passes = values.get("passes") or []
        statuses = ", ".join(f"{p['name']} {p['status']}" for p in passes if p["status"] != "unchanged")
        skip = ("passes", "seconds", "peak_rss_mb")
        facts = "; ".join(_fact(k, v) for k, v in values.items() if k not in skip and fmt(v))
        rows.append(
            {
                "stage": stage,
                "seconds": values.get("seconds"),
                "peak RSS MB": values.get("peak_rss_mb"),
                "passes changed": statuses,
                "facts": facts,
            }
        )
    return [
        f"{model.get('layers')} layers of width {model.get('width')}: {model.get('initializer_bytes')} bytes of "
        f"initializers (over protobuf's 2 GB limit: {fmt(model.get('over_protobuf_limit'))}); machine memory "
        f"{doc.get('memory_gb')} GB.",
        "",
        *table(rows),
    ]


def _fact(key: str, value: Any) -> str:
    """One measurement of a stage, short: an output's agreement, a profile's total, else the value."""
    if key == "outputs" and isinstance(value, list):
        return "; ".join(
            f"output {o.get('name')}: SNR {fmt(o.get('snr_db'))} dB, max rel {fmt(o.get('max_rel'))}, "
            f"top-1 {fmt(o.get('top1_agreement'))}"
            for o in value
        )
    if isinstance(value, dict) and "total_us" in value:
        return f"{key}: {value['total_us']:.0f} µs over {value.get('nodes')} node(s)"
    return f"{key.replace('_', ' ')}: {fmt(value)}"


def render_survey(doc: Doc) -> list[str]:
    compared = [c for c in doc["cases"] if c["status"] == "compared"]
    worst = max((c["max_rel"] for c in compared if c.get("max_rel") is not None), default=None)
    others = [c for c in doc["cases"] if c["status"] != "compared"]
    return [
        "`optimize --recipe lossless` without `--data` on the onnx backend-test models:",
        "",
        *table([{"status": k, "cases": v} for k, v in doc["counts"].items()]),
        "",
        f"Runnable cases by opset: {fmt(doc.get('runnable_by_opset'))}. Largest output drift of a compared case: "
        f"{fmt(worst)} of the output range. Not compared: {', '.join(c['case'] for c in others) or 'none'}.",
    ]


@dataclass(frozen=True)
class Kind:
    title: str
    tool: str
    matches: Callable[[Doc], bool]
    render: Callable[[Doc], list[str]]


def render_qat_losses(doc: Doc) -> list[str]:
    """QAT of one detector with each loss, beside weights-only and untrained all-int8 (bench_qat_losses.py)."""
    rows = []
    for row in doc["rows"]:
        fit = row.get("qat") or {}
        held = fit.get("held_back")
        rows.append({"variant": row["variant"], "task metric (held out)": describe(row["task"]),
                     "snr_db": row["task"]["snr_db"],
                     "held-back agreement": f"{held[0]:.4f} -> {held[1]:.4f}" if held else "",
                     "kept_epoch": fit.get("kept_epoch"), "seconds": fit.get("seconds")})  # fmt: skip
    return [f"model: {doc['model']}; setup: {fmt(doc['setup'])}", "", *table(rows)]


#: the rows of compare_calibration.py that calibrate activations (a file has at least one per model)
CALIBRATIONS = {"minmax", "percentile", "percentile 99.999", "auto"}


def render_calibration(doc: Doc) -> list[str]:
    """Per model and calibration method: held-out task metric and SNR (compare_calibration.py)."""
    rows = [
        {"model": model, "calibration": label, "task metric (held out)": describe(row), "snr_db": row["snr_db"],
         **({"snr_db on the anchors fp32 reads": row["read_snr_db"]} if "read_snr_db" in row else {}),
         "tool_seconds": row.get("tool_seconds")}
        for model, variants in doc["models"].items()
        for label, row in variants.items()
    ]  # fmt: skip
    return [f"setup: {fmt(doc['setup'])}", "", *table(rows)]


def render_distill_losses(doc: Doc) -> list[str]:
    """A pruned detector distilled with each loss: held-out boxes and held-back agreement
    (distill_detection_loss.py)."""
    rows = []
    for label, row in doc["results"].items():
        history = row.get("history") or []
        rows.append({"variant": label, "recall": row["recall"], "precision": row["precision"],
                     "held-back detection agreement": f"{row['before']:.4f} -> {row['after']:.4f}" if history else "",
                     "per epoch": ", ".join(f"{h['held_back']:.3f}" for h in history),
                     "kept_epoch": row.get("best_epoch", ""), "seconds": row.get("seconds")})  # fmt: skip
    return [f"setup: {fmt(doc['setup'])}", "", *table(rows)]


def render_reading_budget(doc: Doc) -> list[str]:
    """Per model, data draw and confidence: what the reading budget kept int8, held out (reading_budget_check.py)."""
    rows = [
        {"model": model, "draw": row["draw"], "variant": row["variant"], "QLinearConv run": row["qlinearconv"],
         **row["held_out"], "the budget's notes": "; ".join(row["budget_notes"])}
        for model, results in doc["results"].items()
        for row in results
    ]  # fmt: skip
    return [f"setup: {fmt(doc['setup'])}", "", *table(rows)]


def render_float_cascade(doc: Doc) -> list[str]:
    """Float, all-int8 and the reading budget's model: kernels' time per run, and the Convs the budget's choice
    leaves float (budget_float_cascade.py)."""
    rows = []
    for label, row in doc["models"].items():
        kernels = sorted(row["kernels"].items(), key=lambda kv: -kv[1]["us"])[:6]
        convs = f"{row['chosen_float_convs']} / {row['convs_running_float']}" if "chosen" in row else ""
        shown = "; ".join(f"{k} ({v['nodes']}, {v['us']:.0f})" for k, v in kernels)
        rows.append({"model": label, "profiled µs": f"{row['total_us']:.0f}",
                     "Convs chosen float / running float": convs, "kernels (nodes, µs)": shown})  # fmt: skip
    return [f"setup: {fmt(doc['setup'])}", "", *table(rows)]


#: The int8 recipe's max_reading_drop, which budget_order_check.py's runs keep.
RECIPE_READING_BUDGET = 0.01


def render_budget_order(doc: Doc) -> list[str]:
    """The int8 budget's two orders beside onnxruntime's U8S8 (where the file has it): what each kept float, what
    runs, its speed against fp32 and its held-out reading (budget_order_check.py)."""
    rows = []
    for order, row in doc["orders"].items():
        drops = {int(k): v for k, v in row.get("budget_drops", {}).items()}
        fitted = min((k for k, v in drops.items() if v <= RECIPE_READING_BUDGET), default=None)
        low, high = row["latency_vs_fp32"][1:]
        runtime = row["runtime"]
        rows.append({"variant": order if order.startswith("ort-") else f"budget_order={order}",
                     "layers the budget kept float": fitted,
                     "nodes the round after it moved": row.get("after_budget", {}).get("kept"),
                     "QLinearConv run": runtime["QLinearConv"],
                     "Q + DQ left running": f"{runtime['QuantizeLinear']} + {runtime['DequantizeLinear']}",
                     "latency vs fp32 [95% CI]": f"{row['latency_vs_fp32'][0]:.3f} [{low:.3f}, {high:.3f}]",
                     **{k: v for k, v in row["held_out"].items() if k in ("samples", "recall", "precision",
                                                                        "exact_string_agreement")}})  # fmt: skip
    return [f"setup: {fmt(doc['setup'])}; fp32 p50 {doc['fp32_p50_ms']} ms", "", *table(rows)]


def render_rounding(doc: Doc) -> list[str]:
    """Per model and rounding: layer output SNR on held-out inputs (compare_rounding.py)."""
    rows = [
        {"model": model, "rounding": label, "layers": result["layers_scored"], **summary}
        for model, result in doc["models"].items()
        for label, summary in result["summary"].items()
    ]
    return [f"setup: {fmt(doc['setup'])}", "", *table(rows)]


def _rows_with(doc: Doc, key: str) -> bool:
    return bool(doc.get("rows")) and isinstance(doc["rows"], list) and key in doc["rows"][0]


KINDS = [  # the order of the sections
    Kind(
        "The suite: onnxopt against other tools",
        "bench_suite.py",
        lambda d: "results" in d and "kinds" in d,
        render_suite,
    ),
    Kind("Pruning, distillation, low rank", "bench_distill.py", lambda d: _rows_with(d, "macs_ratio"), render_rows),
    Kind("Tune on a real model", "tune_real.py", lambda d: d.get("kind") == "tune", render_tune),
    Kind(
        "Tool time: making int8",
        "bench_tool_time.py",
        lambda d: isinstance(d.get("seconds"), dict) and {"ort", "plan"} <= set(d["seconds"]),
        render_tool_time,
    ),
    Kind(
        "Tool time: int8 without data",
        "bench_tool_time.py",
        lambda d: isinstance(d.get("seconds"), (int, float)) and "slowest_steps" in d,
        render_tool_time_no_data,
    ),
    Kind(
        "The OCR recognizer's int8 on many strings",
        "bench_ocr_int8.py",
        lambda d: isinstance(d.get("results"), dict) and "evaluation_samples" in d,
        render_variants,
    ),
    Kind(
        "Where int8 compute loses: activation quantizers undone",
        "activation_sensitivity.py",
        lambda d: isinstance(d.get("variants"), dict) and "singles" in d,
        render_variants,
    ),
    Kind(
        "Fused int8 kernels against the graph as written (saturation on a CPU without VNNI)",
        "saturation_check.py",
        lambda d: isinstance(d.get("variants"), dict) and "saturation_check" in d,
        render_variants,
    ),
    Kind(
        "Activation scales per channel or per group, simulated (8-bit weights, target=vnni, on any CPU)",
        "channel_groups_probe.py",
        lambda d: isinstance(d.get("variants"), dict) and "activation_pairs" in d,
        render_variants,
    ),
    Kind(
        "Quantization-aware fine-tuning, per-tensor int8",
        "qat_mobilenetv2.py",
        lambda d: isinstance(d.get("variants"), dict),
        render_variants,
    ),
    Kind(
        "The budget's detection reading against decoded boxes",
        "check_detection_reading.py",
        lambda d: _rows_with(d, "detection_agreement"),
        render_rows,
    ),
    Kind("PRelu in int8", "bench_prelu_int8.py", lambda d: _rows_with(d, "float_prelu"), render_rows),
    Kind(
        "Channel importance for pruning",
        "bench_prune_importance.py",
        lambda d: _rows_with(d, "importance"),
        render_rows,
    ),
    Kind("Cost of the lossless recipe", "bench_lossless.py", lambda d: "median_lossless_s" in d, render_lossless),
    Kind("A model over 2 GB", "bench_large_model.py", lambda d: "stages" in d, render_large_model),
    Kind("Backend-test survey", "backend_survey.py", lambda d: "cases" in d and "counts" in d, render_survey),
    Kind(
        "Quantization-aware fine-tuning of a detector: the loss",
        "bench_qat_losses.py",
        lambda d: _rows_with(d, "task") and "model" in d,
        render_qat_losses,
    ),
    Kind(
        "Activation calibration for int8 compute",
        "compare_calibration.py",
        lambda d: isinstance(d.get("models"), dict) and all(set(v) & CALIBRATIONS for v in d["models"].values()),
        render_calibration,
    ),
    Kind(
        "Distilling a pruned detector: the loss",
        "distill_detection_loss.py",
        lambda d: isinstance(d.get("results"), dict) and "pruned" in d["results"],
        render_distill_losses,
    ),
    Kind(
        "The reading budget held out: point estimate against upper bound",
        "reading_budget_check.py",
        lambda d: isinstance(d.get("results"), dict) and "steps" in d.get("setup", {}),
        render_reading_budget,
    ),
    Kind(
        "The reading budget's float layers and what runs float",
        "budget_float_cascade.py",
        lambda d: isinstance(d.get("models"), dict) and "reading budget" in d["models"],
        render_float_cascade,
    ),
    Kind(
        "The int8 budget's order: error, or error per µs of speed given up",
        "budget_order_check.py",
        lambda d: isinstance(d.get("orders"), dict),
        render_budget_order,
    ),
    Kind(
        "Learned weight rounding: GPTQ and AdaRound",
        "compare_rounding.py",
        lambda d: isinstance(d.get("models"), dict) and all("summary" in v for v in d["models"].values()),
        render_rounding,
    ),
]


def title_of(kind: Kind, path: Path) -> str:
    """The kind's title, and what the file name adds after ``results`` (``_int8_avx2``: "int8 avx2")."""
    suffix = path.name.split("results", 1)[1].removesuffix(".json").strip("_.").replace("_", " ")
    return kind.title + (f" ({suffix})" if suffix else "")


def anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    return "".join(c for c in title.lower() if c.isalnum() or c in " -_").replace(" ", "-")


def section(kind: Kind, path: Path, doc: Doc) -> list[str]:
    return [
        f"## {title_of(kind, path)}",
        "",
        f"Source: `tools/{path.name}`. Date: {date_line(doc, path)}. Machine: {machine_line(doc.get('machine'))}.",
        f"Written by: `{usage(kind.tool)}`.",
        "",
        *kind.render(doc),
        "",
    ]


def build() -> str:
    found: list[tuple[int, str, Kind, Path, Doc]] = []  # (kind's place, stored date, ...)
    skipped = []
    for path in sorted(TOOLS.glob("*result*.json")):
        doc = json.loads(path.read_text())
        kind = next((k for k in KINDS if isinstance(doc, dict) and k.matches(doc)), None)
        if kind is None:
            skipped.append(f"- `tools/{path.name}`: skipped (no renderer for its kind in `tools/results_doc.py`).")
            continue
        found.append((KINDS.index(kind), str(doc.get("date") or doc.get("created") or ""), kind, path, doc))
    found.sort(key=lambda f: f[3].name)
    found.sort(key=lambda f: f[1], reverse=True)  # the newest file of a kind first
    found.sort(key=lambda f: f[0])  # stable: kinds in KINDS' order
    lines = [
        "# Results",
        "",
        "Generated by `python tools/results_doc.py` from the JSON files the tools write (do not edit by hand;",
        "rerun it after a tool writes new results). How the measurements are made: [BENCHMARKS.md](BENCHMARKS.md).",
        "Every section names its file, the date and the machine the file records; int8 speed depends on the CPU's",
        "integer features, so compare rows of the same machine only. A row shows what a recipe did on its file's",
        "date: `onnxopt passes` shows what each recipe runs now.",
        "",
        *[f"- [{title_of(k, p)}](#{anchor(title_of(k, p))}): {_when_where(d)}" for _, _, k, p, d in found],
        "",
    ]
    for _, _, kind, path, doc in found:
        lines += section(kind, path, doc)
    if skipped:
        lines += ["## Files not rendered", "", *skipped]
    return "\n".join(lines).rstrip() + "\n"


def _when_where(doc: Doc) -> str:
    date = str(doc.get("date") or doc.get("created") or "")[:10] or "no date stored"
    machine = doc.get("machine")
    cpu = machine.get("cpu", "") if isinstance(machine, dict) else machine or "no machine stored"
    return f"{date}, {cpu}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "RESULTS.md")
    args = parser.parse_args()
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(build())
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
