"""The OCR recognizer's int8 exact-string agreement on many held-out strings (the suite's 48 resolve only 2 %).

    python tools/bench_ocr_int8.py [--evaluation 400] [--calibration 16] [--out tools/bench_ocr_int8_results.json]

ddddocr's recognizer (``tools/real_models.py``) is calibrated on ``--calibration`` rendered strings and scored
on ``--evaluation`` others (``tools/real_tasks.py``: disjoint, seeded) against fp32's decoded text, for the
``int8`` recipe and for the same recipe with nearest weight rounding instead of GPTQ (what learned rounding
buys). Accuracy only: no latency is measured here, so the machine need not be idle.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from real_models import fetch
from real_tasks import evaluate_task, make_split, run_model

from onnxopt.api import optimize
from onnxopt.bench.machine import machine_description
from onnxopt.optimizer.recipe import BUILTIN_RECIPES

MODEL = "ddddocr_ocr"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluation", type=int, default=400)
    parser.add_argument("--calibration", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "bench_ocr_int8_results.json")
    args = parser.parse_args()
    model = fetch(MODEL)
    calibration, held_out = make_split(MODEL, args.calibration, args.evaluation, seed=0)
    variants = {
        "int8": {"recipe": "int8"},
        "int8, nearest rounding": {"passes": BUILTIN_RECIPES["int8"].replace("rounding=gptq", "rounding=nearest")},
    }
    results: dict[str, dict[str, float | int]] = {}
    with tempfile.TemporaryDirectory(prefix="onnxopt-ocr-") as folder:
        data = Path(folder) / "calibration.npz"
        calibration.to_npz(data)
        reference = run_model(model, held_out)
        for label, how in variants.items():
            out = Path(folder) / "candidate.onnx"
            result = optimize(model, out, data=str(data), **how)
            metrics = evaluate_task(MODEL, reference, run_model(out, held_out), held_out)
            results[label] = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
            # what onnxruntime runs (the runtime audit): int8 compute or float compute with int8 weights
            results[label]["runtime"] = result.runtime.summary() if result.runtime is not None else None
            print(label, json.dumps(results[label]), flush=True)
    document = {
        "model": MODEL,
        "calibration_samples": args.calibration,
        "evaluation_samples": args.evaluation,
        "machine": machine_description(),
        "results": results,
    }
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
