"""Evaluation: how a candidate model agrees with its reference, on outputs and layer by layer.

* :mod:`.agreement` -- streaming statistics (a leaf; the pipeline's guard uses it too);
* :mod:`.compare` -- both models on a Dataset: agreement per output, accuracy with labels;
* :mod:`.check` -- thresholds an output must meet (``--atol``/``--rtol``, ``--min-snr``, ``--min-top1``);
* :mod:`.layers` -- per-layer error localization: where the error is born.
"""

from __future__ import annotations

from onnxopt.evaluate.agreement import SNR_CAP_DB, AgreementAccumulator, OutputAgreement, agreement
from onnxopt.evaluate.check import CheckFailure, Thresholds
from onnxopt.evaluate.compare import Comparison, classifier_output_index, compare
from onnxopt.evaluate.layers import DEFAULT_THRESHOLD_DB, LayerError, LayerReport, layer_errors

__all__ = [
    "DEFAULT_THRESHOLD_DB",
    "SNR_CAP_DB",
    "AgreementAccumulator",
    "CheckFailure",
    "Comparison",
    "LayerError",
    "LayerReport",
    "OutputAgreement",
    "Thresholds",
    "agreement",
    "classifier_output_index",
    "compare",
    "layer_errors",
]
