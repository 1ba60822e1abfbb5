"""onnxopt: verified ONNX graph rewriting for trained networks.

Public API::

    import onnxopt
    model = onnxopt.load("model.onnx")
    result = onnxopt.optimize("model.onnx", "out.onnx", recipe="lossless", data="eval.npz")
    comparison = onnxopt.compare_files("model.onnx", "out.onnx", data="eval.npz")
    summary = onnxopt.inspect_model(model)
"""

from __future__ import annotations

__version__ = "0.1.0"

from onnxopt.api import compare_files, optimize
from onnxopt.errors import DataError, ModelLoadError, OnnxoptError, OutputError, RecipeError, UnsupportedModelError
from onnxopt.evaluate import Comparison, OutputAgreement
from onnxopt.inspection import ModelSummary, inspect_model
from onnxopt.io import load, save
from onnxopt.optimizer import Context, PassRecord, Pipeline
from onnxopt.optimizer.recipe import BUILTIN_RECIPES, build_passes, load_recipe, parse_spec

__all__ = [
    "BUILTIN_RECIPES",
    "Comparison",
    "Context",
    "DataError",
    "ModelLoadError",
    "ModelSummary",
    "OnnxoptError",
    "OutputAgreement",
    "OutputError",
    "PassRecord",
    "Pipeline",
    "RecipeError",
    "UnsupportedModelError",
    "__version__",
    "build_passes",
    "compare_files",
    "inspect_model",
    "load",
    "load_recipe",
    "optimize",
    "parse_spec",
    "save",
]
