"""Where int8 compute loses accuracy on a real model: each activation quantizer given back its float, held out.

    python tools/activation_sensitivity.py [--model ddddocr_ocr] [--calibration 512] [--evaluation 1024]
        [--singles] [--out tools/activation_sensitivity_results_ddddocr_ocr.json]

The ``int8`` recipe's quantize step with int8 compute everywhere (``lossless,equalize,quantize:`` percentile
ranges, GPTQ-rounded weights, corrected biases, ``fallback=none``) and the same step with weights only (float
compute: the yardstick of the budgets), calibrated on the first half of ``--calibration`` rendered samples
(seed 1, as ``tools/bench_suite.py`` splits them). Then, in the int8 model, a group of activation quantizers
is undone at a time: each DequantizeLinear of those tensors becomes an Identity, so its readers take the float tensor
(weights stay int8; onnxruntime then runs those readers in float). Groups: by the op that writes the tensor and
the ops that read it (``Conv->Mul+Sigmoid``: a convolution's output into a SiLU), and all of them at once (which
must give back the weights-only model's accuracy); ``--singles`` adds each tensor alone. Each variant is read
against fp32 on ``--evaluation`` other samples: the task metric and the mean output SNR (dB). A group whose
bypass recovers most of the gap is where int8 compute loses; a gap no group holds is spread over every
quantizer. No latency here.

Only for models whose pairs only round: where a pair clamps in place of a folded Relu or Clip, or reads its
integers at another scale than they were written with (the quantize pass folds a HardSwish's ``/ 6`` into the
quantizer), undoing it drops the activation or the scale. On the layout detector (HardSwish everywhere) undoing
every pair read no box at all. A model with a pair of the second kind is refused in one line
(:func:`rescaled_pairs`); the first kind leaves no trace in the graph and is not caught.
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
from onnxopt.optimizer.recipe import INT8_CALIBRATION  # noqa: E402

QUANTIZE = f"lossless,equalize,quantize:{INT8_CALIBRATION};rounding=gptq;bias_correct=true"


def activation_quantizers(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Each activation tensor with a QuantizeLinear, by group (``writer->readers`` op types): tensor names."""
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    writer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    groups: dict[str, list[str]] = {}
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in constants:
            continue
        dequantized = [d.output[0] for d in readers.get(q.output[0], []) if d.op_type == "DequantizeLinear"]
        ops = sorted({r.op_type for name in dequantized for r in readers.get(name, [])})
        source = writer[q.input[0]].op_type if q.input[0] in writer else "input"
        groups.setdefault(f"{source}->{'+'.join(ops)}", []).append(q.input[0])
    return groups


def rescaled_pairs(model: onnx.ModelProto) -> list[str]:
    """The tensors whose QuantizeLinear writes at another scale or zero point than its DequantizeLinear reads
    (a folded ``Mul`` by a constant): undoing such a pair (:func:`bypassed`) would drop that constant."""
    quantizers = {n.output[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    return sorted(
        quantizers[d.input[0]].input[0]
        for d in model.graph.node
        if d.op_type == "DequantizeLinear" and d.input[0] in quantizers
        and list(quantizers[d.input[0]].input[1:3]) != list(d.input[1:3])
    )  # fmt: skip


def bypassed(model: onnx.ModelProto, tensors: set[str]) -> onnx.ModelProto:
    """A copy in which each DequantizeLinear of ``tensors``' QuantizeLinear becomes an Identity of the float tensor
    (the QuantizeLinear stays: a Shape may read its output)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    quantized = {q.output[0]: q.input[0] for q in copy.graph.node if q.op_type == "QuantizeLinear"}
    for node in copy.graph.node:
        if node.op_type == "DequantizeLinear" and quantized.get(node.input[0]) in tensors:
            identity = onnx.helper.make_node("Identity", [quantized[node.input[0]]], [node.output[0]], name=node.name)
            node.CopyFrom(identity)
    return copy


def main() -> None:
    from real_models import fetch, load_charset  # the bench extra's renderers: imported only to run
    from real_tasks import evaluate_task, make_split, run_model

    from onnxopt.api import optimize
    from onnxopt.bench.machine import machine_description

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ddddocr_ocr")
    parser.add_argument("--calibration", type=int, default=512)
    parser.add_argument("--evaluation", type=int, default=1024)
    parser.add_argument("--singles", action="store_true", help="also undo each quantizer alone")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or ROOT / "tools" / f"activation_sensitivity_results_{args.model}.json"
    started = time.time()
    calibration, evaluation = make_split(args.model, args.calibration, args.evaluation, seed=1)
    source = fetch(args.model)
    charset = load_charset() if args.model == "ddddocr_ocr" else None
    reference = run_model(source, evaluation)

    def read(path: Path) -> dict[str, float]:
        result = evaluate_task(args.model, reference, run_model(path, evaluation), evaluation, charset)
        return {k: round(float(v), 4) for k, v in result.items() if k != "samples"}

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = calibration.to_npz(work / "calibration.npz")  # the quantize pass reads its first 256
        int8, weights_only = work / "int8.onnx", work / "weights_only.onnx"
        optimize(source, int8, passes=f"{QUANTIZE};fallback=none", data=str(data))
        optimize(source, weights_only, passes=f"{QUANTIZE};weights_only=true", data=str(data))
        model = onnx.load(str(int8))
        rescaled = rescaled_pairs(model)
        if rescaled:
            sys.exit(f"activation_sensitivity: {len(rescaled)} pair(s) read at a folded scale ({rescaled[0]}, ...): "
                     "undoing them would drop the scale, so this model cannot be measured this way")  # fmt: skip
        groups = activation_quantizers(model)
        variants: dict[str, dict] = {"weights-only": read(weights_only), "int8 everywhere": read(int8)}
        trial = work / "trial.onnx"
        every = {t for names in groups.values() for t in names}
        for label, names in [("all undone", sorted(every)), *sorted(groups.items())]:
            onnx.save(bypassed(model, set(names)), str(trial))
            variants[label] = {"tensors": len(names), **read(trial)}
            print(label, variants[label], file=sys.stderr)
        singles = {}
        for name in sorted(every) if args.singles else []:
            onnx.save(bypassed(model, {name}), str(trial))
            singles[name] = read(trial)
    document = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "setup": {**vars(args), "out": str(out), "quantize": QUANTIZE, "seconds": round(time.time() - started)},
        "variants": variants,
        "singles": singles,
    }
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
