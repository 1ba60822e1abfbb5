"""errors.py: one_line squashes and cuts messages at word boundaries (runtime.py: onnxruntime's text for them);
pass configs check Literal fields once."""

from __future__ import annotations

import pytest

from onnxopt.errors import ConfigError, RecipeError, one_line
from onnxopt.passes.clip_weights import ClipWeightsConfig
from onnxopt.passes.prune_magnitude import PruneMagnitudeConfig
from onnxopt.passes.reconstruct import ReconstructConfig
from onnxopt.runtime import ort_error_text


def test_one_line_squashes_and_cuts_at_a_word() -> None:
    assert one_line(RuntimeError("first\n   second\tthird")) == "first second third"
    assert one_line(ValueError()) == "ValueError"
    text = "ReshapeHelper(const onnxruntime::TensorShape&, bool) cannot reshape"
    cut = one_line(text, 40)
    assert cut == "ReshapeHelper(const…" and len(cut) <= 40
    assert one_line("word " * 100, limit=None) == " ".join(["word"] * 100)


@pytest.mark.parametrize("limit", [5, 12, 20, 33, 60, 100])
def test_one_line_never_cuts_a_word(limit: int) -> None:
    words = ["onnxruntime::ReshapeHelper::ReshapeHelper(const", "onnxruntime::TensorShape&,", "bool)", "size", "!="]
    text = " ".join(words * 3)
    cut = one_line(text, limit)
    assert cut.endswith("…")
    kept = cut.removesuffix("…").split(" ")
    assert kept == (words * 3)[: len(kept)]  # whole words, in order
    assert len(cut) <= limit or len(kept) == 1  # within the limit, unless the first word alone passes it


def test_one_line_cuts_at_a_space_in_the_first_half_and_keeps_a_lone_word() -> None:
    assert one_line("ab " + "x" * 50, 20) == "ab…"  # the old rule cut the long word in two
    assert one_line("x" * 50 + " tail", 10) == "x" * 50 + "…"  # a first word past the limit stays whole
    assert one_line("x" * 50, 10) == "x" * 50  # one word: nothing to cut at


def test_ort_error_text_keeps_what_went_wrong() -> None:
    message = (
        "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape node. Name:'r' "
        "Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/reshape_helper.h:84 "
        "onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, "
        "onnxruntime::TensorShapeVector&, bool) size != 0 && (input_shape_size % size) == 0 was false. "
        "The input tensor cannot be reshaped to the requested shape. Input shape:{1,3,48,48}, "
        "requested shape:{-1,46080}\n"
    )
    text = ort_error_text(RuntimeError(message), 300)
    assert text.startswith("Non-zero status code returned while running Reshape node. Name:'r' Status Message: size")
    assert text.endswith("Input shape:{1,3,48,48}, requested shape:{-1,46080}")
    assert "reshape_helper.h" not in text and "TensorShapeVector" not in text
    assert ort_error_text(RuntimeError()) == "RuntimeError"


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
