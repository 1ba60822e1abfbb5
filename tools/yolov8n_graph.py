"""A YOLOv8n-architecture detector as an ONNX graph, random weights: the shape of what users bring, for tool time.

    python tools/yolov8n_graph.py OUT.onnx [--size 640]

The layers of Ultralytics' ``yolov8n.yaml`` (depth 0.33, width 0.25) as its ONNX export writes them, batch
normalization folded: Conv + SiLU (``Sigmoid``, ``Mul``) blocks, C2f (``Split``, bottlenecks, ``Concat``),
SPPF (three ``MaxPool`` 5x5), the PAN neck (``Resize`` nearest x2), and the decoupled head with its DFL
(``Softmax`` over 16 bins, a fixed 1x1 ``Conv``) and the box decoding against the anchor grid, giving
``[1, 84, 8400]`` at 640x640 (``x, y, w, h`` in pixels, then 80 class probabilities). 3.18 M parameters.
Weights are random (He-normal, scaled for SiLU): latency and tool time are the trained model's, accuracy
is not -- no accuracy claim rests on this graph. No trained YOLOv8n ships in a package of the registry.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 80
BINS = 16


class Builder:
    """Nodes and initializers appended in order, names numbered."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"

    def const(self, array: np.ndarray, kind: str = "const") -> str:
        name = self.name(kind)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attributes) -> list[str]:
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=names[0], **attributes))
        return names

    def conv(self, x: str, c_in: int, c_out: int, k: int = 1, s: int = 1, act: bool = True) -> str:
        std = 1.7 / np.sqrt(c_in * k * k)
        w = self.const((self.rng.standard_normal((c_out, c_in, k, k)) * std).astype(np.float32), "w")
        b = self.const((self.rng.standard_normal(c_out) * 0.05).astype(np.float32), "b")
        [y] = self.op("Conv", [x, w, b], kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4)
        if not act:
            return y
        [gate] = self.op("Sigmoid", [y])
        return self.op("Mul", [y, gate])[0]

    def c2f(self, x: str, c_in: int, c_out: int, n: int, shortcut: bool) -> str:
        hidden = c_out // 2
        y = self.conv(x, c_in, 2 * hidden)
        split = self.const(np.array([hidden, hidden], dtype=np.int64), "split")
        parts = self.op("Split", [y, split], outputs=2, axis=1)
        last = parts[1]
        for _ in range(n):
            inner = self.conv(self.conv(last, hidden, hidden, 3), hidden, hidden, 3)
            last = self.op("Add", [last, inner])[0] if shortcut else inner
            parts.append(last)
        [joined] = self.op("Concat", parts, axis=1)
        return self.conv(joined, (2 + n) * hidden, c_out)

    def sppf(self, x: str, c_in: int, c_out: int) -> str:
        hidden = c_in // 2
        y = self.conv(x, c_in, hidden)
        pools = [y]
        for _ in range(3):
            pools.append(self.op("MaxPool", [pools[-1]], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2])[0])
        [joined] = self.op("Concat", pools, axis=1)
        return self.conv(joined, 4 * hidden, c_out)

    def upsample(self, x: str) -> str:
        scales = self.const(np.array([1, 1, 2, 2], dtype=np.float32), "scales")
        return self.op("Resize", [x, "", scales], mode="nearest")[0]


def _anchors(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres ``[2, A]`` and strides ``[1, A]`` of the three levels (8, 16, 32)."""
    points, strides = [], []
    for stride in (8, 16, 32):
        cells = size // stride
        ys, xs = np.meshgrid(np.arange(cells) + 0.5, np.arange(cells) + 0.5, indexing="ij")
        points.append(np.stack([xs.reshape(-1), ys.reshape(-1)]))
        strides.append(np.full((1, cells * cells), stride))
    return np.concatenate(points, 1).astype(np.float32), np.concatenate(strides, 1).astype(np.float32)


def build(size: int = 640, seed: int = 0) -> onnx.ModelProto:
    g = Builder(seed)
    x = "images"
    p = g.conv(x, 3, 16, 3, 2)
    p = g.conv(p, 16, 32, 3, 2)
    p = g.c2f(p, 32, 32, 1, True)
    p = g.conv(p, 32, 64, 3, 2)
    p3 = g.c2f(p, 64, 64, 2, True)
    p = g.conv(p3, 64, 128, 3, 2)
    p4 = g.c2f(p, 128, 128, 2, True)
    p = g.conv(p4, 128, 256, 3, 2)
    p = g.c2f(p, 256, 256, 1, True)
    p5 = g.sppf(p, 256, 256)
    [up] = g.op("Concat", [g.upsample(p5), p4], axis=1)
    h4 = g.c2f(up, 384, 128, 1, False)
    [up] = g.op("Concat", [g.upsample(h4), p3], axis=1)
    out3 = g.c2f(up, 192, 64, 1, False)
    [down] = g.op("Concat", [g.conv(out3, 64, 64, 3, 2), h4], axis=1)
    out4 = g.c2f(down, 192, 128, 1, False)
    [down] = g.op("Concat", [g.conv(out4, 128, 128, 3, 2), p5], axis=1)
    out5 = g.c2f(down, 384, 256, 1, False)
    levels = []
    flat = g.const(np.array([1, 4 * BINS + CLASSES, -1], dtype=np.int64), "shape")
    for feature, channels in ((out3, 64), (out4, 128), (out5, 256)):
        box = g.conv(g.conv(g.conv(feature, channels, 64, 3), 64, 64, 3), 64, 4 * BINS, act=False)
        cls = g.conv(g.conv(g.conv(feature, channels, 80, 3), 80, 80, 3), 80, CLASSES, act=False)
        [both] = g.op("Concat", [box, cls], axis=1)
        levels.append(g.op("Reshape", [both, flat])[0])
    [head] = g.op("Concat", levels, axis=2)  # [1, 144, 8400]
    split = g.const(np.array([4 * BINS, CLASSES], dtype=np.int64), "split")
    distribution, scores = g.op("Split", [head, split], outputs=2, axis=1)
    bins = g.const(np.array([1, 4, BINS, -1], dtype=np.int64), "shape")
    [d] = g.op("Reshape", [distribution, bins])
    [d] = g.op("Transpose", [d], perm=[0, 2, 1, 3])  # [1, 16, 4, A]
    [d] = g.op("Softmax", [d], axis=1)
    expectation = g.const(np.arange(BINS, dtype=np.float32).reshape(1, BINS, 1, 1), "dfl")
    [d] = g.op("Conv", [d, expectation])  # [1, 1, 4, A]
    sides = g.const(np.array([1, 4, -1], dtype=np.int64), "shape")
    [d] = g.op("Reshape", [d, sides])
    halves = g.const(np.array([2, 2], dtype=np.int64), "split")
    left_top, right_bottom = g.op("Split", [d, halves], outputs=2, axis=1)
    points, strides = _anchors(size)
    anchor = g.const(points[None], "anchors")
    [x1y1] = g.op("Sub", [anchor, left_top])
    [x2y2] = g.op("Add", [anchor, right_bottom])
    [total] = g.op("Add", [x1y1, x2y2])
    [centre] = g.op("Div", [total, g.const(np.array(2.0, dtype=np.float32), "two")])
    [wh] = g.op("Sub", [x2y2, x1y1])
    [xywh] = g.op("Concat", [centre, wh], axis=1)
    [boxes] = g.op("Mul", [xywh, g.const(strides[None], "strides")])
    [probabilities] = g.op("Sigmoid", [scores])
    g.nodes.append(helper.make_node("Concat", [boxes, probabilities], ["output0"], name="output0", axis=1))
    anchors = points.shape[1]
    graph = helper.make_graph(
        g.nodes, "yolov8n_like", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + CLASSES, anchors])], g.initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxopt-tools")
    onnx.checker.check_model(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=640)
    args = parser.parse_args()
    model = build(args.size)
    onnx.save(model, str(args.out))
    parameters = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"{args.out}: {len(model.graph.node)} nodes, {parameters:,} parameters")


if __name__ == "__main__":
    main()
