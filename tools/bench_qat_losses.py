"""Quantization-aware fine-tuning of a real detector with int8 compute everywhere: the detection loss against
the relative MSE over the whole output (the default), held out.

    python tools/bench_qat_losses.py [--model ddddocr_det] [--samples 256] [--evaluation 512] [--epochs 2]
        [--batch 4] [--losses detection,mse] [--out tools/bench_qat_losses_results]

One forced all-int8 model (``lossless,equalize,quantize:calibration=percentile;fallback=none``: the
``int8`` recipe's calibration, on the first 256 rendered samples of seed 1) and its weights-only twin
(``quantize:weights_only=true``, the yardstick of activation error) are built once; then
:func:`onnxopt.distill.qat.qat` fine-tunes the forced model on those same samples (a seeded tenth held back
to pick the epoch), once per loss, with the same seed, epochs and batch.
``mse`` is the relative MSE over every value output (the default), ``detection`` the ``detection_loss=true``
option (:mod:`onnxopt.distill.detection_loss`).

Scored against fp32 on ``--evaluation`` rendered samples the tools never saw (seed 1's stream after the
calibration part, :func:`real_tasks.make_split`): the package's own decoding and NMS, boxes matched at
IoU 0.5 with the same class (recall and precision), and the output SNR in dB. No latency is claimed here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from real_models import fetch  # noqa: E402
from real_tasks import evaluate_task, make_split, run_model  # noqa: E402

from onnxopt.api import optimize  # noqa: E402
from onnxopt.bench.machine import machine_description  # noqa: E402
from onnxopt.distill.qat import QatConfig, qat  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ddddocr_det")
    parser.add_argument("--samples", type=int, default=256, help="calibration and fine-tuning samples")
    parser.add_argument("--evaluation", type=int, default=512, help="held-out samples scored")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--losses", default="detection,mse")
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "bench_qat_losses_results")
    args = parser.parse_args()
    started = time.perf_counter()
    source = fetch(args.model)
    fitting, held_out = make_split(args.model, args.samples, max(args.evaluation, 2 * args.samples), seed=1)
    held_out = held_out.subset(np.arange(min(args.evaluation, len(held_out))))
    document: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "model": args.model,
        "setup": vars(args) | {"out": str(args.out)},
        "rows": [],
    }
    rows: list[dict[str, object]] = document["rows"]  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = fitting.to_npz(work / "fitting.npz")
        forced, weights_only = work / "forced.onnx", work / "weights_only.onnx"
        optimize(
            source,
            forced,
            passes="lossless,equalize,quantize:calibration=percentile;fallback=none",
            data=str(data),
            batch=1,
        )
        optimize(source, weights_only, passes="lossless,equalize,quantize:weights_only=true", data=str(data), batch=1)
        reference = run_model(source, held_out)
        rows.append(_scored("weights-only int8", weights_only, reference, held_out, args.model))
        rows.append(_scored("all-int8 (no fine-tuning)", forced, reference, held_out, args.model))
        _write(args.out, document)
        teacher, student = onnx.load(str(source)), onnx.load(str(forced))
        with np.load(data) as archive:
            inputs = {k: archive[k] for k in archive.files if k in {i.name for i in teacher.graph.input}}
        for loss in [x.strip() for x in args.losses.split(",") if x.strip()]:
            config = QatConfig(epochs=args.epochs, batch=args.batch, seed=0, detection_loss=loss == "detection")
            began = time.perf_counter()
            result = qat(student, teacher, inputs, config, on_epoch=lambda m, x=loss: print(x, m, file=sys.stderr))
            seconds = time.perf_counter() - began
            tuned = work / f"qat_{loss}.onnx"
            onnx.save(result.model, str(tuned))
            row = _scored(f"all-int8 + QAT ({loss} loss)", tuned, reference, held_out, args.model)
            row["qat"] = {
                "seconds": round(seconds, 1),
                "kept_epoch": result.training.best_epoch,
                "held_back": [result.training.before, result.training.after],
                "metric": result.training.agreement,
                "history": result.training.history,
                "train_samples": result.train_samples,
                "holdout_samples": result.holdout_samples,
            }
            rows.append(row)
            _write(args.out, document)
    document["seconds"] = round(time.perf_counter() - started, 1)
    _write(args.out, document)
    print(args.out.with_suffix(".md").read_text())


def _scored(label: str, path: Path, reference: list, held_out, model: str) -> dict[str, object]:
    candidate = run_model(path, held_out)
    task = evaluate_task(model, reference, candidate, held_out)
    print(f"{label}: {task}", file=sys.stderr)
    return {"variant": label, "task": task}


def _write(out: Path, document: dict[str, object]) -> None:
    out.with_suffix(".json").write_text(json.dumps(document, indent=2, default=float) + "\n")
    machine = document["machine"]
    features = ", ".join(machine.get("cpu_features") or []) or "none reported"  # type: ignore[union-attr]
    lines = [
        f"# QAT losses on {document['model']}, {document['date']}",
        "",
        f"Machine: {machine['cpu']} ({features}); no latency claimed. Setup: {document['setup']}.",  # type: ignore[index]
        "",
        "| variant | recall | precision | SNR dB | held-back agreement (before -> after, kept epoch) | s |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for row in document["rows"]:  # type: ignore[union-attr]
        task, fit = row["task"], row.get("qat")
        held = f"{fit['held_back'][0]:.4f} -> {fit['held_back'][1]:.4f} ({fit['kept_epoch']})" if fit else ""
        lines.append(
            f"| {row['variant']} | {task['recall']:.4f} | {task['precision']:.4f} | {task['snr_db']:.1f} | {held} "
            f"| {fit['seconds'] if fit else ''} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
