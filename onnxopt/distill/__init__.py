"""Knowledge distillation and fine-tuning (the ``tf`` extra, imported lazily).

* :mod:`onnxopt.distill.keras_student` -- ``onnxopt distill`` with a Keras student;
* :mod:`onnxopt.distill.graph_model` -- a trainable TensorFlow twin of an ONNX graph;
* :mod:`onnxopt.distill.finetune` -- an ONNX student trained on an ONNX teacher's outputs, weights written
  back into the same graph (what the ``distill`` pass runs);
* :mod:`onnxopt.distill.fake_quant` and :mod:`onnxopt.distill.qat` -- quantization-aware fine-tuning of a QDQ
  model against its float original, integers and scales written back into the same graph (the ``qat`` pass).
"""

from onnxopt.distill.keras_student import DistillConfig, DistillResult, distill
from onnxopt.errors import ConversionError

__all__ = ["ConversionError", "DistillConfig", "DistillResult", "distill"]
