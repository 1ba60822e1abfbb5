"""Benchmark: the ``lossless`` recipe on a generated ~100 MB model vs ``onnx.load`` + ``onnx.save``.

Target (issue: foundation): ``onnxopt optimize --recipe lossless`` takes less
than 3x the time of loading and saving the same model with onnx, measured in
the same run. Both are timed alternately (``--repeats`` rounds) so machine
drift hits both; the medians and their ratio are printed (and written as JSON
with ``--json``).

The model: Conv 3x3 (256->512) + BN + ReLU, two Conv 3x3 (512->512) + BN + ReLU,
Flatten, Gemm 8192->2560 + BN, Gemm 2560->10 -- about 26 M parameters,
on an 4x4 input so running it is cheap and the cost is in the weights.

    python tools/bench_lossless.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxopt.api import optimize


def build_model(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def bn(x: str, c: int, tag: str) -> str:
        params = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)]
        names = [const(f"{tag}_bn_{p}", a) for p, a in zip(("g", "b", "m", "v"), params, strict=True)]
        nodes.append(helper.make_node("BatchNormalization", [x, *names], [f"{tag}_bn"], epsilon=1e-5))
        return f"{tag}_bn"

    x, c = "x", 256
    for i, out_c in enumerate((512, 512, 512)):
        w = const(f"conv{i}_w", rng.normal(0, np.sqrt(2 / (9 * c)), (out_c, c, 3, 3)))
        nodes.append(helper.make_node("Conv", [x, w], [f"conv{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [bn(f"conv{i}", out_c, f"conv{i}")], [f"relu{i}"]))
        x, c = f"relu{i}", out_c
    nodes.append(helper.make_node("Flatten", [x], ["flat"]))
    w1 = const("fc1_w", rng.normal(0, np.sqrt(2 / 8192), (8192, 2560)))
    nodes.append(helper.make_node("Gemm", ["flat", w1, const("fc1_b", np.zeros(2560))], ["fc1"]))
    nodes.append(helper.make_node("Relu", [bn("fc1", 2560, "fc1")], ["fc1_relu"]))
    w2 = const("fc2_w", rng.normal(0, 0.02, (2560, 10)))
    nodes.append(helper.make_node("Gemm", ["fc1_relu", w2], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def time_load_save(src: Path, dst: Path) -> float:
    start = time.perf_counter()
    onnx.save(onnx.load(str(src)), str(dst))
    return time.perf_counter() - start


def time_lossless(src: Path, dst: Path) -> float:
    start = time.perf_counter()
    optimize(src, dst, recipe="lossless", data="random:2", guard_samples=2)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "big.onnx"
        onnx.save(build_model(), str(src))
        size_mb = src.stat().st_size / 1e6
        baseline, candidate = [], []
        for _ in range(args.repeats):  # alternate so drift hits both
            baseline.append(time_load_save(src, Path(tmp) / "copy.onnx"))
            candidate.append(time_lossless(src, Path(tmp) / "opt.onnx"))
        out_mb = (Path(tmp) / "opt.onnx").stat().st_size / 1e6
    result = {
        "model_mb": round(size_mb, 1),
        "optimized_mb": round(out_mb, 1),
        "load_save_s": [round(t, 3) for t in baseline],
        "lossless_s": [round(t, 3) for t in candidate],
        "median_load_save_s": round(statistics.median(baseline), 3),
        "median_lossless_s": round(statistics.median(candidate), 3),
        "ratio": round(statistics.median(candidate) / statistics.median(baseline), 2),
        "target_ratio": 3.0,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
        "date": datetime.date.today().isoformat(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
