"""Which of the glyph detector's output columns cost a compressed model its boxes: fp32's columns put back one group
at a time.

    python tools/detector_error_columns.py MODEL.onnx [MODEL.onnx ...] [--samples 256]

The glyph detector's output is ``[1, 3549, 6]``: box offsets ``x, y, log w, log h``, objectness, class score. For
each model, its output on ``--samples`` rendered samples of seed 1 is decoded as the package decodes it (score =
objectness x class > 0.1, NMS at 0.45) and matched against fp32's boxes (recall, precision at IoU 0.5) as it is,
and with fp32's values put back in the box columns, in both score columns, in objectness alone and in the class
column alone. A column whose fp32 values restore the boxes is where the loss is. Also each column's mean and 95th
percentile absolute error over the anchors whose fp32 detection score passes 0.05.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from real_models import fetch  # noqa: E402
from real_tasks import evaluate_task, make_task, run_model  # noqa: E402

NAME = "ddddocr_det"
GROUPS = {"fp32 boxes": [0, 1, 2, 3], "fp32 scores": [4, 5], "fp32 objectness": [4], "fp32 class": [5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--samples", type=int, default=256)
    args = parser.parse_args()
    held = make_task(NAME, args.samples, seed=1)
    reference = run_model(fetch(NAME), held)
    for path in args.models:
        got = run_model(path, held)
        rows = {"as it is": _boxes(reference, got, held)}
        for label, columns in GROUPS.items():
            rows[label] = _boxes(reference, _with(reference, got, columns), held)
        want = np.concatenate([r[0].reshape(-1, 6) for r in reference])
        have = np.concatenate([g[0].reshape(-1, 6) for g in got])
        read = want[:, 4] * want[:, 5] > 0.05
        errors = np.abs(want[read] - have[read])
        columns = ["x", "y", "log w", "log h", "objectness", "class"]
        error = {c: [round(float(errors[:, i].mean()), 4), round(float(np.percentile(errors[:, i], 95)), 4)]
                 for i, c in enumerate(columns)}  # fmt: skip
        print(json.dumps({"model": str(path), "recall / precision": rows, "mean, p95 error": error}, indent=1))


def _with(reference, got, columns: list[int]):
    """``got`` with fp32's values in ``columns``."""
    mixed = []
    for want, have in zip(reference, got, strict=True):
        out = have[0].copy()
        out[..., columns] = want[0][..., columns]
        mixed.append([out])
    return mixed


def _boxes(reference, got, held) -> list[float]:
    metrics = evaluate_task(NAME, reference, got, held, None)
    return [round(metrics["recall"], 4), round(metrics["precision"], 4)]


if __name__ == "__main__":
    main()
