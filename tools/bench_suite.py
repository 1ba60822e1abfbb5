"""The side-by-side suite: onnxopt recipes against onnxruntime's quantizer and onnxsim, in one interleaved run.

For every model (the bundled digits CNN; the onnx package's ``light`` model-zoo
graphs materialized with random weights and normalization re-estimated on
data, see ``tools/zoo_models.py``; any ``.onnx`` given with ``--model``), the
variants are:

* ``fp32`` -- the model itself (the baseline of every ratio);
* ``ort-int8`` -- onnxruntime's ``quantize_static`` (QDQ, per-channel, MinMax)
  after ``quant_pre_process`` where that works (its failure is recorded and the
  quantizer then runs on the model as is);
* ``onnxsim`` -- onnxsim's output;
* ``onnxopt:<recipe>`` -- every built-in onnxopt recipe, at the subject's batch
  (``--batch``: the int8 recipe's speed decision is measured there).

A MobileNet-style model (``tools/mobilenet_like.py``: depthwise-separable
blocks, BN with unbalanced channel scales) is included to show equalization.

Each variant's tool wall time is recorded; latency of all variants is
measured by ``onnxopt.bench`` interleaved (round-robin, same inputs) so drift
hits them alike; agreement with fp32 (top-1, SNR) and accuracy where the data
has labels come from ``onnxopt.evaluate``. The result is one Markdown table
(with date and machine) and the JSON behind it.

    python tools/bench_suite.py [--light resnet50,squeezenet,...] [--model M.onnx --data D] [--seconds 8]
        [--out tools/bench_suite_results]

Needs the ``bench`` extra (onnxsim).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mobilenet_like import INPUT_SHAPE as MOBILENET_INPUT
from mobilenet_like import mobilenet_like
from zoo_models import ALL_LIGHT, DEFAULT_MODELS, input_shape, light_model

from onnxopt.api import bench_files, compare_files, optimize
from onnxopt.bench import BenchConfig, machine_description
from onnxopt.optimizer.recipe import BUILTIN_RECIPES

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION_SAMPLES = 64  # at most; fewer when the data has fewer
EVAL_SAMPLES = 32


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
    data: Path  # .npz: calibration/evaluation inputs (and labels, when there are)
    batch: int | None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--light", default=",".join(DEFAULT_MODELS), help="light models to include: names, 'all', or '' for none"
    )
    parser.add_argument("--model", action="append", default=[], help="another .onnx to include")
    parser.add_argument("--data", action="append", default=[], help=".npz for each --model, in order")
    parser.add_argument("--no-digits", action="store_true", help="leave the bundled digits CNN out")
    parser.add_argument("--no-mobilenet", action="store_true", help="leave the MobileNet-style model out")
    parser.add_argument("--seconds", type=float, default=8.0, help="latency budget per variant (default 8)")
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "bench_suite_results")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnxopt-suite-") as tmp:
        work = Path(tmp)
        subjects = _subjects(args, work)
        results = {s.name: run_subject(s, work / s.name, args.seconds) for s in subjects}
    total = time.perf_counter() - started
    document = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "suite_seconds": round(total, 1),
        "results": {name: [_variant_json(v) for v in variants] for name, variants in results.items()},
    }
    args.out.with_suffix(".json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    markdown = render(document)
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)


def _subjects(args: argparse.Namespace, work: Path) -> list[Subject]:
    subjects = []
    if not args.no_digits:
        digits = ROOT / "models" / "digits_cnn"
        subjects.append(Subject("digits_cnn", digits / "model.onnx", digits / "eval.npz", 32))
    if not args.no_mobilenet:
        folder = work / "mobilenet_like"
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        model = mobilenet_like(rng.standard_normal((64, *MOBILENET_INPUT), dtype=np.float32))
        onnx.save(model, str(folder / "fp32.onnx"))
        np.savez(folder / "data.npz", input=rng.standard_normal((256, *MOBILENET_INPUT), dtype=np.float32))
        subjects.append(Subject("mobilenet_like", folder / "fp32.onnx", folder / "data.npz", 1))
    names = ALL_LIGHT if args.light == "all" else [n.strip() for n in args.light.split(",") if n.strip()]
    for name in names:
        folder = work / name
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        shape = (1, 3, 224, 224)
        calibration = rng.standard_normal(shape, dtype=np.float32)
        model = light_model(name, calibration)
        shape = input_shape(model)
        path = folder / "fp32.onnx"
        onnx.save(model, str(path))
        input_name = next(i.name for i in model.graph.input)
        samples = rng.standard_normal((EVAL_SAMPLES, *shape[1:]), dtype=np.float32)
        np.savez(folder / "data.npz", **{input_name: samples})
        subjects.append(Subject(f"light_{name}", path, folder / "data.npz", None))
    if len(args.data) != len(args.model):
        raise SystemExit("give one --data per --model")
    for model_path, data in zip(args.model, args.data, strict=True):
        subjects.append(Subject(Path(model_path).stem, Path(model_path), Path(data), None))
    return subjects


def run_subject(subject: Subject, folder: Path, seconds: float) -> list[Variant]:
    folder.mkdir(parents=True, exist_ok=True)
    print(f"== {subject.name}", file=sys.stderr)
    variants = [Variant("fp32", subject.path, 0.0)]
    variants.append(_timed("ort-int8", folder / "ort_int8.onnx", lambda out: ort_quantize(subject, out)))
    variants.append(_timed("onnxsim", folder / "onnxsim.onnx", lambda out: simplify(subject.path, out)))
    for recipe in BUILTIN_RECIPES:
        out = folder / f"onnxopt_{recipe.replace('+', '_')}.onnx"
        variants.append(
            _timed(
                f"onnxopt:{recipe}",
                out,
                lambda o, r=recipe: _onnxopt_notes(
                    optimize(subject.path, o, recipe=r, data=str(subject.data), batch=subject.batch)
                ),
            )
        )
    ok = [v for v in variants if v.failed is None and v.path is not None]
    bench = bench_files(
        [v.path for v in ok],
        BenchConfig(batches=(subject.batch,) if subject.batch else None, seconds=seconds, memory=False),
    )
    for variant, m in zip(ok, bench.measurements, strict=True):
        cmp = compare_files(subject.path, variant.path, data=str(subject.data))
        out = cmp.outputs[0]
        variant.row = {
            "file_bytes": m.file_bytes,
            "p50_ms": m.latency.p50_ms,
            "p90_ms": m.latency.p90_ms,
            "latency_ratio": 1.0 if m.ratio is None else m.ratio.median,
            "ratio_ci": None if m.ratio is None else [m.ratio.low, m.ratio.high],
            "batch": m.batch,
            "rounds": m.latency.runs,
            "top1_agreement": out.top1_agreement,
            "snr_db": out.snr_db,
            "accuracy": cmp.candidate_accuracy,
        }
    return variants


def _onnxopt_notes(result) -> list[str]:
    """What the run decided that the table should show: passes declined as a whole, and the speed decision."""
    notes = []
    for record in result.pipeline.records:
        notes += [f"{record.name}: {s}" for s in record.skipped if s.startswith("model:")]
        notes += [f"{record.name}: {n}" for n in record.notes if "x float at batch" in n or "kept float" in n]
    return notes


def _timed(name: str, out: Path, make: Callable[[Path], list[str] | None]) -> Variant:
    start = time.perf_counter()
    try:
        notes = make(out) or []
    except Exception as e:  # the suite records any tool's failure instead of stopping
        traceback.print_exc()
        return Variant(name, None, time.perf_counter() - start, failed=" ".join(str(e).split())[:200])
    return Variant(name, out, time.perf_counter() - start, notes=notes)


def ort_quantize(subject: Subject, out: Path) -> list[str]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    notes = []
    source = subject.path
    prepared = out.with_name("ort_preprocessed.onnx")
    try:
        quant_pre_process(str(source), str(prepared))
        source = prepared
    except Exception as e:  # recorded: the quantizer then runs on the model as is
        notes.append(f"quant_pre_process failed: {' '.join(str(e).split())[:160]}")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            with np.load(subject.data) as archive:
                arrays = {k: archive[k][:CALIBRATION_SAMPLES] for k in archive.files if k != "labels"}
            count = len(next(iter(arrays.values())))
            step = fixed_batch or 8
            self.items = iter([{k: v[i : i + step] for k, v in arrays.items()} for i in range(0, count, step)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    model = onnx.load(str(subject.path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    fixed_batch = dims[0].dim_value if dims and dims[0].dim_value > 0 else None
    quantize_static(str(source), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    return notes


def simplify(source: Path, out: Path) -> list[str]:
    import onnxsim

    model, ok = onnxsim.simplify(str(source))
    onnx.save(model, str(out))
    return [] if ok else ["onnxsim's own check failed"]


def _variant_json(v: Variant) -> dict[str, object]:
    return {"variant": v.name, "tool_seconds": round(v.tool_seconds, 2), "failed": v.failed, "notes": v.notes, **v.row}


def render(document: dict[str, object]) -> str:
    machine = document["machine"]
    lines = [
        f"# onnxopt suite, {document['date']}",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['system']}, "
        f"Python {machine['python']}, onnxruntime {machine['onnxruntime']} (CPU execution provider). "
        f"Whole suite: {document['suite_seconds']:.0f} s.",
        "",
        "Latency: median of interleaved rounds (onnxruntime, all graph optimizations on), as a ratio to fp32 "
        "with its 95 % bootstrap interval; agreement and SNR against fp32 on the model's data; accuracy "
        "where the data has labels.",
        "",
        "| model | variant | latency ratio [95% CI] | p50 ms | size ratio | top-1 agree | SNR dB | accuracy "
        "| tool s | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for model, variants in document["results"].items():
        base = next((v for v in variants if v["variant"] == "fp32"), None)
        for v in variants:
            if v["failed"]:
                lines.append(f"| {model} | {v['variant']} | failed | | | | | | {v['tool_seconds']} | {v['failed']} |")
                continue
            ci = v["ratio_ci"]
            ratio = f"{v['latency_ratio']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            size = v["file_bytes"] / base["file_bytes"] if base and base.get("file_bytes") else float("nan")
            top1 = "" if v["top1_agreement"] is None else f"{v['top1_agreement']:.3f}"
            snr = v["snr_db"] if isinstance(v["snr_db"], str) else f"{v['snr_db']:.1f}"
            acc = "" if v["accuracy"] is None else f"{v['accuracy']:.4f}"
            lines.append(
                f"| {model} | {v['variant']} | {ratio} | {v['p50_ms']:.3f} | {size:.3f} | {top1} | {snr} | {acc} "
                f"| {v['tool_seconds']} | {'; '.join(v['notes'])} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
