"""The ``onnxopt`` command: optimize, compare, inspect, passes.

Exit status: 0 on success; 2 with a one-line ``onnxopt: error: ...`` on bad
usage or bad input (a traceback only with ``--debug``); 1 for an internal
error, which is a bug in onnxopt.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from collections.abc import Sequence

from onnxopt import io
from onnxopt.api import compare_files, optimize
from onnxopt.errors import OnnxoptError
from onnxopt.evaluate import Comparison
from onnxopt.inspection import inspect_model
from onnxopt.optimize import OptimizeResult
from onnxopt.progress import RichProgress
from onnxopt.recipe import BUILTIN_RECIPES, describe_passes
from onnxopt.report import build_report, check_report_path, json_safe, percent_change, write_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except OnnxoptError as e:
        if args.debug:
            traceback.print_exc()
        print(f"onnxopt: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("onnxopt: interrupted; no output was written", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        print(f"onnxopt: internal error ({type(e).__name__}): {_one_line(e)} -- rerun with --debug", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="print tracebacks on errors")
    parser = argparse.ArgumentParser(prog="onnxopt", description="Verified ONNX graph optimization.")
    sub = parser.add_subparsers(dest="command", required=True)

    opt = sub.add_parser("optimize", parents=[common], help="rewrite a model through a recipe of verified passes")
    opt.add_argument("model")
    opt.add_argument("-o", "--output")
    which = opt.add_mutually_exclusive_group()
    which.add_argument("--passes", help="pass list, e.g. fold-bn,fold-affine:key=value")
    which.add_argument(
        "--recipe", help=f"built-in ({', '.join(BUILTIN_RECIPES)}) or a YAML/JSON file; default lossless"
    )
    opt.add_argument("--data", help="an .npz of inputs (and labels), or random[:N]")
    opt.add_argument("--report", help="write a report: FILE.json or FILE.md")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--guard-samples", type=int, help="samples the per-pass guard runs (default 64)")
    opt.add_argument("--target-opset", type=int, help="convert the model to this opset first (needed below 9)")
    opt.add_argument("--in-place", action="store_true", help="replace the input model (atomically)")
    opt.add_argument("--external-data", action="store_true", default=None, help="store tensors in OUT.data")
    opt.add_argument("--json", action="store_true", help="print the report as JSON")
    opt.set_defaults(func=_cmd_optimize)

    cmp = sub.add_parser("compare", parents=[common], help="measure how closely CAND agrees with REF")
    cmp.add_argument("reference")
    cmp.add_argument("candidate")
    cmp.add_argument("--data", help="an .npz of inputs (and labels), or random[:N] (default random:8)")
    cmp.add_argument("--batch", type=int, help="batch size for models with a dynamic batch dimension")
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--json", action="store_true")
    cmp.set_defaults(func=_cmd_compare)

    ins = sub.add_parser("inspect", parents=[common], help="opset, signature, op histogram, size and MACs of a model")
    ins.add_argument("model")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=_cmd_inspect)

    lst = sub.add_parser("passes", parents=[common], help="list every pass with its parameters")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_cmd_passes)
    return parser


def _cmd_optimize(args: argparse.Namespace) -> int:
    if args.guard_samples is not None and args.guard_samples <= 0:
        raise OnnxoptError("--guard-samples must be positive")
    if args.report:
        check_report_path(args.report)  # before any work: a bad report path must not leave a model behind
    result = optimize(
        args.model,
        args.output,
        recipe=args.recipe,
        passes=args.passes,
        data=args.data,
        seed=args.seed,
        in_place=args.in_place,
        external_data=args.external_data,
        guard_samples=args.guard_samples,
        target_opset=args.target_opset,
        progress=RichProgress(),
    )
    report = build_report(result)
    if args.report:
        write_report(report, args.report)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_optimize_summary(result))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    if args.batch is not None and args.batch <= 0:
        raise OnnxoptError("--batch must be positive")
    comparison = compare_files(
        args.reference, args.candidate, data=args.data, seed=args.seed, batch_size=args.batch, progress=RichProgress()
    )
    if args.json:
        print(json.dumps(json_safe(comparison.to_dict()), indent=2))
    else:
        print(format_comparison(comparison))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    summary = inspect_model(io.load(args.model))
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return 0
    opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in summary.opset.items())
    lines = [
        f"{args.model}",
        f"  IR version {summary.ir_version}; opsets: {opsets}; producer: {summary.producer or '-'}",
        *[f"  input  {v['name']}: {v['dtype']} {v['shape']}" for v in summary.inputs],
        *[f"  output {v['name']}: {v['dtype']} {v['shape']}" for v in summary.outputs],
        f"  nodes {summary.nodes}, parameters {summary.parameters:,}, tensor bytes {summary.bytes:,}",
        f"  MACs per sample {summary.macs:,}"
        + (f" (not counted: {len(summary.macs_unknown)} nodes)" if summary.macs_unknown else ""),
        "  ops: " + ", ".join(f"{op} {n}" for op, n in summary.op_histogram.items()),
    ]
    print("\n".join(lines))
    return 0


def _cmd_passes(args: argparse.Namespace) -> int:
    passes = describe_passes()
    if args.json:
        print(json.dumps(passes, indent=2, default=str))
        return 0
    for p in passes:
        kind = "lossless" if p["lossless"] else "lossy"
        print(f"{p['name']:<20} {kind:<9} {p['summary']}")
        for param in p["parameters"]:
            print(f"{'':<31}{param['name']}: {param['type']} = {param['default']}")
    print("\nrecipes: " + "; ".join(f"{name} = {spec}" for name, spec in BUILTIN_RECIPES.items()))
    return 0


def format_optimize_summary(result: OptimizeResult) -> str:
    """The before/after summary ``onnxopt optimize`` prints."""
    pipe, cmp = result.pipeline, result.comparison
    lines = [
        f"onnxopt optimize {result.input_path} -> {result.output_path}",
        f"  data: {result.data}; {cmp.samples} samples compared",
        "",
        f"  {'pass':<27}{'status':<13}{'nodes':>12}{'drift':>11}{'seconds':>9}  what",
    ]
    for rec in pipe.records:
        what = ", ".join(f"{k} {v}" for k, v in rec.counts.items() if v) or "-"
        if rec.skipped:
            what += f" ({len(rec.skipped)} declined)"
        nodes = f"{rec.before.nodes}->{rec.after.nodes}"
        lines.append(f"  {rec.name:<27}{rec.status:<13}{nodes:>12}{rec.max_drift:>11.2g}{rec.seconds:>9.3f}  {what}")
        lines.extend(f"  {'':<27}note: {n}" for n in rec.notes)
    lines += ["", f"  {'':<14}{'before':>14}{'after':>14}{'change':>10}"]
    for label, b, a in (
        ("nodes", pipe.original.nodes, pipe.final.nodes),
        ("parameters", pipe.original.parameters, pipe.final.parameters),
        ("file bytes", result.input_file_bytes, result.output_file_bytes),
    ):
        if a is not None:
            lines.append(f"  {label:<14}{b:>14,}{a:>14,}{percent_change(b, a):>10}")
    if cmp.reference_accuracy is not None and cmp.candidate_accuracy is not None:
        delta = 100 * (cmp.candidate_accuracy - cmp.reference_accuracy)
        lines.append(f"  {'accuracy':<14}{cmp.reference_accuracy:>14.4f}{cmp.candidate_accuracy:>14.4f}{delta:>+9.2f}p")
    lines.append(f"  {'max drift':<14}{'':>14}{cmp.max_rel:>14.3g}  (max |out - orig| / max |orig|)")
    for out in cmp.outputs:
        if out.top1_agreement is not None:
            lines.append(f"  {'top-1 agree':<14}{'':>14}{out.top1_agreement:>14.4f}  ({out.name})")
    return "\n".join(lines)


def format_comparison(comparison: Comparison) -> str:
    """The table ``onnxopt compare`` prints."""
    lines = [
        f"{comparison.samples} samples",
        f"{'output':<32}{'max abs':>11}{'mean abs':>11}{'max rel':>11}{'cosine':>11}{'SNR dB':>9}{'top-1':>8}",
    ]
    for o in comparison.outputs:
        top1 = "" if o.top1_agreement is None else f"{o.top1_agreement:.4f}"
        snr = "inf" if math.isinf(o.snr_db) else f"{o.snr_db:.1f}"
        lines.append(
            f"{o.name[:31]:<32}{o.max_abs:>11.3g}{o.mean_abs:>11.3g}{o.max_rel:>11.3g}{o.cosine:>11.6f}{snr:>9}{top1:>8}"
        )
    if comparison.reference_accuracy is not None:
        lines.append(
            f"accuracy: reference {comparison.reference_accuracy:.4f}, candidate {comparison.candidate_accuracy:.4f}"
        )
    return "\n".join(lines)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
