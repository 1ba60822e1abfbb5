"""Quantization-aware fine-tuning of a QDQ model against its float original, written back into the same graph.

:func:`qat` builds the quantized model's trainable twin with fake quantization (:mod:`onnxopt.distill.fake_quant`:
onnxruntime's rounding and saturation, straight-through gradients, int8 weights and int32 biases as float
shadows, scales learned LSQ-style when ``learn_scales``), checks it against onnxruntime
(:func:`check_quantized`), and trains it on the float teacher's outputs with the distillation loop of
:mod:`onnxopt.distill.finetune` -- the same losses, seeded held-back part, best epoch, cosine decay, time
budget and determinism. The shadows step ``learning_rate`` levels (a bias: 1/127 of its largest magnitude)
whatever their gradients' size (:data:`SHADOW_EPSILON`); scale multipliers train with their own Adam at
``scale_learning_rate``.

What it writes: the kept epoch's integer levels (int8 weights, the uint8/int8 constants of Add/Mul), learned
scales (activations and weights; zero points are kept), and int32 biases recomputed at ``s_x * s_w`` with the
new scales -- into the same initializers, every node, name, type and shape kept. The written model is
checked against the twin in onnxruntime before it is returned; no epoch better than the start on the
held-back part returns the model unchanged.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import onnx

from onnxopt.distill.batch_layout import batched
from onnxopt.distill.fake_quant import MULTIPLIER
from onnxopt.distill.finetune import (
    FinetuneConfig,
    Training,
    VariableGroup,
    batch_free,
    deterministic,
    held_back_split,
    in_batch_layout,
    train,
    write_back,
)
from onnxopt.distill.graph_model import GraphModel
from onnxopt.errors import UnsupportedOp
from onnxopt.progress import Progress
from onnxopt.runtime import Runner

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: Adam's epsilon on the shadows. Their gradients, in levels, are tiny: a median of 5e-10 on the suite's recognizer
#: and 2e-8 on its detector. Keras adds epsilon to ``sqrt(v)`` uncorrected (``0.03 |g|`` at the first step,
#: ``0.15 |g|`` at the 24th), so its default of 1e-7 shrank the recognizer's median step about a thousand times.
#: Any gradient above about 1e-13 levels now takes a full step, noise too: the held-back best epoch is the guard
SHADOW_EPSILON = 1e-14


@dataclasses.dataclass(frozen=True)
class QatConfig(FinetuneConfig):
    epochs: int = 3
    learning_rate: float = 1e-2  # Adam on the float shadows, in levels of their stored step (biases: 1/127 of peak)
    scale_learning_rate: float = 1e-3  # Adam on each learned scale's multiplier: relative steps
    learn_scales: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale_learning_rate <= 0:
            raise ValueError("scale_learning_rate must be positive")


@dataclasses.dataclass
class QatResult:
    model: onnx.ModelProto  # the quantized model with its trained integers and scales (unchanged: best_epoch 0)
    changed: dict[str, np.ndarray]  # the initializers written, by name (empty when unchanged)
    training: Training  # per-epoch history, held-back agreement before and after, the kept epoch
    twin_levels: float  # the twin's worst difference from onnxruntime before training, in quantization levels
    train_samples: int
    holdout_samples: int
    seconds: float


def is_quantized(proto: onnx.ModelProto) -> bool:
    """Whether ``proto``'s graph holds a QuantizeLinear or DequantizeLinear."""
    return any(n.op_type in QDQ_OPS and n.domain in ("", "ai.onnx") for n in proto.graph.node)


def qat(
    model: onnx.ModelProto,
    teacher: onnx.ModelProto,
    inputs: dict[str, np.ndarray],
    config: QatConfig | None = None,
    *,
    labels: np.ndarray | None = None,
    on_epoch: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    choose: Callable[[dict[str, np.ndarray]], float] | None = None,
) -> QatResult:
    """Fine-tune the QDQ ``model`` on ``teacher``'s outputs over ``inputs`` (every array ``[N, ...]``); raises
    :class:`~onnxopt.errors.UnsupportedOp` (one line) for a model that is not quantized, an op the twin lacks,
    or a twin or written model that does not match onnxruntime. ``choose``, when given, scores the values each
    epoch would write (the initializers changed, by name; ``{}`` for the start; higher is better) and picks the
    epoch kept in place of the held-back part (:func:`~onnxopt.distill.finetune.train`)."""
    config = config or QatConfig()
    if not is_quantized(model):
        raise UnsupportedOp("qat: the model is not quantized (no QuantizeLinear/DequantizeLinear): run quantize first")
    deterministic(config.seed)
    started = time.perf_counter()
    split = held_back_split(len(next(iter(inputs.values()))), config.holdout, config.seed)
    work, teacher = in_batch_layout(model, teacher, {k: v[split[0][:2]] for k, v in inputs.items()})
    twin = GraphModel(work, only=set(), train_quantized=True, learn_scales=config.learn_scales)
    first = {k: v[split[0][: config.batch]] for k, v in inputs.items()}
    twin_levels = check_quantized(twin, work, first)
    run = train(
        twin, teacher, inputs, config, split, labels=labels, on_epoch=on_epoch, progress=progress, started=started,
        title="qat", groups=variable_groups(twin, config),
        choose=(lambda epoch: choose(_changed(twin, model) if epoch else {})) if choose is not None else None,
    )  # fmt: skip
    changed: dict[str, np.ndarray] = {}
    trained = model
    if run.best_epoch:
        changed = _changed(twin, model)
        trained = write_back(model, changed)
        written = batched(trained) if work is not model else trained  # the layout the twin ran
        check_quantized(twin, written, first, when="after training: the written model")
    return QatResult(
        model=trained, changed=changed, training=run, twin_levels=twin_levels, train_samples=len(split[0]),
        holdout_samples=len(split[1]), seconds=time.perf_counter() - started,
    )  # fmt: skip


def variable_groups(twin: GraphModel, config: QatConfig) -> tuple[VariableGroup, ...]:
    """The twin's variables as QAT trains them: the shadows at ``learning_rate`` levels per step (a bias: 1/127 of
    its largest magnitude), whatever their gradients' size (an epsilon far below them); the scale multipliers at
    ``scale_learning_rate``, their LSQ-scaled gradients sized against Adam's usual epsilon (tiny, noisy ones move
    little)."""
    assert twin.quant is not None
    shadows = frozenset(twin.quant.shadows)
    scales = frozenset(name for name in twin.variables if name.endswith(MULTIPLIER))
    groups = [VariableGroup(shadows, config.learning_rate, SHADOW_EPSILON)] if shadows else []
    if scales:
        groups.append(VariableGroup(scales, config.scale_learning_rate))
    return tuple(groups)


def _changed(twin: GraphModel, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The initializers whose values the trained twin changes: its integers and scales as the graph stores them."""
    assert twin.quant is not None
    out = twin.quant.export()
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name in out}
    return {name: array for name, array in out.items() if not np.array_equal(array, stored[name])}


def check_quantized(
    twin: GraphModel, proto: onnx.ModelProto, feeds: dict[str, np.ndarray], *, when: str = "the fake-quant twin",
    tolerance: float = 1e-3,
) -> float:  # fmt: skip
    """The twin's worst difference from onnxruntime (graph optimizations off) on ``feeds``, in quantization levels.

    Layer by layer: onnxruntime's levels of every QuantizeLinear are the twin's inputs downstream, and each must
    be within one level of the twin's own (a float sum in another order may round a tie the other way; more is
    another computation). Each graph output computed in float must be within ``tolerance`` of its range. Raises
    :class:`~onnxopt.errors.UnsupportedOp` otherwise."""
    quantizers = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    names = [n.output[0] for n in quantizers]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    initializers = {t.name: t for t in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    for node in quantizers:
        if node.output[0] in outputs:
            continue
        zero = initializers.get(node.input[2]) if len(node.input) > 2 else None
        elem = zero.data_type if zero is not None else onnx.TensorProto.UINT8
        exposed.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], elem, None))
    runner = Runner(batch_free(exposed))
    results = dict(zip(runner.output_names, runner.run(feeds), strict=True))
    given = {name: results[name].astype(np.float32) for name in names}
    got = twin(feeds, keep=names, given=given)
    worst = 0.0
    for name in names:
        levels = float(np.max(np.abs(np.asarray(got[name]) - given[name]), initial=0.0))
        worst = max(worst, levels)
        if levels > 1.0:
            raise UnsupportedOp(f"qat: {when} differs from onnxruntime by {levels:g} levels at {name!r} (> 1)")
    for name in twin.output_names:
        value, reference = np.asarray(got[name]), results[name]
        if value.shape != reference.shape:
            raise UnsupportedOp(f"qat: {when} gives {name} shape {value.shape}, onnxruntime {reference.shape}")
        if reference.dtype.kind != "f" or not reference.size:
            continue
        error = float(np.max(np.abs(value.astype(np.float64) - reference))) / max(float(np.abs(reference).max()), 1e-6)
        if error > tolerance:
            raise UnsupportedOp(f"qat: {when} differs from onnxruntime by {error:.2e} of {name}'s range")
    return worst
