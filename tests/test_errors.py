"""errors.py: one_line squashes and cuts messages at word boundaries; pass configs check Literal fields once."""

from __future__ import annotations

import pytest

from onnxopt.errors import ConfigError, RecipeError, one_line
from onnxopt.passes.clip_weights import ClipWeightsConfig
from onnxopt.passes.prune_magnitude import PruneMagnitudeConfig
from onnxopt.passes.reconstruct import ReconstructConfig


def test_one_line_squashes_and_cuts_at_a_word() -> None:
    assert one_line(RuntimeError("first\n   second\tthird")) == "first second third"
    assert one_line(ValueError()) == "ValueError"
    text = "ReshapeHelper(const onnxruntime::TensorShape&, bool) cannot reshape"
    cut = one_line(text, 40)
    assert cut == "ReshapeHelper(const…" and len(cut) <= 40
    assert one_line("x" * 50, 10) == "x" * 9 + "…"  # no space to cut at: cut hard
    assert one_line("word " * 100, limit=None) == " ".join(["word"] * 100)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ClipWeightsConfig(granularity="row"), "granularity must be one of channel, layer, not 'row'"),
        (lambda: ClipWeightsConfig(mode="max"), "mode must be one of threshold, percentile, sigma, mse, not 'max'"),
        (lambda: PruneMagnitudeConfig(importance="l3"), "importance must be one of magnitude, l1, l2, not 'l3'"),
        (lambda: ReconstructConfig(layers="some"), "layers must be one of changed, all, not 'some'"),
    ],
)
def test_literal_fields_are_checked_from_the_type_hints(make, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        make()
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, RecipeError)
