"""Does ``quantize:max_reading_drop`` keep its promise on held-out data? The point estimate against the bound.

    python tools/reading_budget_check.py [--models ddddocr_ocr,ddddocr_det] [--draws 0,2,3] [--budget 0.01]
        [--confidence 0.5,0.95] [--data 512] [--evaluation 1024] [--extra "percentile=99.999"]
        [--out tools/reading_budget_check_results.json]

For each model and each draw of ``--data`` rendered, unlabelled samples (seeds ``--draws``), the quantize step of
the ``int8`` recipe is run with the reading budget alone judging int8 compute
(``lossless,equalize,quantize:calibration=percentile;bias_correct=true;rounding=gptq;fallback=none;
max_reading_drop=B;reading_confidence=C``; ``fallback=none``: no timing decides, so the machine's load cannot)
at each ``--confidence`` (0.5 is about the point estimate the budget judged before; 0.95 its upper bound), beside
the weights-only int8 model of the same draw (the budget's yardstick). Each result is scored against fp32 on
``--evaluation`` other samples (seed 1, never fitted or judged on): exact strings, or boxes' recall and precision
after the package's decoding and NMS, and the held-out *reading drop beyond weights-only* -- the quantity the
budget promises to keep under ``B`` -- with the budget's own notes and how many QLinearConv onnxruntime runs
(its optimized graph). No latency: what is int8 here is decided by accuracy only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from real_models import fetch  # noqa: E402
from real_tasks import evaluate_task, make_task, run_model  # noqa: E402

from onnxopt.api import optimize  # noqa: E402
from onnxopt.bench.machine import machine_description  # noqa: E402
from onnxopt.bench.runtime_audit import audit_runtime  # noqa: E402

STEPS = "lossless,equalize,quantize:calibration=percentile;bias_correct=true;rounding=gptq"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ddddocr_ocr,ddddocr_det")
    parser.add_argument("--draws", default="0,2,3", help="seeds of the --data draws")
    parser.add_argument("--budget", type=float, default=0.01)
    parser.add_argument("--confidence", default="0.5,0.95")
    parser.add_argument("--data", type=int, default=512)
    parser.add_argument("--evaluation", type=int, default=1024)
    parser.add_argument("--extra", default="", help="quantize options added to every variant")
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "reading_budget_check_results.json")
    args = parser.parse_args()
    steps = f"{STEPS};{args.extra}" if args.extra else STEPS
    document: dict = {"date": time.strftime("%Y-%m-%d"), "machine": machine_description(),
                      "setup": vars(args) | {"out": str(args.out), "steps": steps}, "results": {}}  # fmt: skip
    for model in args.models.split(","):
        source = fetch(model)
        held = make_task(model, args.evaluation, seed=1)
        reference = run_model(source, held)
        rows = document["results"].setdefault(model, [])
        for draw in (int(d) for d in args.draws.split(",")):
            with tempfile.TemporaryDirectory(prefix="onnxopt-reading-budget-") as folder:
                work = Path(folder)
                data = work / "data.npz"
                np.savez(data, **make_task(model, args.data, seed=draw).inputs)  # unlabelled
                variants = {"weights-only": f"{steps};weights_only=true"} | {
                    f"confidence {c}": f"{steps};fallback=none;max_reading_drop={args.budget:g};reading_confidence={c}"
                    for c in args.confidence.split(",")
                }
                for label, passes in variants.items():
                    out = work / "out.onnx"
                    began = time.perf_counter()
                    report = optimize(source, out, passes=passes, data=str(data))
                    seconds = round(time.perf_counter() - began)
                    metrics = evaluate_task(model, reference, run_model(out, held), held, None)
                    notes = [n for r in report.pipeline.records if r.name == "quantize" for n in r.notes]
                    said = [n for n in notes if n.startswith(("all int8", "kept ", "the budget"))]
                    row = {"draw": draw, "variant": label, "seconds": seconds,
                           "qlinearconv": audit_runtime(out).count("QLinearConv"),
                           "held_out": {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)},
                           "budget_notes": said}  # fmt: skip
                    rows.append(row)
                    print(model, json.dumps(row), flush=True)
                    args.out.write_text(json.dumps(document, indent=1) + "\n")  # each row: a stopped run keeps it


if __name__ == "__main__":
    main()
