"""The pass registry: every rewrite onnxopt can run, by recipe name.

To add a pass: write ``passes/<what_it_does>.py`` with a ``<Verb><Object>Pass``
subclass of :class:`~onnxopt.passes.base.OptPass` and list it here.
"""

from __future__ import annotations

from onnxopt.passes.base import OptPass, PassOutcome
from onnxopt.passes.clip_weights import ClipWeightsPass
from onnxopt.passes.dedup_initializers import DeduplicateInitializersPass
from onnxopt.passes.distill import DistillPass
from onnxopt.passes.eliminate_identity import EliminateIdentityPass
from onnxopt.passes.equalize import EqualizeLayersPass
from onnxopt.passes.float16_weights import StoreWeightsFloat16Pass
from onnxopt.passes.fold_batchnorm import FoldBatchNormPass
from onnxopt.passes.fold_channel_affine import FoldChannelAffinePass
from onnxopt.passes.fold_constants import FoldConstantsPass
from onnxopt.passes.low_rank import LowRankPass
from onnxopt.passes.prune_channels import PruneChannelsPass
from onnxopt.passes.prune_magnitude import PruneMagnitudePass
from onnxopt.passes.qat import QatPass
from onnxopt.passes.quantize.bias_correct import BiasCorrectPass
from onnxopt.passes.quantize.quantize_qdq import QuantizeQDQPass
from onnxopt.passes.reconstruct import ReconstructPass
from onnxopt.passes.remove_initializer_inputs import RemoveInitializerInputsPass
from onnxopt.passes.remove_unused import RemoveUnusedPass
from onnxopt.passes.topo_sort import TopologicalSortPass

REGISTRY: dict[str, type[OptPass]] = {
    cls.name: cls
    for cls in (
        RemoveInitializerInputsPass,
        FoldConstantsPass,
        EliminateIdentityPass,
        FoldBatchNormPass,
        FoldChannelAffinePass,
        DeduplicateInitializersPass,
        RemoveUnusedPass,
        TopologicalSortPass,
        EqualizeLayersPass,
        ClipWeightsPass,
        PruneMagnitudePass,
        PruneChannelsPass,
        ReconstructPass,
        LowRankPass,
        DistillPass,
        BiasCorrectPass,
        QuantizeQDQPass,
        QatPass,
        StoreWeightsFloat16Pass,
    )
}

__all__ = [
    "REGISTRY",
    "BiasCorrectPass",
    "ClipWeightsPass",
    "DeduplicateInitializersPass",
    "DistillPass",
    "EliminateIdentityPass",
    "EqualizeLayersPass",
    "FoldBatchNormPass",
    "FoldChannelAffinePass",
    "FoldConstantsPass",
    "LowRankPass",
    "OptPass",
    "PassOutcome",
    "PruneChannelsPass",
    "PruneMagnitudePass",
    "QatPass",
    "QuantizeQDQPass",
    "ReconstructPass",
    "RemoveInitializerInputsPass",
    "RemoveUnusedPass",
    "StoreWeightsFloat16Pass",
    "TopologicalSortPass",
]
