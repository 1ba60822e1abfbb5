"""The rounding floor of a model: how far its outputs move when its weights move by one unit in the last place.

A lossless pass changes a model by float rounding only: a folded weight ``W*s`` is rounded once more, a
removed Mul no longer rounds its output. The guard holds such a pass to a relative tolerance
(``max|after - before| <= 1e-4 * max|before|``). On most models rounding moves the outputs by 1e-7 to 1e-5 of
their range and that tolerance is what binds. On some it is not reachable: PaddleOCR's PP-OCRv4 text
recognizer (``ch_PP-OCRv4_rec_infer.onnx``; an SVTR neck of LayerNorms and a sharp attention softmax before a
CTC softmax whose top classes nearly tie) moves its probabilities by up to 5.8e-4 of their range when each
of its weights moves by one ulp (64 text-like 48x320 images), and onnxruntime's own graph optimizations move
them by 1.5e-4: ``fold-bn`` (drift 2.8e-4) and ``fold-affine`` (5.3e-4), both correct, were rolled back.

:func:`rounding_floor` measures what rounding alone does to a model on the guard's feeds: every float
weight of more than one element (initializers and ``Constant`` nodes: converters such as paddle2onnx store
all weights as the latter) moved by one ulp in a seeded random direction, the largest drift of
:data:`REALIZATIONS` such draws, in the guard's metric. Kept as they are: integers (zeros, sizes, scales)
and non-finite values, and scalars -- exponents, epsilons and clip bounds, where one ulp can turn
``Pow(x, 2)`` of a negative ``x`` into NaN. A draw is a model as faithful to the trained one as the
original file is -- each weight within one ulp of it, as a pass's rounded weights are -- so a rewrite whose
drift is within a few floors is indistinguishable from the weights' own float32 representation. (The
floor leaves activations as they are; a rewrite that only re-rounds them may drift further on a model
whose layers cancel large activations: then the floor says less, and the guard errs towards rolling back.)

:func:`lossless_allowance` is what the guard then accepts from a lossless pass: the pass's tolerance, or
:data:`FLOOR_FACTOR` floors where that is more (the max of a few draws varies by up to 6x between draws on
the recognizer: one sample's near-tied softmax decides it), never more than :data:`FLOOR_CAP` -- beyond 1 %
of the output range a model's outputs are not determined by its weights closely enough for a guard to
tell rounding from a wrong rewrite, and the nominal tolerance stays. The floor is only measured when a pass
exceeds its tolerance, so a well-conditioned model (floor about 1e-6, allowance the nominal 1e-4) costs
nothing more, and a wrong rewrite (drift of order 1) is rejected as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from onnxopt.errors import OnnxoptError
from onnxopt.evaluate.agreement import agreement
from onnxopt.shared_weights import SharedWeightsModel

#: draws of the one-ulp perturbation; the floor is their largest drift
REALIZATIONS = 3
#: how many floors a lossless pass may drift by (the spread between draws, with a margin)
FLOOR_FACTOR = 4.0
#: above this relative drift no floor makes a pass lossless
FLOOR_CAP = 1e-2

_NUDGED = (ir.DataType.FLOAT16, ir.DataType.FLOAT, ir.DataType.DOUBLE)


def lossless_allowance(tolerance: float, floor: float) -> float:
    """The relative drift the guard accepts from a lossless pass with ``tolerance`` on a model whose rounding
    floor is ``floor``."""
    return max(tolerance, min(FLOOR_FACTOR * floor, FLOOR_CAP))


def rounding_floor(
    restore: Callable[[], ir.Model],
    feeds: Sequence[dict[str, np.ndarray]],
    reference: Sequence[Sequence[np.ndarray]],
    names: Sequence[str],
    *,
    providers: Sequence[str],
    seed: int,
) -> float:
    """The largest relative drift (``max|y' - y| / max|y|`` over ``names``) of :data:`REALIZATIONS` one-ulp
    perturbations of the weights of the model ``restore`` returns (a fresh copy each call), against its
    outputs ``reference`` on ``feeds``, run in onnxruntime with graph optimizations disabled (as the guard
    runs them). 0.0 when a perturbed model cannot be run or compared: then nothing is widened."""
    rng = np.random.default_rng(seed)
    floor = 0.0
    for _ in range(REALIZATIONS):
        model = restore()
        if not nudge_weights(model, rng):
            return 0.0
        try:
            runner = SharedWeightsModel(model, protect=False).runner(providers)
            outputs = [runner.run(f, list(names)) for f in feeds]
            drift = max((r.max_rel for r in agreement(reference, outputs, names)), default=0.0)
        except (OnnxoptError, ValueError):
            return 0.0
        if not math.isfinite(drift):
            return 0.0
        floor = max(floor, drift)
    return floor


def nudge_weights(model: ir.Model, rng: np.random.Generator) -> int:
    """Move every finite, non-integer element of each float weight of more than one element (initializers
    and ``Constant`` node values, in every graph of ``model``) one ulp up or down, chosen by ``rng``; the
    weights get new arrays, the old ones are not written. Integers stay (zeros among them): a Resize's
    scales ``[1, 1, 2, 2]`` one ulp lower would change its output's size, not its rounding. Returns how many
    weights were nudged."""
    count = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            moved = _nudged(value.const_value, rng)
            if moved is not None:
                value.const_value = ir.tensor(moved, name=value.name)
                count += 1
        for node in graph:
            attr = node.attributes.get("value") if node.op_type == "Constant" and node.domain == "" else None
            moved = _nudged(attr.value, rng) if attr is not None and attr.type == ir.AttributeType.TENSOR else None
            if moved is not None:
                node.attributes["value"] = ir.AttrTensor("value", ir.tensor(moved, name=attr.value.name))
                count += 1
    return count


def _nudged(tensor: ir.TensorProtocol | None, rng: np.random.Generator) -> np.ndarray | None:
    """``tensor``'s array with each finite non-integer element one ulp up or down; None when it is not a
    float tensor of more than one element."""
    if tensor is None or tensor.dtype not in _NUDGED or tensor.size <= 1:
        return None
    array = tensor.numpy()
    target = np.where(rng.random(array.shape) < 0.5, np.inf, -np.inf).astype(array.dtype)
    kept = ~np.isfinite(array) | (array == np.round(array))  # zeros, and integers that may size things
    return np.where(kept, array, np.nextafter(array, target)).astype(array.dtype, copy=False)
