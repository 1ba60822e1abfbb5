"""Zero the smallest weights: unstructured magnitude pruning, or N:M along the input channels.

Matches the float initializer weights of Conv, ConvTranspose, Gemm and MatMul
layers selected by ``ops`` and the ``include``/``exclude`` name patterns
(:mod:`onnxopt.passes._weights`); the first and the last selected layer are
protected by default (they are the most sensitive and the smallest).

* Unstructured (``pattern`` empty): the ``sparsity`` fraction of weights with
  the lowest importance become exactly zero -- per layer (``scope=layer``:
  every layer loses the same fraction) or across all selected layers at once
  (``scope=global``). Importance is ``|w|``; with ``importance=l1`` or ``l2``
  it is ``|w|`` divided by the layer's mean ``|w|`` or RMS, so that a global
  threshold does not empty the layers whose weights happen to be small. (For
  ``scope=layer`` the three orderings are the same.)
* ``pattern=N:M`` (e.g. ``2:4``): in every run of M consecutive weights along
  the input-channel axis, the N largest ``|w|`` are kept and the rest zeroed --
  the layout sparse tensor cores accelerate. A layer whose input-channel count
  is not a multiple of M is declined.

Zeros alone make nothing faster on CPUs; they make the file compress well and,
written with ``--storage sparse``, smaller (:mod:`onnxopt.io.sparse_storage`).
Lossy: each layer's sparsity before and after is in the record's details.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

import numpy as np
import onnx_ir as ir

from onnxopt.passes._config import validate_literals
from onnxopt.passes._weights import (
    Layer,
    check_filters,
    exclude_field,
    include_field,
    ops_field,
    replace_weight,
    select_layers,
)
from onnxopt.passes.base import OptPass, PassLog

Importance = Literal["magnitude", "l1", "l2"]
IMPORTANCES: tuple[str, ...] = typing.get_args(Importance)


@dataclasses.dataclass(frozen=True)
class PruneMagnitudeConfig:
    sparsity: float = dataclasses.field(default=0.5, metadata={"help": "fraction of weights zeroed (unstructured)"})
    scope: Literal["layer", "global"] = dataclasses.field(
        default="layer", metadata={"help": "one threshold per layer, or one for the whole model"}
    )
    importance: Importance = dataclasses.field(
        default="magnitude",
        metadata={"help": "|w|, or |w| over the layer's mean |w| (l1) or RMS (l2), for global scope"},
    )
    pattern: str = dataclasses.field(default="", metadata={"help": '"N:M", e.g. "2:4"; empty: unstructured'})
    protect_first: bool = dataclasses.field(
        default=True, metadata={"help": "leave the first selected layer unpruned (the most sensitive)"}
    )
    protect_last: bool = dataclasses.field(default=True, metadata={"help": "leave the last selected layer unpruned"})
    ops: str = ops_field("pruned")
    include: str = include_field("pruned")
    exclude: str = exclude_field()

    def __post_init__(self) -> None:
        validate_literals(self)
        check_filters(self.ops, self.include, self.exclude)
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), not {self.sparsity}")
        if self.pattern:
            self.n_m  # noqa: B018  (validates)

    @property
    def n_m(self) -> tuple[int, int]:
        try:
            n, m = (int(v) for v in self.pattern.split(":"))
        except ValueError:
            raise ValueError(f"pattern must be N:M (e.g. 2:4), not {self.pattern!r}") from None
        if not 0 < n < m:
            raise ValueError(f"pattern N:M needs 0 < N < M, not {self.pattern!r}")
        return n, m


class PruneMagnitudePass(OptPass):
    """Zero the smallest weights: unstructured (per layer or global) or N:M along input channels."""

    name = "prune-magnitude"
    Config = PruneMagnitudeConfig
    lossless = False

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        cfg = self.config
        layers = select_layers(model, cfg.ops, cfg.include, cfg.exclude, log.skip)
        layers = self._unprotected(log, layers)
        if not layers:
            return
        before = {id(layer): _zero_fraction(layer.array) for layer in layers}
        if cfg.pattern:
            masks = [self._n_m_mask(log, layer) for layer in layers]
        elif cfg.scope == "global":
            masks = _global_masks(layers, cfg.sparsity, cfg.importance)
        else:
            masks = [_smallest_mask(np.abs(layer.array), cfg.sparsity) for layer in layers]
        for layer, mask in zip(layers, masks, strict=True):
            if mask is None:
                continue
            zeroed = int(np.count_nonzero(mask & (layer.array != 0)))
            pruned = np.where(mask, 0, layer.array)
            log.detail(
                layer=layer.label,
                weights=int(layer.array.size),
                sparsity_before=before[id(layer)],
                sparsity_after=_zero_fraction(pruned),
            )
            if zeroed:
                replace_weight(layer, pruned)
                log.count("weights zeroed", zeroed)
                log.count("layers pruned")

    def _unprotected(self, log: PassLog, layers: list[Layer]) -> list[Layer]:
        protected = set()
        if layers and self.config.protect_first:
            protected.add(0)
        if layers and self.config.protect_last:
            protected.add(len(layers) - 1)
        for i in sorted(protected):
            log.skip(layers[i].label, f"protected ({'first' if i == 0 else 'last'} layer)")
        return [layer for i, layer in enumerate(layers) if i not in protected]

    def _n_m_mask(self, log: PassLog, layer: Layer) -> np.ndarray | None:
        n, m = self.config.n_m
        w = np.moveaxis(layer.array, layer.in_axis, -1)
        if w.shape[-1] % m:
            log.skip(layer.label, f"{w.shape[-1]} input channels are not a multiple of {m}")
            return None
        groups = np.abs(w).reshape(*w.shape[:-1], w.shape[-1] // m, m)
        order = np.argsort(-groups, axis=-1, kind="stable")
        drop = np.zeros_like(groups, dtype=bool)
        np.put_along_axis(drop, order[..., n:], True, axis=-1)
        return np.moveaxis(drop.reshape(w.shape), -1, layer.in_axis)


def _smallest_mask(scores: np.ndarray, fraction: float) -> np.ndarray:
    """True for the ``floor(fraction * size)`` lowest scores (ties broken by position)."""
    k = int(np.floor(fraction * scores.size))
    mask = np.zeros(scores.size, dtype=bool)
    if k:
        mask[np.argpartition(scores.reshape(-1), k - 1)[:k]] = True
    return mask.reshape(scores.shape)


def _global_masks(layers: list[Layer], fraction: float, importance: str) -> list[np.ndarray]:
    scores = [_scores(layer.array, importance) for layer in layers]
    joined = _smallest_mask(np.concatenate([s.reshape(-1) for s in scores]), fraction)
    masks, start = [], 0
    for s in scores:
        masks.append(joined[start : start + s.size].reshape(s.shape))
        start += s.size
    return masks


def _scores(w: np.ndarray, importance: str) -> np.ndarray:
    a = np.abs(w.astype(np.float64))
    if importance == "l1":
        return a / max(float(a.mean()), 1e-30)
    if importance == "l2":
        return a / max(float(np.sqrt(np.mean(a * a))), 1e-30)
    return a


def _zero_fraction(w: np.ndarray) -> float:
    return float(np.count_nonzero(w == 0)) / w.size if w.size else 0.0
