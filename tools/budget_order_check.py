"""Which layers the int8 budget keeps float first -- by error alone, or by error per µs of int8 speed given up --
and what each choice runs at, on a real model, beside fp32 and onnxruntime's own int8.

    python tools/budget_order_check.py [--model ddddocr_det] [--data 512] [--evaluation 1024] [--draw 0]
        [--seconds 20] [--out tools/budget_order_check_results.json]

One seeded draw of rendered, unlabelled samples split in two (``tools/real_tasks.py`` ``make_split``): ``--data``
is the run's data, ``--evaluation`` is held out. onnxruntime's ``quantize_static`` U8S8 (``tools/bench_suite.py``
``ort_quantize``) is made on the same data, as the int8 baseline. For each ``budget_order`` (``error``,
``speed``) the ``int8`` recipe's steps run with ``qat=off`` (fine-tuning would train the same all-int8 trial for
both orders, and take a quarter of an hour on the glyph detector; the recipe's own runs are
``tools/bench_suite.py``'s). Then fp32, U8S8 and both models are timed interleaved at batch 1 (``onnxopt bench``'s
rounds, one rotated order per round), read on the held-out samples against fp32 (the task's metric), and
onnxruntime's kernels are counted in what it runs (the runtime audit). The record keeps each run's budget:
layers kept float, the drop bound, what the round after the budget moved, and the quantize step's own last speed
decision.
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
from bench_suite import Subject, ort_quantize  # noqa: E402
from real_models import fetch, load_charset  # noqa: E402
from real_tasks import evaluate_task, make_split, run_model  # noqa: E402

from onnxopt.api import optimize  # noqa: E402
from onnxopt.bench.machine import machine_description  # noqa: E402
from onnxopt.bench.run import BenchConfig, benchmark  # noqa: E402
from onnxopt.bench.runtime_audit import audit_runtime  # noqa: E402
from onnxopt.optimizer.recipe import BUILTIN_RECIPES, INT8_QUANTIZE  # noqa: E402

ORDERS = ("error", "speed")
U8S8 = "ort-u8s8"  # onnxruntime's quantize_static: uint8 activations, int8 weights, per channel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ddddocr_det")
    parser.add_argument("--data", type=int, default=512)
    parser.add_argument("--evaluation", type=int, default=1024)
    parser.add_argument("--draw", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "budget_order_check_results.json")
    args = parser.parse_args()
    steps = BUILTIN_RECIPES["int8"].replace(INT8_QUANTIZE, INT8_QUANTIZE.replace("qat=auto", "qat=off"))
    assert steps != BUILTIN_RECIPES["int8"], "the int8 recipe's quantize step changed"
    source = fetch(args.model)
    calibration, held_out = make_split(args.model, args.data, args.evaluation, seed=args.draw)
    document: dict = {"date": time.strftime("%Y-%m-%d"), "machine": machine_description(),
                      "setup": vars(args) | {"out": str(args.out), "steps": steps}, "orders": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="onnxopt-order-") as folder:
        work = Path(folder)
        np.savez(work / "data.npz", **calibration.inputs)
        paths = {U8S8: work / "u8s8.onnx"}
        subject = Subject(args.model, source, work / "data.npz", work / "data.npz", None, "real")
        document["u8s8_notes"] = ort_quantize(subject, paths[U8S8], activations="uint8")
        document["orders"][U8S8] = {}
        for order in ORDERS:
            paths[order] = work / f"{order}.onnx"
            plan = work / f"{order}.plan.json"
            began = time.perf_counter()
            optimize(source, paths[order], passes=f"{steps};budget_order={order}", data=str(work / "data.npz"),
                     save_plan=plan)  # fmt: skip
            entry = next(e for e in json.loads(plan.read_text())["passes"].values() if e["pass"] == "quantize")
            measured = entry.get("measured", {})
            budget = measured.get("budget", {})
            document["orders"][order] = {
                "seconds": round(time.perf_counter() - began, 1),
                "float_nodes": len(entry.get("float_nodes", ())),
                "budget_drops": budget.get("drops", {}),
                "budget_order": budget.get("order"),
                "after_budget": {k: v for k, v in measured.get("after_budget", {}).items() if k != "kept"}
                | {"kept": len(measured.get("after_budget", {}).get("kept", ()))},
                "int8_over_float": measured.get("int8_over_float"),
            }
            print(order, json.dumps(document["orders"][order]), flush=True)
        reference = run_model(source, held_out)
        charset = load_charset() if args.model == "ddddocr_ocr" else None
        for order in (U8S8, *ORDERS):
            row = document["orders"][order]
            row["held_out"] = evaluate_task(args.model, reference, run_model(paths[order], held_out), held_out, charset)
            audit = audit_runtime(paths[order])
            row["runtime"] = {op: audit.count(op) for op in ("QLinearConv", "QuantizeLinear", "DequantizeLinear")}
        config = BenchConfig(batches=(1,), seconds=args.seconds, memory=False)
        timed = benchmark([source, *(paths[o] for o in (U8S8, *ORDERS))], config)
        document["fp32_p50_ms"] = round(timed.measurements[0].latency.p50_ms, 3)
        for order, cell in zip((U8S8, *ORDERS), timed.measurements[1:], strict=True):
            assert cell.ratio is not None
            row = document["orders"][order]
            row["p50_ms"] = round(cell.latency.p50_ms, 3)
            row["latency_vs_fp32"] = [round(cell.ratio.median, 4), round(cell.ratio.low, 4), round(cell.ratio.high, 4)]
            row["file_bytes"] = cell.file_bytes
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(json.dumps(document["orders"], indent=1))


if __name__ == "__main__":
    main()
