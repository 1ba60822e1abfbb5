"""One model's benchmark session: created and timed the way it would be deployed.

Benchmark sessions run with onnxruntime's graph optimizations ENABLED (its
default, what a deployment gets), unlike the verification sessions of
:mod:`onnxopt.runtime`. On device providers (CUDA, TensorRT) the inputs are
copied to the device once and inputs and outputs are bound there (IO
binding), so a timed run excludes host<->device copies.

Intra-op threads do not spin-wait after a run by default (``spinning=False``):
in an interleaved benchmark the spinning threads of the session that just
ran would compete for the cores with the next session's run, which skews
the ratios the benchmark exists to measure (on this project's 2-core machine
a model against its own copy read 1.04 with spinning and 0.99 without).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxopt.bench.providers import DEVICE_OF, session_providers
from onnxopt.errors import ModelRunError, UnsupportedModelError
from onnxopt.runtime import ort_error_text, session_with_empty_dims_open


def benchmark_options(*, threads: int = 0, spinning: bool = False) -> ort.SessionOptions:
    """The options of every benchmark session: all of onnxruntime's graph optimizations, ``threads`` intra-op
    threads (0: its default), spin-waiting as asked; also what the runtime audit
    (:mod:`onnxopt.bench.runtime_audit`) builds, so it reads the graph the benchmark times."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 4
    return options


class TimedSession:
    """A session over ``path`` on ``provider``; :meth:`run` times one inference in seconds."""

    def __init__(self, path: Path, provider: str, *, threads: int = 0, spinning: bool = False) -> None:
        options = benchmark_options(threads=threads, spinning=spinning)
        start = time.perf_counter()
        try:
            session = ort.InferenceSession(str(path), options, providers=session_providers(provider))
            self.session = session_with_empty_dims_open(session, str(path), options, session_providers(provider))
        except Exception as e:  # onnxruntime raises its own exception types
            raise UnsupportedModelError(
                f"{path}: onnxruntime cannot create a session on {provider}: {ort_error_text(e, 400)}"
            ) from e
        self.creation_s = time.perf_counter() - start
        self.provider = provider
        self.active_providers = self.session.get_providers()
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._device = DEVICE_OF.get(provider)
        self._binding: ort.IOBinding | None = None
        self._feeds: dict[str, np.ndarray] = {}

    def bind(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Fix the inputs of every later :meth:`run` (copied to the device once on device providers)."""
        names = {i.name for i in self.session.get_inputs()}
        self._feeds = {k: v for k, v in feeds.items() if k in names}
        if self._device is None:
            return
        binding = self.session.io_binding()
        for name, array in self._feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, self._device, 0))
        for name in self.output_names:
            binding.bind_output(name, self._device)
        self._binding = binding

    def run(self) -> float:
        """One inference on the bound inputs; its wall time in seconds."""
        try:
            if self._binding is not None:
                start = time.perf_counter()
                self.session.run_with_iobinding(self._binding)
                self._binding.synchronize_outputs()
                return time.perf_counter() - start
            start = time.perf_counter()
            self.session.run(self.output_names, self._feeds)
            return time.perf_counter() - start
        except Exception as e:
            raise ModelRunError(
                f"onnxruntime failed to run the model on {self.provider}: {ort_error_text(e, 400)}"
            ) from e
