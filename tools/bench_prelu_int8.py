"""PRelu in int8: onnxopt's a*x + (1-a)*Relu(x) against quantize_static U8S8, whose PRelus are float islands.

onnxruntime has no int8 PRelu: between two int8 convolutions it runs DequantizeLinear -> PRelu ->
QuantizeLinear in float. The quantize pass writes a PRelu that keeps int8 compute as two QLinearMul, a
requantizing Relu and a QLinearAdd. This benchmark builds four Conv + PRelu blocks (64 channels, 56x56,
per-channel slopes as palm-detector-style TFLite models have them, then a final Conv so no PRelu writes the
output) and times, interleaved in one run: fp32; onnxruntime's quantize_static U8S8 (per-channel, after
quant_pre_process: int8 convolutions with each PRelu a float island, as onnxopt wrote it before too); onnxopt
with int8 compute forced. (Excluding the PRelus in onnxopt would not measure an island: a node kept float keeps
the tensors it touches float, so its Convs run float too.) Random weights: speed and structure only. Each row
records the Q/DQ and float PRelu kernels onnxruntime leaves running.

    python tools/bench_prelu_int8.py [--seconds 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_suite import Subject, ort_quantize

from onnxopt.api import bench_files, optimize
from onnxopt.bench import BenchConfig, machine_description
from onnxopt.bench.runtime_audit import audit_runtime

CHANNELS, SIZE, BLOCKS = 64, 56, 4
OUT = Path(__file__).resolve().parent / "bench_prelu_int8_results.json"


def prelu_blocks(seed: int = 0) -> onnx.ModelProto:
    """Conv -> PRelu, four times, then a Conv: random He-initialised weights, slopes in [0.05, 0.3]."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(BLOCKS + 1):
        w = rng.normal(0, (2 / (CHANNELS * 9)) ** 0.5, (CHANNELS, CHANNELS, 3, 3)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(rng.normal(0, 0.1, CHANNELS).astype(np.float32), f"b{i}"),
        ]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1] * 4, name=f"conv{i}"))
        x = f"c{i}"
        if i < BLOCKS:
            slope = rng.uniform(0.05, 0.3, (CHANNELS, 1, 1)).astype(np.float32)
            inits.append(numpy_helper.from_array(slope, f"a{i}"))
            nodes.append(helper.make_node("PRelu", [x, f"a{i}"], [f"p{i}"], name=f"prelu{i}"))
            x = f"p{i}"
    shape = [1, CHANNELS, SIZE, SIZE]
    graph = helper.make_graph(
        nodes, "prelu_blocks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="onnxopt-prelu-") as tmp:
        folder = Path(tmp)
        fp32 = folder / "fp32.onnx"
        onnx.save(prelu_blocks(), str(fp32))
        data = folder / "data.npz"
        np.savez(data, x=np.random.default_rng(1).normal(0, 1, (16, CHANNELS, SIZE, SIZE)).astype(np.float32))
        variants = {"fp32": fp32, "ort-u8s8": folder / "u8s8.onnx", "onnxopt:int8-forced": folder / "forced.onnx"}
        ort_quantize(
            Subject("prelu_blocks", fp32, data, data, 1, "speed-only"), variants["ort-u8s8"], activations="uint8"
        )
        optimize(fp32, variants["onnxopt:int8-forced"], passes="quantize:fallback=none", data=str(data))
        bench = bench_files(
            list(variants.values()), BenchConfig(batches=(1,), seconds=args.seconds, threads=args.threads, memory=False)
        )
        rows = []
        for name, m in zip(variants, bench.measurements, strict=True):
            audit = audit_runtime(variants[name], threads=args.threads)
            rows.append({
                "variant": name,
                "latency_ratio": 1.0 if m.ratio is None else round(m.ratio.median, 4),
                "ratio_ci": None if m.ratio is None else [round(m.ratio.low, 4), round(m.ratio.high, 4)],
                "p50_ms": round(m.latency.p50_ms, 4),
                "quantize_linear": audit.count("QuantizeLinear"),
                "dequantize_linear": audit.count("DequantizeLinear"),
                "float_prelu": audit.count("PRelu"),
            })  # fmt: skip
    document = {"machine": machine_description(), "threads": args.threads, "seconds": args.seconds, "rows": rows}
    OUT.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
