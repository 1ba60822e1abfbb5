"""``onnxopt tune``: search over recipes under an accuracy budget, on a local process pool or on Ray
(:mod:`onnxopt.tune.run` describes the flow)."""

from onnxopt.tune.run import OBJECTIVES, TuneOptions, TuneResult, tune
from onnxopt.tune.workers import TuneError

__all__ = ["OBJECTIVES", "TuneError", "TuneOptions", "TuneResult", "tune"]
