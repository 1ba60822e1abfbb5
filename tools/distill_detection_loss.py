"""Which loss lets distillation recover a pruned detector: the relative MSE, the detection loss, and with features.

    python tools/distill_detection_loss.py [--model ddddocr_det] [--train 320] [--epochs 6]
        [--variants mse,det,det+feat] [--out tools/distill_detection_loss_results.json]

The detector is pruned once (``lossless,prune-channels:ratio=0.3;multiple=8,reconstruct`` on ``--train`` rendered,
unlabelled samples of seed 100) and the pruned model is distilled against the original three ways, each from the
same start (:func:`onnxopt.distill.finetune.finetune`, Adam at 5e-4, batch 32 made smaller to fit memory, a seeded
tenth held back to pick the epoch):

* ``mse``: the relative MSE over every output value (``detection_loss=False``);
* ``det``: the detection loss (:mod:`onnxopt.distill.detection_loss`: KL on the scores, score-weighted boxes);
* ``det+feat``: the same, plus the kept-width intermediate tensors (:mod:`onnxopt.distill.features`, weight 1).

Each is scored on 150 other rendered samples (seed 1, never trained on): boxes after the package's decoding and NMS
against fp32's (recall, precision at IoU 0.5), beside the held-back detection agreement per epoch. No timing claim:
``seconds`` is how long each training took on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from real_tasks import evaluate_task, make_task, run_model  # noqa: E402

from onnxopt.api import optimize  # noqa: E402
from onnxopt.bench.machine import machine_description  # noqa: E402
from onnxopt.distill.batch_memory import available_bytes, fitting_batch  # noqa: E402
from onnxopt.distill.features import kept_width_features  # noqa: E402
from onnxopt.distill.finetune import FinetuneConfig, finetune  # noqa: E402

VARIANTS = {"mse": {"detection_loss": False}, "det": {"detection_loss": True},
            "det+feat": {"detection_loss": True, "feature_weight": 1.0}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ddddocr_det")
    parser.add_argument("--train", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "distill_detection_loss_results.json")
    args = parser.parse_args()
    document: dict = {"date": time.strftime("%Y-%m-%d"), "machine": machine_description(),
                      "setup": vars(args) | {"out": str(args.out)}, "results": {}}  # fmt: skip
    source = fetch(args.model)
    held = make_task(args.model, 150, seed=1)
    reference = run_model(source, held)

    def score(path: Path) -> dict[str, float]:
        metrics = evaluate_task(args.model, reference, run_model(path, held), held, None)
        return {"recall": metrics["recall"], "precision": metrics["precision"]}

    with tempfile.TemporaryDirectory(prefix="onnxopt-distill-loss-") as folder:
        work = Path(folder)
        train = make_task(args.model, args.train, seed=100)
        data = train.to_npz(work / "train.npz")
        if train.labels is not None:  # unlabelled: only the teacher's outputs teach
            np.savez(data, **train.inputs)
        pruned = work / "pruned.onnx"
        began = time.perf_counter()
        optimize(source, pruned, passes="lossless,prune-channels:ratio=0.3;multiple=8,reconstruct", data=str(data))
        document["results"]["pruned"] = score(pruned) | {"seconds": round(time.perf_counter() - began)}
        print("pruned", document["results"]["pruned"], flush=True)
        student, teacher = onnx.load(str(pruned)), onnx.load(str(source))
        inputs = dict(np.load(data))
        for label in args.variants.split(","):
            options = dict(VARIANTS[label])
            if options.get("feature_weight"):
                options["features"] = tuple(kept_width_features(student, teacher))
            config = FinetuneConfig(epochs=args.epochs, batch=32, learning_rate=5e-4, seed=0, **options)
            config = dataclasses.replace(config, batch=fitting_batch(student, config.batch, available_bytes()))
            began = time.perf_counter()
            result = finetune(student, teacher, inputs, config)
            out = work / f"{label}.onnx"
            onnx.save(result.model, str(out))
            document["results"][label] = score(out) | {
                "before": result.before, "after": result.after, "best_epoch": result.best_epoch,
                "history": result.history, "batch": config.batch, "seconds": round(time.perf_counter() - began),
                "note": result.loss_note,
            }  # fmt: skip
            print(label, json.dumps(document["results"][label]), flush=True)
            args.out.write_text(json.dumps(document, indent=1) + "\n")  # after every variant: a stopped run keeps it
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
