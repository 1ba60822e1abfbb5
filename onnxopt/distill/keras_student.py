"""Knowledge distillation: a Keras student learns an ONNX teacher's soft outputs (Hinton et al. 2015).

``distill(teacher, student, data, output)``:

1. The teacher (``.onnx``, or ``.keras`` converted first) runs in onnxruntime once over the data; its
   classifier output becomes soft targets, cached for every epoch. A teacher that outputs probabilities
   (non-negative rows summing to 1) gives ``log p`` as logits -- ``softmax(log p / T)`` is ``p`` sharpened
   or softened by ``T`` exactly as with its true logits.
2. The student is a ``.keras`` file, or ``width=F``: a copy of a Keras teacher with every Conv/Dense width
   (filters, units, except the output layer) scaled by ``F``, freshly initialized.
3. Training (Keras, Adam; BatchNormalization statistics recomputed exactly on the training data after
   every epoch): loss ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(y, s)``
   on the student's logits ``s`` (a softmax output layer is trained as linear and restored after). Without
   labels only the KL term is used. ``holdout`` of the data (a seeded split) is never trained on; accuracy
   on it (or top-1 agreement with the teacher, without labels) is printed after every epoch.
4. The student is converted to ONNX (verified against Keras, :mod:`onnxopt.convert`) and written; teacher and
   student are evaluated on the held-out data in onnxruntime.

Deterministic for a seed: Keras' and numpy's seeds, TensorFlow op determinism, oneDNN off.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt import io
from onnxopt.convert import tf_import
from onnxopt.convert.sources import ConversionError, from_keras_model
from onnxopt.data import open_dataset
from onnxopt.errors import DataError, ModelLoadError, OnnxoptError, one_line
from onnxopt.evaluate.compare import classifier_output_index
from onnxopt.runtime import Runner

#: ``narrow(teacher, ratio, seed)``: the ONNX teacher with ``ratio`` of each prunable group's channels removed
#: (a ``ModelProto``): how ``width=F`` of an ONNX teacher is built (:func:`onnxopt.api.distill` gives it)
Narrow = Callable[[Path, float, int], Any]


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft-target term; 1 - alpha weighs the labels
    epochs: int = 10
    batch: int = 64
    learning_rate: float = 1e-3
    holdout: float = 0.2
    seed: int = 0
    time_budget: float | None = None  # seconds of training at most (the epoch running then is the last)

    def __post_init__(self) -> None:
        if self.time_budget is not None and self.time_budget <= 0:
            raise OnnxoptError("--time-budget must be positive")
        if self.temperature <= 0:
            raise OnnxoptError("--temperature must be positive")
        if not 0 <= self.alpha <= 1:
            raise OnnxoptError("--alpha must be in [0, 1]")
        if self.epochs < 1 or self.batch < 1:
            raise OnnxoptError("--epochs and --batch must be at least 1")
        if self.learning_rate <= 0:
            raise OnnxoptError("--learning-rate must be positive")
        if not 0 < self.holdout < 1:
            raise OnnxoptError("--holdout must be in (0, 1)")


@dataclasses.dataclass
class DistillResult:
    output: Path
    keras_output: Path | None
    metric: str  # "accuracy" (labels) or "top-1 agreement with the teacher"
    teacher_score: float | None  # the teacher's accuracy on the held-out data (None without labels)
    student_score: float
    agreement: float  # student vs teacher top-1 on the held-out data
    teacher_parameters: int
    student_parameters: int
    train_samples: int
    holdout_samples: int
    history: list[dict[str, float]]

    def summary(self) -> str:
        teacher = f"{self.teacher_score:.4f}" if self.teacher_score is not None else "-"
        return "\n".join(
            [
                f"student -> {self.output}" + (f" (Keras: {self.keras_output})" if self.keras_output else ""),
                f"  trained on {self.train_samples} samples, evaluated on {self.holdout_samples} held out",
                f"  {'':<22}{'teacher':>10}{'student':>10}",
                f"  {self.metric:<22}{teacher:>10}{self.student_score:>10.4f}",
                f"  {'parameters':<22}{self.teacher_parameters:>10,}{self.student_parameters:>10,}",
                f"  {'top-1 agreement':<22}{'':>10}{self.agreement:>10.4f}",
            ]
        )


def distill(
    teacher: str | os.PathLike[str],
    student: str,
    data: str,
    output: str | os.PathLike[str],
    config: DistillConfig | None = None,
    *,
    keras_output: str | os.PathLike[str] | None = None,
    eval_data: str | None = None,
    on_epoch: Callable[[str], None] | None = None,
    narrow: Narrow | None = None,
) -> DistillResult:
    """Train ``student`` on ``teacher``'s soft targets over ``data``; write it to ``output`` as ONNX.

    ``eval_data``: evaluate on this data instead of a ``holdout`` split of ``data`` (then all of ``data``
    trains) -- use it when ``data`` is what the teacher was trained on. ``narrow`` builds the student of
    ``width=F`` with an ONNX teacher (the optimizer prunes it, from above this package: ``onnxopt.api.distill``
    gives it)."""
    config = config or DistillConfig()
    output = Path(output)
    io.check_writable(output.parent if str(output.parent) else Path("."))
    if _onnx_student(teacher, student):
        return _distill_onnx(
            Path(teacher), student, data, output, config, eval_data=eval_data, on_epoch=on_epoch, narrow=narrow
        )
    keras = tf_import.keras()
    tf = tf_import.tensorflow()
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()

    teacher_path = Path(teacher)
    teacher_keras, teacher_runner = _teacher(teacher_path)
    head = classifier_output_index(teacher_runner)
    if head is None:
        raise DataError(f"{teacher_path}: the teacher has no classifier-shaped output [N, classes] to distill")
    inputs, labels, train_idx, eval_idx = _split(data, eval_data, teacher_runner, config)
    teacher_logits = _teacher_logits(teacher_runner, inputs, head, config.batch)
    classes = teacher_logits.shape[1]

    model = _student(student, teacher_keras, keras)
    trainable = _with_linear_head(model, keras)
    if int(np.prod(trainable.outputs[0].shape[1:])) != classes:
        raise DataError(f"the student outputs {trainable.outputs[0].shape[1:]}, the teacher {classes} classes")
    metric = "accuracy" if labels is not None else "top-1 agreement with the teacher"
    reference = labels[eval_idx] if labels is not None else teacher_logits[eval_idx].argmax(axis=1)
    onehot = np.eye(classes, dtype=np.float32)[labels] if labels is not None else np.zeros_like(teacher_logits)
    targets = np.concatenate([teacher_logits, onehot], axis=1).astype(np.float32)
    alpha = config.alpha if labels is not None else 1.0  # without labels: the soft targets alone
    trainable.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=_hinton_loss(keras, classes, config.temperature, alpha),
    )
    history: list[dict[str, float]] = []

    def report(epoch: int, logs: dict | None) -> None:
        _exact_batchnorm_statistics(trainable, inputs[train_idx], keras)
        scores = trainable.predict(inputs[eval_idx], batch_size=256, verbose=0)
        score = float((scores.argmax(axis=1) == reference).mean())
        row = {"epoch": epoch + 1, "loss": float((logs or {}).get("loss", np.nan)), "held_out": score}
        history.append(row)
        if on_epoch:
            on_epoch(f"epoch {epoch + 1}/{config.epochs}  loss {row['loss']:.4f}  held-out {metric} {score:.4f}")

    trainable.fit(
        inputs[train_idx],
        targets[train_idx],
        epochs=config.epochs,
        batch_size=config.batch,
        shuffle=True,
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=report), _time_budget(keras, config.time_budget)],
    )
    model.set_weights(trainable.get_weights())  # the trained weights under the original (softmax) head

    converted = from_keras_model(model, opset=17, nchw=False)
    from onnxopt.convert import verify

    verify(converted)
    written = io.save(converted.proto, output)
    saved_keras = None
    if keras_output is not None:
        saved_keras = Path(keras_output)
        model.save(str(saved_keras))
    student_runner = Runner(written)
    eval_inputs = inputs[eval_idx]
    teacher_out = _run(teacher_runner, eval_inputs, head, config.batch)
    student_out = _run(student_runner, eval_inputs, 0, config.batch)
    student_score = float((student_out.argmax(axis=1) == reference).mean())
    teacher_score = float((teacher_out.argmax(axis=1) == labels[eval_idx]).mean()) if labels is not None else None
    return DistillResult(
        output=written,
        keras_output=saved_keras,
        metric=metric,
        teacher_score=teacher_score,
        student_score=student_score,
        agreement=float((student_out.argmax(axis=1) == teacher_out.argmax(axis=1)).mean()),
        teacher_parameters=_parameters(teacher_path, teacher_keras),
        student_parameters=int(model.count_params()),
        train_samples=len(train_idx),
        holdout_samples=len(eval_idx),
        history=history,
    )


def _time_budget(keras, seconds: float | None):
    """A callback that stops training after the batch that exhausts ``seconds`` (no limit when None)."""
    import time

    started = time.perf_counter()

    def check(batch: int, logs: dict | None = None) -> None:
        if seconds is not None and time.perf_counter() - started > seconds:
            callback.model.stop_training = True

    callback = keras.callbacks.LambdaCallback(on_train_batch_end=check)
    return callback


def _onnx_student(teacher: str | os.PathLike[str], student: str) -> bool:
    """An ONNX student (``S.onnx``), or ``width=F`` of an ONNX teacher: fine-tuned in place of a Keras one."""
    if student.lower().endswith(".onnx"):
        return True
    return student.startswith("width=") and Path(teacher).suffix.lower() == ".onnx"


def _distill_onnx(
    teacher: Path, student: str, data: str, output: Path, config: DistillConfig, *, eval_data: str | None,
    on_epoch: Callable[[str], None] | None, narrow: Narrow | None,
) -> DistillResult:  # fmt: skip
    """The ONNX path: the student graph (given, or the teacher with ``1 - F`` of its channels pruned) is
    fine-tuned on the teacher's outputs (:mod:`onnxopt.distill.finetune`) and written with its weights."""
    import onnx

    from onnxopt.distill.finetune import FinetuneConfig, agreement_with, finetune

    teacher_proto = io.read_supported(teacher).proto
    student_proto = _narrower_onnx(teacher, student, config.seed, narrow) if student.startswith("width=") else (
        io.read_supported(Path(student)).proto
    )  # fmt: skip
    teacher_runner = Runner(teacher_proto.SerializeToString())
    inputs, labels, train_idx, eval_idx = _split(data, eval_data, teacher_runner, config)
    name = teacher_runner.inputs[0].name
    result = finetune(
        student_proto, teacher_proto, {name: inputs[train_idx]},
        FinetuneConfig(epochs=config.epochs, batch=config.batch, learning_rate=config.learning_rate,
                       temperature=config.temperature, alpha=config.alpha, seed=config.seed,
                       time_budget=config.time_budget, detection_loss=None),  # as the distill pass
        labels=labels[train_idx] if labels is not None else None, on_epoch=on_epoch,
    )  # fmt: skip
    written = io.save(result.model, output)
    held_out = {name: inputs[eval_idx]}
    agreement = agreement_with(result.model, teacher_proto, held_out, config.batch)  # per position for sequences
    head = classifier_output_index(teacher_runner)
    metric = "accuracy" if labels is not None and head is not None else "top-1 agreement with the teacher"
    student_score, teacher_score = agreement, None
    if metric == "accuracy":
        assert labels is not None and head is not None
        teacher_out = _run(teacher_runner, held_out[name], head, config.batch)
        student_out = _run(Runner(written), held_out[name], head, config.batch)
        student_score = float((student_out.argmax(axis=1) == labels[eval_idx]).mean())
        teacher_score = float((teacher_out.argmax(axis=1) == labels[eval_idx]).mean())
    history = [{"epoch": r["epoch"], "loss": r["loss"], "held_out": r["held_back"]} for r in result.history]
    return DistillResult(
        output=written, keras_output=None, metric=metric, teacher_score=teacher_score, student_score=student_score,
        agreement=agreement, teacher_parameters=_onnx_parameters(teacher_proto),
        student_parameters=_onnx_parameters(onnx.load(str(written))), train_samples=len(train_idx),
        holdout_samples=len(eval_idx), history=history,
    )  # fmt: skip


def _narrower_onnx(teacher: Path, spec: str, seed: int, narrow: Narrow | None):
    """``width=F`` of an ONNX teacher: the teacher with ``1 - F`` of each prunable group's channels removed
    (``narrow``: lowest L2 norm first, kept counts a multiple of 8; ``prune-channels``), as the student to
    train."""
    factor = _width(spec)
    if not 0 < factor < 1:
        raise OnnxoptError(f"--student {spec}: an ONNX teacher can only be narrowed: F must be in (0, 1)")
    if narrow is None:
        raise OnnxoptError(
            f"--student {spec}: narrowing an ONNX teacher prunes it with the optimizer: call onnxopt.api.distill"
        )
    return narrow(teacher, 1 - factor, seed)


def _width(spec: str) -> float:
    try:
        return float(spec.split("=", 1)[1])
    except ValueError as e:
        raise OnnxoptError(f"--student {spec}: the width must be a number, e.g. width=0.5") from e


def _onnx_parameters(proto) -> int:
    return int(sum(np.prod(t.dims) for t in proto.graph.initializer if t.data_type == 1))


# ---------------------------------------------------------------------- pieces


def _split(data: str, eval_data: str | None, runner: Runner, config: DistillConfig):
    """(inputs, labels or None, training indices, evaluation indices): ``eval_data`` appended and used for
    evaluation, or a seeded ``holdout`` split of ``data``."""
    inputs, labels = _load(data, runner)
    if eval_data is not None:
        extra, extra_labels = _load(eval_data, runner)
        if (labels is None) != (extra_labels is None):
            raise DataError("--data and --eval-data must both have labels or both have none")
        train_idx = np.arange(len(inputs))
        eval_idx = np.arange(len(inputs), len(inputs) + len(extra))
        inputs = np.concatenate([inputs, extra])
        labels = np.concatenate([labels, extra_labels]) if labels is not None else None
        return inputs, labels, train_idx, eval_idx
    order = np.random.default_rng(config.seed).permutation(len(inputs))
    held = max(1, round(config.holdout * len(inputs)))
    if len(inputs) - held < 1:
        raise DataError(f"{data}: {len(inputs)} samples leave nothing to train with --holdout {config.holdout}")
    return inputs, labels, order[held:], order[:held]


def _hinton_loss(keras, classes: int, temperature: float, alpha: float):
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(y, s)`` on logits ``s``; ``y_true`` packs
    ``[teacher logits | one-hot labels]``."""
    ops = keras.ops

    def loss(y_true, logits):
        soft_t = ops.softmax(y_true[:, :classes] / temperature, axis=-1)
        log_s = ops.log_softmax(logits / temperature, axis=-1)
        kd = ops.sum(soft_t * (ops.log(ops.maximum(soft_t, 1e-12)) - log_s), axis=-1) * temperature**2
        if alpha >= 1:
            return kd
        ce = -ops.sum(y_true[:, classes:] * ops.log_softmax(logits, axis=-1), axis=-1)
        return alpha * kd + (1 - alpha) * ce

    return loss


def _teacher(path: Path):
    """(Keras model or None, onnxruntime Runner) for an ``.onnx`` or ``.keras`` teacher."""
    if path.suffix.lower() in (".keras", ".h5"):
        keras = tf_import.keras()
        try:
            model = keras.models.load_model(str(path), compile=False)
        except Exception as e:
            raise ModelLoadError(f"{path}: cannot load the Keras teacher: {one_line(e, 200)}") from e
        converted = from_keras_model(model, opset=17, nchw=False)
        return model, Runner(converted.proto.SerializeToString())
    source = io.read_supported(path)
    return None, Runner(source.source)


def _load(data: str, runner: Runner) -> tuple[np.ndarray, np.ndarray | None]:
    """Every sample of ``data`` for the teacher's (single) input, and the labels if there are."""
    if len(runner.inputs) != 1:
        raise DataError("distillation handles single-input teachers")
    dataset = open_dataset(data, runner.inputs, seed=0)
    parts, labels = [], []
    for item in dataset.batches(1024):
        parts.append(next(iter(item.feeds.values())))
        if item.labels is not None:
            labels.append(item.labels)
    inputs = np.concatenate(parts)
    label_array = np.concatenate(labels).astype(np.int64).reshape(-1) if labels else None
    return inputs, label_array


def _teacher_logits(runner: Runner, inputs: np.ndarray, head: int, batch: int) -> np.ndarray:
    """Teacher logits for every sample, computed once; probabilities become log-probabilities."""
    out = _run(runner, inputs, head, batch).astype(np.float64)
    rows = out.reshape(out.shape[0], -1)
    if rows.min() >= 0 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
        rows = np.log(np.maximum(rows, 1e-12))
    return rows.astype(np.float32)


def _run(runner: Runner, inputs: np.ndarray, head: int, batch: int) -> np.ndarray:
    name = runner.inputs[0].name
    chunks = [runner.run({name: inputs[i : i + batch]})[head] for i in range(0, len(inputs), batch)]
    out = np.concatenate(chunks)
    return out.reshape(out.shape[0], -1)


def _student(spec: str, teacher_keras, keras):
    if spec.startswith("width="):
        factor = _width(spec)
        if not 0 < factor <= 4:
            raise OnnxoptError(f"--student {spec}: the width factor must be in (0, 4]")
        return _narrower(teacher_keras, factor, keras)
    path = Path(spec)
    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as e:
        raise ModelLoadError(f"{path}: cannot load the Keras student: {one_line(e, 200)}") from e


def _narrower(teacher, factor: float, keras):
    """A freshly initialized copy of ``teacher`` with every Conv/Dense width (but the output's) times ``factor``."""
    last = teacher.layers[-1].name
    widths = {"filters", "units"}

    def clone(layer):
        config = layer.get_config()
        if layer.name != last:
            for key in widths & set(config):
                config[key] = max(1, round(config[key] * factor))
        return layer.__class__.from_config(config)

    try:
        return keras.models.clone_model(teacher, clone_function=clone)
    except Exception as e:  # subclassed models cannot be cloned layer by layer
        raise OnnxoptError(f"width=F needs a Sequential or functional Keras teacher: {e}") from e


def _exact_batchnorm_statistics(model, inputs: np.ndarray, keras, samples: int = 2048) -> None:
    """Set every BatchNormalization's moving mean and variance to the exact statistics of its input over the
    training data ("precise BN", Wu & Johnson 2021), layer by layer in order. Keras' moving averages
    (momentum 0.99) lag far behind after the few hundred steps a small distillation runs, which made the
    student look -- and be, once exported -- much worse than its weights are."""
    subset = inputs[:samples]
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        probe = keras.Model(model.inputs, layer.input)
        x = np.asarray(probe.predict(subset, batch_size=256, verbose=0), np.float64)
        axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
        reduce = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
        layer.moving_mean.assign(x.mean(axis=reduce).astype(np.float32))
        layer.moving_variance.assign(x.var(axis=reduce).astype(np.float32))


def _with_linear_head(model, keras):
    """The student with a softmax output layer made linear (trained on logits); same weights layout."""
    last = model.layers[-1]
    if getattr(last, "activation", None) is None or last.get_config().get("activation") != "softmax":
        return model

    def clone(layer):
        config = layer.get_config()
        if layer.name == last.name:
            config["activation"] = "linear"
        return layer.__class__.from_config(config)

    linear = keras.models.clone_model(model, clone_function=clone)
    linear.set_weights(model.get_weights())
    return linear


def _parameters(path: Path, keras_model) -> int:
    if keras_model is not None:
        return int(keras_model.count_params())
    import onnx

    proto = onnx.load(str(path))
    return int(sum(np.prod(t.dims) for t in proto.graph.initializer))


__all__ = ["ConversionError", "DistillConfig", "DistillResult", "distill"]
