"""Per-layer error localization: where along the graph a candidate starts to disagree with its reference.

Both models get their intermediate tensors exposed as extra outputs, run on
the same data in onnxruntime (optimizations disabled, so the tensors are the
graph's own), and every matched pair is compared with the same streaming
statistics as the outputs (:class:`~onnxopt.evaluate.agreement.AgreementAccumulator`).
The models are never serialized with their weights (sessions share them;
shape inference and matching read the graphs alone), so models over
protobuf's 2 GB limit work too.

Matching a reference tensor ``T`` to the candidate, in order of preference:

1. the output of a candidate ``DequantizeLinear(QuantizeLinear(T))`` that reads
   the integers at the scale and zero point they were written with -- the
   value a QDQ model actually passes on in place of the float ``T``;
2. a candidate tensor with the same name. onnxopt's passes keep a tensor's
   name only while it keeps its meaning: a fold that makes a Conv compute
   what the BatchNormalization after it did gives the Conv's output the BN
   output's name, and the Conv's old name disappears; a pass that leaves a
   tensor holding different values -- even an exact reparametrization such
   as ``equalize``, which rescales the tensors between two layers per
   channel -- gives it a fresh name (``..._before_bn``, ``..._equalized``),
   so it is left unmatched rather than reported as broken. Graph outputs
   are never renamed (and never change meaning); this matcher does not undo
   scales, so a pass that broke the rule would show up as a broken layer;
3. the candidate's ``onnxopt.renamed`` metadata (JSON ``{candidate: reference}``)
   when a tool recorded renamed tensors there.

Layers are reported in the reference's topological order; the *first* layer
whose SNR falls below ``threshold_db`` is where the error is born. Each layer
also gets the SNR of the error it added itself: its output's error power less
its worst matched input's (:func:`~onnxopt.evaluate.agreement.own_error_db`).

Memory: one probe batch of a single sample measures each tensor's bytes per
sample; tensors are then grouped so that one batch of one group stays under
``max_batch_bytes``, and the data is run once per group. Nothing but the
running statistics is kept between batches.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import onnx
import onnx_ir as ir

from onnxopt.data import Dataset, fixed_batch
from onnxopt.errors import UnsupportedModelError
from onnxopt.evaluate.agreement import AgreementAccumulator, own_error_db
from onnxopt.io.sparse_storage import densify
from onnxopt.shared_weights import SharedWeightsModel

#: Default SNR (dB) below which a layer counts as broken.
DEFAULT_THRESHOLD_DB = 20.0
#: Default cap on the exposed tensors' bytes in one batch.
DEFAULT_MAX_BATCH_BYTES = 256 * 1024**2
RENAMED_KEY = "onnxopt.renamed"
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


@dataclass(frozen=True)
class LayerError:
    """Agreement of one intermediate tensor."""

    tensor: str  # the reference tensor
    candidate_tensor: str
    op_type: str  # the reference node producing it
    node: str
    snr_db: float
    cosine: float
    max_rel: float
    own_snr_db: float | None  # SNR of the error this layer adds itself (agreement.own_error_db; None: no matched input)


@dataclass(frozen=True)
class LayerReport:
    """Every matched layer in topological order, and the verdict."""

    threshold_db: float
    samples: int
    layers: list[LayerError]
    unmatched: int  # reference float tensors with no candidate counterpart
    first_bad: str | None  # first tensor below the threshold
    largest_added: str | None  # tensor whose layer added the most error (lowest own_snr_db)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def layer_errors(
    reference: onnx.ModelProto | ir.Model,
    candidate: onnx.ModelProto | ir.Model,
    dataset: Dataset,
    *,
    threshold_db: float = DEFAULT_THRESHOLD_DB,
    batch_size: int = 8,
    limit: int | None = 64,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    on_batch: Callable[[int], None] | None = None,
) -> LayerReport:
    """Compare every matched intermediate tensor of ``candidate`` with ``reference`` on ``dataset``.

    Either model is a ModelProto (tensor data loaded) or an IR model; neither is ever serialized with its
    weights: onnxruntime reads each graph without them and gets them as shared arrays
    (:class:`~onnxopt.shared_weights.SharedWeightsModel`), so a model over protobuf's 2 GB limit
    is compared like any other."""

    ref_frozen = SharedWeightsModel(_ir(reference), protect=False)
    cand_frozen = SharedWeightsModel(_ir(candidate), protect=False)
    ref_graph, cand_graph = ref_frozen.proto(), cand_frozen.proto()  # the graphs, weights left out
    ref_types, ref_order = _float_tensors(ref_graph)
    cand_types, _ = _float_tensors(cand_graph)
    pairs, unmatched = _match(ref_graph, cand_graph, ref_order, cand_types)
    if not pairs:
        raise UnsupportedModelError("no intermediate tensor of the reference has a counterpart in the candidate")
    fixed = fixed_batch(ref_frozen.runner().inputs)
    batch = fixed or batch_size
    sizes = _bytes_per_sample(ref_frozen, pairs, ref_types, dataset, fixed is not None)
    accumulators = {ref: AgreementAccumulator(ref) for ref, _ in pairs}
    incomparable: set[str] = set()
    samples = 0
    for group in _groups(pairs, sizes, max(1, max_batch_bytes // batch)):
        ref_runner = ref_frozen.runner(outputs={r: ref_types[r] for r, _ in group})
        cand_runner = cand_frozen.runner(outputs={c: cand_types[c] for _, c in group})
        samples = 0
        for item in dataset.batches(batch, limit, exact=fixed is not None):
            ref_out = ref_runner.run(item.feeds, [r for r, _ in group])
            cand_out = cand_runner.run(item.feeds, [c for _, c in group])
            for (ref, _), r, c in zip(group, ref_out, cand_out, strict=True):
                if r.shape == c.shape:
                    accumulators[ref].add(r, c)
                else:
                    incomparable.add(ref)
            n = item.samples
            samples += n
            if on_batch:
                on_batch(n)
    kept = [pair for pair in pairs if pair[0] not in incomparable]
    return _report(ref_graph, kept, accumulators, threshold_db, samples, unmatched + len(pairs) - len(kept))


def _ir(model: onnx.ModelProto | ir.Model) -> ir.Model:
    """``model`` as an IR model; a proto's tensors are wrapped, not copied (sparse initializers made dense
    first, in a copy: onnx_ir would drop them)."""
    if isinstance(model, ir.Model):
        return model
    if model.graph.sparse_initializer:
        dense = onnx.ModelProto()
        dense.CopyFrom(model)
        densify(dense)
        model = dense
    return ir.serde.deserialize_model(model)


def _float_tensors(model: onnx.ModelProto) -> tuple[dict[str, int], list[str]]:
    """Element types of the float tensors nodes produce, and those names in node order."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is best effort here: tensors without a type are left out
        inferred = model
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in [*inferred.graph.value_info, *inferred.graph.output]
        if vi.type.HasField("tensor_type")
    }
    order = [o for node in model.graph.node for o in node.output if o and types.get(o) in _FLOAT_TYPES]
    return {name: types[name] for name in order}, order


def _match(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, order: list[str], cand_types: dict[str, int]
) -> tuple[list[tuple[str, str]], int]:
    quantized_as: dict[str, str] = {}
    producers = {o: n for n in candidate.graph.node for o in n.output}
    for node in candidate.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in producers:
            q = producers[node.input[0]]
            if q.op_type == "QuantizeLinear" and _same_quantizer(q, node):
                quantized_as.setdefault(q.input[0], node.output[0])
    renamed: dict[str, str] = {}
    for prop in candidate.metadata_props:
        if prop.key == RENAMED_KEY:
            try:
                renamed = {ref: cand for cand, ref in json.loads(prop.value).items()}
            except (ValueError, AttributeError):
                renamed = {}
    pairs, unmatched = [], 0
    for name in order:  # graph outputs too: the error the last layer adds shows only there
        match = quantized_as.get(name) or (name if name in cand_types else None) or renamed.get(name)
        if match is not None and match in cand_types:
            pairs.append((name, match))
        else:
            unmatched += 1
    return pairs, unmatched


def _same_quantizer(quantize: onnx.NodeProto, dequantize: onnx.NodeProto) -> bool:
    """Whether ``dequantize`` reads ``quantize``'s integers at the scale and zero point they were written with, so
    its output stands for ``quantize``'s input. Not where the quantize pass folded a Mul by a constant ``c`` into
    the quantizer (``Q(x, s / c) -> DQ(s)`` reads ``c * x``: a HardSwish's ``/ 6``): compared with ``x`` that
    tensor would read as broken (1.6 dB of SNR for ``c = 1 / 6``) where it is not. Compared by the tensors' names
    (the graphs come without their weights): where either differs, ``x`` is matched by its own name (the float
    tensor before the quantizer), never with ``c * x``."""
    return list(quantize.input[1:3]) == list(dequantize.input[1:3])


def _bytes_per_sample(
    reference: SharedWeightsModel,
    pairs: list[tuple[str, str]],
    types: dict[str, int],
    dataset: Dataset,
    exact: bool,
) -> dict[str, int]:
    """Each exposed tensor's bytes for one sample, measured on one probe batch."""
    runner = reference.runner(outputs={r: types[r] for r, _ in pairs})
    batch = fixed_batch(runner.inputs) or 1
    item = next(iter(dataset.batches(batch, batch, exact=exact)))
    rows = max(item.samples, 1)
    arrays = runner.run(item.feeds, [r for r, _ in pairs])
    return {ref: max(a.nbytes // rows, 1) for (ref, _), a in zip(pairs, arrays, strict=True)}


def _groups(pairs: list[tuple[str, str]], sizes: dict[str, int], budget: int) -> list[list[tuple[str, str]]]:
    groups: list[list[tuple[str, str]]] = [[]]
    used = 0
    for pair in pairs:
        size = sizes[pair[0]]
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(pair)
        used += size
    return groups


def _report(
    reference: onnx.ModelProto,
    pairs: list[tuple[str, str]],
    accumulators: dict[str, AgreementAccumulator],
    threshold_db: float,
    samples: int,
    unmatched: int,
) -> LayerReport:
    producers = {o: n for n in reference.graph.node for o in n.output}
    results = {ref: accumulators[ref].result() for ref, _ in pairs}
    exact = {i.name for i in reference.graph.input}  # the data itself: identical on both sides
    layers = []
    for ref, cand in pairs:
        node = producers[ref]
        r = results[ref]
        inputs = [results[i].snr_db if i in results else math.inf for i in node.input if i in results or i in exact]
        added = None if not inputs else own_error_db(min(inputs), r.snr_db)
        layers.append(LayerError(ref, cand, node.op_type, node.name, r.snr_db, r.cosine, r.max_rel, added))
    first_bad = next((layer.tensor for layer in layers if layer.snr_db < threshold_db), None)
    scored = [layer for layer in layers if layer.own_snr_db is not None]
    largest = min(scored, key=lambda layer: layer.own_snr_db or 0.0).tensor if scored else None
    return LayerReport(threshold_db, samples, layers, unmatched, first_bad, largest)


__all__ = ["DEFAULT_THRESHOLD_DB", "LayerError", "LayerReport", "layer_errors"]
