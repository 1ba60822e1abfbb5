"""Datasets: streaming npz, validation messages, random data, fixed batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxopt.data import ImageOptions, NpzDataset, feed_samples, open_dataset
from onnxopt.errors import DataError
from onnxopt.runtime import TensorSpec

IMAGE = TensorSpec("image", np.dtype(np.float32), ("N", 4, 4, 1))


def write(tmp_path: Path, compressed: bool = True, **arrays: np.ndarray) -> Path:
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


@pytest.mark.parametrize("compressed", [True, False])
def test_npz_streams_batches_in_order(tmp_path: Path, compressed: bool) -> None:
    images = np.arange(10 * 16, dtype=np.float32).reshape(10, 4, 4, 1)
    labels = np.arange(10) % 3
    data = open_dataset(str(write(tmp_path, compressed, image=images, labels=labels)), [IMAGE])
    assert data.num_samples == 10 and data.has_labels
    batches = list(data.batches(4))
    assert [b.feeds["image"].shape[0] for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b.feeds["image"] for b in batches]), images)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), labels)
    assert sum(b.feeds["image"].shape[0] for b in data.batches(4, limit=5)) == 5


def test_one_hot_labels_become_class_ids(tmp_path: Path) -> None:
    one_hot = np.eye(3)[[2, 0, 1]]
    data = open_dataset(str(write(tmp_path, image=np.zeros((3, 4, 4, 1), np.float32), labels=one_hot)), [IMAGE])
    np.testing.assert_array_equal(next(iter(data.batches(8))).labels, [2, 0, 1])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pixels": np.zeros((2, 4, 4, 1), np.float32)}, "no array for model input 'image'"),
        ({"image": np.zeros((2, 4, 4, 1), np.float64)}, "'image' has dtype float64, expected float32"),
        ({"image": np.zeros((2, 4, 4, 3), np.float32)}, r"'image' has shape \[2, 4, 4, 3\], expected \[N, 4, 4, 1\]"),
        ({"image": np.zeros((2, 4, 4, 1), np.float32), "labels": np.zeros(3)}, "disagree"),
    ],
)
def test_npz_errors_name_the_input(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(DataError, match=message):
        NpzDataset(write(tmp_path, **arrays), [IMAGE])


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    path.write_text("nope")
    with pytest.raises(DataError, match="not a readable"):
        open_dataset(str(path), [IMAGE])


def test_random_data_is_seeded_and_shaped() -> None:
    spec = TensorSpec("x", np.dtype(np.float32), ("batch", 3, "height"))
    a = list(open_dataset("random:5", [spec], dims={"height": 7}, seed=1).batches(2))
    b = list(open_dataset("random:5", [spec], dims={"height": 7}, seed=1).batches(2))
    assert [x.feeds["x"].shape for x in a] == [(2, 3, 7), (2, 3, 7), (1, 3, 7)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.feeds["x"], y.feeds["x"])
    with pytest.raises(DataError, match="random:N"):
        open_dataset("random:many", [spec])


def test_fixed_batch_yields_whole_batches_only(tmp_path: Path) -> None:
    data = open_dataset(str(write(tmp_path, image=np.zeros((10, 4, 4, 1), np.float32))), [IMAGE])
    assert [b.feeds["image"].shape[0] for b in data.batches(4, exact=True)] == [4, 4]
    assert [b.feeds["image"].shape[0] for b in data.batches(4, limit=1, exact=True)] == [4]
    with pytest.raises(DataError, match="exactly 16"):
        list(data.batches(16, exact=True))


# --- issue 33: scalar (rank-0) inputs, non-finite data, a dimension fixed at 0

SCALAR = TensorSpec("s", np.dtype(np.float32), ())
ROWS = TensorSpec("x", np.dtype(np.float32), ("N", 4))


def test_scalar_input_one_value_for_every_sample(tmp_path: Path) -> None:
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    data = open_dataset(str(write(tmp_path, s=np.float32(2), x=x)), [SCALAR, ROWS])
    batches = list(data.batches(4))
    assert data.num_samples == 10 and [b.samples for b in batches] == [4, 4, 2]
    assert all(b.feeds["s"].shape == () and b.feeds["s"] == 2 for b in batches)


def test_scalar_input_one_value_per_sample_splits_batches(tmp_path: Path) -> None:
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    s = np.array([1, 1, 1, 2, 2, 3], np.float32)
    data = open_dataset(str(write(tmp_path, s=s, x=x)), [SCALAR, ROWS])
    batches = list(data.batches(32))
    assert [(float(b.feeds["s"]), b.samples) for b in batches] == [(1, 3), (2, 2), (3, 1)]
    np.testing.assert_array_equal(np.concatenate([b.feeds["x"] for b in batches]), x)
    with pytest.raises(DataError, match="exactly 2 samples"):
        list(data.batches(2, exact=True))  # a fixed batch of 2 would mix s=1 and s=2
    with pytest.raises(DataError, match=r"'s' is a scalar \(rank 0\).*not shape \[6, 1\]"):
        open_dataset(str(write(tmp_path, s=s[:, None], x=x)), [SCALAR, ROWS])


def test_scalar_only_model_runs_one_sample_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "s.npy"
    np.save(path, np.array([0.5, 1.5, 2.5], np.float32))
    assert [float(b.feeds["s"]) for b in open_dataset(str(path), [SCALAR]).batches(8)] == [0.5, 1.5, 2.5]
    np.save(path, np.float32(4))
    assert [b.feeds["s"].shape for b in open_dataset(str(path), [SCALAR]).batches(8)] == [()]
    random = list(open_dataset("random:3", [SCALAR]).batches(8))
    assert [b.samples for b in random] == [1, 1, 1]


def test_feed_samples_skips_scalars() -> None:
    assert feed_samples({"s": np.float32(1), "x": np.zeros((5, 4))}) == 5
    assert feed_samples({"s": np.array(1.0)}) == 1 and feed_samples({}) == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_data_is_refused_naming_array_and_sample(tmp_path: Path, bad: float) -> None:
    x = np.ones((100, 4), np.float32)
    x[70, 1] = bad
    x[90, 0] = np.nan
    kind = "NaN" if np.isnan(bad) else "Inf"
    with pytest.raises(DataError, match=rf"array 'x' holds {kind} in sample 70 \(2 of 100 samples.*--drop-nonfinite"):
        open_dataset(str(write(tmp_path, x=x)), [ROWS])
    npy = tmp_path / "x.npy"
    np.save(npy, x)
    with pytest.raises(DataError, match=rf"--data {npy}: array 'x' holds {kind} in sample 70"):
        open_dataset(str(npy), [ROWS])


def test_drop_nonfinite_leaves_those_samples_out(tmp_path: Path) -> None:
    x = np.arange(400, dtype=np.float32).reshape(100, 4)
    labels = np.arange(100)
    bad = [3, 64, 65, 99]
    x[bad, 2] = np.nan
    data = open_dataset(str(write(tmp_path, x=x, labels=labels)), [ROWS], drop_nonfinite=True)
    assert data.num_samples == 96 and "4 of 100 samples with NaN/Inf left out" in data.description
    kept = np.setdiff1d(labels, bad)
    batches = list(data.batches(10))
    assert [b.samples for b in batches] == [10] * 9 + [6]
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), kept)
    np.testing.assert_array_equal(np.concatenate([b.feeds["x"] for b in batches]), x[kept])
    assert [b.samples for b in data.batches(32, limit=40, exact=True)] == [32]
    assert sum(b.samples for b in data.batches(7, limit=20)) == 20
    with pytest.raises(DataError, match="every sample"):
        open_dataset(str(write(tmp_path, s=np.float32(np.inf), x=x[:4])), [SCALAR, ROWS], drop_nonfinite=True)


def test_image_options_must_be_finite() -> None:
    with pytest.raises(DataError, match="--mean must be finite"):
        ImageOptions.parse(mean="0.5,nan,0.5")


def test_zero_dimension_needs_an_input_shape() -> None:
    spec = TensorSpec("x", np.dtype(np.float32), (0, 4))
    with pytest.raises(DataError, match=r"fixed at 0.*--input-shape x:Dx4"):
        open_dataset("random:4", [spec])
    data = open_dataset("random:4", [spec], shapes={"x": (3, 4)})
    assert [b.feeds["x"].shape for b in data.batches(2)] == [(2, 4), (2, 4)]
