"""``onnxopt tune``: search over recipes under an accuracy budget, on a local process pool or on Ray
(:mod:`onnxopt.tune.run` describes the flow)."""

from onnxopt.errors import TuneError
from onnxopt.tune.run import OBJECTIVES, TuneOptions, TuneResult, tune

__all__ = ["OBJECTIVES", "TuneError", "TuneOptions", "TuneResult", "tune"]
