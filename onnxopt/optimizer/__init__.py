"""The run: prepare -> pipeline of verified passes -> evaluate -> write -> bench.

* :mod:`.run` -- ``optimize_file``, the main job (what ``onnxopt optimize`` runs), one step per function;
* :mod:`.recipe` -- recipes as data: names, files, pass specs -> configured passes;
* :mod:`.pipeline` -- the pass manager and its per-pass guard (``PassRecord``, ``PassStatus``);
* :mod:`.verified_replay` -- a plan's replay run unguarded, its measurements carried when it rebuilt the
  planned model;
* :mod:`.context` -- the run's settings (frozen) and the pipeline's state: what passes share and how they reach
  onnxruntime;
* :mod:`.plan` -- recorded decisions and the recorded verification of their result;
* :mod:`.calibration`, :mod:`.quality`, :mod:`.node_profile`, :mod:`.budget`, :mod:`.branches` -- the Context's
  and the guard's helpers (activations, accuracy budgets, per-node timing, If-branch coverage).
"""

from __future__ import annotations

from onnxopt.optimizer.context import Context, RunSettings, RunState
from onnxopt.optimizer.pipeline import PassRecord, PassStatus, Pipeline, PipelineResult
from onnxopt.optimizer.run import OptimizeResult, optimize_file

__all__ = [
    "Context", "OptimizeResult", "PassRecord", "PassStatus", "Pipeline", "PipelineResult", "RunSettings", "RunState",
    "optimize_file",
]  # fmt: skip
