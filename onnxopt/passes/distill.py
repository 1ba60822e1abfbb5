"""Knowledge distillation inside the pipeline: the model so far is fine-tuned against the original model.

Matches: any model whose ops the trainable twin implements (:mod:`onnxopt.distill.graph_model`: the
Conv/Gemm/MatMul CNN op set, pooling, Resize, shape ops, LSTM) and whose outputs are the original's
(same names and order: pruning and refitting keep them). Typically right after ``prune-channels`` and
``reconstruct``: ``prune-channels:ratio=0.5,reconstruct,distill:epochs=5``.

Guarantees: only weight values change -- the trained values are written into the model's own
initializers (Conv/ConvTranspose weights and biases, Gemm/MatMul constants, BatchNormalization scale
and bias, PRelu slopes, LSTM weights), so names and structure stay and later passes and plans apply.
The original model is the teacher (its outputs on the run's ``--data`` are the soft targets, per position
for sequence outputs such as CTC logits; labels, when the data has them, add a cross-entropy term). A
seeded part of the data is held back from training and picks the best epoch; an epoch that does not
beat the untrained student on it is not kept, so the pass never makes the held-back agreement worse.
The twin is checked against onnxruntime before training and the written model after.

Declines (the model unchanged, the reason recorded): random data (there is nothing to learn from),
TensorFlow not installed (the ``tf`` extra), an op or attribute the twin lacks (named), a twin that
does not match onnxruntime, outputs that differ from the original's.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import onnx_ir as ir

from onnxopt.errors import OnnxoptError
from onnxopt.passes.base import INPUTS_PRUNED, KEPT_OUTPUTS, OptPass, PassLog


@dataclasses.dataclass(frozen=True)
class DistillPassConfig:
    epochs: int = 5
    batch: int = 32
    learning_rate: float = 1e-3  # Adam, cosine-decayed over the epochs
    temperature: float = 2.0
    alpha: float = 0.9  # weight of the teacher's soft targets when the data has labels
    holdout: float = 0.1  # of the data, held back from training to pick the best epoch
    samples: int = 4096  # samples of --data trained on (all of them when fewer)
    time_budget: float | None = None  # seconds of training at most
    mixup: float = 0.0  # > 0: train on Beta(mixup, mixup) blends of two samples, the teacher run on the blend
    # the result must stay within this of the original on the held-back samples (accuracy with labels, else
    # top-1 agreement); missing it exits 3 -- the model is still written, never passed off as fine
    max_drop: float | None = None
    # which weights train: all of them, or only the layers pruning changed (lost output channels or input
    # slices) -- the rest keeps what it learned, which holds up better when the data is small
    train: Literal["all", "pruned"] = "all"
    hard: float = 0.0  # weight of a cross-entropy with the original's top-1 class per position

    def __post_init__(self) -> None:
        if self.max_drop is not None and not 0 <= self.max_drop < 1:
            raise ValueError("max_drop must be in [0, 1)")
        if self.epochs < 1 or self.batch < 1 or self.samples < 2:
            raise ValueError("epochs and batch must be at least 1, samples at least 2")
        if self.learning_rate <= 0 or self.temperature <= 0:
            raise ValueError("learning_rate and temperature must be positive")
        if not 0 <= self.alpha <= 1 or not 0 < self.holdout < 1:
            raise ValueError("alpha must be in [0, 1] and holdout in (0, 1)")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError("time_budget must be positive")


class DistillPass(OptPass):
    """Fine-tune the model's weights on the original model's outputs (knowledge distillation, in place)."""

    name = "distill"
    Config = DistillPassConfig
    lossless = False
    learns_from_data = True

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        context = self.require_context()
        if context.is_random:
            log.skip("model", "distillation learns from the run's data: give --data (random inputs teach nothing)")
            return
        try:
            from onnxopt.distill.finetune import FinetuneConfig, finetune
            from onnxopt.distill.graph_model import UnsupportedOp
        except ImportError as e:  # pragma: no cover - the package is part of onnxopt
            raise OnnxoptError(str(e)) from e
        inputs, labels = _gather(context, self.config.samples)
        config = FinetuneConfig(
            epochs=self.config.epochs, batch=self.config.batch, learning_rate=self.config.learning_rate,
            temperature=self.config.temperature, alpha=self.config.alpha, holdout=self.config.holdout,
            time_budget=self.config.time_budget, seed=context.seed, mixup=self.config.mixup,
            only=_pruned_weights(model) if self.config.train == "pruned" else None, hard=self.config.hard,
        )  # fmt: skip
        if config.only is not None and not config.only:
            log.skip("model", "train=pruned: no layer was pruned before distill (run prune-channels first)")
            return
        student = ir.serde.serialize_model(model)
        teacher = ir.serde.serialize_model(context.original_model())
        try:
            result = finetune(student, teacher, inputs, config, labels=labels, progress=context.progress)
        except (UnsupportedOp, OnnxoptError) as e:
            log.skip("model", str(e))
            return
        for row in result.history:
            log.detail(
                epoch=row["epoch"],
                loss=round(row["loss"], 5),
                held_back_loss=round(row["held_back_loss"], 5),
                held_back_agreement=round(row["held_back"], 4),
            )
        budget = " (stopped by time_budget)" if result.stopped_by_budget else ""
        log.note(
            f"trained {len(result.history)} epoch(s) on {result.train_samples} samples in {result.seconds:.0f} s"
            f"{budget}; agreement with the original on {result.holdout_samples} held-back samples "
            f"{result.before:.4f} -> {result.after:.4f}"
            + (f" (epoch {result.best_epoch} kept)" if result.best_epoch else " (no epoch improved: unchanged)")
        )
        self._check_budget(log, result)
        if not result.best_epoch:
            return
        trained = {t.name: t for t in result.model.graph.initializer}
        for name, value in model.graph.initializers.items():
            if name in trained and value.const_value is not None:
                array = ir.serde.deserialize_tensor(trained[name]).numpy()
                if not np.array_equal(array, value.const_value.numpy()):
                    value.const_value = ir.tensor(array, name=name)
                    log.count("weights trained")

    def _check_budget(self, log: PassLog, result) -> None:
        """``max_drop`` on the held-back samples: accuracy against the original's when labels exist, else
        1 - top-1 agreement with the original."""
        if result.teacher_accuracy is not None and result.student_accuracy is not None:
            drop = result.teacher_accuracy - result.student_accuracy
            measured = f"accuracy {result.student_accuracy:.4f} vs the original's {result.teacher_accuracy:.4f}"
        else:
            drop = 1.0 - result.after
            measured = f"agreement with the original {result.after:.4f}"
        where = f"on {result.holdout_samples} held-back samples"
        if self.config.max_drop is None:
            return
        if drop > self.config.max_drop:
            log.miss(f"{measured} {where}: a drop of {drop:.4f} > max_drop {self.config.max_drop:g}")
        else:
            log.note(f"budget met: {measured} {where} (drop {drop:.4f} <= {self.config.max_drop:g})")


def _pruned_weights(model: ir.Model) -> frozenset[str]:
    """Weight and bias initializers of the layers prune-channels changed (recorded in ``node.meta``)."""
    names = set()
    for node in model.graph:
        if node.meta.get(KEPT_OUTPUTS) is None and not node.meta.get(INPUTS_PRUNED):
            continue
        names.update(v.name for v in node.inputs[1:] if v is not None and v.name and v.is_initializer())
    return frozenset(names)


def _gather(context, limit: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Up to ``limit`` samples of the run's data in memory: feeds by input name, and labels if all have them."""
    parts: dict[str, list[np.ndarray]] = {}
    labels: list[np.ndarray] = []
    has_labels = True
    for batch in context.data_batches(limit):
        for name, array in batch.feeds.items():
            parts.setdefault(name, []).append(array)
        if batch.labels is None:
            has_labels = False
        else:
            labels.append(batch.labels)
    inputs = {name: np.concatenate(arrays)[:limit] for name, arrays in parts.items()}
    label_array = np.concatenate(labels)[:limit].astype(np.int64).reshape(-1) if has_labels and labels else None
    return inputs, label_array
