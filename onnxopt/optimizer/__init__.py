"""The run: load -> pipeline of verified passes -> evaluate -> save.

* :mod:`.run` -- ``optimize_file``, the main job (what ``onnxopt optimize`` runs);
* :mod:`.recipe` -- recipes as data: names, files, pass specs -> configured passes;
* :mod:`.pipeline` -- the pass manager and its per-pass guard;
* :mod:`.context` -- what passes share and how they reach onnxruntime;
* :mod:`.calibration`, :mod:`.quality`, :mod:`.node_profile`, :mod:`.shared_weights` -- the Context's and
  the guard's helpers (activations, accuracy budgets, per-node timing, zero-copy sessions).
"""

from __future__ import annotations

from onnxopt.optimizer.context import Context
from onnxopt.optimizer.pipeline import PassRecord, Pipeline, PipelineResult
from onnxopt.optimizer.run import OptimizeResult, optimize_file

__all__ = ["Context", "OptimizeResult", "PassRecord", "Pipeline", "PipelineResult", "optimize_file"]
