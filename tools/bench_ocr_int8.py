"""The OCR recognizer's int8 exact-string agreement on many held-out strings (the suite's 48 resolve only 2 %).

    python tools/bench_ocr_int8.py [--evaluation 400] [--calibration 16] [--out tools/bench_ocr_int8_results.json]

ddddocr's recognizer (``tools/real_models.py``) is calibrated on ``--calibration`` rendered strings and scored
on ``--evaluation`` others (``tools/real_tasks.py``: disjoint, seeded) against fp32's decoded text, for the
``int8`` recipe and for the same recipe with nearest weight rounding instead of GPTQ (what learned rounding
buys). Accuracy only: no latency is measured here, so the machine need not be idle.

``--qat`` compares quantization-aware fine-tuning instead: the ``int8`` recipe (``qat=auto``) against the same
recipe with ``qat=off``, and int8 compute forced everywhere before and after the ``qat`` pass; each row keeps
the quantize and qat passes' notes (what the budget measured, what fine-tuning did).

    python tools/bench_ocr_int8.py --qat --calibration 256 --evaluation 512 --out tools/bench_ocr_qat_results.json

``--prune`` runs the ``prune`` recipe (channel pruning, then distillation with ``max_drop=0.02``) with the
budget reading whole greedy-decoded sequences (``--metric auto`` chooses it for this CTC head) and with
``--metric values`` (relative output error), and records whether the run missed its budget (the CLI's exit 3).

    python tools/bench_ocr_int8.py --prune --calibration 512 --evaluation 1024 \
        --out tools/bench_ocr_int8_results_prune.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
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
    parser.add_argument("--qat", action="store_true", help="compare quantization-aware fine-tuning (see above)")
    parser.add_argument("--prune", action="store_true", help="the prune recipe under two budget readings (see above)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "bench_ocr_int8_results.json")
    args = parser.parse_args()
    model = fetch(MODEL)
    calibration, held_out = make_split(MODEL, args.calibration, args.evaluation, seed=0)
    variants: dict[str, dict[str, str]] = {
        "int8": {"recipe": "int8"},
        "int8, nearest rounding": {"passes": BUILTIN_RECIPES["int8"].replace("rounding=gptq", "rounding=nearest")},
    }
    if args.qat:
        forced = "lossless,equalize,quantize:fallback=none"
        variants = {
            "int8 (qat=auto)": {"recipe": "int8"},
            "int8, qat=off": {"passes": BUILTIN_RECIPES["int8"].replace("qat=auto", "qat=off")},
            "int8 compute everywhere": {"passes": forced},
            "int8 compute everywhere + qat": {"passes": f"{forced},qat:time_budget=900"},
        }
    if args.prune:
        variants = {
            "prune (--metric auto: sequences)": {"recipe": "prune"},
            "prune (--metric values)": {"recipe": "prune", "metric": "values"},
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
            passes = ("quantize", "qat", "prune-channels", "distill")
            results[label]["notes"] = [  # type: ignore[assignment]
                f"{r.name}: {n}" for r in result.pipeline.records if r.name in passes for n in [*r.notes, *r.missed]
            ]
            results[label]["missed_budget"] = result.fallbacks  # type: ignore[assignment]  # non-empty: exit 3
            print(label, json.dumps(results[label]), flush=True)
    document = {
        "date": time.strftime("%Y-%m-%d"),
        "model": MODEL,
        "calibration_samples": args.calibration,
        "specs": {
            label: (how.get("recipe") or how.get("passes")) + (f" --metric {how['metric']}" if "metric" in how else "")
            for label, how in variants.items()
        },
        "evaluation_samples": args.evaluation,
        "machine": machine_description(),
        "results": results,
    }
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
