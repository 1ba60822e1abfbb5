"""onnxopt: verified ONNX graph rewriting for trained networks.

Public API::

    import onnxopt
    result = onnxopt.optimize("model.onnx", "out.onnx", recipe="int8", data="eval.npz")
    result = onnxopt.optimize(proto, recipe="int8", data={"image": images})  # in memory: result.model
    comparison = onnxopt.compare("model.onnx", "out.onnx", data="eval.npz")
    timing = onnxopt.bench(["model.onnx", "out.onnx"])
    summary = onnxopt.inspect_model(onnxopt.load("model.onnx"))
    [tuned] = onnxopt.tune("model.onnx", "tuned.onnx", data="train.npz", max_drop=0.01)
"""

from __future__ import annotations

__version__ = "0.1.0"

from onnxopt.api import bench, bench_files, compare, compare_files, optimize, tune
from onnxopt.errors import DataError, ModelLoadError, OnnxoptError, OutputError, RecipeError, UnsupportedModelError
from onnxopt.evaluate import Comparison, OutputAgreement
from onnxopt.inspection import ModelSummary, inspect_model
from onnxopt.io import load, save
from onnxopt.optimizer import Context, PassRecord, Pipeline
from onnxopt.optimizer.recipe import BUILTIN_RECIPES, build_passes, load_recipe, parse_spec
from onnxopt.optimizer.run import OptimizeOptions, OptimizeResult
from onnxopt.tune import TuneOptions, TuneResult

__all__ = [
    "BUILTIN_RECIPES",
    "Comparison",
    "Context",
    "DataError",
    "ModelLoadError",
    "ModelSummary",
    "OnnxoptError",
    "OptimizeOptions",
    "OptimizeResult",
    "OutputAgreement",
    "OutputError",
    "PassRecord",
    "Pipeline",
    "RecipeError",
    "TuneOptions",
    "TuneResult",
    "UnsupportedModelError",
    "__version__",
    "bench",
    "bench_files",
    "build_passes",
    "compare",
    "compare_files",
    "inspect_model",
    "load",
    "load_recipe",
    "optimize",
    "parse_spec",
    "save",
    "tune",
]
