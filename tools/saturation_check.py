"""What this CPU's fused int8 kernels compute on 8-bit weights, against the same QDQ graph run as written.

    python tools/saturation_check.py [--model ddddocr_det] [--calibration 64] [--evaluation 128]
        [--out tools/saturation_check_results_ddddocr_det.json]

The quantize step with int8 compute everywhere (``lossless,quantize:fallback=none``), once with 8-bit weights
(``target=vnni``) and once with 7-bit (``target=avx2``), calibrated on ``--calibration`` samples (seed 1, the split
``tools/real_tasks.py::make_split`` draws). Each model is read against fp32 on ``--evaluation`` other samples twice:
by onnxruntime with every graph optimization on (its fused QLinear kernels, this CPU's) and with none (the QDQ graph
in float, what an exact int32 kernel computes up to one requantization level per tensor). On an x86 CPU without
VNNI the fused u8*s8 kernels add pairs of products into a saturating int16, so 8-bit weights read worse fused than
as written there, and the accuracy budget scores such a model as written
(``onnxopt/bench/int8_kernels.py::saturates_here``; the result records, for each model, whether it does).
On a CPU with VNNI, or with 7-bit weights, the two readings agree. No latency.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ddddocr_det")
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--evaluation", type=int, default=128)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.calibration < 1 or args.evaluation < 2 * args.calibration:
        parser.error("--evaluation must be at least twice --calibration, which must be at least 1")
    from real_tasks import TASKS

    if args.model not in TASKS:
        parser.error(f"--model: no task for {args.model!r} (known: {', '.join(TASKS)})")
    import onnx_ir as ir
    from real_models import fetch
    from real_tasks import evaluate_task, make_split, run_model

    from onnxopt.api import optimize
    from onnxopt.bench.int8_kernels import saturates_here
    from onnxopt.bench.machine import machine_description
    from onnxopt.runtime import Runner

    source = fetch(args.model)
    calibration, evaluation = make_split(args.model, args.calibration, args.evaluation, seed=1)
    reference = run_model(source, evaluation)
    rows: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "calibration.npz"
        calibration.to_npz(data)
        for target, bits in (("vnni", 8), ("avx2", 7)):
            path = Path(tmp) / f"{target}.onnx"
            optimize(source, path, passes=f"lossless,quantize:fallback=none;target={target}", data=str(data))
            model = onnx.load(str(path))
            scored_as_written = saturates_here(ir.serde.deserialize_model(model))
            for fused in (True, False):
                runner = Runner(model, optimize=fused)
                outputs = [runner.run(feeds) for feeds in evaluation.batches(1)]
                metrics = evaluate_task(args.model, reference, outputs, evaluation, None)
                tag = f"{bits}-bit weights, {'fused kernels' if fused else 'as written'}"
                rows[tag] = {
                    **{k: round(float(v), 4) for k, v in metrics.items()},
                    "budget_scores_it_as_written": scored_as_written,
                }
                print(tag, rows[tag], flush=True)
    result = {"model": args.model, "calibration": args.calibration, "evaluation": args.evaluation,
              "saturation_check": True, "variants": rows, "date": time.strftime("%Y-%m-%d"),
              "machine": machine_description()}  # fmt: skip
    out = args.out or ROOT / "tools" / f"saturation_check_results_{args.model}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
