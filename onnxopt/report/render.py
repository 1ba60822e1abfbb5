"""Reports (schema ``onnxopt.report/2`` dicts) as document blocks for people.

One report renders by its kind; several render as a comparison of runs:
one row per run and, where the runs measured latency, the trade-off plot of
accuracy (or agreement) against latency and size across every candidate.
"""

from __future__ import annotations

import shlex
from typing import Any

from onnxopt.report import plots
from onnxopt.report.document import Block, Bullets, Figure, Heading, Paragraph, Table
from onnxopt.report.verdict import verdict

#: What the summary's rows count: ``before``/``after`` (onnxopt.model_stats) and the files written.
_SIZE_LABELS = {
    "bytes": "tensor bytes (weights and constants, as stored)",
    "file_bytes": "file bytes (on disk: the tensors plus the graph, with any external data)",
}
_PLOT_HINT = "Figures need matplotlib (an onnxopt dependency), which could not be imported: `pip install matplotlib`."


def render(reports: list[dict[str, Any]]) -> tuple[str, list[Block]]:
    """(title, blocks) for one report or a comparison of several."""
    if len(reports) > 1:
        return "onnxopt: runs compared", _runs(reports)
    report = reports[0]
    kind = report["kind"]
    if kind == "optimize":
        return f"onnxopt optimize {report['input']['path']}", _optimize(report)
    if kind == "compare":
        return f"onnxopt compare {report['candidate']}", _compare(report)
    if kind == "tune":
        return f"onnxopt tune {report['input']['path']}", _tune(report)
    return "onnxopt bench", _bench(report["bench"], report)


def _optimize(r: dict[str, Any]) -> list[Block]:
    before, after, cmp = r["before"], r["after"], r["comparison"]
    expansion = ",".join(e["name"] for e in r["recipe"])
    recipe = f"`{r['recipe_name']}` (`{expansion}`)" if r.get("recipe_name") else f"`{expansion}`"
    blocks: list[Block] = [
        Heading(f"onnxopt report: `{r['input']['path']}`", 1),
        Paragraph(f"**{verdict(r)}**"),
        Bullets(
            [
                f"output: `{r['output']['path']}`",
                f"recipe: {recipe}",
                f"data: {r['data']} ({cmp['samples']} samples compared), seed {r['seed']}"
                + (f"; held out: the passes fitted on {r.get('fit_data')}" if r.get("held_out") else ""),
                _provenance(r),
            ]
        ),
    ]
    rows = [
        [_SIZE_LABELS.get(key, key), f"{before[key]:,}", f"{after[key]:,}", percent_change(before[key], after[key])]
        for key in before
    ]
    fb, fa = r["input"]["file_bytes"], r["output"]["file_bytes"]
    if fa is not None:
        rows.append([_SIZE_LABELS["file_bytes"], f"{fb:,}", f"{fa:,}", percent_change(fb, fa)])
    if cmp.get("reference_accuracy") is not None:
        ra, ca = cmp["reference_accuracy"], cmp["candidate_accuracy"]
        rows.append(["accuracy", f"{ra:.4f}", f"{ca:.4f}", f"{100 * (ca - ra):+.2f} pts"])
    blocks.append(Table(["", "before", "after", "change"], rows, {1, 2, 3}))
    blocks += _outputs(cmp)
    if r.get("latency"):
        blocks += [Heading("Latency (original first, interleaved)"), *_cells(r["latency"])]
        blocks += _tradeoff([r])
    if cmp.get("layers"):
        blocks += _layers(cmp["layers"])
    if r.get("runtime"):
        blocks += _runtime(r["runtime"])
    blocks += _passes(r)
    blocks += _plan(r.get("plan"), r["passes"])
    return blocks


def _runtime(audit: dict[str, Any]) -> list[Block]:
    """The runtime audit (schema key ``runtime``): the kernels onnxruntime runs, the quantized nodes it runs in
    float, and the Q/DQ and layout kernels left, each with its reason (grouped: a reason, its kernels)."""
    threads = "its default threads" if not audit["threads"] else f"{audit['threads']} thread(s)"
    quantized = audit["quantized"]
    floats = [q for q in quantized if not q["int8"] and q["runtime_node"] is not None]
    weights = audit.get("weight_dequantize_linear", 0)
    blocks: list[Block] = [
        Heading("What onnxruntime runs"),
        Paragraph(
            f"The written model as onnxruntime {audit['onnxruntime']} runs it on {audit['provider']} with "
            f"{threads}, after its own graph optimizations (the session the benchmark builds). "
            f"{len(quantized) - len(floats)} of {len(quantized)} quantized nodes run in int8; "
            f"**{audit['quantize_linear']} QuantizeLinear + {audit['dequantize_linear']} DequantizeLinear** kernels "
            f"run on their own" + (f" ({weights} dequantize weights at every inference)." if weights else ".")
        ),
        Table(["kernel", "count"], [[f"`{k}`", str(n)] for k, n in audit["kernels"].items()], {1}),
    ]
    if floats:
        rows = [[f"`{q['node']}`", q["op_type"], q["kernel"], q["reason"]] for q in floats]
        blocks += [Heading("Quantized nodes run in float", 3), Table(["node", "op", "kernel", "why"], rows)]
    groups: dict[tuple[str, str], list[str]] = {}
    for k in audit["left"]:
        groups.setdefault((k["op_type"], k["reason"]), []).append(k["node"])
    if groups:
        rows = [
            [op, str(len(nodes)), reason, ", ".join(f"`{n}`" for n in nodes[:6]) + (" …" if len(nodes) > 6 else "")]
            for (op, reason), nodes in sorted(groups.items(), key=lambda g: (g[0][0], -len(g[1]), g[0][1]))
        ]
        blocks += [
            Heading("Q/DQ and layout kernels left, and why", 3),
            Table(["kernel", "count", "why", "nodes"], rows, {1}),
        ]
    return blocks


def _plan(plan: dict[str, Any] | None, records: list[dict[str, Any]]) -> list[Block]:
    """The run's measured decisions (``--save-plan``): per pass, how many nodes got each precision, where they
    were timed, and the weights its Passes row counts (``records``: the report's pass records), under the
    same label as there."""
    entries = (plan or {}).get("passes") or {}
    if not entries:
        return []
    machine = plan.get("machine") or {}  # type: ignore[union-attr]
    features = ", ".join(machine.get("cpu_features") or []) or "none detected"
    rows = []
    for index, entry in sorted(entries.items(), key=lambda item: int(item[0])):
        record = records[int(index)] if int(index) < len(records) else None
        weights = _weight_counts(record) if record and record["name"] == entry.get("pass") else ""
        rows.append([str(index), str(entry.get("pass")), "timed" if entry.get("timed") else "untimed",
                     str(entry.get("compute", "")), _plan_nodes(entry), weights or "-"])  # fmt: skip
    return [
        Heading("Plan (measured decisions; replay with --plan)"),
        Paragraph(
            f"Measured on {machine.get('cpu', 'an unnamed CPU')} (integer features: {features}). "
            "**nodes** counts every node the pass decided a precision for, with a weight or without (Relu, "
            "MaxPool, Reshape); **weights** counts weight tensors, as the pass's row under Passes does."
        ),
        Table(["#", "pass", "decisions", "compute", "nodes", "weights"], rows),
    ]


#: A plan's node precisions (onnxopt.passes.quantize.plan_entry.Precision) as the plan table says them: what the
#: node computes in; a node's weights (where it has any) follow from its precision.
_PRECISIONS = {
    "int8": "int8 compute",
    "float": "float compute, exact weights",
    "float compute, int8 weights": "float compute (weights, if any, stored int8)",
}


def _plan_nodes(entry: dict[str, Any]) -> str:
    """A plan entry's nodes by precision, e.g. ``18 nodes float compute (weights, if any, stored int8)``."""
    counts: dict[str, int] = {}
    for precision in (entry.get("nodes") or {}).values():
        counts[precision] = counts.get(precision, 0) + 1
    shown = [f"{n} node{'s' if n != 1 else ''} {_PRECISIONS.get(p, p)}" for p, n in sorted(counts.items())]
    return ", ".join(shown) or "-"


def _weight_counts(record: dict[str, Any]) -> str:
    """A pass record's counts of weights (``weights quantized: 4``), worded as its Passes row words them."""
    return ", ".join(f"{k}: {v}" for k, v in record["counts"].items() if v and k.startswith("weights"))


def _tune(r: dict[str, Any]) -> list[Block]:
    """A tune: the chosen recipe and its held-out metric, the trials' trade-off plot, every trial."""
    held, chosen = r["held_out"], r["chosen"]
    counts = r["split"]["counts"]
    blocks: list[Block] = [
        Heading(f"onnxopt tune: `{r['input']['path']}`", 1),
        Paragraph(
            f"Objective **{r['objective']}**, budget: {held['metric']} may drop by at most {r['max_drop']:g}. "
            f"Data split once (seed): {counts[0]} samples to fit and calibrate on, {counts[1]} to select with, "
            f"{counts[2]} held out. {_provenance(r)}"
        ),
        Paragraph(
            f"**Chosen: {chosen['name']}** -- `{chosen.get('recipe') or chosen['spec']}`. On the held-out part "
            f"({held['samples']} samples, measured once): {held['metric']} {held['value']:.4f} against the "
            f"original's {held['baseline']:.4f} (drop {held['drop']:+.4f}, "
            f"{'within' if held['within_budget'] else 'OVER'} the budget); file "
            f"{held['size_ratio']:.2f}x the original; latency {chosen.get('latency_ratio', float('nan')):.2f}x "
            f"(finalists timed interleaved against the original). Written to `{r['output']['path']}`, its recipe "
            f"to `{r['output']['recipe']}` and its plan to `{r['output']['plan']}`."
        ),
    ]
    if r.get("reproduce"):
        blocks.append(Paragraph(f"Rebuild it byte for byte: `{shlex.join(r['reproduce'])}`"))
    if r.get("notes"):
        blocks.append(Bullets(list(r["notes"])))
    trials = [t for t in r["trials"] if t.get("status") in ("ok", "pruned", "failed")]
    ok = [t for t in trials if t.get("status") == "ok"]
    size = r["input"]["file_bytes"]
    if ok:
        # as the tuner's front: float MACs (those onnxruntime runs in no int8 kernel) count besides all MACs
        measures = [(t["drop"], t["size_bytes"], t["macs"], t["macs"] - t.get("int8_macs", 0)) for t in ok]
        front = [not any(_dominates(o, m) for o in measures) for m in measures]
        svg = plots.pareto(
            [t["size_bytes"] / size for t in ok], [t["drop"] for t in ok], [t.get("latency_ratio") for t in ok],
            [t["name"] for t in ok], front, r["max_drop"],
        )  # fmt: skip
        if svg:
            blocks.append(Figure(svg, "Every finished trial: size against drop on the selection data"))
    shared = _shared_passes([spec for t in trials if (spec := t.get("recipe") or t.get("spec"))])
    rows = []
    for t in trials:
        ratio = t.get("latency_ratio")
        name = t["name"] + (" (chosen)" if t.get("chosen") else "")
        # the verdict judged from the drop (a finished trial over budget is "over", never "ok"); older files: status
        status = (t.get("verdict") or t["status"]) + (" (cached)" if t.get("cached") else "")
        drop = _opt(t.get("drop", t.get("rung_drop")), "+.4f")
        relative = _opt(t["size_bytes"] / size if "size_bytes" in t else None, ".2f")
        recipe = _recipe_cell(t.get("recipe") or t.get("spec") or "", shared)
        why = t.get("why") or t.get("error") or t.get("pruned") or ""
        memory = _opt(t["peak_memory"] / 2**30 if t.get("peak_memory") else None, ".1f")
        int8 = _opt(t["int8_macs"] / t["macs"] if t.get("int8_macs") is not None and t.get("macs") else None, ".0%")
        rows.append(
            [name, status, drop, relative, int8, _opt(ratio, ".2f"), f"{t.get('seconds', 0):.1f}", memory, recipe, why]
        )
    blocks.append(Heading("Trials"))
    if shared:
        blocks.append(Paragraph(f"Every trial's recipe starts with `{shared}`; the table shows what follows (…)."))
    header = ["trial", "verdict", "drop", "size ratio", "int8 MACs", "latency ratio", "seconds", "peak GB", "recipe",
              "why"]  # fmt: skip
    return [*blocks, Table(header, rows, {2, 3, 4, 5, 6, 7})]


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether ``a`` is at most ``b`` on every measure and below it on one (lower is better on all)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def _recipe_cell(spec: str, shared: str) -> str:
    """A trial's recipe as its table cell: what follows the ``shared`` passes (said once above the table)."""
    if not spec or not shared:
        return f"`{spec}`" if spec else ""
    rest = spec[len(shared) :].lstrip(",")
    return f"… `{rest}`" if rest else "… (the shared passes only)"


def _shared_passes(specs: list[str]) -> str:
    """The leading passes (whole ``,``-separated entries) every one of ``specs`` starts with; empty for fewer
    than two specs or none shared."""
    if len(specs) < 2:
        return ""
    entries = [spec.split(",") for spec in specs]
    shared = []
    for column in zip(*entries, strict=False):
        if len(set(column)) > 1:
            break
        shared.append(column[0])
    return ",".join(shared)


def _compare(r: dict[str, Any]) -> list[Block]:
    cmp = r["comparison"]
    blocks: list[Block] = [
        Heading(f"onnxopt compare: `{r['candidate']}` against `{r['reference']}`", 1),
        Paragraph(f"{cmp['samples']} samples. {_provenance(r)}"),
    ]
    if cmp.get("random_inputs"):
        blocks.append(
            Paragraph(
                f"**Random inputs** ({cmp.get('data') or 'random'}): agreement only, not accuracy; "
                "pass `--data` to compare on real inputs."
            )
        )
    blocks += _outputs(cmp)
    if cmp.get("reference_accuracy") is not None:
        blocks.append(
            Paragraph(f"accuracy: reference {cmp['reference_accuracy']:.4f}, candidate {cmp['candidate_accuracy']:.4f}")
        )
    if cmp.get("layers"):
        blocks += _layers(cmp["layers"])
    return blocks + _checks(cmp)


def _checks(cmp: dict[str, Any]) -> list[Block]:
    """How ``onnxopt compare --atol/--rtol/--min-snr/--min-top1`` went: nothing when no threshold was given."""
    if cmp.get("passed") is None:
        return []
    asked = ", ".join(f"{k} {v:g}" for k, v in (cmp.get("thresholds") or {}).items() if v is not None)
    if cmp["passed"]:
        return [Paragraph(f"**Check passed**: every output meets {asked}.")]
    failures = [f"`{f['output']}`: {f['message']}" for f in cmp.get("failures", [])]
    return [Paragraph(f"**Check failed** ({asked}):"), Bullets(failures)]


def _bench(bench: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    machine = r.get("machine", {})
    return [
        Heading("onnxopt bench", 1),
        Paragraph(
            f"data: {bench['data']}; machine: {machine.get('cpu')}, {machine.get('cores')} cores; "
            f"{bench['seconds']:.1f} s in all. {_provenance(r)}"
        ),
        *([Paragraph(f"random inputs: {bench['inputs']}")] if bench.get("inputs") else []),
        *_cells(bench),
    ]


def _cells(bench: dict[str, Any]) -> list[Block]:
    """One table (and bar chart) per (provider, batch) of a bench object."""
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for m in bench["measurements"]:
        cells.setdefault((m["provider"], m["batch"]), []).append(m)
    blocks: list[Block] = []
    header = ["model", "p50 ms", "p90 ms", "p99 ms", "mean ms", "items/s", "session s", "peak MB", "file MB", "ratio"]
    for (provider, batch), rows in cells.items():
        table = []
        for m in rows:
            lat, ratio = m["latency"], m["ratio"]
            peak = "-" if m["peak_rss_bytes"] is None else f"{m['peak_rss_bytes'] / 1e6:.0f}"
            ratio_text = (
                "baseline" if ratio is None else f"{ratio['median']:.3f} [{ratio['low']:.3f}, {ratio['high']:.3f}]"
            )
            table.append(
                [
                    m["model"],
                    f"{lat['p50_ms']:.3f}",
                    f"{lat['p90_ms']:.3f}",
                    f"{lat['p99_ms']:.3f}",
                    f"{lat['mean_ms']:.3f}",
                    f"{lat['throughput']:.1f}",
                    f"{m['session_s']:.3f}",
                    peak,
                    f"{m['file_bytes'] / 1e6:.2f}",
                    ratio_text,
                ]
            )
        blocks += [
            Paragraph(f"**{provider}, batch {batch}**: {rows[0]['latency']['runs']} interleaved rounds"),
            Table(header, table, set(range(1, 10))),
        ]
        notes = [
            "baseline" if m["ratio"] is None else f"{m['ratio']['median']:.3f}x [{m['ratio']['low']:.3f}, "
            f"{m['ratio']['high']:.3f}]" for m in rows
        ]  # fmt: skip
        svg = plots.latency_bars(
            [m["model"] for m in rows], [m["latency"]["p50_ms"] for m in rows], [_median_interval(m) for m in rows],
            notes,
        )  # fmt: skip
        caption = (
            f"latency, {provider}, batch {batch}: each model's median (p50), from 0; whisker: the 95 % interval of "
            "that median, from the bootstrap interval of its ratio to the first model (printed above its bar)"
        )
        blocks.append(Figure(svg, caption) if svg else Paragraph(_PLOT_HINT))
    return blocks


def _median_interval(m: dict[str, Any]) -> tuple[float, float] | None:
    """A measurement's 95 % interval of its median latency (ms), read from its ratio to the baseline: the ratio's
    bootstrap bounds scaled by the median (``median * low / ratio``); None for the baseline (no ratio)."""
    ratio, p50 = m.get("ratio"), m["latency"]["p50_ms"]
    if not ratio or not ratio["median"]:
        return None
    return p50 * ratio["low"] / ratio["median"], p50 * ratio["high"] / ratio["median"]


def _outputs(cmp: dict[str, Any]) -> list[Block]:
    rows = []
    for out in cmp["outputs"]:
        top1 = "" if out["top1_agreement"] is None else f"{out['top1_agreement']:.4f}"
        rows.append(
            [
                out["name"],
                f"{out['max_abs']:.3g}",
                f"{out['max_rel']:.3g}",
                f"{out['cosine']:.6f}",
                _db(out["snr_db"]),
                top1,
            ]
        )
    header = ["output", "max abs", "max rel", "cosine", "SNR dB", "top-1 agreement"]
    return [Heading("Outputs against the reference"), Table(header, rows, {1, 2, 3, 4, 5})]


def _layers(layers: dict[str, Any]) -> list[Block]:
    verdict = (
        f"every matched layer stays above {layers['threshold_db']:g} dB"
        if layers["first_bad"] is None
        else f"first layer below {layers['threshold_db']:g} dB: **`{layers['first_bad']}`**; "
        f"largest error added by one layer: `{layers['largest_added']}`"
    )
    rows = [
        [
            f"`{x['tensor']}`",
            x["op_type"],
            _db(x["snr_db"]),
            f"{x['cosine']:.6f}",
            f"{x['max_rel']:.3g}",
            "" if x["own_snr_db"] is None else f"{x['own_snr_db']:.1f}",
        ]
        for x in layers["layers"]
    ]
    svg = plots.layer_snr(
        [x["tensor"] for x in layers["layers"]],
        [float(x["snr_db"]) for x in layers["layers"]],
        layers["threshold_db"],
    )
    return [
        Heading("Per-layer error"),
        Paragraph(
            f"{len(rows)} matched tensors ({layers['unmatched']} unmatched), {layers['samples']} samples; {verdict}."
        ),
        Figure(svg, "SNR of each layer against the reference") if svg else Paragraph(_PLOT_HINT),
        Table(["tensor", "op", "SNR dB", "cosine", "max rel", "own error dB"], rows, {2, 3, 4, 5}),
    ]


def _passes(r: dict[str, Any]) -> list[Block]:
    rows = []
    for rec in r["passes"]:
        counts = ", ".join(f"{k}: {v}" for k, v in rec["counts"].items() if v)
        rows.append(
            [
                rec["name"],
                rec["status"],
                f"{rec['before']['nodes']} → {rec['after']['nodes']}",
                f"{rec['before']['parameters']:,} → {rec['after']['parameters']:,}",
                f"{float(rec['max_drift']):.2g}",
                f"{rec['seconds']:.3f}",
                counts,
            ]
        )
    blocks: list[Block] = [
        Heading("Passes"),
        Table(["pass", "status", "nodes", "parameters", "drift", "seconds", "counts"], rows, {2, 3, 4, 5}),
    ]
    notes = [f"**{rec['name']}**: {n}" for rec in r["passes"] for n in rec["notes"]]
    notes += [f"**pipeline**: {n}" for n in r["notes"]]
    declined = [f"**{rec['name']}**: {s}" for rec in r["passes"] for s in rec["skipped"]]
    for rec in r["passes"]:
        if rec.get("details"):
            blocks += [Heading(f"{rec['name']}: per layer", 3), *_details_tables(rec["details"])]
    if notes:
        blocks += [Heading("Notes"), Bullets(notes)]
    if declined:
        blocks += [Heading("Declined"), Bullets(declined)]
    return blocks


def _details_tables(rows: list[dict[str, Any]], limit: int = 200) -> list[Table]:
    """A pass's per-layer rows (at most ``limit``) as tables, one per kind of row -- rows of one kind share
    their first key (``epoch``, ``node``, ``output``) -- so no table is padded with another kind's columns."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for row in rows[:limit]:
        kinds.setdefault(next(iter(row), ""), []).append(row)
    return [_details_table(group) for group in kinds.values()]


def _details_table(rows: list[dict[str, Any]]) -> Table:
    """Rows of one kind as a table: every key a column, numbers formatted and right-aligned."""
    header = list(dict.fromkeys(key for row in rows for key in row))
    body = [[_cell(row.get(key, "")) for key in header] for row in rows]
    numeric = {i for i, key in enumerate(header) if any(isinstance(row.get(key), int | float) for row in rows)}
    return Table(header, body, numeric)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def _runs(reports: list[dict[str, Any]]) -> list[Block]:
    rows = []
    for r in reports:
        rows.append(_run_row(r))
    blocks: list[Block] = [
        Heading("onnxopt: runs compared", 1),
        Table(
            [
                "report",
                "kind",
                "model → output",
                "recipe",
                "file bytes",
                "accuracy",
                "top-1 agree",
                "latency ratio",
                "created",
            ],
            rows,
            {4, 5, 6, 7},
        ),
    ]
    blocks += _tradeoff(reports)
    for r in reports:
        if r["kind"] == "bench":
            blocks += [Heading(f"bench: {r.get('source', '')}"), *_cells(r["bench"])]
    return blocks


def _run_row(r: dict[str, Any]) -> list[str]:
    source = r.get("source", "")
    if r["kind"] == "bench":
        models = sorted({m["model"] for m in r["bench"]["measurements"]})
        ratios = [m["ratio"]["median"] for m in r["bench"]["measurements"] if m["ratio"]]
        ratio = ", ".join(f"{x:.3f}" for x in ratios)
        return [source, "bench", ", ".join(models), "", "", "", "", ratio, r["created"]]
    cmp = r["comparison"]
    top1 = next((o["top1_agreement"] for o in cmp["outputs"] if o["top1_agreement"] is not None), None)
    acc = cmp.get("candidate_accuracy")
    if r["kind"] == "compare":
        model = f"{r['reference']} vs {r['candidate']}"
        return [source, "compare", model, "", "", _opt(acc, ".4f"), _opt(top1, ".4f"), "", r["created"]]
    ratio = _latency_ratio(r)
    sizes = f"{r['input']['file_bytes']:,} → {r['output']['file_bytes']:,}" if r["output"]["file_bytes"] else ""
    recipe = r.get("recipe_name") or ",".join(e["name"] for e in r["recipe"])
    return [
        source,
        "optimize",
        f"{r['input']['path']} → {r['output']['path'] or '(not written)'}",
        recipe,
        sizes,
        _opt(acc, ".4f"),
        _opt(top1, ".4f"),
        _opt(ratio, ".3f"),
        r["created"],
    ]


def _tradeoff(reports: list[dict[str, Any]]) -> list[Block]:
    """Accuracy (or agreement) against latency and size, over every candidate of the optimize reports."""
    points: dict[str, plots.Candidate] = {}
    label = "accuracy"
    for r in reports:
        if r["kind"] != "optimize" or not r.get("latency"):
            continue
        cmp = r["comparison"]
        measurements = [m for m in r["latency"]["measurements"] if m["provider"] == "cpu"]
        if len(measurements) < 2:
            continue
        base, cand = measurements[0], measurements[1]
        if cmp.get("reference_accuracy") is not None:
            ref_q, cand_q = cmp["reference_accuracy"], cmp["candidate_accuracy"]
        else:
            label = "top-1 agreement with the original"
            top1 = next((o["top1_agreement"] for o in cmp["outputs"] if o["top1_agreement"] is not None), None)
            if top1 is None:
                continue
            ref_q, cand_q = 1.0, top1
        points.setdefault(
            r["input"]["path"], plots.Candidate("original", base["latency"]["p50_ms"], ref_q, base["file_bytes"])
        )
        recipe = r.get("recipe_name") or ",".join(e["name"] for e in r["recipe"])
        name = recipe if len(recipe) <= 24 else recipe[:22] + "…"
        p50 = cand["latency"]["p50_ms"]
        points[r["output"]["path"]] = plots.Candidate(name, p50, cand_q, cand["file_bytes"], _median_interval(cand))
    if not points:
        return []
    svg = plots.tradeoff(list(points.values()), label)
    caption = (
        f"{label} against latency (p50, CPU; the axis starts at 0, so distances read as ratios; whisker: 95 % "
        "interval of the median); marker area ∝ file size"
    )
    return [Heading("Trade-off"), Figure(svg, caption) if svg else Paragraph(_PLOT_HINT)]


def _latency_ratio(r: dict[str, Any]) -> float | None:
    if not r.get("latency"):
        return None
    ratios = [m["ratio"]["median"] for m in r["latency"]["measurements"] if m["ratio"]]
    return ratios[0] if ratios else None


def _provenance(r: dict[str, Any]) -> str:
    return f"created {r['created']} with " + ", ".join(f"{k} {v}" for k, v in r["versions"].items())


def percent_change(before: float, after: float) -> str:
    """``after`` against ``before`` as a signed percentage (``n/a`` from zero)."""
    return f"{100 * (after - before) / before:+.1f}%" if before else "n/a"


def _db(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:.1f}"


def _opt(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)
