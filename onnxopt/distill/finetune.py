"""Fine-tune an ONNX student against an ONNX teacher (Hinton et al. 2015), weights written back into the graph.

:func:`finetune` builds the student's trainable twin (:mod:`onnxopt.distill.graph_model`), checks it against
onnxruntime on the first batch (declining, by op, what it cannot match), and trains it with Adam on the
teacher's outputs, which onnxruntime computes batch by batch as training goes (streamed: memory does not
grow with the data). The loss per output:

* **class scores** (the output of a Softmax, or of a Gemm/MatMul/Conv with at least two classes on the
  last axis, through Reshape/Transpose/Flatten/Squeeze): ``T^2 * KL(softmax(t/T) || softmax(s/T))`` over
  the class axis, averaged over every other position -- so a CTC recognizer's ``[T, N, C]`` logits are
  distilled per time step. A teacher output that is already a Softmax gives ``log p`` as its logits.
  With labels (``[N]`` class indices) and one ``[N, C]`` output, ``(1 - alpha)`` of the loss is the
  cross-entropy with them;
* **everything else** (boxes, scores after a Sigmoid, regressions): mean squared error, divided by the
  teacher output's mean square so outputs of different scales weigh alike;
* with ``features`` (intermediate tensors the student computes at the teacher's width,
  :mod:`onnxopt.distill.features`), ``feature_weight`` times the mean over them of the same normalized MSE
  against the teacher's tensor of that name.

A seeded ``holdout`` part of the data is never trained on: the agreement with the teacher on it, read as the
outputs are read (:mod:`onnxopt.evaluate.readings`: top-1 for classifiers, whole greedy-decoded sequences for
CTC heads, confident anchors for detectors; else the mean over outputs of top-1 per position for class scores
and ``1 - relative MSE`` for the rest), is measured after every epoch, ties broken
by the distillation loss there, and the best epoch's weights are kept -- training that only hurts returns
the student unchanged. (The loss alone misleads: on an 8,210-class CTC head the KL kept falling while the
agreement fell with it.) Adam's step follows a cosine decay over the epochs. Training stops
early at ``time_budget`` seconds. The trained weights are written into the student's own initializers
(names, shapes and graph unchanged) and the result is checked against the twin in onnxruntime.

Deterministic for a seed: TensorFlow op determinism, oneDNN off, seeded shuffles.

:func:`train` is the loop alone (any twin, variable groups at their own learning rates): quantization-aware
fine-tuning (:mod:`onnxopt.distill.qat`) runs it on a fake-quantized twin.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.distill.batch_layout import batched, confirmed_batched, fixed_batch_one
from onnxopt.distill.detection_loss import detection_loss
from onnxopt.distill.features import with_outputs
from onnxopt.distill.graph_model import GraphModel, UnsupportedOp, check_against
from onnxopt.errors import DataError, OnnxoptError
from onnxopt.evaluate.readings import ModelReading, OutputReading, ReadingCounter, read_outputs
from onnxopt.progress import NullProgress, Progress
from onnxopt.runtime import Runner

_PASS_THROUGH = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 5
    batch: int = 32
    learning_rate: float = 1e-3  # Adam, cosine-decayed to 0 over the epochs
    temperature: float = 2.0
    alpha: float = 0.9  # weight of the teacher term when labels exist
    holdout: float = 0.1  # kept out of training, to pick the best epoch
    time_budget: float | None = None  # seconds of training at most
    seed: int = 0
    # function matching (Beyer et al. 2022): train on mixes of two samples, the teacher run on the same mix
    mixup: float = 0.0  # Beta(mixup, mixup) mixing weights; 0: the samples as they are
    only: frozenset[str] | None = None  # train just these initializers; None: every trainable weight
    # weight of a cross-entropy with the teacher's top-1 class at every position (hard distillation): what
    # top-1 agreement needs when the soft targets' long tail dominates the KL (8,210 CTC classes)
    hard: float = 0.0
    metric: str = "auto"  # how the held-back agreement reads the outputs (onnxopt.evaluate.readings)
    # intermediate tensors matched to the teacher's (onnxopt.distill.features), and the weight of their loss
    features: tuple[str, ...] = ()
    feature_weight: float = 0.0
    # a detector's anchor outputs taught by onnxopt.distill.detection_loss instead of the relative MSE: True (asked
    # for: a note says where it could not apply), None (wherever an output reads as detections: the distill pass's
    # and command's default), False (never: the default here and for qat)
    detection_loss: bool | None = False

    def __post_init__(self) -> None:
        if self.mixup < 0 or self.hard < 0 or self.feature_weight < 0:
            raise ValueError("mixup, hard and feature_weight must be 0 or more")
        if self.epochs < 1 or self.batch < 1:
            raise ValueError("epochs and batch must be at least 1")
        if self.learning_rate <= 0 or self.temperature <= 0:
            raise ValueError("learning_rate and temperature must be positive")
        if not 0 <= self.alpha <= 1 or not 0 < self.holdout < 1:
            raise ValueError("alpha must be in [0, 1] and holdout in (0, 1)")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError("time_budget must be positive")


@dataclasses.dataclass
class FinetuneResult:
    model: onnx.ModelProto  # the student with its trained weights
    weights: dict[str, np.ndarray]  # the kept values of every trained initializer, by name
    history: list[dict[str, float]]  # per epoch: loss and held-back agreement
    before: float  # held-back agreement (or SNR score) before training
    after: float  # ... of the kept weights
    best_epoch: int  # 0: no epoch improved on the start
    twin_error: float  # the twin's worst relative error against onnxruntime before training
    train_samples: int
    holdout_samples: int
    seconds: float
    stopped_by_budget: bool
    # with labels and one [N, C] output: the held-back accuracy of the teacher and of the kept student
    teacher_accuracy: float | None = None
    student_accuracy: float | None = None
    agreement: str = "agreement"  # what before/after measure: "sequence agreement", "top-1 agreement", ...
    loss_note: str = ""  # with detection_loss: which outputs it taught, or why none
    chosen: list[float] = dataclasses.field(default_factory=list)  # finetune never takes a chooser: always empty


def output_kinds(proto: onnx.ModelProto) -> dict[str, str]:
    """``"classes"`` or ``"values"`` per graph output (see the module docstring)."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    kinds = {}
    for output in proto.graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type in _PASS_THROUGH:
            node = producers.get(node.input[0])
        dims = output.type.tensor_type.shape.dim
        last = dims[-1].dim_value if dims else 0
        is_scores = node is not None and (
            (node.op_type in ("Softmax", "LogSoftmax") and _over_last_axis(node, len(dims), opset))
            or (node.op_type in ("Gemm", "MatMul", "Conv") and (last >= 2 or not dims or not last))
        )
        kinds[output.name] = "classes" if is_scores else "values"
    return kinds


def _over_last_axis(node: onnx.NodeProto, rank: int, opset: int) -> bool:
    """A Softmax normalizing the last axis (the class axis the loss uses); an unknown rank passes."""
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
    return rank == 0 or axis in (-1, rank - 1)


def held_back_split(count: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-back) sample indices: a seeded ``holdout`` fraction (at least one) is held back."""
    order = np.random.default_rng(seed).permutation(count)
    held = max(1, round(holdout * count))
    if count - held < 1:
        raise DataError(f"fine-tuning needs at least 2 samples, got {count}")
    return np.sort(order[held:]), np.sort(order[:held])


def agreement_with(
    student: onnx.ModelProto, teacher: onnx.ModelProto, inputs: dict[str, np.ndarray], batch: int = 32,
    metric: str = "auto",
) -> float:  # fmt: skip
    """The agreement of ``student`` with ``teacher`` on ``inputs`` in onnxruntime alone (no TensorFlow), read as
    :class:`AgreementMeter` reads it."""
    runners = [Runner(batch_free(m)) for m in (student, teacher)]
    probabilities = {out for node in teacher.graph.node if node.op_type == "Softmax" for out in node.output}
    names = [o.name for o in teacher.graph.output]
    if [o.name for o in student.graph.output] != names:
        raise OnnxoptError("the student's outputs must be the teacher's (same names, same order)")
    kinds = output_kinds(student)
    count = len(next(iter(inputs.values())))
    meter: AgreementMeter | None = None
    batch = reading_batch(teacher, batch)
    for start in range(0, count, batch):
        feeds = {k: v[start : start + batch] for k, v in inputs.items()}
        got, want = (r.run(feeds) for r in runners)
        logs = [_target(n, w, probabilities, kinds) for n, w in zip(names, want, strict=True)]
        if meter is None:
            meter = AgreementMeter(names, [kinds[n] for n in names], logs, len(next(iter(feeds.values()))), metric)
        meter.add(got, logs, len(next(iter(feeds.values()))))
    return meter.value() if meter is not None else 1.0


class AgreementMeter:
    """Held-back agreement of a student's outputs with the teacher's targets, batch by batch: as the outputs are
    read (:func:`~onnxopt.evaluate.readings.read_outputs`, chosen from the first batch of targets), else the
    sample-weighted mean over outputs of top-1 per position (class scores) or ``1 - relative MSE``. The batches
    must keep the model's own layout: for a graph with a fixed batch of 1, one sample each (:func:`reading_batch`)."""

    def __init__(self, names: list[str], kinds: list[str], first: list[np.ndarray], rows: int, metric: str) -> None:
        self.kinds = kinds
        self.reading: ModelReading = read_outputs(names, first, rows, metric)
        self.counter = ReadingCounter(self.reading) if self.reading.outputs else None
        self.total = self.rows = 0.0

    @property
    def metric(self) -> str:
        return self.reading.metric if self.counter is not None else "agreement"

    def add(self, outputs: list[np.ndarray], targets: list[np.ndarray], rows: int) -> None:
        """One batch of ``rows`` samples: the student's ``outputs`` against the teacher's ``targets``."""
        if self.counter is not None:
            self.counter.add(targets, [np.asarray(o) for o in outputs])
            return
        self.total += rows * _agreement(outputs, targets, self.kinds)
        self.rows += rows

    def value(self) -> float:
        if self.counter is not None:
            return self.counter.value()
        return self.total / self.rows if self.rows else 1.0


def reading_batch(model: onnx.ModelProto, batch: int) -> int:
    """The batch to read ``model``'s outputs in: ``batch``, or 1 when an input of ``model`` has a fixed leading
    dimension of 1. Such a graph (a YOLOX export) may reshape with that batch: run batch-free, a batch of
    samples comes out as one ``[1, ...]`` array whose rows mix samples and channels, not one row per sample --
    training compares it position by position alike in both models, but reading it needs the model's layout
    (:mod:`onnxopt.distill.batch_layout` rewrites such graphs to carry a batch where onnxruntime confirms it)."""
    return 1 if fixed_batch_one(model) else batch


def in_batch_layout(
    student: onnx.ModelProto, teacher: onnx.ModelProto, probe: dict[str, np.ndarray]
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(student, teacher) to train and read on: both rewritten to carry a batch one sample per row
    (:func:`~onnxopt.distill.batch_layout.confirmed_batched`, checked on ``probe``) when both rewrites are
    confirmed, else both as they are (and a graph with a fixed batch of 1 is read one sample at a time)."""
    pair = confirmed_batched(student, probe), confirmed_batched(teacher, probe)
    if pair[0] is None or pair[1] is None:
        return student, teacher
    return pair[0], pair[1]


#: Adam's epsilon where a group names none (Keras's default)
ADAM_EPSILON = 1e-7


@dataclasses.dataclass(frozen=True)
class VariableGroup:
    """Twin variables trained at their own learning rate (their own Adam, cosine-decayed like the rest).

    ``epsilon`` is that Adam's. Keras adds it before the bias correction: at step ``t`` a steady gradient ``g``
    moves a variable ``learning_rate * |g| / (|g| + epsilon / sqrt(1 - 0.999^t))``, so a group whose gradients are
    tiny in its variables' units needs one far below them."""

    names: frozenset[str]
    learning_rate: float
    epsilon: float = ADAM_EPSILON


@dataclasses.dataclass
class Training:
    """What :func:`train` kept: the best epoch's variables (also assigned to the twin) and how it got there."""

    weights: dict[str, np.ndarray]
    history: list[dict[str, float]]
    before: float
    after: float
    best_epoch: int
    stopped_by_budget: bool
    teacher_accuracy: float | None = None
    student_accuracy: float | None = None
    agreement: str = "agreement"  # what before/after measure (AgreementMeter.metric)
    loss_note: str = ""  # with detection_loss: which outputs it taught, or why none
    # with train's ``choose``: its score of the start, then of each epoch (the epoch kept is the highest)
    chosen: list[float] = dataclasses.field(default_factory=list)


def finetune(
    student: onnx.ModelProto,
    teacher: onnx.ModelProto,
    inputs: dict[str, np.ndarray],
    config: FinetuneConfig | None = None,
    *,
    labels: np.ndarray | None = None,
    on_epoch: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> FinetuneResult:
    """Train ``student`` on ``teacher``'s outputs over ``inputs`` (every array ``[N, ...]``); ``progress``
    gets one step per batch of each epoch."""
    config = config or FinetuneConfig()
    deterministic(config.seed)
    started = time.perf_counter()

    train_idx, hold_idx = held_back_split(len(next(iter(inputs.values()))), config.holdout, config.seed)

    work, teacher = in_batch_layout(student, teacher, {k: v[train_idx[:2]] for k, v in inputs.items()})
    twin = GraphModel(work, only=set(config.only) if config.only is not None else None)
    first = {k: v[train_idx[: config.batch]] for k, v in inputs.items()}
    twin_error = check_against(twin, Runner(batch_free(work)).run, first)
    run = train(
        twin, teacher, inputs, config, (train_idx, hold_idx), labels=labels, on_epoch=on_epoch, progress=progress,
        started=started,
    )  # fmt: skip
    trained = write_back(student, run.weights)
    check_against(twin, Runner(batch_free(batched(trained) if work is not student else trained)).run, first)
    return FinetuneResult(
        model=trained, weights=run.weights, history=run.history, before=run.before, after=run.after,
        best_epoch=run.best_epoch, twin_error=twin_error,
        train_samples=len(train_idx), holdout_samples=len(hold_idx), seconds=time.perf_counter() - started,
        stopped_by_budget=run.stopped_by_budget, teacher_accuracy=run.teacher_accuracy,
        student_accuracy=run.student_accuracy, agreement=run.agreement, loss_note=run.loss_note,
    )  # fmt: skip


def deterministic(seed: int):
    """TensorFlow seeded and its ops deterministic (oneDNN is off from the import); returns the module."""
    from onnxopt.convert import tf_import

    tf = tf_import.tensorflow()
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    return tf


def train(
    twin: GraphModel,
    teacher: onnx.ModelProto,
    inputs: dict[str, np.ndarray],
    config: FinetuneConfig,
    split: tuple[np.ndarray, np.ndarray],
    *,
    labels: np.ndarray | None = None,
    on_epoch: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    started: float | None = None,
    title: str = "distill",
    groups: tuple[VariableGroup, ...] = (),
    choose: Callable[[int], float] | None = None,
) -> Training:
    """Train ``twin`` on ``teacher``'s outputs (the module docstring's losses) over the ``split`` = (training,
    held-back) samples of ``inputs``; the best epoch's variables end assigned to the twin and returned.
    ``groups`` train at their own learning rates; ``time_budget`` counts from ``started``. ``choose``, when
    given, scores the twin as it stands after an epoch (0: the start; higher is better) and picks the epoch kept
    (the earliest of the best) in place of the held-back agreement, which is still measured and recorded: a
    caller with more samples to judge on than the held-back part (``quantize:qat=auto``, its budget's)."""
    from onnxopt.convert import tf_import

    tf = tf_import.tensorflow()
    started = time.perf_counter() if started is None else started
    train_idx, hold_idx = split
    names = twin.output_names
    if [o.name for o in teacher.graph.output] != names:
        raise OnnxoptError("fine-tuning: the student's outputs must be the teacher's (same names, same order)")
    kinds = output_kinds(twin.proto)
    features = list(config.features) if config.feature_weight > 0 else []
    teacher_runner = Runner(batch_free(with_outputs(teacher, features)))
    probabilities = {out for node in teacher.graph.node if node.op_type == "Softmax" for out in node.output}

    def teacher_outputs(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The targets of the outputs, then the teacher's ``features`` as they are."""
        outs = teacher_runner.run(feeds)
        targets = [_target(n, o, probabilities, kinds) for n, o in zip(names, outs, strict=False)]
        return targets + list(outs[len(names) :])

    def teacher_targets(idx: np.ndarray) -> list[np.ndarray]:
        return teacher_outputs({k: v[idx] for k, v in inputs.items()})

    rows = reading_batch(teacher, config.batch)
    batches = [hold_idx[i : i + rows] for i in range(0, len(hold_idx), rows)]
    # per batch (a sequence's batch axis may not be 0); the epoch is chosen on the outputs alone
    holdout_targets = [teacher_targets(idx)[: len(names)] for idx in batches]

    def meter() -> AgreementMeter:
        return AgreementMeter(names, [kinds[n] for n in names], holdout_targets[0], len(batches[0]), config.metric)

    # with detection_loss, detector outputs get it where a training batch keeps one sample per row (its columns then
    # mean objectness, classes, boxes); a value output otherwise, or with --metric values, the relative MSE
    in_layout = rows == config.batch or config.batch == 1
    read = meter().reading.outputs if config.detection_loss is not False and in_layout else ()
    detections = {o.name: o for o in read if o.kind == "detection" and kinds[o.name] == "values"}
    loss_note = f"detection loss on {', '.join(detections)}" if detections else ""
    if config.detection_loss and not detections:  # asked for: say why it could not apply
        loss_note = "detection_loss: no output read as detections one sample per row; relative MSE instead"

    def score() -> tuple[float, float]:
        """(distillation loss, agreement) of the twin on the held-back samples, batch by batch."""
        loss = 0.0
        agreement = meter()
        for idx, targets in zip(batches, holdout_targets, strict=True):
            outs = [np.asarray(v) for v in _student_outputs(twin, names, inputs, idx)]
            weight = len(idx) / len(hold_idx)
            loss += weight * sum(
                float(_kl(tf, tf.constant(o), t, config.temperature, -1) if kinds[n] == "classes"
                      else _values_loss(tf, tf.constant(o), t, detections.get(n)))
                for n, o, t in zip(names, outs, targets, strict=True)
            )  # fmt: skip
            agreement.add(outs, targets, len(idx))
        return loss, agreement.value()

    steps = -(-len(train_idx) // config.batch) * config.epochs
    step = optimizer_step(tf, twin, config.learning_rate, groups, steps)
    # labels teach only a single [N, C] classifier output (a sequence head has no per-sample class)
    classifier = len(names) == 1 and kinds[names[0]] == "classes" and holdout_targets[0][0].ndim == 2
    use_labels = labels is not None and classifier
    temperature, alpha = config.temperature, config.alpha if use_labels else 1.0
    best_loss, before = score()
    best, best_weights, best_epoch = before, twin.weights(), 0
    chosen = [choose(0)] if choose is not None else []
    kept_score = before  # the held-back agreement of the epoch kept
    history: list[dict[str, float]] = []
    rng = np.random.default_rng(config.seed + 1)
    stopped = False
    progress = progress or NullProgress()
    for epoch in range(config.epochs):
        shuffled = rng.permutation(train_idx)
        losses = []
        progress.start(f"{title}: epoch {epoch + 1}/{config.epochs}", -(-len(shuffled) // config.batch))
        for start in range(0, len(shuffled), config.batch):
            idx = np.sort(shuffled[start : start + config.batch])
            feeds = {k: v[idx] for k, v in inputs.items()}
            mixed = config.mixup > 0
            if mixed:
                feeds = _mix(feeds, rng, config.mixup)
            targets = teacher_outputs(feeds)
            with tf.GradientTape() as tape:
                got = twin(feeds, keep=list(twin.logits_of.values()) + features)
                loss = 0.0
                if features:
                    matched = [_mse(tf, got[f], t) for f, t in zip(features, targets[len(names) :], strict=True)]
                    loss += config.feature_weight * tf.add_n(matched) / len(matched)
                for name, target in zip(names, targets, strict=False):
                    student_out = got[twin.logits_of.get(name, name)]
                    if kinds[name] == "classes":
                        loss += _kl(tf, student_out, target, temperature, -1)
                        if config.hard:
                            loss += config.hard * _hard_ce(tf, student_out, target)
                    else:
                        loss += _values_loss(tf, student_out, target, detections.get(name))
                if use_labels and alpha < 1 and not mixed:
                    head = got[twin.logits_of.get(names[0], names[0])]
                    loss = alpha * loss + (1 - alpha) * tf.reduce_mean(
                        tf.nn.sparse_softmax_cross_entropy_with_logits(labels[idx].astype(np.int64), head)
                    )
            step(tape.gradient(loss, twin.trainable))
            losses.append(float(loss))
            progress.advance()
            if config.time_budget is not None and time.perf_counter() - started > config.time_budget:
                stopped = True
                break
        progress.finish()
        held_loss, held_score = score()
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "held_back_loss": held_loss,
                        "held_back": held_score})  # fmt: skip
        if choose is not None:
            chosen.append(choose(epoch + 1))
            history[-1]["chosen_by"] = chosen[-1]
            if chosen[-1] > max(chosen[:-1]):
                kept_score, best_weights, best_epoch = held_score, twin.weights(), epoch + 1
        elif (held_score, -held_loss) > (best, -best_loss):  # agreement first; the loss breaks ties
            best_loss, best, best_weights, best_epoch = held_loss, held_score, twin.weights(), epoch + 1
            kept_score = held_score
        if on_epoch is not None:
            on_epoch(f"epoch {epoch + 1}/{config.epochs}: loss {np.mean(losses):.4f}, held-back {held_score:.4f}")
        if stopped:
            break
    for name, value in best_weights.items():
        twin.variables[name].assign(value)
    run = Training(best_weights, history, before, kept_score, best_epoch, stopped, agreement=meter().metric,
                   loss_note=loss_note, chosen=chosen)  # fmt: skip
    if use_labels:
        truth = labels[hold_idx]  # type: ignore[index]
        run.teacher_accuracy = float(np.mean(np.concatenate([t[0].argmax(1) for t in holdout_targets]) == truth))
        guesses = [np.asarray(_student_outputs(twin, names, inputs, idx)[0]).argmax(1) for idx in batches]
        run.student_accuracy = float(np.mean(np.concatenate(guesses) == truth))
    return run


def optimizer_step(tf, twin: GraphModel, learning_rate: float, groups: tuple[VariableGroup, ...], steps: int):
    """A function applying one batch's gradients (in ``twin.trainable`` order): Adam with a cosine decay over
    ``steps``, one per group (the variables in no group at ``learning_rate``)."""

    def adam(rate: float, epsilon: float = ADAM_EPSILON):
        schedule = tf.keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(steps, 1))
        return tf.keras.optimizers.Adam(schedule, epsilon=epsilon)

    optimizer = adam(learning_rate)
    if not groups:

        def step(gradients: list) -> None:
            optimizer.apply_gradients([(g, v) for g, v in zip(gradients, twin.trainable, strict=True) if g is not None])

        return step
    keys = list(twin.variables)
    member = {name: i for i, group in enumerate(groups) for name in group.names}
    optimizers = [adam(group.learning_rate, group.epsilon) for group in groups]

    def grouped(gradients: list) -> None:
        pairs: list[list] = [[] for _ in range(len(groups) + 1)]
        for key, g, v in zip(keys, gradients, twin.trainable, strict=True):
            if g is not None:
                pairs[member.get(key, len(groups))].append((g, v))
        for opt, chosen in zip([*optimizers, optimizer], pairs, strict=True):
            if chosen:
                opt.apply_gradients(chosen)

    return grouped


def write_back(proto: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``proto`` whose initializers named in ``weights`` hold those arrays (same shapes and dtypes)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for tensor in out.graph.initializer:
        if tensor.name in weights:
            array = np.asarray(weights[tensor.name])
            old = numpy_helper.to_array(tensor)
            if array.shape != old.shape:
                raise UnsupportedOp(f"fine-tuning changed the shape of {tensor.name}: {old.shape} -> {array.shape}")
            tensor.CopyFrom(numpy_helper.from_array(array.astype(old.dtype), tensor.name))
    return out


def _target(name: str, output: np.ndarray, probabilities: set[str], kinds: dict[str, str]) -> np.ndarray:
    """The teacher's output as a training target: a Softmax's class probabilities become log-probabilities
    (logits of the same softmax); everything else as it is."""
    if name in probabilities and kinds[name] == "classes":
        return np.log(np.maximum(output, 1e-12))
    return output


def _mix(feeds: dict[str, np.ndarray], rng: np.random.Generator, concentration: float) -> dict[str, np.ndarray]:
    """Each float sample blended with another of the batch, ``lam ~ Beta(c, c)`` per sample."""
    count = len(next(iter(feeds.values())))
    partner = rng.permutation(count)
    lam = rng.beta(concentration, concentration, count).astype(np.float32)
    out = {}
    for name, array in feeds.items():
        if array.dtype.kind != "f":
            out[name] = array
            continue
        weight = lam.reshape(-1, *([1] * (array.ndim - 1)))
        out[name] = (weight * array + (1 - weight) * array[partner]).astype(array.dtype)
    return out


def _student_outputs(twin: GraphModel, names: list[str], inputs: dict[str, np.ndarray], idx: np.ndarray) -> list:
    """The twin's outputs on samples ``idx``, logits in place of the outputs a Softmax computes."""
    got = twin({k: v[idx] for k, v in inputs.items()}, keep=list(twin.logits_of.values()))
    return [got[twin.logits_of.get(name, name)] for name in names]


def batch_free(proto: onnx.ModelProto) -> bytes:
    """``proto`` serialized for onnxruntime with every input's leading dimension symbolic and the outputs'
    declared shapes dropped: models exported with batch 1 (ddddocr's recognizer) then run whole batches."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    initializers = {t.name for t in copy.graph.initializer}
    for value in copy.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and len(dims) and dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"
    for value in copy.graph.output:
        if value.type.tensor_type.HasField("shape"):
            value.type.tensor_type.ClearField("shape")
    del copy.graph.value_info[:]
    return copy.SerializeToString()


def _kl(tf, logits, target, temperature: float, axis: int):
    soft = tf.nn.softmax(tf.convert_to_tensor(target, logits.dtype) / temperature, axis=axis)
    log_student = tf.nn.log_softmax(logits / temperature, axis=axis)
    kl = tf.reduce_sum(soft * (tf.math.log(tf.maximum(soft, 1e-12)) - log_student), axis=axis)
    return tf.reduce_mean(kl) * temperature**2


def _hard_ce(tf, logits, target):
    """Cross-entropy of the student's logits with the teacher's top-1 class at every position."""
    labels = tf.argmax(tf.convert_to_tensor(target), axis=-1)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


def _values_loss(tf, value, target, reading: OutputReading | None):
    """A value output's loss: the detection loss where it is read as detections, else the relative MSE."""
    return _mse(tf, value, target) if reading is None else detection_loss(tf, value, target, reading)


def _mse(tf, value, target):
    target = tf.convert_to_tensor(target, value.dtype)
    return tf.reduce_mean((value - target) ** 2) / (tf.reduce_mean(target**2) + 1e-12)


def _agreement(outputs: list[np.ndarray], targets: list[np.ndarray], kinds: list[str]) -> float:
    """Mean over outputs of: top-1 agreement along the last axis (class scores), or ``1 - relative MSE``."""
    scores = []
    for out, target, kind in zip(outputs, targets, kinds, strict=True):
        if kind == "classes" and out.ndim >= 1 and out.shape[-1] >= 2:
            scores.append(float(np.mean(out.argmax(axis=-1) == target.argmax(axis=-1))))
        else:
            error = np.mean((out.astype(np.float64) - target) ** 2) / (
                np.mean(np.square(target, dtype=np.float64)) + 1e-12
            )
            scores.append(float(1.0 - error))
    return float(np.mean(scores))
