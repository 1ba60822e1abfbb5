"""Why the reading budget's mixed-precision glyph detector is not faster than float: which kernels run, timed.

    python tools/budget_float_cascade.py [--model ddddocr_det] [--data 512] [--draw 0] [--budget 0.01]
        [--out tools/budget_float_cascade_results.json]

Three models of one draw of ``--data`` rendered, unlabelled samples: float (``lossless,equalize``), int8
compute everywhere, and the reading budget's choice (the ``int8`` recipe's calibration, ``fallback=none``: no
timing decides; ``max_reading_drop`` at its 95 % bound; no fine-tuning). Each is profiled node by node at batch
1 (onnxruntime's profiler, every optimization on; one sample of the draw) and its time summed per kernel. For
the budget's model it counts the Convs kept float against the Convs that run float -- a node kept float keeps
every tensor it reads or writes float (``onnxopt/passes/quantize/insert_qdq.py`` ``touching``), so its producer
and its readers lose their integer kernels too -- and lists the nodes kept float with their microseconds in the
float and the all-int8 model (None: fused into another node's kernel). Profiles on a shared machine are noisy:
read the kernel totals side by side, not as a benchmark (``tools/bench_suite.py`` times models interleaved).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from real_models import fetch  # noqa: E402
from real_tasks import make_task  # noqa: E402

from onnxopt.api import optimize  # noqa: E402
from onnxopt.bench.machine import machine_description  # noqa: E402
from onnxopt.optimizer.node_profile import profile_nodes  # noqa: E402
from onnxopt.optimizer.recipe import INT8_CALIBRATION  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ddddocr_det")
    parser.add_argument("--data", type=int, default=512)
    parser.add_argument("--draw", type=int, default=0)
    parser.add_argument("--budget", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "budget_float_cascade_results.json")
    args = parser.parse_args()
    # the recipe's values of the graph (calibration, bias correction, GPTQ), not its search
    steps = f"lossless,equalize,quantize:{INT8_CALIBRATION};bias_correct=true;rounding=gptq;fallback=none"
    variants = {
        "float": "lossless,equalize",
        "all int8": steps,
        "reading budget": f"{steps};max_reading_drop={args.budget:g};reading_confidence=0.95",
    }
    source = fetch(args.model)
    document: dict = {"date": time.strftime("%Y-%m-%d"), "machine": machine_description(),
                      "setup": vars(args) | {"out": str(args.out), "steps": variants}, "models": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="onnxopt-cascade-") as folder:
        work = Path(folder)
        inputs = make_task(args.model, args.data, seed=args.draw).inputs
        np.savez(work / "data.npz", **inputs)
        feeds = {name: array[:1] for name, array in inputs.items()}
        plan = work / "plan.json"
        for label, passes in variants.items():
            out = work / f"{label}.onnx"
            began = time.perf_counter()
            save = {"save_plan": plan} if label == "reading budget" else {}
            optimize(source, out, passes=passes, data=str(work / "data.npz"), **save)
            profile = profile_nodes(ir.load(out), feeds)
            count: Counter[str] = Counter()
            spent: Counter[str] = Counter()
            for name, kernel in profile.ops.items():
                count[kernel] += 1
                spent[kernel] += profile.times.get(name, 0.0)
            document["models"][label] = {
                "seconds": round(time.perf_counter() - began, 1),
                "total_us": round(profile.total, 1),
                "kernels": {
                    k: {"nodes": count[k], "us": round(spent[k], 1)} for k in sorted(spent, key=spent.get, reverse=True)
                },
                "times": profile.times,
                "ops": profile.ops,
            }
            print(label, round(profile.total), dict(count), flush=True)
        entries = [e for e in json.loads(plan.read_text())["passes"].values() if e["pass"] == "quantize"]
        entry = entries[0] if entries else {}
        searched = entry.get("measured", {}).get("budget", {})  # absent where all-int8 met the budget
        chosen = set(entry.get("float_nodes", ()))  # every node the quantize step kept float
        convs = {n.name for n in onnx.load(work / "reading budget.onnx").graph.node if n.op_type == "Conv"}
        budget = document["models"]["reading budget"]
        float_convs = {n for n in convs if budget["ops"].get(n) in ("Conv", "FusedConv")}
        every, floating = document["models"]["all int8"]["times"], document["models"]["float"]["times"]

        def us(times: dict[str, float], name: str) -> float | None:  # None: fused into another node's kernel
            return round(times[name], 1) if name in times else None

        budget["convs"] = len(convs)
        budget["chosen_float"] = len(chosen)
        budget["chosen_float_convs"] = len(chosen & convs)
        budget["convs_running_float"] = len(float_convs)
        budget["drops"] = searched.get("drops", {})
        budget["chosen"] = {n: {"float_us": us(floating, n), "int8_us": us(every, n),
                                "added_db": searched.get("added_db", {}).get(n)}
                            for n in sorted(chosen)}  # fmt: skip
    for row in document["models"].values():
        del row["times"], row["ops"]
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(json.dumps({k: {"total_us": v["total_us"]} for k, v in document["models"].items()}))


if __name__ == "__main__":
    main()
