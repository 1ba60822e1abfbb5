"""TensorFlow, Keras and tf2onnx, imported lazily and quietly (the ``tf`` extra).

Only conversion and distillation need them; everything else in onnxopt runs
without TensorFlow installed. Their import prints a wall of C++ and Python
log lines, so the log levels are lowered first.
"""

from __future__ import annotations

import logging
import os
import warnings
from types import ModuleType

from onnxopt.errors import OnnxoptError

MISSING = "TensorFlow is not installed: pip install 'onnxopt[tf]' (tensorflow-cpu, tf2onnx)"


def tensorflow() -> ModuleType:
    """The ``tensorflow`` module, or a one-line error naming the extra to install."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # bit-reproducible results for a seed
    try:
        import tensorflow as tf
    except ImportError as e:
        raise OnnxoptError(MISSING) from e
    tf.get_logger().setLevel(logging.ERROR)
    # TF 2.20+ warns on every tf.lite.Interpreter; it is still TFLite's reference interpreter here
    warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated.*")
    logging.getLogger("absl").setLevel(logging.ERROR)
    return tf


def keras() -> ModuleType:
    tensorflow()
    import keras

    return keras


def tf2onnx() -> ModuleType:
    tensorflow()
    try:
        import tf2onnx
    except ImportError as e:
        raise OnnxoptError(MISSING) from e
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    return tf2onnx
