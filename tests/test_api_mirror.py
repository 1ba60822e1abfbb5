"""The Python API takes what ``optimize`` takes everywhere (issue 37, point 1): ``compare``, ``bench`` and ``tune``
take a model as a path, an ``onnx.ModelProto`` or an ``onnx_ir.Model``, and data as a path, a dict of arrays or an
iterable of feeds; errors about what the API wrote for them name the argument, not a temporary file; and the
README's API block runs as written."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import BUNDLED, REPO

import onnxopt
from onnxopt.errors import DataError, ModelLoadError

MODEL = BUNDLED / "model.onnx"


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    """64 labelled held-out digits."""
    with np.load(BUNDLED / "eval.npz") as archive:
        return {"image": archive["image"][:64], "labels": archive["labels"][:64]}


@pytest.fixture(scope="module")
def proto() -> onnx.ModelProto:
    return onnx.load(str(MODEL))


def test_compare_takes_model_objects_and_arrays_and_measures_what_compare_files_does(digits, proto, tmp_path) -> None:
    candidate = onnxopt.optimize(proto, passes="lossless,quantize", data=digits).model
    cand_file, data_file = tmp_path / "cand.onnx", tmp_path / "digits.npz"
    onnx.save(candidate, str(cand_file))
    np.savez(data_file, **digits)
    files = onnxopt.compare_files(MODEL, cand_file, data=str(data_file))
    assert files.max_rel > 0 and files.reference_accuracy is not None  # int8: a difference to measure
    feeds = ({k: v[i : i + 16] for k, v in digits.items()} for i in range(0, 64, 16))
    for reference, cand, data in [
        (proto, candidate, digits),
        (ir.from_proto(proto), cand_file, feeds),
        (MODEL, ir.from_proto(candidate), data_file),
    ]:
        got = onnxopt.compare(reference, cand, data=data)
        assert got.samples == 64 and got.outputs == files.outputs
        assert (got.reference_accuracy, got.candidate_accuracy) == (files.reference_accuracy, files.candidate_accuracy)
        assert got.passed is None and got.failures == []
    assert onnxopt.compare(proto, candidate, data=digits).data == "arrays of data="
    assert onnxopt.compare(proto, candidate, data=data_file).data == str(data_file)


def test_bench_takes_model_objects_arrays_and_config_fields(digits, proto) -> None:
    fast = {"runs": 2, "warmup": 0, "memory": False}
    timing = onnxopt.bench([proto, ir.from_proto(proto)], data=digits, **fast)
    assert [m.path for m in timing.measurements] == ["models[0]", "models[1]"]
    assert timing.data == "arrays of data=" and timing.config.runs == 2 and not timing.config.memory
    alone = onnxopt.bench(MODEL, onnxopt.api.BenchConfig(**fast))  # one model, a path: as given
    assert [m.path for m in alone.measurements] == [str(MODEL)]
    with pytest.raises(onnxopt.RecipeError, match=r"^bench: .*'rounds'"):
        onnxopt.bench(MODEL, rounds=3)


def _nan_in(digits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    image = digits["image"].copy()
    image[3, 0, 0, 0] = np.nan
    return {**digits, "image": image}


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            lambda d, p, tmp: onnxopt.compare(p, p, data={"img": d["image"]}),
            "data=: no array for model input 'image' (arrays found: img)",
        ),
        (
            lambda d, p, tmp: onnxopt.optimize(p, recipe="lossless", data=d, eval_data=_nan_in(d)),
            "eval_data=: array 'image' holds NaN in sample 3",
        ),
        (
            lambda d, p, tmp: onnxopt.bench([p], data={"img": d["image"]}, runs=2, memory=False),
            "data=: no array for model input 'image'",
        ),
        (
            lambda d, p, tmp: onnxopt.tune(p, tmp / "tuned.onnx", data=d, workers=1, builtins=("lossless",)),
            "data=: 64 samples; tune needs at least 150",
        ),
    ],
    ids=["compare", "optimize-eval-data", "bench", "tune"],
)
def test_a_data_error_names_the_argument_not_the_file_the_api_wrote(
    call: Callable[..., Any], expected: str, digits, proto, tmp_path
) -> None:
    with pytest.raises(DataError) as caught:
        call(digits, proto, tmp_path)
    message = str(caught.value)
    assert message.startswith(expected), message
    assert "onnxopt-api-" not in message and ".npz" not in message
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_data_file_of_the_user_is_still_named(digits, proto, tmp_path) -> None:
    path = tmp_path / "mine.npz"
    np.savez(path, img=digits["image"])
    with pytest.raises(DataError, match=re.escape(f"--data {path}: no array for model input 'image'")):
        onnxopt.compare(proto, proto, data=path)


def test_a_model_the_api_cannot_take_is_named_by_function_and_argument(digits, proto, tmp_path) -> None:
    with pytest.raises(ModelLoadError, match=r"^optimize: model= takes a path, an onnx.ModelProto"):
        onnxopt.optimize(42, recipe="lossless")
    with pytest.raises(ModelLoadError, match=r"^compare: candidate= takes a path.* not int$"):
        onnxopt.compare(proto, 42)
    with pytest.raises(ModelLoadError, match=r"^bench: models\[1\] takes a path"):
        onnxopt.bench([proto, 3.5])
    with pytest.raises(ModelLoadError, match=r"^tune: models= takes a path"):
        onnxopt.tune(None, tmp_path / "t.onnx", data=digits)
    with pytest.raises(ModelLoadError) as caught:  # an invalid model object: the argument, not the temporary file
        onnxopt.compare(proto, onnx.ModelProto())
    assert str(caught.value).startswith("candidate=: ") and "onnxopt-api-" not in str(caught.value)


def test_bad_feeds_are_named_by_function_and_argument(proto) -> None:
    with pytest.raises(DataError, match=r"^compare: data= takes dicts of arrays .* got int$"):
        onnxopt.compare(proto, proto, data=[{"image": np.zeros((1, 28, 28, 1), np.float32)}, 5])
    with pytest.raises(DataError, match=r"^optimize: eval_data= is an empty iterable of feeds$"):
        onnxopt.optimize(proto, recipe="lossless", eval_data=iter([]), data="random:4")


def test_readme_api_block_runs_as_written(monkeypatch) -> None:
    """The README's Python API block, run from the repository root: no placeholder files, and what its
    comments say it prints is what it prints."""
    readme = (REPO / "README.md").read_text()
    found = re.search(r"^## Python API$.*?^```python\n(.*?)^```$", readme, re.S | re.M)
    assert found, "README.md has no Python API block"
    block = found.group(1)
    monkeypatch.chdir(REPO)
    names: dict[str, Any] = {}
    exec(compile(block, "README.md (Python API)", "exec"), names)
    assert names["check"].passed is True and names["check"].failures == []
    said = next(line for line in block.splitlines() if line.startswith("print(result)")).split("# ", 1)[1]
    assert said.strip() == repr(names["result"])
    assert len(names["timing"].measurements) == 2
    assert not any(Path(p).exists() for p in ("out.onnx", "model.onnx", "eval.npz"))  # it wrote no file here
