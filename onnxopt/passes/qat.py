"""Quantization-aware fine-tuning inside the pipeline: the quantized model trained against the float original.

Matches: a QDQ model -- what ``quantize`` writes: QuantizeLinear -> DequantizeLinear pairs on activations,
int8 weights and int32 biases read through DequantizeLinear -- whose ops the trainable twin implements
(:mod:`onnxopt.distill.graph_model`) and whose outputs are the original's (same names and order). Run it
right after ``quantize``: ``quantize,qat:epochs=3``.

The math (:mod:`onnxopt.distill.fake_quant`): the twin computes onnxruntime's integers -- ``q =
saturate(round_half_to_even(x / s) + z)``, ``x' = (q - z) * s``, per tensor or per channel -- and trains
through them: straight-through rounding, no gradient where saturated; int8 weights and int32 biases become
float shadows (``w_q * s_w``, ``b_q * s_x * s_w``) fake-quantized in the forward pass to the levels they
may take (weights symmetric within the stored bound, 63 or 127); with ``learn_scales`` every scale learns
with LSQ's step-size gradient (zero points are kept; scales a data-movement op's input and output share
stay shared). The loss and the held-back selection are the ``distill`` pass's (:mod:`onnxopt.distill.finetune`).

Guarantees: only initializer values change -- the kept epoch's int8 levels, scales and int32 biases
(recomputed at ``s_x * s_w`` with the new scales) in the same initializers, every node, name, type and
shape kept, so the runtime audit, plans and later passes apply. The twin is checked against onnxruntime
before training, and the written model against the twin after (each quantizer within one level); a seeded
part of the data is held back and picks the best epoch, and none better than the start leaves the model
unchanged. Deterministic for the run's seed.

Declines (the model unchanged, the reason recorded in one line): random data, TensorFlow not installed
(the ``tf`` extra), a model that is not quantized, an original that is quantized too (no float teacher), an
op or attribute the twin lacks (named), a twin or written model that does not match onnxruntime, outputs
that differ from the original's.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir

from onnxopt.distill.batch_memory import available_bytes, fitting_batch, memory_said
from onnxopt.distill.qat import QatConfig, QatResult, is_quantized, qat
from onnxopt.errors import OnnxoptError, one_line
from onnxopt.passes.base import OptPass, PassContext, PassLog
from onnxopt.passes.distill import gather_samples, record_training


@dataclasses.dataclass(frozen=True)
class QatPassConfig:
    epochs: int = dataclasses.field(default=3, metadata={"help": "passes over the training samples"})
    batch: int = dataclasses.field(default=32, metadata={"help": "training batch size (samples per optimizer step)"})
    learning_rate: float = dataclasses.field(
        default=1e-2,
        metadata={"help": "Adam's step on the weights' float shadows, in quantization levels (cosine-decayed)"},
    )
    scale_learning_rate: float = dataclasses.field(
        default=1e-3, metadata={"help": "Adam on each learned scale's multiplier: about this relative step at most"}
    )
    learn_scales: bool = dataclasses.field(
        default=True, metadata={"help": "learn the quantizers' scales (LSQ); false: only the integer levels train"}
    )
    temperature: float = dataclasses.field(
        default=2.0, metadata={"help": "softens the original's and the quantized model's class scores in the loss"}
    )
    alpha: float = dataclasses.field(
        default=0.9, metadata={"help": "weight of the original's outputs against the labels, when the data has them"}
    )
    holdout: float = dataclasses.field(
        default=0.1, metadata={"help": "of the samples, held back from training to pick the best epoch"}
    )
    time_budget: float | None = dataclasses.field(default=None, metadata={"help": "seconds of fine-tuning at most"})
    samples: int = dataclasses.field(default=512, metadata={"help": "samples of --data used (all when fewer)"})
    detection_loss: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "a detector's anchor outputs: KL on the scores and score-weighted box error "
            "(onnxopt/distill/detection_loss.py) instead of the relative MSE over every anchor"
        },
    )

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise ValueError("samples must be at least 2")
        self.qat_config(seed=0)  # QatConfig checks the training parameters

    def qat_config(self, *, seed: int) -> QatConfig:
        shared = {f.name for f in dataclasses.fields(QatConfig)}
        return QatConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in shared}, seed=seed)


class QatPass(OptPass):
    """Fine-tune a quantized model's integers and scales on the original's outputs (quantization-aware)."""

    name = "qat"
    Config = QatPassConfig
    lossless = False
    learns_from_data = True

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        context = self.require_context()
        if context.is_random:
            log.skip("model", "qat learns from the run's data: give --data (random inputs teach nothing)")
            return
        student = ir.serde.serialize_model(model)
        if not is_quantized(student):
            log.skip("model", "the model is not quantized (no QuantizeLinear/DequantizeLinear): run quantize first")
            return
        teacher = ir.serde.serialize_model(context.original_model())
        if is_quantized(teacher):
            log.skip("model", "the original model is quantized too: qat needs the float model as its teacher")
            return
        config = self.config.qat_config(seed=context.seed)
        result = fine_tune(context, student, teacher, config, self.config.samples, log)
        if isinstance(result, str):  # no TensorFlow, an op the twin lacks, a twin unlike onnxruntime
            log.skip("model", result)
            return
        for name, array in result.changed.items():
            value = model.graph.initializers.get(name)
            if value is None or value.const_value is None:
                continue
            value.const_value = ir.tensor(array, name=name)
            log.count("integer tensors retrained" if array.dtype.kind in "iu" else "scales and float weights trained")


def fine_tune(
    context: PassContext, student: onnx.ModelProto, teacher: onnx.ModelProto, config: QatConfig, samples: int,
    log: PassLog, *, judged: tuple[int, int] = (0, 0), choose: Callable[[dict[str, np.ndarray]], float] | None = None,
) -> QatResult | str:  # fmt: skip
    """Quantization-aware fine-tuning of ``student`` on ``teacher``'s outputs over up to ``samples`` of the run's
    data but its samples ``judged`` (``[start, stop)``: those a budget judges the result on), the batch capped to
    fit memory; each epoch and the outcome recorded in ``log``; ``choose`` picks the epoch kept
    (:func:`~onnxopt.distill.qat.qat`). Returns the result, or why it could not run (one line): shared by this
    pass and ``quantize:qat=auto``."""
    inputs, labels = without_judged(*gather_samples(context, samples + judged[1] - judged[0]), judged, samples)
    batch = fitting_batch(student, config.batch, available_bytes())
    config = dataclasses.replace(config, metric=context.metric)  # the epoch kept is chosen as budgets read
    if batch < config.batch:  # a batch that does not fit gets the process killed, not a slower run
        log.note(f"qat: batch {config.batch} -> {batch}: {memory_said()}")
        config = dataclasses.replace(config, batch=batch)
    try:
        result = qat(student, teacher, inputs, config, labels=labels, progress=context.progress, choose=choose)
    except OnnxoptError as e:
        return one_line(e)
    kept = ""  # with no epoch kept nothing moved: no count
    if result.changed:
        moved, total = levels_moved(student, result.changed)
        kept = f"{moved:,} of {total:,} int8 weight levels moved; "
    record_training(
        log, result.training, verb="qat: fine-tuned", samples=result.train_samples, held_back=result.holdout_samples,
        seconds=result.seconds, also=f"twin within {result.twin_levels:g} level(s) of onnxruntime; {kept}",
    )  # fmt: skip
    return result


def levels_moved(student: onnx.ModelProto, changed: dict[str, np.ndarray]) -> tuple[int, int]:
    """(how many int8 weight levels ``changed`` holds other than ``student``'s, how many ``student`` stores): the
    int8 constants a DequantizeLinear reads as its input 0, the weights fine-tuning trains."""
    dequantized = {n.input[0] for n in student.graph.node if n.op_type == "DequantizeLinear"}
    moved = total = 0
    for tensor in student.graph.initializer:
        if tensor.name not in dequantized or tensor.data_type != onnx.TensorProto.INT8:
            continue
        total += int(np.prod(tensor.dims, dtype=np.int64))
        if tensor.name in changed:
            moved += int(np.count_nonzero(changed[tensor.name] != onnx.numpy_helper.to_array(tensor)))
    return moved, total


def without_judged(
    inputs: dict[str, np.ndarray], labels: np.ndarray | None, judged: tuple[int, int], samples: int
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The first ``samples`` of ``inputs`` (and ``labels``) outside ``judged`` (``[start, stop)``)."""
    start, stop = judged

    def keep(array: np.ndarray) -> np.ndarray:
        return np.concatenate([array[:start], array[stop:]])[:samples]

    return {name: keep(array) for name, array in inputs.items()}, keep(labels) if labels is not None else None


def unavailable(context: PassContext, minimum: int) -> str | None:
    """Why quantization-aware fine-tuning cannot run here (what it would need), or None."""
    if context.is_random:
        return f"it needs --data (at least {minimum} samples; random inputs teach nothing)"
    if context.real_samples() < minimum:
        return f"it needs at least {minimum} samples of --data (the run has {context.real_samples()})"
    if importlib.util.find_spec("tensorflow") is None:
        return "it needs TensorFlow: pip install 'onnxopt[tf]'"
    return None
