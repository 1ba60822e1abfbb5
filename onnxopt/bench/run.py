"""The benchmark: models measured interleaved, per execution provider and batch size.

For each (provider, batch) *cell*, every model gets a session (its creation
timed), the same inputs, ``warmup`` untimed runs, and then timed *rounds*: a
round runs every model once, in an order rotated each round so no model is
always first. Machine drift thus hits every model alike; the first model is
the baseline and every other gets its median-latency ratio with a 95 %
bootstrap interval over rounds (:mod:`onnxopt.bench.stats`). Memory is
measured afterwards, one fresh process per model (:mod:`onnxopt.bench.memory`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from onnxopt import io
from onnxopt.bench import memory
from onnxopt.bench.machine import machine_description
from onnxopt.bench.providers import resolve, short_name
from onnxopt.bench.session import TimedSession
from onnxopt.bench.stats import LatencyStats, Ratio, median_ratio
from onnxopt.data import Dataset, InputShapes, RandomDataset, fixed_batch
from onnxopt.errors import DataError, ModelRunError, OnnxoptError
from onnxopt.progress import NullProgress, Progress
from onnxopt.runtime import TensorSpec

#: Rounds run at least, whatever the time budget.
MIN_ROUNDS = 10


@dataclass(frozen=True)
class BenchConfig:
    """How to measure. ``runs`` (rounds) wins over ``seconds`` (time budget per model per cell)."""

    providers: tuple[str, ...] = ("cpu",)
    batches: tuple[int, ...] | None = None  # None: each model's fixed batch, else 1
    threads: int = 0  # onnxruntime's intra-op threads; 0 = its default
    warmup: int = 5
    runs: int | None = None
    seconds: float = 2.0
    memory: bool = True
    seed: int = 0
    spinning: bool = False  # onnxruntime's intra-op spin-wait (see onnxopt.bench.session)
    input_shapes: InputShapes | None = None  # --input-shape: how random inputs are shaped

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise OnnxoptError("--warmup must be 0 or more")
        if self.runs is not None and self.runs < 2:
            raise OnnxoptError("--runs must be at least 2")
        if self.seconds <= 0:
            raise OnnxoptError("--seconds must be positive")
        if self.threads < 0:
            raise OnnxoptError("--threads must be 0 (onnxruntime's default) or more")
        if self.batches is not None and (not self.batches or min(self.batches) <= 0):
            raise OnnxoptError("--batch sizes must be positive")


@dataclass(frozen=True)
class Measurement:
    """One model in one cell."""

    model: str
    path: str
    provider: str
    batch: int
    file_bytes: int
    session_s: float
    latency: LatencyStats
    ratio: Ratio | None  # None for the baseline
    peak_rss_bytes: int | None
    session_bytes: int | None
    active_providers: list[str]


@dataclass
class BenchResult:
    """Everything one benchmark measured."""

    config: BenchConfig
    measurements: list[Measurement]
    data: str
    machine: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0
    inputs: str | None = None  # the random inputs' shapes (RandomDataset.shapes_line); None with --data

    def to_dict(self) -> dict[str, object]:
        return {
            "config": asdict(self.config),
            "data": self.data,
            "inputs": self.inputs,
            "machine": self.machine,
            "seconds": self.seconds,
            "measurements": [asdict(m) for m in self.measurements],
        }


def benchmark(
    paths: Sequence[str | os.PathLike[str]],
    config: BenchConfig,
    *,
    dataset: Dataset | None = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Measure ``paths`` (the first is the baseline) on every provider and batch of ``config``."""
    progress = progress or NullProgress()
    started = time.perf_counter()
    models = [Path(p) for p in paths]
    if not models:
        raise OnnxoptError("no model to benchmark")
    providers = resolve(config.providers)
    inputs = [_inputs_of(path) for path in models]
    for path, specs in zip(models[1:], inputs[1:], strict=True):
        if [s.name for s in specs] != [s.name for s in inputs[0]]:
            raise DataError(
                f"{path}: inputs {[s.name for s in specs]} differ from the baseline's {[s.name for s in inputs[0]]}"
            )
    batches = _batches(models, inputs, config.batches)
    labels = distinct_names(models)
    sizes = [io.file_bytes(p) for p in models]
    measurements: list[Measurement] = []
    for provider in providers:
        for batch in batches:
            source = dataset or RandomDataset(inputs[0], batch, seed=config.seed, shapes=config.input_shapes)
            feeds = _feeds(source, inputs[0], batch)
            try:
                measurements += _measure_cell(models, labels, sizes, provider, batch, feeds, config, progress)
            except ModelRunError as e:
                if not isinstance(source, RandomDataset):
                    raise  # the user's data: the message is theirs to read
                raise source.run_failure(e, batch) from e
    shown = RandomDataset(inputs[0], 1, seed=config.seed, shapes=config.input_shapes) if dataset is None else None
    return BenchResult(
        config=config,
        measurements=measurements,
        data=dataset.description if dataset else f"random (seed {config.seed})",
        machine=machine_description(),
        seconds=time.perf_counter() - started,
        inputs=shown.shapes_line(batches[0] if len(batches) == 1 else "B") if shown else None,
    )


def _measure_cell(
    models: list[Path],
    labels: list[str],
    sizes: list[int],
    provider: str,
    batch: int,
    feeds: dict[str, np.ndarray],
    config: BenchConfig,
    progress: Progress,
) -> list[Measurement]:
    sessions = []
    for path in models:
        session = TimedSession(path, provider, threads=config.threads, spinning=config.spinning)
        session.bind(feeds)
        sessions.append(session)
    for _ in range(config.warmup):
        for session in sessions:
            session.run()
    times = _rounds(sessions, config, progress, f"{short_name(provider)} batch {batch}")
    creation = [s.creation_s for s in sessions]
    active = [s.active_providers for s in sessions]
    del sessions
    out = []
    for i, path in enumerate(models):
        use = memory.measure(path, provider, feeds, threads=config.threads) if config.memory else None
        out.append(
            Measurement(
                model=labels[i],
                path=str(path),
                provider=short_name(provider),
                batch=batch,
                file_bytes=sizes[i],
                session_s=creation[i],
                latency=LatencyStats.of(times[i], batch),
                ratio=None if i == 0 else median_ratio(times[0], times[i], seed=config.seed),
                peak_rss_bytes=use.peak_rss_bytes if use else None,
                session_bytes=use.session_bytes if use else None,
                active_providers=active[i],
            )
        )
    return out


def paired_ratio(
    baseline: Path, candidate: Path, provider: str, feeds: dict[str, np.ndarray], *, seconds: float = 1.0
) -> Ratio:
    """``candidate``'s median latency over ``baseline``'s on ``feeds``, interleaved round by round, with its 95 %
    bootstrap interval: how a pass decides whether a rewrite is faster on this machine."""
    sessions = []
    for path in (baseline, candidate):
        session = TimedSession(path, provider)
        session.bind(feeds)
        sessions.append(session)
    for _ in range(3):
        for session in sessions:
            session.run()
    times = _rounds(sessions, BenchConfig(seconds=seconds / 2, memory=False), NullProgress(), "")
    return median_ratio(times[0], times[1])


def _rounds(sessions: list[TimedSession], config: BenchConfig, progress: Progress, what: str) -> list[list[float]]:
    """Timed rounds, each running every session once in a rotated order."""
    n = len(sessions)
    times: list[list[float]] = [[] for _ in sessions]
    budget = config.seconds * n
    progress.start(f"timing {what}", config.runs)
    start = time.perf_counter()
    try:
        rounds = 0
        while True:
            for k in range(n):
                i = (rounds + k) % n
                times[i].append(sessions[i].run())
            rounds += 1
            progress.advance()
            if config.runs is not None:
                if rounds >= config.runs:
                    break
            elif rounds >= MIN_ROUNDS and time.perf_counter() - start >= budget:
                break
    finally:
        progress.finish()
    return times


def _inputs_of(path: Path) -> list[TensorSpec]:
    return io.validate(path).runner.inputs  # the validation every command runs: one-line errors naming the file


def _batches(models: list[Path], inputs: list[list[TensorSpec]], requested: tuple[int, ...] | None) -> list[int]:
    fixed = {path: fixed_batch(specs) for path, specs in zip(models, inputs, strict=True)}
    values = {v for v in fixed.values() if v is not None}
    if len(values) > 1:
        raise DataError(f"the models have different fixed batch sizes ({sorted(values)}); they cannot be compared")
    if requested is None:
        return [values.pop() if values else 1]
    for path, batch in fixed.items():
        bad = [b for b in requested if batch is not None and b != batch]
        if bad:
            raise DataError(f"{path}: the model has a fixed batch dimension of {batch}; --batch {bad[0]} is impossible")
    return list(dict.fromkeys(requested))


def _feeds(source: Dataset, inputs: list[TensorSpec], batch: int) -> dict[str, np.ndarray]:
    """One batch of ``batch`` samples of ``source`` for every model (the data's first rows, repeated if too few)."""
    first = next(iter(source.batches(batch, batch)), None)
    if first is None or not first.feeds:
        raise DataError(f"--data {source.description}: no samples")
    feeds = {}
    for spec in inputs:
        array = first.feeds[spec.name]
        if spec.shape == () or array.ndim == 0:
            feeds[spec.name] = array
            continue
        reps = -(-batch // array.shape[0])
        feeds[spec.name] = np.ascontiguousarray(np.concatenate([array] * reps)[:batch]) if reps > 1 else array
    return feeds


def distinct_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """A name for each of ``paths`` that no other has: its file name, with parent folders added until no other
    path ends the same (``a/m.onnx`` and ``b/m.onnx``); never shortened. A path given again is numbered
    (``m.onnx``, ``m.onnx (2)``)."""
    parts = [Path(p).absolute().parts for p in paths]
    names = []
    for i, mine in enumerate(parts):
        others = {other for other in parts if other != mine}
        k = next(
            (k for k in range(1, len(mine)) if all(other[-k:] != mine[-k:] for other in others)),
            len(mine),
        )
        name = str(Path(*mine[-k:]))
        copy = parts[:i].count(mine)
        names.append(f"{name} ({copy + 1})" if copy else name)
    return names
