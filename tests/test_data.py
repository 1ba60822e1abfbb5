"""Datasets: streaming npz, validation messages, random data, fixed batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxopt.data import NpzDataset, open_dataset
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
