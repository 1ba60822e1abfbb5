"""How good a candidate model still is against the original, as one number: what accuracy budgets spend.

A lossy pass given ``max_drop`` (the quantizer, structured pruning) keeps its
result only while ``probe.drop(candidate) <= max_drop``. The number is how the
output is read (:mod:`onnxopt.evaluate.readings`, or as ``metric`` asks):

* ``accuracy`` -- top-1 accuracy against the data's labels, when the data has
  labels and the model a classifier-shaped output; the drop is in accuracy
  (0.01 = one point);
* ``top-1 agreement`` -- the fraction of samples whose arg-max matches the
  original's, for a classifier-shaped output without labels (the original
  scores 1.0);
* ``sequence agreement`` -- the fraction of samples whose whole greedy-decoded
  CTC sequence matches the original's;
* ``detection agreement`` -- the F1 of a detector's confident anchors (same
  anchor, same class) against the original's;
* ``output agreement`` -- ``1 - ||y - y0|| / ||y0||`` over every output (the
  original scores 1.0), for models that are none of those.

The original's outputs are computed once and kept (the probe is for budgets
on a few hundred samples, not for whole datasets). Sessions get the weights
as shared arrays (:mod:`onnxopt.shared_weights`), never a
serialized copy of the whole model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxopt.bench.int8_kernels import saturates_here
from onnxopt.data import Dataset, batch_size_for, fixed_batch
from onnxopt.evaluate.agreement import AgreementAccumulator, finite_db
from onnxopt.evaluate.compare import KnownOutputs
from onnxopt.evaluate.readings import ModelReading, ReadingCounter, pooled_agreement, read_outputs, top1
from onnxopt.runtime import Runner
from onnxopt.shared_weights import SharedWeightsModel

#: The metrics that read the outputs as the task does (the rest is output agreement).
TASK_METRICS = ("accuracy", "top-1 agreement", "sequence agreement", "detection agreement")


@dataclasses.dataclass(frozen=True)
class Quality:
    metric: str  # "accuracy", "top-1 agreement", "sequence agreement", "detection agreement", "output agreement"
    value: float


class QualityProbe:
    """The original model's outputs on ``limit`` samples of ``dataset`` (those ``known`` already, from the
    pipeline's guard, are not computed again), and :meth:`score` for candidates. ``metric`` is ``--metric``
    (:data:`~onnxopt.evaluate.readings.METRICS`): ``auto`` reads the outputs as their shapes and values say.
    ``skip``: the probe's samples follow the data's first ``skip`` (whole batches; those a pass fitted on)."""

    def __init__(
        self,
        original: ir.Model,
        dataset: Dataset,
        *,
        limit: int = 256,
        providers=("CPUExecutionProvider",),
        known: KnownOutputs | None = None,
        metric: str = "auto",
        skip: int = 0,
    ):
        self.providers = tuple(providers)
        runner = _runner(original, self.providers)
        fixed = fixed_batch(runner.inputs)
        batch = batch_size_for(runner.inputs)
        self.names = runner.output_names
        self.feeds: list[dict[str, np.ndarray]] = []
        self.labels: list[np.ndarray] = []
        self.reference: list[list[np.ndarray]] = []
        self.start = self.stop = 0  # the data's samples [start, stop) the probe scores on
        # without a skip, about ``limit`` samples as the data gives them (a fixed batch: at least one batch); with
        # one, batches are read until ``limit`` follow it: one that begins among the skipped samples is skipped
        # whole, so a fixed batch rounds the skip up rather than the probe down to nothing
        for item in dataset.batches(batch, None if skip else limit, exact=fixed is not None):
            first, self.stop = self.stop, self.stop + item.samples
            if first < skip:
                self.start = self.stop
                continue
            self.feeds.append(item.feeds)
            seen = known.get(self.names, item.feeds) if known is not None else None
            self.reference.append(seen[0] if seen is not None else runner.run(item.feeds))
            if item.labels is not None:
                self.labels.append(item.labels)
            if skip and self.stop - self.start >= limit:
                break
        self.reading: ModelReading = (
            read_outputs(self.names, self.reference[0], _rows(self.feeds[0]), metric)
            if self.feeds
            else ModelReading("output agreement")
        )
        has_labels = len(self.labels) == len(self.feeds) and bool(self.labels)
        top1 = self.reading.metric == "top-1 agreement"
        self.classifier = self.reading.outputs[0].index if top1 else None
        self.metric = "accuracy" if top1 and has_labels else self.reading.metric
        self.baseline = self._value(self.reference)

    @property
    def reads_task(self) -> bool:
        """Whether the outputs are read as a task (a class, a sequence, detections), not as raw values."""
        return self.metric in TASK_METRICS

    def score(self, candidate: ir.Model) -> Quality:
        return Quality(self.metric, self._value(self._outputs(candidate)))

    def sample_rows(self, candidate: ir.Model) -> np.ndarray:
        """Per sample of the probe, what the task reading of ``candidate`` adds up (``[correct, 1]`` for
        accuracy, :meth:`~onnxopt.evaluate.readings.ReadingCounter.rows` otherwise): :func:`pooled_agreement`
        of their sum is :meth:`score`'s value, and a bootstrap resamples them. Only for :attr:`reads_task`."""
        if not self.reads_task:
            raise ValueError(f"{self.metric} is not read per sample")
        return self._per_sample(self._outputs(candidate))

    def _outputs(self, candidate: ir.Model) -> list[list[np.ndarray]]:
        runner = _runner(candidate, self.providers)
        return [runner.run(f, self.names) for f in self.feeds]

    def output_snr(self, candidate: ir.Model) -> dict[str, float]:
        """Each output's SNR (dB, capped) of ``candidate`` against the original on the probe's samples."""
        runner = _runner(candidate, self.providers)
        accumulators = {name: AgreementAccumulator(name) for name in self.names}
        for feeds, reference in zip(self.feeds, self.reference, strict=True):
            for name, out, ref in zip(self.names, runner.run(feeds, self.names), reference, strict=True):
                accumulators[name].add(ref, out)
        return {name: finite_db(acc.result().snr_db) for name, acc in accumulators.items()}

    def drop(self, candidate: ir.Model) -> float:
        """How much worse ``candidate`` is than the original (0 = as good; same unit as the metric)."""
        return self.baseline - self.score(candidate).value

    def _value(self, outputs: list[list[np.ndarray]]) -> float:
        if self.reads_task:
            return pooled_agreement(self._per_sample(outputs).sum(axis=0))
        error = norm = 0.0
        for out, ref in zip(outputs, self.reference, strict=True):
            for o, r in zip(out, ref, strict=True):
                r64 = np.asarray(r, np.float64)
                error += float(np.sum((np.asarray(o, np.float64) - r64) ** 2))
                norm += float(np.sum(r64**2))
        return 1.0 - float(np.sqrt(error / norm)) if norm > 0 else (1.0 if error == 0 else 0.0)

    def _per_sample(self, outputs: list[list[np.ndarray]]) -> np.ndarray:
        if self.metric == "accuracy":
            assert self.classifier is not None
            hits = [
                top1(o[self.classifier]) == labels.reshape(-1) for o, labels in zip(outputs, self.labels, strict=True)
            ]
            correct = np.concatenate(hits) if hits else np.zeros(0, bool)
            return np.stack([correct, np.ones(correct.size, bool)], axis=1).astype(np.float64)
        counter = ReadingCounter(self.reading)
        for out, ref in zip(outputs, self.reference, strict=True):
            counter.add(ref, out)
        return counter.rows()


def check_metric(reference: Runner, dataset: Dataset, metric: str) -> None:
    """A forced ``--metric`` some output of the model must fit, checked on one batch of ``dataset`` before any
    work (a one-line :class:`~onnxopt.errors.DataError` naming the outputs' shapes); ``auto`` and ``values``
    always fit."""
    if metric in ("auto", "values"):
        return
    size = batch_size_for(reference.inputs)
    batch = next(iter(dataset.batches(size, size, exact=fixed_batch(reference.inputs) is not None)), None)
    if batch is not None:
        read_outputs(reference.output_names, reference.run(batch.feeds), _rows(batch.feeds), metric)


def _rows(feeds: dict[str, np.ndarray]) -> int:
    """The samples in one batch of feeds (the first input's leading axis)."""
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _runner(model: ir.Model, providers: tuple[str, ...]) -> Runner:
    """A session with every onnxruntime optimization on (how the model is deployed), its weights shared, not
    serialized (a model over protobuf's 2 GB limit is scored like any other); without them where this CPU's
    fused int8 kernels would saturate on the model's 8-bit weights
    (:func:`~onnxopt.bench.int8_kernels.saturates_here`: a ``target=vnni`` model scored on an AVX2-only CPU reads
    as the CPUs it is meant for compute it, not as this one would)."""
    fused = not saturates_here(model, providers)
    return SharedWeightsModel(model, protect=False).runner(providers, optimize=fused)
