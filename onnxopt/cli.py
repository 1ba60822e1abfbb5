"""The ``onnxopt`` command: optimize, compare, bench, convert, distill, inspect, passes, report.

Exit status: 0 on success; 2 with a one-line ``onnxopt: error: ...`` on bad
usage or bad input (a traceback only with ``--debug``); 1 for an internal
error, which is a bug in onnxopt.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from onnxopt import __version__, io
from onnxopt.api import OptimizeOptions, bench_files, compare_files, optimize
from onnxopt.bench import BenchConfig, BenchResult, Measurement
from onnxopt.data import DataSpec, ImageOptions, parse_input_shapes
from onnxopt.errors import OnnxoptError, one_line
from onnxopt.evaluate.check import Thresholds
from onnxopt.evaluate.compare import Comparison, random_inputs_warning
from onnxopt.evaluate.layers import DEFAULT_THRESHOLD_DB, LayerReport
from onnxopt.evaluate.readings import METRICS
from onnxopt.inspection import ModelSummary, audit_runtime, inspect_model, runtime_text
from onnxopt.optimizer.recipe import BUILTIN_RECIPES, describe_passes, parse_spec
from onnxopt.optimizer.run import OptimizeResult
from onnxopt.progress import NullProgress, RichProgress
from onnxopt.report import (
    bench_report,
    check_report_path,
    compare_report,
    format_report,
    json_safe,
    load_report,
    optimize_report,
    percent_change,
    write_report,
)
from onnxopt.report.verdict import verdict
from onnxopt.tune import TuneResult
from onnxopt.tune.trial import TrialRecord

#: Exit status when a lossy pass the user asked for did not apply (the output is still written).
EXIT_FALLBACK = 3


#: An example block per command, shown under its --help.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "optimize": (
        "onnxopt optimize m.onnx m.int8.onnx --recipe int8 --data train.npz --eval-data eval.npz --report r.html",
        "onnxopt optimize m.onnx out.onnx          # lossless: folds, dedup, cleanup; outputs proven equal",
        "onnxopt optimize m.onnx out.onnx --recipe prune --data train.npz   # prune, refit, fine-tune (tf extra)",
        "onnxopt optimize m.onnx out.onnx --passes lossless,quantize:max_drop=0.01 --data eval.npz",
        "onnxopt optimize m.onnx out.onnx --recipe int8 --data d.npz --save-plan plan.json   # then --plan plan.json",
    ),
    "compare": (
        "onnxopt compare model.onnx model.int8.onnx --data eval.npz",
        "onnxopt compare model.onnx out.onnx --per-layer --json > cmp.json && onnxopt report cmp.json -o cmp.html",
    ),
    "bench": (
        "onnxopt bench model.onnx model.int8.onnx --data eval.npz",
        "onnxopt bench model.onnx out.onnx --batches 1,32 --seconds 5 --json",
    ),
    "inspect": (
        "onnxopt inspect model.onnx",
        "onnxopt inspect model.onnx --json",
        "onnxopt inspect model_int8.onnx --runtime --threads 1",
    ),
    "report": (
        "onnxopt report run.json -o run.html",
        "onnxopt report int8.json prune.json -o both.md   # runs side by side",
    ),
    "passes": (
        "onnxopt passes",
        "onnxopt passes --json",
    ),
    "convert": (
        "onnxopt convert model.keras -o model.onnx --nchw",
        "onnxopt convert model.tflite -o model.onnx --data inputs.npz",
    ),
    "tune": (
        "onnxopt tune models/digits_cnn/model.onnx -o digits.tuned.onnx --data models/digits_cnn/train.npz",
        "onnxopt tune a.onnx b.onnx -o tuned/ --data a.npz --data b.npz --objective size --ray auto",
    ),
    "distill": (
        "onnxopt distill --teacher model.onnx --student width=0.5 --data train.npz --eval-data eval.npz -o half.onnx",
        "onnxopt distill --teacher model.keras --student small.keras --data train.npz -o small.onnx",
    ),
}


_METRIC_HELP = (
    "how accuracy budgets read the outputs: top1 (classifier), sequence (greedy CTC, whole sequences), detection "
    "(confident anchors, same class), values (relative error) (default: auto, from the outputs' shapes)"
)


def _command(sub: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with its block of :data:`EXAMPLES`."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
    return sub.add_parser(name, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    misspelt = _unknown_command(parser, argv)
    if misspelt:
        parser.error(misspelt)  # one line, exit 2, as argparse's own usage errors
    args = parser.parse_args(argv)
    previous = _stop_on_sigterm()
    try:
        return int(args.func(args) or 0)
    except OnnxoptError as e:
        if args.debug:
            traceback.print_exc()
        print(f"onnxopt: error: {one_line(e, limit=None)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("onnxopt: interrupted (outputs are written whole or not at all)", file=sys.stderr)
        return 130
    except MemoryError:
        print("onnxopt: error: out of memory (try smaller --batch or less --data)", file=sys.stderr)
        return 2
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        print(
            f"onnxopt: internal error ({type(e).__name__}): {one_line(e, limit=None)} -- rerun with --debug",
            file=sys.stderr,
        )
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _unknown_command(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """A one-line error with the closest command for a misspelt one (argparse only lists them all)."""
    commands = next(
        (a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)),
        None,
    )
    word = next((a for a in argv if not a.startswith("-")), None)
    if not commands or word is None or word in commands:
        return None
    from onnxopt.optimizer.recipe import did_you_mean

    hint = did_you_mean(word, commands) or f" (commands: {', '.join(commands)})"
    return f"unknown command '{word}'{hint}"


def _stop_on_sigterm() -> object:
    """Make SIGTERM stop a run the way Ctrl-C does (temporary files removed); returns the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, stop)


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line and exit 2, like every other error (not argparse's usage block)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("onnxopt").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"onnxopt: error: {where}{message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="print tracebacks on errors")
    loudness = common.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true", help="print only the result line (and errors)")
    loudness.add_argument("-v", "--verbose", action="store_true", help="print every decline reason of every pass")
    data = argparse.ArgumentParser(add_help=False)
    group = data.add_argument_group("data")
    group.add_argument(
        "--data",
        help="an .npz (inputs and labels) or .npy file, an image folder, or random[:N]; a scalar (rank-0) input "
        "takes a scalar array (one value for every sample) or an [N] array (one value per sample); NaN or Inf "
        "is refused",
    )
    group.add_argument(
        "--drop-nonfinite",
        action="store_true",
        help="leave out the samples of --data (and --eval-data) that hold NaN or Inf, and say how many, instead "
        "of refusing the data",
    )
    group.add_argument(
        "--input-shape",
        help="shapes for random inputs, e.g. images:1x3x640x640[,mask:1x640x640] (default: the model's, "
        "unknown image H/W 224)",
    )
    group.add_argument("--size", help="image folder: resize to H or HxW (default: no resize; sizes must agree)")
    group.add_argument("--layout", choices=["nchw", "nhwc"], help="image folder: tensor layout (default: the model's)")
    group.add_argument("--mean", help="image folder: per-channel mean after scaling, e.g. 0.485,0.456,0.406")
    group.add_argument("--std", help="image folder: per-channel std after scaling, e.g. 0.229,0.224,0.225")
    group.add_argument("--scale", help="image folder: pixel multiplier before mean/std (default 1/255)")
    group.add_argument("--channels", choices=["rgb", "bgr", "gray"], help="image folder: channel order")
    parser = _OneLineParser(prog="onnxopt", description="Verified ONNX graph optimization.")
    parser.add_argument("--version", action="version", version=f"onnxopt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    opt = _command(
        sub,
        "optimize",
        parents=[common, data],
        help="rewrite a model through a recipe of verified passes",
    )
    opt.add_argument("model")
    opt.add_argument("output_positional", nargs="?", metavar="OUT", help="the output file (onnxsim style; or -o OUT)")
    opt.add_argument("-o", "--output")
    opt.add_argument(
        "--allow-fallback",
        action="store_true",
        help="exit 0 even when a lossy pass the recipe is for (quantize in int8) was rolled back or declined",
    )
    which = opt.add_mutually_exclusive_group()
    which.add_argument("--passes", help="pass list, e.g. fold-bn,fold-affine:key=value")
    which.add_argument(
        "--recipe", help=f"built-in ({', '.join(BUILTIN_RECIPES)}) or a YAML/JSON file; default lossless"
    )
    opt.add_argument(
        "--eval-data",
        help="score the result on this data instead of --data (which passes calibrate and fit on): a held-out "
        "accuracy, e.g. --data train.npz --eval-data eval.npz",
    )
    opt.add_argument("--report", help="write a report: FILE.json, FILE.md or FILE.html (measures latency too)")
    opt.add_argument("--per-layer", action="store_true", help="localize the error layer by layer on the data")
    latency = opt.add_mutually_exclusive_group()
    latency.add_argument("--bench", action="store_true", help="benchmark input and output (default with --report)")
    latency.add_argument("--no-bench", action="store_true", help="do not benchmark, even with --report")
    opt.add_argument("--bench-seconds", type=float, default=1.0, help="latency budget per model (default 1)")
    opt.add_argument(
        "--batch", type=int, help="deployment batch size: latency decisions and the benchmark use it (default 1)"
    )
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--metric", default="auto", choices=METRICS, help=_METRIC_HELP)
    opt.add_argument("--save-plan", metavar="PLAN.json", help="write every measured decision (timings, precisions)")
    opt.add_argument("--plan", metavar="PLAN.json", help="replay a saved plan's decisions: nothing is timed")
    opt.add_argument("--guard-samples", type=int, help="samples the per-pass guard runs (default 64)")
    opt.add_argument("--target-opset", type=int, help="convert the model to this opset first (needed below 9)")
    opt.add_argument("--in-place", action="store_true", help="replace the input model (atomically)")
    opt.add_argument("--external-data", action="store_true", default=None, help="store tensors in OUT.data")
    opt.add_argument(
        "--storage",
        choices=["dense", "sparse", "packed"],
        default="dense",
        help="mostly-zero weights: sparse = SparseTensorProto, packed = bitmask + values unpacked by a constant "
        "subgraph onnxruntime folds at load; each only where smaller (default dense)",
    )
    opt.add_argument("--json", action="store_true", help="print the report as JSON")
    opt.set_defaults(func=_cmd_optimize)

    cmp = _command(
        sub,
        "compare",
        parents=[common, data],
        help="measure how closely CAND agrees with REF",
    )
    cmp.add_argument("reference")
    cmp.add_argument("candidate")
    cmp.add_argument(
        "--chunk", type=int, metavar="N", help="samples per run, for models with a dynamic batch dimension"
    )
    cmp.add_argument("--batch", type=int, help=argparse.SUPPRESS)  # deprecated: --chunk
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--per-layer", action="store_true", help="localize the error: SNR and cosine of every layer")
    cmp.add_argument(
        "--threshold-db", type=float, default=DEFAULT_THRESHOLD_DB, help="per-layer SNR that counts as broken"
    )
    cmp.add_argument("--report", help="write a report: FILE.json, FILE.md or FILE.html")
    cmp.add_argument("--json", action="store_true")
    check = cmp.add_argument_group(
        "check", "with any of these, exit 1 when an output misses one, printing a FAIL line per such output"
    )
    check.add_argument(
        "--atol", type=float, metavar="A", help="every element: |cand - ref| <= A + R*|ref|, as numpy allclose"
    )
    check.add_argument("--rtol", type=float, metavar="R", help="R of --atol's formula (either alone: the other is 0)")
    check.add_argument("--min-snr", type=float, metavar="DB", help="each output's SNR at least DB decibels")
    check.add_argument(
        "--min-top1",
        type=float,
        metavar="F",
        help="top-1 (arg-max) agreement at least F in [0, 1]; checked on classifier-shaped outputs only "
        "([N, C] or [N, C, 1, ...]), where it is defined",
    )
    cmp.set_defaults(func=_cmd_compare)

    bench = _command(
        sub,
        "bench",
        parents=[common, data],
        help="latency, throughput, memory of models, interleaved; first = baseline",
    )
    bench.add_argument("models", nargs="+", metavar="MODEL")
    bench.add_argument("--ep", default="cpu", help="execution providers, e.g. cpu,cuda,tensorrt (default cpu)")
    bench.add_argument("--batches", help="batch sizes, e.g. 1,8,32 (default: the model's fixed batch, else 1)")
    bench.add_argument("--batch", help=argparse.SUPPRESS)  # deprecated: --batches
    bench.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: its own)")
    bench.add_argument("--warmup", type=int, default=5, help="untimed runs per model first (default 5)")
    length = bench.add_mutually_exclusive_group()
    length.add_argument("--runs", type=int, help="timed rounds (each runs every model once)")
    length.add_argument("--seconds", type=float, default=2.0, help="time budget per model per cell (default 2)")
    bench.add_argument("--no-memory", action="store_true", help="skip the per-model peak-memory probe")
    bench.add_argument(
        "--spin", action="store_true", help="let onnxruntime's threads spin-wait between runs (off: fairer ratios)"
    )
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--report", help="write a report: FILE.json, FILE.md or FILE.html")
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.set_defaults(func=_cmd_bench)

    ins = _command(
        sub,
        "inspect",
        parents=[common],
        help="opset, signature, op histogram, size and MACs of a model",
    )
    ins.add_argument("model")
    ins.add_argument(
        "--input-shape", help="shapes for the MAC count, e.g. images:1x3x640x640 (default: as random data)"
    )
    ins.add_argument(
        "--runtime",
        action="store_true",
        help="also audit what onnxruntime runs: its kernels, the quantized nodes run in float, the Q/DQ left",
    )
    ins.add_argument("--ep", default="cpu", help="execution provider of --runtime (default cpu)")
    ins.add_argument("--threads", type=int, default=0, help="intra-op threads of --runtime (default: its own)")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=_cmd_inspect)

    rep = _command(
        sub,
        "report",
        parents=[common],
        help="render or compare earlier JSON reports",
    )
    rep.add_argument("reports", nargs="+", metavar="REPORT.json")
    rep.add_argument("-o", "--output", help="FILE.md, FILE.html or FILE.json (default: Markdown on stdout)")
    rep.set_defaults(func=_cmd_report)

    _add_tune_command(sub, common)
    _add_tf_commands(sub, common)

    lst = _command(
        sub,
        "passes",
        parents=[common],
        help="list every pass with its parameters",
    )
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_cmd_passes)
    return parser


def _cmd_optimize(args: argparse.Namespace) -> int:
    if args.output_positional and args.output and args.output_positional != args.output:
        raise OnnxoptError(f"two outputs given: {args.output_positional} and -o {args.output}")
    args.output = args.output or args.output_positional
    if args.report:
        check_report_path(args.report)  # before any work: a bad report path must not leave a model behind
    bench = None
    if (args.report or args.bench) and not args.no_bench:
        bench = BenchConfig(seconds=args.bench_seconds, memory=True, seed=args.seed)
    options = OptimizeOptions(
        recipe=args.recipe,
        passes=args.passes,
        data=DataSpec(args.data, _image_options(args), args.drop_nonfinite) if args.data else None,
        eval_data=DataSpec(args.eval_data, _image_options(args), args.drop_nonfinite) if args.eval_data else None,
        seed=args.seed,
        in_place=args.in_place,
        plan=args.plan,
        save_plan=args.save_plan,
        external_data=args.external_data,
        storage=args.storage,
        guard_samples=args.guard_samples,
        target_opset=args.target_opset,
        bench=bench,
        per_layer=args.per_layer,
        batch=args.batch,
        input_shapes=parse_input_shapes(args.input_shape),
        metric=args.metric,
    )
    result = optimize(args.model, args.output, options, progress=NullProgress() if args.quiet else RichProgress())
    report = optimize_report(result)
    if args.report:
        write_report(report, args.report)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    elif args.quiet:
        print(verdict(report))
    else:
        print(format_optimize_summary(result, verbose=args.verbose, report=report))
        if result.latency is not None:
            print("\n" + format_bench(result.latency))
        if result.comparison.layers is not None:
            print("\n" + "\n".join(format_layers(result.comparison.layers)))
    if result.fell_back and not args.allow_fallback:
        where = f"output written to {result.output_path}" if result.output_path else "nothing written"
        print(f"onnxopt: fallback: {'; '.join(result.fallbacks)} ({where}; --allow-fallback exits 0)", file=sys.stderr)
        return EXIT_FALLBACK
    return 0


def _add_tune_command(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    tun = _command(
        sub,
        "tune",
        parents=[common],
        help="search recipes (pruning, clipping, int8, their settings) for the best model within an accuracy budget",
    )
    tun.add_argument("models", nargs="+", metavar="MODEL", help="the ONNX model(s) to tune")
    tun.add_argument(
        "-o",
        "--output",
        required=True,
        help="the tuned model (a folder when several models are given); its recipe, plan and the data its rebuild "
        "reads are written beside it",
    )
    tun.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="D",
        help="samples to split into fitting, selection and held-out parts (once, or once per model; required)",
    )
    tun.add_argument(
        "--eval-data",
        action="append",
        default=[],
        metavar="E",
        help="the held-out part, instead of a fifth of --data (once per --data; default: a fifth of --data)",
    )
    tun.add_argument(
        "--max-drop",
        type=float,
        default=0.01,
        help="largest allowed metric drop, 0.01 = one point (default: %(default)s)",
    )
    tun.add_argument("--objective", default="balanced", help="latency, size or balanced (default: %(default)s)")
    tun.add_argument("--metric", default="auto", choices=METRICS, help=_METRIC_HELP)
    tun.add_argument(
        "--batch", type=int, help="the deployment batch the finalists are timed at (default: the model's, else 1)"
    )
    tun.add_argument(
        "--trials",
        type=int,
        default=12,
        help="sampled trials per model, besides the built-in recipes (default: %(default)s)",
    )
    tun.add_argument(
        "--time-budget", type=float, metavar="S", help="start no new round of trials after S seconds (default: none)"
    )
    tun.add_argument(
        "--ray", metavar="auto|ADDRESS", help="run trials as Ray tasks, the ray extra (default: local processes)"
    )
    tun.add_argument(
        "--cache",
        metavar="DIR",
        help="the trial cache folder (default: $XDG_CACHE_HOME/onnxopt/tune, else ~/.cache/onnxopt/tune)",
    )
    tun.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    tun.add_argument(
        "--max-memory",
        type=float,
        metavar="GB",
        help="stop a trial whose process passes this resident memory, in GiB (default: none; trials report their peak)",
    )
    tun.add_argument("--seed", type=int, default=0, help="seeds the split and the sampler (default: %(default)s)")
    tun.add_argument(
        "--report", help="R.json, R.md or R.html, one per model when several: R-<model>.html (default: none)"
    )
    tun.set_defaults(func=_cmd_tune)


def _cmd_tune(args: argparse.Namespace) -> int:
    from onnxopt.tune import TuneOptions, tune

    options = TuneOptions(
        data=tuple(args.data), eval_data=tuple(args.eval_data), max_drop=args.max_drop, objective=args.objective,
        batch=args.batch, trials=args.trials, time_budget=args.time_budget, ray=args.ray, cache=args.cache,
        seed=args.seed, workers=args.workers, metric=args.metric, max_memory=args.max_memory,
    )  # fmt: skip
    if args.report:
        check_report_path(args.report)
    results = tune(args.models, args.output, options, progress=RichProgress())
    for result in results:
        print(format_tune(result))
        if args.report:
            path = Path(args.report)
            if len(results) > 1:
                path = path.with_name(f"{path.stem}-{result.model.stem}{path.suffix}")
            write_report(result.to_dict(), path)
    return 0


def format_tune(result: TuneResult) -> str:
    """What ``onnxopt tune`` prints for one model: the trial table (recipe, drop on the selection part, size and
    MACs against the original -- with the share onnxruntime runs in int8 kernels, where the tuner read it --,
    latency where timed, the peak resident memory of the process that ran it, verdict and why), the chosen model's
    held-out metric, the files written, where the trial cache is, and the command that rebuilds the output."""
    from onnxopt.tune.cache import folder_bytes
    from onnxopt.tune.space import label

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    def int8(t: TrialRecord) -> str:  # what onnxruntime runs in int8 kernels, where the tuner read it
        return f" ({t.int8_macs / t.macs:.0%} int8)" if t.int8_macs and t.macs else ""

    rows = [["trial", "recipe", "drop", "size", "MACs", "latency", "peak GB", "verdict", "why"]]
    for t in result.trials:
        drop = t.drop if t.drop is not None else t.rung_drop
        memory = "-" if t.peak_memory is None else f"{t.peak_memory / 2**30:.1f}"
        rows.append([
            t.name + ("*" if t.cached else ""), label(t.name, t.params, t.epochs),
            "-" if drop is None else f"{drop:+.4f}", ratio(t.size_ratio), ratio(t.macs_ratio) + int8(t),
            ratio(t.latency_ratio), memory, t.verdict or "-", t.why or "",
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    numeric = {2, 3, 4, 5, 6}
    lines = [
        f"{result.model} -> {result.output}: {len(result.trials)} trials, scored on the selection part "
        f"({result.split['counts'][1]} samples); budget: --max-drop {result.max_drop:g}; objective {result.objective}"
    ]
    for row in rows:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    held, chosen = result.held_out, result.chosen
    cached = sum(t.cached for t in result.trials)
    lines += [
        f"chosen: {chosen.name}{f' ({label(chosen.name, chosen.params)})' if chosen.params else ''}; held out "
        f"({held['samples']} samples, once): "
        f"{held['metric']} {held['value']:.4f} vs {held['baseline']:.4f} (drop {held['drop']:+.4f}, "
        f"{'within' if held['within_budget'] else 'OVER'} --max-drop {result.max_drop:g}); size "
        f"{held['size_ratio']:.2f}x; latency {ratio(chosen.latency_ratio)}",
        f"written: {result.output}; recipe {result.recipe_file}; plan {result.plan_file}; the rebuild's data "
        f"{', '.join(str(p) for p in result.rebuild_data)}",
        f"trial cache: {result.cache} ({folder_bytes(result.cache) / 1e6:.1f} MB; {cached} of {len(result.trials)} "
        "trials (*) taken from it; --cache DIR puts it elsewhere)",
        *(f"note: {note}" for note in result.notes),
        f"rebuild: {shlex.join(result.reproduce)}",
    ]
    return "\n".join(lines)


def _cmd_compare(args: argparse.Namespace) -> int:
    """Exit 0 after reporting, or 1 when a --atol/--rtol/--min-snr/--min-top1 check failed."""
    flag, chunk = _renamed(args, "--chunk", "--batch")
    if chunk is not None and chunk <= 0:
        raise OnnxoptError(f"{flag} must be positive")
    thresholds = Thresholds(atol=args.atol, rtol=args.rtol, min_snr=args.min_snr, min_top1=args.min_top1)
    if args.report:
        check_report_path(args.report)
    comparison = compare_files(
        args.reference,
        args.candidate,
        data=args.data,
        images=_image_options(args),
        drop_nonfinite=args.drop_nonfinite,
        seed=args.seed,
        batch_size=chunk,
        per_layer=args.per_layer,
        threshold_db=args.threshold_db,
        input_shapes=parse_input_shapes(args.input_shape),
        progress=RichProgress(),
        thresholds=thresholds,
    )
    report = compare_report(args.reference, args.candidate, comparison)
    if args.report:
        write_report(report, args.report)
    if args.json:  # the versioned report document, as the other commands print it: onnxopt report renders it
        print(json.dumps(report, indent=2, default=str))
        warning = random_inputs_warning(comparison)
        for line in [*([warning] if warning else []), *format_checks(comparison)]:
            print(line, file=sys.stderr)  # stdout stays JSON; the JSON says it too (random_inputs, failures)
    else:
        print(format_comparison(comparison))
    return 1 if comparison.passed is False else 0


def _cmd_report(args: argparse.Namespace) -> int:
    reports = [load_report(path) for path in args.reports]
    if args.output:
        write_report(reports, args.output)
    else:
        print(format_report(reports, ".md"), end="")
    return 0


def _image_options(args: argparse.Namespace) -> ImageOptions:
    return ImageOptions.parse(
        size=args.size, layout=args.layout, mean=args.mean, std=args.std, scale=args.scale, channels=args.channels
    )


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise OnnxoptError(f"{flag} {text}: expected comma-separated integers") from None
    if not values or min(values) <= 0:
        raise OnnxoptError(f"{flag} {text}: expected positive integers")
    return values


def _renamed(args: argparse.Namespace, new: str, old: str) -> tuple[str, Any]:
    """``(flag, value)`` of an option renamed from ``old`` (still accepted, undocumented) to ``new``: the value
    given and the flag it was given with, so messages name what the user wrote."""
    values = {flag: getattr(args, flag.lstrip("-").replace("-", "_")) for flag in (new, old)}
    if values[new] is not None and values[old] is not None:
        raise OnnxoptError(f"{old} is the old name of {new}: give one of them")
    return (old, values[old]) if values[old] is not None else (new, values[new])


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.report:
        check_report_path(args.report)
    flag, batches = _renamed(args, "--batches", "--batch")
    config = BenchConfig(
        providers=tuple(p for p in args.ep.split(",") if p.strip()),
        batches=_int_list(flag, batches) if batches else None,
        threads=args.threads,
        warmup=args.warmup,
        runs=args.runs,
        seconds=args.seconds,
        memory=not args.no_memory,
        seed=args.seed,
        spinning=args.spin,
        input_shapes=parse_input_shapes(args.input_shape),
    )
    result = bench_files(
        args.models,
        config,
        data=args.data,
        images=_image_options(args),
        drop_nonfinite=args.drop_nonfinite,
        progress=RichProgress(),
    )
    report = bench_report(result)
    if args.report:
        write_report(report, args.report)
    if args.json:
        print(json.dumps(json_safe(report), indent=2, default=str))
    else:
        print(format_bench(result))
    return 0


def format_bench(result: BenchResult) -> str:
    """The tables ``onnxopt bench`` prints: one per (provider, batch), the model column as wide as the longest
    name (names are whole: :func:`onnxopt.bench.run.distinct_names`); the random inputs' shapes, if random."""
    lines = [f"data: {result.data}; machine: {result.machine.get('cpu')}, {result.machine.get('cores')} cores"]
    if result.inputs:
        lines.append(f"random inputs: {result.inputs}")
    width = max([28, *(len(m.model) + 2 for m in result.measurements)])
    cells: dict[tuple[str, int], list[Measurement]] = {}
    for m in result.measurements:
        cells.setdefault((m.provider, m.batch), []).append(m)
    for (provider, batch), rows in cells.items():
        lines += [
            "",
            f"{provider}, batch {batch}: {rows[0].latency.runs} interleaved rounds",
            f"{'model':<{width}}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean':>9}{'std':>8}{'items/s':>10}"
            f"{'session s':>10}{'peak MB':>9}{'file MB':>9}  ratio p50 [95% CI]",
        ]
        for m in rows:
            lat = m.latency
            peak = "-" if m.peak_rss_bytes is None else f"{m.peak_rss_bytes / 1e6:.0f}"
            ratio = "baseline" if m.ratio is None else f"{m.ratio.median:.3f} [{m.ratio.low:.3f}, {m.ratio.high:.3f}]"
            lines.append(
                f"{m.model:<{width}}{lat.p50_ms:>9.3f}{lat.p90_ms:>9.3f}{lat.p99_ms:>9.3f}{lat.mean_ms:>9.3f}"
                f"{lat.std_ms:>8.3f}{lat.throughput:>10.1f}{m.session_s:>10.3f}{peak:>9}"
                f"{m.file_bytes / 1e6:>9.2f}  {ratio}"
            )
    return "\n".join(lines)


def _add_tf_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``convert`` and ``distill``: the commands that need the ``tf`` extra."""
    conv = _command(
        sub,
        "convert",
        parents=[common],
        help="convert Keras/SavedModel/TFLite to ONNX, verified against the source",
    )
    conv.add_argument("source", help="a .keras/.h5 file, a SavedModel folder, or a .tflite file")
    conv.add_argument("-o", "--output", required=True)
    conv.add_argument("--opset", type=int, default=17, help="ONNX opset to convert to (default 17)")
    conv.add_argument("--nchw", action="store_true", help="make image inputs NCHW (removing the Transposes left)")
    conv.add_argument("--data", help="inputs to verify on (.npz/.npy in the ONNX model's layout); default random")
    conv.add_argument("--seed", type=int, default=0)
    conv.set_defaults(func=_cmd_convert)

    dis = _command(
        sub,
        "distill",
        parents=[common],
        help="train a smaller student (Keras or ONNX) on a teacher's outputs",
    )
    dis.add_argument("--teacher", required=True, help="the teacher: .onnx (or .keras, converted first)")
    dis.add_argument(
        "--student",
        required=True,
        help="a .keras or .onnx student, or width=F: the teacher F times as wide (a Keras teacher's layers "
        "rebuilt, or an ONNX teacher with 1-F of its channels pruned, then fine-tuned)",
    )
    dis.add_argument("--data", required=True, help=".npz with the inputs (and labels, if any)")
    dis.add_argument("-o", "--output", required=True, help="the student as ONNX")
    dis.add_argument("--temperature", type=float, default=4.0)
    dis.add_argument("--alpha", type=float, default=0.7, help="weight of the soft-target loss (1-alpha: labels)")
    dis.add_argument("--epochs", type=int, default=10)
    dis.add_argument("--train-batch", type=int, default=64, metavar="N", help="training batch size (default 64)")
    dis.add_argument("--batch", type=int, dest="train_batch", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    dis.add_argument("--learning-rate", type=float, default=1e-3)
    dis.add_argument("--holdout", type=float, default=0.2, help="fraction of the data kept for evaluation")
    dis.add_argument("--eval-data", help="evaluate on this data instead of a --holdout split (all of --data trains)")
    dis.add_argument("--seed", type=int, default=0)
    dis.add_argument("--time-budget", type=float, metavar="S", help="stop training after S seconds")
    dis.add_argument("--save-keras", help="also save the trained student as .keras")
    dis.set_defaults(func=_cmd_distill)


def _cmd_convert(args: argparse.Namespace) -> int:
    from onnxopt.convert import convert_file

    result = convert_file(args.source, args.output, opset=args.opset, nchw=args.nchw, data=args.data, seed=args.seed)
    print(f"onnxopt convert {result.source} ({result.kind}) -> {result.output} (opset {result.opset})")
    print(f"  verified on {result.data}: {result.samples} samples against the source framework")
    for check in result.checks:
        noise = f", source's own noise {check.noise:.3g}" if check.noise else ""
        print(f"  {check.name:<30} max |onnx - source| {check.max_abs:.3g}  (allowed {check.allowed:.3g}{noise})")
    print(f"  Transpose nodes left: {result.transposes}")
    for note in result.notes:
        print(f"  note: {note}")
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from onnxopt.api import distill
    from onnxopt.distill import DistillConfig

    config = DistillConfig(
        temperature=args.temperature,
        alpha=args.alpha,
        epochs=args.epochs,
        batch=args.train_batch,
        learning_rate=args.learning_rate,
        holdout=args.holdout,
        seed=args.seed,
        time_budget=args.time_budget,
    )
    result = distill(
        args.teacher,
        args.student,
        args.data,
        args.output,
        config,
        keras_output=args.save_keras,
        eval_data=args.eval_data,
        on_epoch=lambda line: print(line, flush=True),
    )
    print(result.summary())
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    model = io.to_model(io.validate(args.model).file)  # the validation every command runs
    summary = inspect_model(model, input_shapes=parse_input_shapes(args.input_shape))
    audit = audit_runtime(args.model, provider=args.ep, threads=args.threads) if args.runtime else None
    if args.json:
        print(json.dumps({**summary.to_dict(), **({"runtime": audit.to_dict()} if audit else {})}, indent=2))
        return 0
    opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in summary.opset.items())
    lines = [
        f"{args.model}",
        f"  IR version {summary.ir_version}; opsets: {opsets}; producer: {summary.producer or '-'}",
        *[f"  input  {v['name']}: {v['dtype']} {v['shape']}" for v in summary.inputs],
        *[f"  output {v['name']}: {v['dtype']} {v['shape']}" for v in summary.outputs],
        f"  nodes {summary.nodes}, parameters {summary.parameters:,}, tensor bytes {summary.bytes:,}",
        f"  MACs per sample {summary.macs:,}" + _uncounted(summary),
        *([f"  random inputs (MAC count): {summary.random_inputs}"] if summary.random_inputs else []),
        "  ops: " + ", ".join(f"{op} {n}" for op, n in summary.op_histogram.items()),
        *([runtime_text(audit)] if audit else []),
    ]
    print("\n".join(lines))
    return 0


def _uncounted(summary: ModelSummary) -> str:
    """What the MAC line of ``onnxopt inspect`` adds about the nodes it could not count, and why."""
    if not summary.macs_unknown:
        return ""
    why = f"; {summary.macs_note}" if summary.macs_note else ""
    return f" (not counted: {len(summary.macs_unknown)} nodes{why})"


def _cmd_passes(args: argparse.Namespace) -> int:
    passes = describe_passes()
    if args.json:
        print(json.dumps(passes, indent=2, default=str))
        return 0
    for p in passes:
        kind = "lossless" if p["lossless"] else "lossy"
        print(f"{p['name']:<20} {kind:<9} {p['summary']}")
        for param in p["parameters"]:
            kind = "|".join(param["allowed"]) if param["allowed"] else param["type"]
            meaning = f"  -- {param['meaning']}" if param["meaning"] else ""
            print(f"{'':<31}{param['name']}: {kind} = {param['default']}{meaning}")
    print("\nrecipes (one step per line; parameters after ':' are separated by ':' or ';'):")
    for name, spec in BUILTIN_RECIPES.items():
        print(f"  {name}")
        for step in parse_spec(spec):
            params = ":".join(f"{k}={v}" for k, v in step[1].items())
            print(f"    {step[0]}" + (f":{params}" if params else ""))
    return 0


def format_optimize_summary(
    result: OptimizeResult, *, verbose: bool = False, report: dict[str, Any] | None = None
) -> str:
    """The before/after summary ``onnxopt optimize`` prints (``verbose``: every decline reason); ``report``: the
    run's report JSON when the caller has built it already (the verdict line is read from it)."""
    pipe, cmp = result.pipeline, result.comparison
    lines = [
        verdict(report if report is not None else optimize_report(result)),
        f"onnxopt optimize {result.input_path} -> {result.output_path}",
        f"  data: {result.data}; {cmp.samples} samples compared"
        + (f" (held out: the passes fitted on {result.fit_data})" if result.held_out else ""),
        "",
        f"  {'pass':<27}{'status':<13}{'nodes':>12}{'drift':>11}{'seconds':>9}  what",
    ]
    for rec in pipe.records:
        what = ", ".join(f"{k} {v}" for k, v in rec.counts.items() if v) or "-"
        if rec.skipped:
            first = one_line(rec.skipped[0], 90)
            what += f" ({len(rec.skipped)} declined; first: {first})"
        nodes = f"{rec.before.nodes}->{rec.after.nodes}"
        lines.append(f"  {rec.name:<27}{rec.status:<13}{nodes:>12}{rec.max_drift:>11.2g}{rec.seconds:>9.3f}  {what}")
        lines.extend(f"  {'':<27}note: {n}" for n in rec.notes)
        if verbose:
            lines.extend(f"  {'':<27}declined: {reason}" for reason in rec.skipped)
    lines += [
        "  drift: the largest output change of the pass, |after - before| / max |before|, on the guard samples",
        "",
        f"  {'':<14}{'before':>14}{'after':>14}{'change':>10}",
    ]
    for label, b, a in (
        ("nodes", pipe.original.nodes, pipe.final.nodes),
        ("parameters", pipe.original.parameters, pipe.final.parameters),
        ("file bytes", result.input_file_bytes, result.output_file_bytes),
    ):
        if a is not None:
            lines.append(f"  {label:<14}{b:>14,}{a:>14,}{percent_change(b, a):>10}")
    if cmp.reference_accuracy is not None and cmp.candidate_accuracy is not None:
        delta = 100 * (cmp.candidate_accuracy - cmp.reference_accuracy)
        ref, cand = cmp.reference_accuracy, cmp.candidate_accuracy
        lines.append(f"  {'accuracy':<14}{ref:>14.4f}{cand:>14.4f}{delta:>+7.2f} pts")
    lines.append(f"  {'max drift':<14}{'':>14}{cmp.max_rel:>14.3g}  (max |out - orig| / max |orig|)")
    for out in cmp.outputs:
        if out.top1_agreement is not None:
            lines.append(f"  {'top-1 agree':<14}{'':>14}{out.top1_agreement:>14.4f}  ({out.name})")
    if result.runtime is not None:
        lines.append(f"  runtime: {result.runtime.summary()} (see --report)")
    lines.extend(f"  {note}" for note in pipe.notes)
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
    if comparison.layers is not None:
        lines += ["", *format_layers(comparison.layers)]
    warning = random_inputs_warning(comparison)
    if warning:
        lines += ["", warning]
    checks = format_checks(comparison)
    if checks:
        lines += ["", *checks]
    return "\n".join(lines)


def format_checks(comparison: Comparison) -> list[str]:
    """``FAIL <output>: <what it missed>`` for each output that missed a threshold, or one ``PASS`` line naming the
    thresholds met; nothing when none was given."""
    thresholds = comparison.thresholds
    if thresholds is None or comparison.passed is None:
        return []
    if not comparison.passed:
        missed: dict[str, list[str]] = {}
        for failure in comparison.failures:
            missed.setdefault(failure.output, []).append(failure.message)
        return [f"FAIL {output}: {'; '.join(messages)}" for output, messages in missed.items()]
    given = [
        f"--{flag} {value:g}"
        for flag, value in (
            ("atol", thresholds.atol),
            ("rtol", thresholds.rtol),
            ("min-snr", thresholds.min_snr),
            ("min-top1", thresholds.min_top1),
        )
        if value is not None
    ]
    line = f"PASS: every output meets {' '.join(given)}"
    if thresholds.min_top1 is not None:
        top1 = [o.name for o in comparison.outputs if o.top1_agreement is not None]
        line += f" (--min-top1 on the classifier-shaped: {', '.join(top1)})"
    return [line]


def format_layers(report: LayerReport) -> list[str]:
    """The per-layer table and its verdict."""
    lines = [
        f"per layer ({len(report.layers)} matched tensors, {report.unmatched} unmatched; {report.samples} samples)",
        f"{'tensor':<40}{'op':<20}{'SNR dB':>9}{'cosine':>11}{'max rel':>11}{'own dB':>10}",
    ]
    for layer in report.layers:
        mark = " <- first below threshold" if layer.tensor == report.first_bad else ""
        own = "" if layer.own_snr_db is None else f"{layer.own_snr_db:.1f}"
        lines.append(
            f"{layer.tensor[-39:]:<40}{layer.op_type[:19]:<20}{_db(layer.snr_db):>9}{layer.cosine:>11.6f}"
            f"{layer.max_rel:>11.3g}{own:>10}{mark}"
        )
    if report.first_bad is None:
        lines.append(f"every matched layer stays above {report.threshold_db:g} dB")
    else:
        bad = next(layer for layer in report.layers if layer.tensor == report.first_bad)
        lines.append(
            f"first layer below {report.threshold_db:g} dB: {bad.tensor} ({bad.op_type} {bad.node or ''})".rstrip()
            + f" at {_db(bad.snr_db)} dB"
        )
    if report.first_bad is not None and report.largest_added is not None:
        lines.append(f"largest error added by one layer: {report.largest_added}")
    lines.append("own dB: the SNR of the error each layer adds by itself (lower adds more)")
    return lines


def _db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


if __name__ == "__main__":
    sys.exit(main())
