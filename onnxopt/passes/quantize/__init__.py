"""Quantization: the ``quantize`` pass (static QDQ) and ``bias-correct``, with what only they use.

* :mod:`.quantize_qdq` -- the pass: which tensors get Q/DQ, and the rewrite that inserts them;
* :mod:`.search` -- which nodes stay float (profile and accuracy-budget searches);
* :mod:`.activation_ranges`, :mod:`.range_search` -- calibration statistics and range choice;
* :mod:`.weight_rounding`, :mod:`.cpu_target` -- how weights are rounded, for which CPU;
* :mod:`.bias_correct` -- the pass that corrects the output shift weight rounding causes.
"""

from __future__ import annotations

from onnxopt.passes.quantize.bias_correct import BiasCorrectPass
from onnxopt.passes.quantize.quantize_qdq import QuantizeQDQPass

__all__ = ["BiasCorrectPass", "QuantizeQDQPass"]
