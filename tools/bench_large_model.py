"""Benchmark: a model just over protobuf's 2 GB limit through the same passes as a small one.

Generates 17 layers of MatMul (5632 x 5632 float32 weights) + Add (bias) + Relu -- 2.16 GB of initializers,
past the 2 GiB protobuf can serialize -- saved with external data in a temporary folder under /tmp, then
runs, each stage in its own process (so each has its own peak RSS):

* ``optimize``: ``onnxopt.optimize(model, out, passes="lossless,quantize", data="random:4",
  external_data=True, per_layer=True)`` -- the per-pass guard, calibration (activations), per-layer errors
  and saving;
* ``compare``: ``onnxopt.compare_files(model, out, per_layer=True)`` -- outputs and per-layer errors;
* ``profile``: :func:`onnxopt.optimizer.node_profile.profile_nodes` on the float and the int8 model
  (what ``quantize:fallback=profile`` starts with);
* ``probe``: :class:`onnxopt.optimizer.quality.QualityProbe` scoring the int8 model against the float one
  (what ``max_drop`` budgets spend);
* ``int8-recipe``: the ``int8`` recipe's quantize (``quantize:fallback=profile;bias_correct=true``), whose
  speed decision also times whole models interleaved (``Context.latency_ratio``, which still writes each
  model as one serialized protobuf: over 2 GB that pass is rolled back with ``EncodeError``).

Results (machine, seconds, peak RSS, statuses of the passes) go to ``tools/bench_large_model_results.json``
and are printed. Needs about 7 GB free under /tmp and about 12 GB of RAM; takes a few minutes.

    python tools/bench_large_model.py [--keep] [--stages optimize,compare,profile,probe,int8-recipe]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from onnxopt.evaluate.agreement import OutputAgreement

LAYERS, WIDTH = 17, 5632  # 17 * 5632**2 * 4 bytes = 2.157e9 > 2**31
PROTOBUF_LIMIT = 2**31
NEEDED_DISK = 7 * 1024**3  # the input and its data, the int8 output, the guard's scratch
RESULTS = Path(__file__).with_name("bench_large_model_results.json")
STAGES = ("optimize", "compare", "profile", "probe", "int8-recipe")


def build(path: Path, seed: int = 0) -> dict[str, object]:
    """Write the model to ``path`` with its weights in a side file; return its sizes."""
    import onnx_ir as ir

    from onnxopt import io

    rng = np.random.default_rng(seed)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["N", WIDTH]))
    graph = ir.Graph([x], [], nodes=[], name="large_mlp", opset_imports={"": 17})
    current, weight_bytes = x, 0
    for i in range(LAYERS):
        w = (rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) * np.float32(np.sqrt(2.0 / WIDTH))).astype(
            np.float32
        )
        b = rng.normal(0, 0.01, WIDTH).astype(np.float32)
        w_value = ir.Value(name=f"w{i}", const_value=ir.Tensor(w, name=f"w{i}"))
        b_value = ir.Value(name=f"b{i}", const_value=ir.Tensor(b, name=f"b{i}"))
        for value in (w_value, b_value):
            value.type = ir.TensorType(ir.DataType.FLOAT)
            value.shape = ir.Shape(value.const_value.shape)
            graph.register_initializer(value)
        weight_bytes += w.nbytes + b.nbytes
        matmul = ir.node("MatMul", [current, w_value], name=f"matmul{i}")
        add = ir.node("Add", [matmul.outputs[0], b_value], name=f"bias{i}")
        graph.extend([matmul, add])
        matmul.outputs[0].name, add.outputs[0].name = f"mm{i}", f"pre{i}"
        if i < LAYERS - 1:
            relu = ir.node("Relu", [add.outputs[0]], name=f"relu{i}")
            graph.append(relu)
            relu.outputs[0].name = f"act{i}"
            current = relu.outputs[0]
        else:
            current = add.outputs[0]
    current.name = "y"
    for node in graph:
        for value in node.outputs:
            value.type, value.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(["N", WIDTH])
    graph.outputs.append(current)
    model = ir.Model(graph, ir_version=8, producer_name="onnxopt tools/bench_large_model.py")
    io.save(model, path, external_data=True)
    return {
        "layers": LAYERS,
        "width": WIDTH,
        "initializer_bytes": weight_bytes,
        "over_protobuf_limit": weight_bytes > PROTOBUF_LIMIT,
        "file_bytes": io.file_bytes(path),
    }


def stage(name: str, folder: Path) -> dict[str, object]:
    """Run one stage in this process; return what it measured."""
    model, out = folder / "large.onnx", folder / "large.int8.onnx"
    start = time.perf_counter()
    result: dict[str, object]
    if name == "generate":
        result = build(model)
    elif name == "optimize":
        from onnxopt.api import optimize

        run = optimize(model, out, passes="lossless,quantize", data="random:4", external_data=True, per_layer=True)
        layers = run.comparison.layers
        result = {
            "passes": [
                {"name": r.name, "status": r.status, "seconds": round(r.seconds, 2), "notes": r.notes[-2:]}
                for r in run.pipeline.records
            ],
            "max_drift": run.pipeline.max_drift,
            "outputs": [_agreement(o) for o in run.comparison.outputs],
            "input_file_bytes": run.input_file_bytes,
            "output_file_bytes": run.output_file_bytes,
            "fallbacks": run.fallbacks,
            "per_layer": None if layers is None else {"layers": len(layers.layers), "first_bad": layers.first_bad},
        }
    elif name == "compare":
        from onnxopt.api import compare_files

        comparison = compare_files(model, out, per_layer=True)
        layers = comparison.layers
        assert layers is not None
        result = {
            "outputs": [_agreement(o) for o in comparison.outputs],
            "layers": len(layers.layers),
            "unmatched": layers.unmatched,
            "first_bad": layers.first_bad,
            "min_layer_snr_db": round(min(layer.snr_db for layer in layers.layers), 2) if layers.layers else None,
        }
    elif name == "profile":
        from onnxopt import io
        from onnxopt.optimizer.node_profile import profile_nodes

        feeds = {"x": np.random.default_rng(0).standard_normal((1, WIDTH), dtype=np.float32)}
        result = {}
        for tag, path in (("float", model), ("int8", out)):
            profile = profile_nodes(io.load(path), feeds, runs=5, seconds=0.5)
            result[tag] = {
                "total_us": round(profile.total, 1),
                "nodes": len(profile.times),
                "kernels": sorted(set(profile.ops.values())),
            }
    elif name == "probe":
        from onnxopt import io
        from onnxopt.data import RandomDataset
        from onnxopt.optimizer.quality import QualityProbe
        from onnxopt.runtime import input_specs

        original = io.load(model)
        probe = QualityProbe(original, RandomDataset(input_specs(original), 8, seed=0), limit=8)
        score = probe.score(io.load(out))
        result = {"metric": score.metric, "baseline": probe.baseline, "int8": round(score.value, 6)}
    elif name == "int8-recipe":
        from onnxopt.api import optimize

        run = optimize(
            model,
            folder / "large.int8-recipe.onnx",
            passes="quantize:fallback=profile;bias_correct=true",
            data="random:4",
            external_data=True,
        )
        result = {
            "passes": [
                {"name": r.name, "status": r.status, "seconds": round(r.seconds, 2), "notes": r.notes[-3:]}
                for r in run.pipeline.records
            ],
            "fallbacks": run.fallbacks,
        }
    else:
        raise SystemExit(f"unknown stage {name!r}")
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def _agreement(output: OutputAgreement) -> dict[str, object]:
    return {k: v if not isinstance(v, float) else round(v, 6) for k, v in dataclasses.asdict(output).items()}


def _child(name: str, folder: Path) -> dict[str, object]:
    """One stage in a fresh Python process (its own peak RSS); a failure is recorded, not raised."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--stage", name, "--folder", str(folder)], capture_output=True, text=True
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    return {
        "failed": True,
        "returncode": done.returncode,
        "seconds": round(time.perf_counter() - start, 2),
        "error": (done.stderr or done.stdout).strip().splitlines()[-12:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the generated models")
    parser.add_argument("--tmp", type=Path, default=Path("/tmp"), help="where the temporary folder goes")
    args = parser.parse_args(argv)
    if args.stage:  # a child
        print(json.dumps(stage(args.stage, args.folder)))
        return 0
    free = shutil.disk_usage(args.tmp).free
    if free < NEEDED_DISK:
        print(f"{args.tmp}: {free / 1024**3:.1f} GB free, {NEEDED_DISK / 1024**3:.0f} GB needed", file=sys.stderr)
        return 1
    from onnxopt.bench.machine import machine_description

    folder = Path(tempfile.mkdtemp(prefix="onnxopt-large-", dir=args.tmp))
    results: dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "memory_gb": round(_total_memory() / 1024**3, 1),
        "stages": {},
    }
    stages: dict[str, object] = results["stages"]  # type: ignore[assignment]
    try:
        for name in ["generate", *[s for s in args.stages.split(",") if s]]:
            print(f"-- {name} ...", file=sys.stderr, flush=True)
            stages[name] = _child(name, folder)
            print(json.dumps(stages[name], indent=1), file=sys.stderr, flush=True)
            if name == "generate":
                results["model"] = stages[name]
                if stages[name].get("failed"):  # type: ignore[union-attr]
                    break
            if name == "optimize" and stages[name].get("failed"):  # type: ignore[union-attr]
                break  # the later stages read its output
    finally:
        if args.keep:
            print(f"models kept in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))
    return 0


def _total_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
