"""How long int8 takes to *make*: onnxopt's ``int8`` recipe (planning, and replaying a saved plan) against
onnxruntime's ``quantize_static``, on the same model and the same calibration samples, in one run.

    python tools/bench_tool_time.py [--model resnet50] [--samples 64] [--repeats 1] [--out tools/bench_tool_time]

The subject is a ``light`` model-zoo graph (``tools/zoo_models.py``: random weights, normalization
re-estimated on data; default ResNet-50, which is what the issue timed). Three steps, each on a fresh
output, one after another (nothing else should run on the machine meanwhile):

* ``ort`` -- ``quant_pre_process`` + ``quantize_static`` (QDQ, per channel, MinMax), the baseline;
* ``plan`` -- ``onnxopt.optimize(recipe="int8", save_plan=...)``: calibration, the per-node profile
  and latency checks, the guard and the output comparison;
* ``replay`` -- the same with ``plan=`` the saved plan: nothing is timed, the same bytes come out.

Reported as seconds and as ratios to ``ort`` measured in this run (targets: ``plan`` at most 2x,
``replay`` at most 1x), with the CPU and its integer features.

``--no-data`` times instead what a user without data waits for: ``optimize(recipe="int8")`` with seeded random
inputs (target: a 3 M-parameter detector within 60 s on 2 cores), and where the time goes -- the seconds
between the steps the run reports on its progress line (calibration, each profile, each timing, the budget's
ranking and trials). ``--real NAME`` takes a real model of ``tools/real_models.py`` (e.g. ``ddddocr_det``, a
5 M-parameter YOLOX-style detector at 416x416) instead of a zoo graph; ``--yolov8n`` the YOLOv8n-architecture
graph of ``tools/yolov8n_graph.py`` (3.2 M parameters, 640x640, random weights: what the target names).

    python tools/bench_tool_time.py --real ddddocr_det --no-data --out tools/bench_tool_time_results_no_data
    python tools/bench_tool_time.py --yolov8n --no-data --out tools/bench_tool_time_results_no_data_yolov8n
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from zoo_models import input_shape, light_model

from onnxopt.api import optimize
from onnxopt.bench.machine import machine_description


def ort_int8(source: Path, out: Path, calibration: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name(out.stem + "_pre.onnx")
    quant_pre_process(str(source), str(prepared))
    dims = onnx.load(str(source), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    step = dims[0].dim_value if dims and dims[0].dim_value > 0 else 8  # a fixed batch gets whole batches

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            with np.load(calibration) as archive:
                arrays = {k: archive[k] for k in archive.files}
            count = len(next(iter(arrays.values())))
            self.items = iter([{k: v[i : i + step] for k, v in arrays.items()} for i in range(0, count, step)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)


class StepClock:
    """A progress sink that timestamps every step a run reports: where the time of a run goes."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, str]] = [(time.perf_counter(), "start")]

    def start(self, description: str, total: int | None = None) -> None:
        self.marks.append((time.perf_counter(), description))

    def advance(self, units: int = 1) -> None:
        pass

    def phase(self, description: str) -> None:
        self.marks.append((time.perf_counter(), description))

    def finish(self) -> None:
        pass

    def steps(self, end: float) -> list[list[object]]:
        """[step, seconds until the next step] in order, the run's end closing the last."""
        ends = [t for t, _ in self.marks[1:]] + [end]
        return [[what, round(stop - begin, 2)] for (begin, what), stop in zip(self.marks, ends, strict=True)]


def no_data(source: Path, work: Path) -> dict[str, object]:
    """``optimize(recipe="int8")`` without data, timed step by step."""
    clock = StepClock()
    start = time.perf_counter()
    result = optimize(source, work / "no_data.onnx", recipe="int8", progress=clock)
    end = time.perf_counter()
    slow = sorted(clock.steps(end), key=lambda row: -float(row[1]))[:12]  # type: ignore[arg-type]
    return {
        "seconds": round(end - start, 2),
        "passes_over_half_a_second": {r.name: round(r.seconds, 2) for r in result.pipeline.records if r.seconds >= 0.5},
        "slowest_steps": slow,
        "quantize_notes": [n for r in result.pipeline.records if r.name == "quantize" for n in r.notes],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--real", default=None, help="a real model of tools/real_models.py instead of --model")
    parser.add_argument("--yolov8n", action="store_true", help="the YOLOv8n-architecture graph (yolov8n_graph.py)")
    parser.add_argument("--no-data", action="store_true", help="time the int8 recipe without --data, step by step")
    parser.add_argument("--samples", type=int, default=64, help="calibration samples for every tool")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "bench_tool_time_results")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="onnxopt-tooltime-") as folder:
        work = Path(folder)
        if args.real:
            from real_models import fetch

            source = fetch(args.real)
            model = onnx.load(str(source))
        elif args.yolov8n:
            from yolov8n_graph import build

            model = build()
            source = work / "yolov8n_like.onnx"
            onnx.save(model, str(source))
        else:
            model = light_model(args.model, rng.standard_normal((1, 3, 224, 224), dtype=np.float32))
            source = work / "fp32.onnx"
            onnx.save(model, str(source))
        if args.no_data:
            parameters = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
            label = args.real or ("yolov8n_like (random weights, 640x640)" if args.yolov8n else f"light_{args.model}")
            result = {"date": time.strftime("%Y-%m-%d"), "model": label, "parameters": parameters,
                      "machine": machine_description(), **no_data(source, work)}  # fmt: skip
            text = json.dumps(result, indent=1)
            print(text)
            args.out.with_suffix(".json").write_text(text + "\n")
            return
        name = model.graph.input[0].name
        data = work / "calibration.npz"
        np.savez(data, **{name: rng.standard_normal((args.samples, *input_shape(model)[1:]), dtype=np.float32)})
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        ort_int8(source, work / "ort.onnx", data)
        seconds["ort"] = time.perf_counter() - start
        plan = work / "plan.json"
        start = time.perf_counter()
        planned = optimize(source, work / "plan.onnx", recipe="int8", data=str(data), save_plan=plan)
        seconds["plan"] = time.perf_counter() - start
        start = time.perf_counter()
        optimize(source, work / "replay.onnx", recipe="int8", data=str(data), plan=plan)
        seconds["replay"] = time.perf_counter() - start
        same = (work / "plan.onnx").read_bytes() == (work / "replay.onnx").read_bytes()
        stages = {r.name: round(r.seconds, 2) for r in planned.pipeline.records if r.seconds >= 0.5}
    result = {
        "model": f"light_{args.model}",
        "calibration_samples": args.samples,
        "machine": machine_description(),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "plan_over_ort": round(seconds["plan"] / seconds["ort"], 2),
        "replay_over_ort": round(seconds["replay"] / seconds["ort"], 2),
        "replay_bytes_identical": same,
        "plan_run_passes_over_half_a_second": stages,
    }
    text = json.dumps(result, indent=1)
    print(text)
    args.out.with_suffix(".json").write_text(text + "\n")


if __name__ == "__main__":
    main()
