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

from onnxopt.distill.batch_memory import available_bytes, fitting_batch, memory_said
from onnxopt.distill.features import kept_width_features
from onnxopt.distill.finetune import (
    FinetuneConfig,
    FinetuneResult,
    Training,
    agreement_with,
    finetune,
    held_back_split,
)
from onnxopt.errors import OnnxoptError
from onnxopt.passes._config import validate_literals
from onnxopt.passes.base import INPUTS_PRUNED, KEPT_OUTPUTS, OptPass, PassLog


@dataclasses.dataclass(frozen=True)
class DistillPassConfig:
    epochs: int = dataclasses.field(default=5, metadata={"help": "passes over the training samples"})
    batch: int = dataclasses.field(default=32, metadata={"help": "training batch size (samples per optimizer step)"})
    learning_rate: float = dataclasses.field(default=1e-3, metadata={"help": "Adam, cosine-decayed over the epochs"})
    temperature: float = dataclasses.field(
        default=2.0, metadata={"help": "softens the teacher's and the student's outputs in the distillation loss"}
    )
    alpha: float = dataclasses.field(
        default=0.9, metadata={"help": "weight of the teacher's soft targets when the data has labels"}
    )
    holdout: float = dataclasses.field(
        default=0.1, metadata={"help": "of the data, held back from training to pick the best epoch"}
    )
    time_budget: float | None = dataclasses.field(default=None, metadata={"help": "seconds of training at most"})
    mixup: float = dataclasses.field(
        default=0.0,
        metadata={"help": "> 0: train on Beta(mixup, mixup) blends of two samples, the teacher run on the blend"},
    )
    hard: float = dataclasses.field(
        default=0.0, metadata={"help": "weight of a cross-entropy with the original's top-1 class per position"}
    )
    feature_weight: float = dataclasses.field(
        default=0.0,
        metadata={
            "help": "> 0: also match up to 8 intermediate tensors that kept their width (residual streams, the "
            "heads' inputs) to the original's, normalized MSE at this weight"
        },
    )
    # None: a detector's outputs (read as detections) lose their score columns under the relative MSE -- on the
    # glyph detector pruned by 30 %, distillation with it read no detection on its held-back samples after any
    # epoch, with the detection loss its held-out boxes' recall and precision rose from 0.835 / 0.494 to
    # 0.909 / 0.870 (docs/PASSES.md)
    detection_loss: bool | None = dataclasses.field(
        default=None,
        metadata={
            "help": "a detector's anchor outputs: KL on the scores and score-weighted box error "
            "(onnxopt/distill/detection_loss.py) instead of the relative MSE over every anchor; default: wherever "
            "an output reads as detections (true: say where it cannot apply; false: never)"
        },
    )
    # -- the pass's own parameters (the ones above are FinetuneConfig's)
    samples: int = dataclasses.field(
        default=4096, metadata={"help": "samples of --data trained on (all of them when fewer)"}
    )
    # missing it exits 3 -- the model is still written, never passed off as fine
    max_drop: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "the result must stay within this of the original on the held-back samples "
            "(accuracy with labels, else the agreement --metric reads: whole sequences for CTC heads)"
        },
    )
    # the rest keeps what it learned, which holds up better when the data is small
    train: Literal["all", "pruned"] = dataclasses.field(
        default="all",
        metadata={
            "help": "which weights train: all of them, or only the layers pruning changed "
            "(lost output channels or input slices)"
        },
    )

    def __post_init__(self) -> None:
        validate_literals(self)
        if self.samples < 2:
            raise ValueError("samples must be at least 2")
        if self.max_drop is not None and not 0 <= self.max_drop < 1:
            raise ValueError("max_drop must be in [0, 1)")
        self.finetune_config(seed=0)  # FinetuneConfig checks the training parameters

    def finetune_config(self, *, seed: int, only: frozenset[str] | None = None, metric: str = "auto") -> FinetuneConfig:
        shared = {f.name for f in dataclasses.fields(FinetuneConfig)}
        values = {k: v for k, v in dataclasses.asdict(self).items() if k in shared}
        return FinetuneConfig(**values, seed=seed, only=only, metric=metric)


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
        inputs, labels = gather_samples(context, self.config.samples)
        only = _pruned_weights(model) if self.config.train == "pruned" else None
        if only is not None and not only:
            log.skip("model", "train=pruned: no layer was pruned before distill (run prune-channels first)")
            return
        config = self.config.finetune_config(seed=context.seed, only=only, metric=context.metric)
        student = ir.serde.serialize_model(model)
        teacher = ir.serde.serialize_model(context.original_model())
        if config.feature_weight > 0:
            features = kept_width_features(student, teacher)
            if features:
                log.note(
                    f"matching {len(features)} intermediate tensor(s) that kept their width (last: {features[-1]})"
                )
            else:
                log.note("feature_weight: no intermediate tensor kept its width and changed; the outputs alone teach")
            config = dataclasses.replace(config, features=tuple(features))
        batch = fitting_batch(student, config.batch, available_bytes())
        if batch < config.batch:  # a batch that does not fit gets the process killed, not a slower run
            log.note(f"batch {config.batch} -> {batch}: {memory_said()}")
            config = dataclasses.replace(config, batch=batch)
        try:
            result = finetune(student, teacher, inputs, config, labels=labels, progress=context.progress)
        except OnnxoptError as e:  # no TensorFlow, an op the twin lacks, outputs unlike the original's
            log.skip("model", str(e))
            self._check_untrained(log, student, teacher, inputs, config)
            return
        record_training(log, result, verb="trained", samples=result.train_samples,
                        held_back=result.holdout_samples, seconds=result.seconds)  # fmt: skip
        self._check_budget(log, result)
        if not result.best_epoch:
            return
        for name, array in result.weights.items():
            value = model.graph.initializers.get(name)
            if (
                value is not None
                and value.const_value is not None
                and not np.array_equal(array, value.const_value.numpy())
            ):
                value.const_value = ir.tensor(array, name=name)
                log.count("weights trained")

    def _check_untrained(self, log: PassLog, student, teacher, inputs: dict[str, np.ndarray], config) -> None:
        """``max_drop`` still holds when nothing could be trained: the model as it came is judged on the same
        held-back samples, in onnxruntime alone -- a pruned model that collapsed does not pass silently."""
        if self.config.max_drop is None:
            return
        _, held = held_back_split(len(next(iter(inputs.values()))), config.holdout, config.seed)
        try:
            agreement = agreement_with(
                student, teacher, {k: v[held] for k, v in inputs.items()}, config.batch, config.metric
            )
        except OnnxoptError as e:  # outputs unlike the original's: nothing to compare them with
            log.miss(f"max_drop could not be checked: {e}")
            return
        self._judge(log, 1.0 - agreement, f"untrained; agreement with the original {agreement:.4f}", len(held))

    def _check_budget(self, log: PassLog, result: FinetuneResult) -> None:
        """``max_drop`` on the held-back samples: accuracy against the original's when labels exist, else
        1 - the agreement with the original, read as the outputs are read (whole sequences for a CTC head)."""
        if result.teacher_accuracy is not None and result.student_accuracy is not None:
            drop = result.teacher_accuracy - result.student_accuracy
            measured = f"accuracy {result.student_accuracy:.4f} vs the original's {result.teacher_accuracy:.4f}"
        else:
            drop = 1.0 - result.after
            measured = f"{result.agreement} with the original {result.after:.4f}"
        self._judge(log, drop, measured, result.holdout_samples)

    def _judge(self, log: PassLog, drop: float, measured: str, samples: int) -> None:
        if self.config.max_drop is None:
            return
        where = f"on {samples} held-back samples"
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


def record_training(
    log: PassLog, run: FinetuneResult | Training, *, verb: str, samples: int, held_back: int, seconds: float,
    also: str = "",
) -> None:  # fmt: skip
    """One detail row per epoch and one note on how a fine-tuning went (``distill``, ``qat``): epochs on how many
    samples in how long, ``also`` (what else was checked), held-back agreement before and after, the kept epoch."""
    for row in run.history:
        log.detail(epoch=row["epoch"], loss=round(row["loss"], 5), held_back_loss=round(row["held_back_loss"], 5),
                   held_back_agreement=round(row["held_back"], 4))  # fmt: skip
    budget = " (stopped by time_budget)" if run.stopped_by_budget else ""
    by = ", chosen by the accuracy budget's measure" if run.chosen else ""
    log.note(
        f"{verb} {len(run.history)} epoch(s) on {samples} samples in {seconds:.0f} s{budget}; {also}"
        f"{run.agreement} with the original on {held_back} held-back samples {run.before:.4f} -> {run.after:.4f}"
        + (f" (epoch {run.best_epoch} kept{by})" if run.best_epoch else f" (no epoch improved{by}: unchanged)")
    )
    if run.loss_note:
        log.note(run.loss_note)


def gather_samples(context, limit: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
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
