"""Evaluator: run a reference and a candidate model on the same data and measure their agreement.

What is measured per output is :class:`~onnxopt.evaluate.agreement.OutputAgreement`;
with labels, the accuracy of both models too. ``layers`` holds per-layer error
localization (:mod:`.layers`) when it was asked for. ``data`` says what the
models ran on and ``random_inputs`` whether that was seeded random inputs
(:class:`~onnxopt.data.RandomDataset`): then the numbers say how closely the
candidate follows the reference off the data distribution, not how accurate
it is on real inputs, and whoever shows them must say so. With
:class:`~onnxopt.evaluate.check.Thresholds`, ``passed`` says whether every
output met them and ``failures`` lists what each output missed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from onnxopt.data import Dataset, RandomDataset, batch_size_for, fixed_batch
from onnxopt.errors import ModelRunError, UnsupportedModelError
from onnxopt.evaluate.agreement import AccuracyCounter, AgreementAccumulator, OutputAgreement, is_classifier_shape
from onnxopt.evaluate.check import CheckFailure, Thresholds, ToleranceAccumulator, check_outputs
from onnxopt.evaluate.layers import LayerReport
from onnxopt.runtime import Runner


@dataclass(frozen=True)
class Comparison:
    """Everything :func:`compare` measured."""

    samples: int
    outputs: list[OutputAgreement]
    reference_accuracy: float | None = None
    candidate_accuracy: float | None = None
    layers: LayerReport | None = None  # per-layer error, when asked for
    data: str | None = None  # what the models ran on (the dataset's description)
    random_inputs: bool = False  # seeded random inputs, not real data: agreement only, never accuracy
    thresholds: Thresholds | None = None  # what the outputs were checked against, when asked
    passed: bool | None = None  # every output met ``thresholds`` (None: nothing was checked)
    failures: list[CheckFailure] = field(default_factory=list)  # each threshold an output missed

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def feeds_key(feeds: dict[str, np.ndarray]) -> bytes:
    """A digest of one batch of feeds (names, types, shapes and bytes): equal feeds, equal keys."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(feeds):
        array = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.view(np.uint8).reshape(-1))
    return digest.digest()


@dataclass
class KnownOutputs:
    """Outputs of the reference and the candidate already computed on some batches (the pipeline's guard runs
    both on its samples), so that :func:`compare` does not run them again on the same feeds."""

    names: list[str]
    runs: dict[bytes, tuple[list[np.ndarray], list[np.ndarray]]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        names: Sequence[str],
        feeds: Sequence[dict[str, np.ndarray]],
        reference: Sequence[list[np.ndarray]],
        candidate: Sequence[list[np.ndarray]] | None = None,
    ) -> KnownOutputs:
        """Outputs on ``feeds``, batch by batch; without ``candidate``, only the reference's are known (the
        candidate is taken to be the reference)."""
        known = cls(list(names))
        for f, r, c in zip(feeds, reference, reference if candidate is None else candidate, strict=True):
            known.runs[feeds_key(f)] = (r, c)
        return known

    def get(
        self, names: Sequence[str], feeds: dict[str, np.ndarray]
    ) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
        """(reference, candidate) outputs on ``feeds`` for outputs ``names``, if they are known."""
        return self.runs.get(feeds_key(feeds)) if list(names) == self.names and self.runs else None


def classifier_output_index(runner: Runner) -> int | None:
    """Index of the first classifier-shaped output, if any."""
    for i, spec in enumerate(runner.outputs):
        if spec.shape is not None and is_classifier_shape(spec.shape):
            return i
    return None


def _run_both(
    reference: Runner, candidate: Runner, feeds: dict[str, np.ndarray], names: Sequence[str], dataset: Dataset
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Both models' outputs on one batch; onnxruntime failing on random inputs says which shapes they had and
    how to give others (``--input-shape``, ``--data``)."""
    try:
        return reference.run(feeds), candidate.run(feeds, names)
    except ModelRunError as e:
        if not isinstance(dataset, RandomDataset):
            raise  # the user's data: the message is theirs to read
        batch = next((a.shape[0] for a in feeds.values() if a.ndim), 1)
        raise dataset.run_failure(e, batch) from e


def compare(
    reference: Runner,
    candidate: Runner,
    dataset: Dataset,
    *,
    batch_size: int | None = None,
    limit: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    known: KnownOutputs | None = None,
    thresholds: Thresholds | None = None,
) -> Comparison:
    """Run both models on ``dataset`` and measure their agreement (and accuracy, with labels); batches whose
    outputs are ``known`` are not run again. With ``thresholds`` that set anything, each output is checked
    against them (per-element tolerances streamed with the batches) and ``passed`` says how it went."""
    names = reference.output_names
    missing = [n for n in names if n not in candidate.output_names]
    if missing:
        raise UnsupportedModelError(f"the candidate lacks output(s) {missing} of the reference")
    fixed = fixed_batch(reference.inputs)
    batch = fixed or batch_size or batch_size_for(reference.inputs)
    accumulators = [AgreementAccumulator(n) for n in names]
    checks = thresholds if thresholds is not None and thresholds.given else None
    tolerance = checks.tolerance if checks is not None else None
    tolerances = [ToleranceAccumulator(*tolerance) for _ in names] if tolerance else []
    cls_index = classifier_output_index(reference)
    ref_acc, cand_acc = AccuracyCounter(), AccuracyCounter()
    samples = 0
    for item in dataset.batches(batch, limit, exact=fixed is not None):
        seen = known.get(names, item.feeds) if known is not None else None
        ref_out, cand_out = seen if seen is not None else _run_both(reference, candidate, item.feeds, names, dataset)
        try:
            for acc, r, c in zip(accumulators, ref_out, cand_out, strict=True):
                acc.add(r, c)
            for tol, r, c in zip(tolerances, ref_out, cand_out, strict=False):
                tol.add(r, c)
        except ValueError as e:
            raise UnsupportedModelError(f"the models are not comparable: {e}") from e
        if item.labels is not None and cls_index is not None:
            ref_acc.add(ref_out[cls_index], item.labels)
            cand_acc.add(cand_out[cls_index], item.labels)
        n = item.samples
        samples += n
        if on_batch:
            on_batch(n)
    outputs = [a.result() for a in accumulators]
    failures: list[CheckFailure] = []
    if checks is not None:
        results = [t.result() for t in tolerances] if tolerances else [None] * len(outputs)
        failures = check_outputs(outputs, results, checks)
    return Comparison(
        samples,
        outputs,
        ref_acc.result(),
        cand_acc.result(),
        data=getattr(dataset, "description", None),
        random_inputs=isinstance(dataset, RandomDataset),
        thresholds=checks,
        passed=None if checks is None else not failures,
        failures=failures,
    )


def random_inputs_warning(comparison: Comparison) -> str | None:
    """The line to show with a comparison made on seeded random inputs (None for real data)."""
    if not comparison.random_inputs:
        return None
    return (
        f"WARNING: inputs: {comparison.samples} seeded random samples ({comparison.data or 'random'}): "
        "agreement only, not accuracy; pass --data to compare on real inputs"
    )
