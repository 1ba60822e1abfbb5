"""Fuzz the load → lossless → save path with mutated models; report anything that is not a clean error.

Seeds: the bundled digits CNN, a few small generated CNNs, and the onnx
package's ``node`` backend-test models. Each input is one seed mutated by
either

* **bytes**: random bit flips, byte overwrites, insertions, deletions,
  truncation or duplication of a span of the serialized file; or
* **fields**: a protobuf-level edit -- op types swapped, node inputs or
  outputs renamed, removed or duplicated, attributes changed in type or value,
  dims and data types of tensors and value infos changed, initializers
  dropped or corrupted, opset and IR versions changed, nodes reordered or
  duplicated, graph inputs/outputs removed.

Every input goes through ``onnxopt.optimize`` (recipe ``lossless``, 2 random
samples) in a worker process. Outcomes: ``ok``; ``clean`` (an
``OnnxoptError``: the one-line error a user gets); ``crash`` (any other
exception -- a bug); ``died`` (the worker process died, e.g. a segfault in a
native library); ``hang`` (over ``--timeout`` seconds). Crashing inputs are
saved under ``--keep`` with their traceback so they can be replayed:

    python tools/fuzz_load.py --minutes 10 [--seed 0] [--keep fuzz-findings] [--timeout 60]
    python tools/fuzz_load.py --replay fuzz-findings/crash-0001.onnx
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import multiprocessing as mp
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
NODE_TESTS = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"


def seeds(count: int, rng: random.Random) -> list[bytes]:
    """Serialized seed models."""
    out = [(ROOT / "models" / "digits_cnn" / "model.onnx").read_bytes()]
    out += [_small_cnn(i).SerializeToString() for i in range(4)]
    node_models = sorted(NODE_TESTS.glob("*/model.onnx"))
    rng.shuffle(node_models)
    for path in node_models[:count]:
        out.append(path.read_bytes())
    return out


def _small_cnn(seed: int) -> onnx.ModelProto:
    r = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(r.normal(0, 0.5, (4, 2, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(r.normal(0, 0.1, 4).astype(np.float32), "b"),
        *(numpy_helper.from_array(r.uniform(0.5, 1.5, 4).astype(np.float32), n) for n in ("g", "v")),
        *(numpy_helper.from_array(r.normal(0, 0.1, 4).astype(np.float32), n) for n in ("be", "m")),
        numpy_helper.from_array(r.normal(0, 0.3, (4 * 4 * 4, 3)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Identity", ["p"], ["i"]),
        helper.make_node("Flatten", ["i"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        f"cnn{seed}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9 + seed * 3)])


# ---------------------------------------------------------------- mutations


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    roll = rng.random()
    if roll < 0.3:
        return _mutate_bytes(bytearray(data), rng)
    if roll < 0.55:
        return _mutate_values(data, rng)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:
        return _mutate_bytes(bytearray(data), rng)
    edits = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        edit = rng.choice(_FIELD_EDITS)
        with contextlib.suppress(IndexError, ValueError, TypeError):
            edits.append(edit(model, rng) or edit.__name__)
    try:
        return model.SerializeToString(), "fields: " + ", ".join(edits)
    except Exception:  # an edit can make the message unserializable; fall back to bytes
        return _mutate_bytes(bytearray(data), rng)


def _mutate_values(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Keep the structure, change numbers: weights to NaN/inf/0/huge, attribute ints and floats nudged."""
    model = onnx.ModelProto()
    model.ParseFromString(data)
    edits = []
    tensors = [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT]
    if tensors and rng.random() < 0.6:
        tensor = rng.choice(tensors)
        array = numpy_helper.to_array(tensor).copy()
        if array.size:
            value = rng.choice([np.nan, np.inf, -np.inf, 0.0, 1e30, -1e-30])
            flat = array.reshape(-1)
            flat[rng.randrange(flat.size) if rng.random() < 0.5 else slice(None)] = value
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
            edits.append(f"{tensor.name} <- {value}")
    nodes = [n for n in model.graph.node if n.attribute]
    if nodes:
        attr = rng.choice(list(rng.choice(nodes).attribute))
        if attr.type == onnx.AttributeProto.INT:
            attr.i = attr.i + rng.choice([-2, -1, 1, 2])
        elif attr.type == onnx.AttributeProto.INTS and attr.ints:
            attr.ints[rng.randrange(len(attr.ints))] += rng.choice([-1, 1, 2])
        elif attr.type == onnx.AttributeProto.FLOAT:
            attr.f = rng.choice([0.0, -attr.f, attr.f * 1e6, float("nan")])
        edits.append(f"attribute {attr.name}")
    return model.SerializeToString(), "values: " + ", ".join(edits)


def _mutate_bytes(data: bytearray, rng: random.Random) -> tuple[bytes, str]:
    kind = rng.choice(["flip", "overwrite", "insert", "delete", "truncate", "duplicate"])
    if not data:
        return bytes(rng.getrandbits(8) for _ in range(16)), "bytes: random"
    i = rng.randrange(len(data))
    n = rng.randint(1, 16)
    if kind == "flip":
        for _ in range(n):
            j = rng.randrange(len(data))
            data[j] ^= 1 << rng.randrange(8)
    elif kind == "overwrite":
        data[i : i + n] = bytes(rng.getrandbits(8) for _ in range(n))
    elif kind == "insert":
        data[i:i] = bytes(rng.getrandbits(8) for _ in range(n))
    elif kind == "delete":
        del data[i : i + n]
    elif kind == "truncate":
        del data[i:]
    else:
        data[i:i] = data[i : i + rng.randint(1, 256)]
    return bytes(data), f"bytes: {kind}"


def _nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return list(model.graph.node)


def _swap_op(model, rng):
    node = rng.choice(_nodes(model))
    node.op_type = rng.choice(
        [
            "Conv",
            "Relu",
            "Add",
            "BatchNormalization",
            "Gemm",
            "MatMul",
            "Identity",
            "Reshape",
            "Concat",
            "MaxPool",
            "Nope",
            "Loop",
            "If",
            "Cast",
            "Softmax",
        ]
    )
    return f"op -> {node.op_type}"


def _rename_input(model, rng):
    node = rng.choice(_nodes(model))
    if node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice(["", "ghost", node.output[0] if node.output else "x"])


def _drop_input(model, rng):
    node = rng.choice(_nodes(model))
    if node.input:
        del node.input[rng.randrange(len(node.input))]


def _add_input(model, rng):
    node = rng.choice(_nodes(model))
    node.input.append(rng.choice(list(node.input) or ["x"]))


def _rename_output(model, rng):
    node = rng.choice(_nodes(model))
    if node.output:
        names = [o for n in model.graph.node for o in n.output]
        node.output[0] = rng.choice([*names, "", "dup"])


def _attribute(model, rng):
    node = rng.choice(_nodes(model))
    if node.attribute and rng.random() < 0.5:
        attr = rng.choice(list(node.attribute))
        choice = rng.randrange(5)
        if choice == 0:
            attr.i = rng.choice([-1, 0, 2, 7, 2**40])
            attr.type = onnx.AttributeProto.INT
        elif choice == 1:
            del attr.ints[:]
            attr.ints.extend(rng.choice([[], [0], [-1, -1], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0]]))
            attr.type = onnx.AttributeProto.INTS
        elif choice == 2:
            attr.f = rng.choice([float("nan"), float("inf"), -1.0, 0.0])
            attr.type = onnx.AttributeProto.FLOAT
        elif choice == 3:
            attr.name = rng.choice(["group", "axis", "bogus", "epsilon", "training_mode"])
        else:
            attr.type = rng.randrange(0, 15)
    else:
        node.attribute.append(
            helper.make_attribute(rng.choice(["group", "axis", "training_mode", "zz"]), rng.choice([0, 1, 3, -2]))
        )


def _dims(model, rng):
    values = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
    if not values:
        return
    dims = values[rng.randrange(len(values))].type.tensor_type.shape.dim
    if dims and rng.random() < 0.7:
        dim = dims[rng.randrange(len(dims))]
        dim.dim_value = rng.choice([0, 1, 3, 1000, 2**31])
    elif dims:
        del dims[rng.randrange(len(dims))]


def _dtype(model, rng):
    values = list(model.graph.input) + list(model.graph.output)
    tensors = list(model.graph.initializer)
    if tensors and rng.random() < 0.5:
        rng.choice(tensors).data_type = rng.choice([0, 2, 6, 7, 8, 10, 11, 16, 99])
    elif values:
        rng.choice(values).type.tensor_type.elem_type = rng.choice([0, 2, 6, 7, 10, 11, 99])


def _initializer(model, rng):
    tensors = model.graph.initializer
    if not tensors:
        return
    i = rng.randrange(len(tensors))
    choice = rng.randrange(4)
    if choice == 0:
        del tensors[i]
    elif choice == 1:
        raw = bytearray(tensors[i].raw_data)
        tensors[i].raw_data = bytes(raw[: len(raw) // 2])
    elif choice == 2:
        del tensors[i].dims[:]
        tensors[i].dims.extend(rng.choice([[0], [1, 2, 3], [-1], [2**20, 2**20]]))
    else:
        tensors[i].name = rng.choice(["x", "", tensors[0].name])


def _versions(model, rng):
    if rng.random() < 0.5 and model.opset_import:
        model.opset_import[0].version = rng.choice([1, 7, 8, 9, 11, 12, 17, 21, 30, 1000])
    else:
        model.ir_version = rng.choice([0, 1, 3, 4, 7, 10, 11, 12, 99])


def _reorder(model, rng):
    nodes = _nodes(model)
    rng.shuffle(nodes)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _duplicate_node(model, rng):
    node = rng.choice(_nodes(model))
    model.graph.node.append(node)


def _io(model, rng):
    target = model.graph.input if rng.random() < 0.5 else model.graph.output
    if target and rng.random() < 0.6:
        del target[rng.randrange(len(target))]
    elif target:
        target.append(target[0])


def _domain(model, rng):
    node = rng.choice(_nodes(model))
    node.domain = rng.choice(["com.example", "ai.onnx.ml", "com.microsoft", ""])


_FIELD_EDITS = [
    _swap_op,
    _rename_input,
    _drop_input,
    _add_input,
    _rename_output,
    _attribute,
    _dims,
    _dtype,
    _initializer,
    _versions,
    _reorder,
    _duplicate_node,
    _io,
    _domain,
]


# ---------------------------------------------------------------- harness


def _worker(tasks: mp.Queue, results: mp.Queue) -> None:
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    from onnxopt.api import optimize
    from onnxopt.errors import OnnxoptError

    while True:
        task = tasks.get()
        if task is None:
            return
        path, out = task
        try:
            optimize(path, out, recipe="lossless", data="random:2", guard_samples=2)
            results.put(("ok", ""))
        except OnnxoptError as e:
            results.put(("clean", str(e).splitlines()[0][:200] if str(e) else type(e).__name__))
        except Exception as e:  # anything else is what the fuzzer looks for
            frames = [f for f in traceback.extract_tb(e.__traceback__) if "/onnxopt/" in f.filename]
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
            head = f"{type(e).__name__} at {where}: {str(e)[:200]}"
            results.put(("crash", head + "\n" + traceback.format_exc()[-3000:]))
        finally:
            Path(out).unlink(missing_ok=True)


class Harness:
    """One worker process; restarted when it dies or hangs."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.ctx = mp.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self.tasks, self.results = self.ctx.Queue(), self.ctx.Queue()
        self.proc = self.ctx.Process(target=_worker, args=(self.tasks, self.results), daemon=True)
        self.proc.start()

    def run(self, path: Path, out: Path) -> tuple[str, str]:
        self.tasks.put((str(path), str(out)))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                return self.results.get(timeout=0.2)
            except Exception:  # queue.Empty
                if not self.proc.is_alive():
                    code = self.proc.exitcode
                    self._start()
                    return "died", f"worker exit code {code}"
        self.proc.kill()
        self.proc.join()
        self._start()
        return "hang", f"over {self.timeout:g} s"

    def close(self) -> None:
        self.tasks.put(None)
        self.proc.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=40, help="backend node models among the seeds")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--keep", type=Path, default=Path("fuzz-findings"))
    parser.add_argument("--json", type=Path, help="write the summary as JSON")
    parser.add_argument("--replay", type=Path, help="run one saved input in this process and show the result")
    args = parser.parse_args()
    if args.replay:
        from onnxopt.cli import main as cli

        sys.exit(cli(["optimize", str(args.replay), "-o", str(Path(tempfile.mkdtemp()) / "out.onnx"), "--debug"]))
    rng = random.Random(args.seed)
    corpus = seeds(args.seeds, rng)
    harness = Harness(args.timeout)
    counts: collections.Counter[str] = collections.Counter()
    signatures: dict[str, int] = {}
    clean_messages: collections.Counter[str] = collections.Counter()
    end = time.monotonic() + args.minutes * 60
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="onnxopt-fuzz-") as tmp:
        path, out = Path(tmp) / "input.onnx", Path(tmp) / "out.onnx"
        while time.monotonic() < end:
            data, how = mutate(rng.choice(corpus), rng)
            path.write_bytes(data)
            outcome, detail = harness.run(path, out)
            counts[outcome] += 1
            if outcome == "clean":
                clean_messages[_shape(detail)] += 1
            if outcome in ("crash", "died", "hang"):
                signature = f"{outcome}: {detail.split(':', 1)[0] if outcome == 'crash' else detail}"
                if signature not in signatures:
                    signatures[signature] = 0
                    args.keep.mkdir(parents=True, exist_ok=True)
                    stem = args.keep / f"{outcome}-{len(list(args.keep.glob('*.onnx'))):04d}"
                    stem.with_suffix(".onnx").write_bytes(data)
                    stem.with_suffix(".txt").write_text(f"mutation: {how}\n{detail}\n")
                    print(f"[{sum(counts.values())}] NEW {signature[:160]}", flush=True)
                signatures[signature] += 1
            total = sum(counts.values())
            if total % 100 == 0:
                print(f"[{total}] {dict(counts)}", flush=True)
    harness.close()
    summary = {
        "inputs": sum(counts.values()),
        "seconds": round(time.monotonic() - started),
        "outcomes": dict(counts),
        "findings": signatures,
        "top_clean_errors": clean_messages.most_common(15),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


def _shape(message: str) -> str:
    """A clean error's message without the file path, to group them."""
    return message.split(": ", 1)[-1][:80]


if __name__ == "__main__":
    main()
