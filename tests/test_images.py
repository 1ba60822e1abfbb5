"""Image-folder and .npy data: decoding, preprocessing, labels, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import BUNDLED, parse
from PIL import Image

from onnxopt.api import compare_files
from onnxopt.cli import main
from onnxopt.data import ImageFolderDataset, ImageOptions, NpyDataset, open_dataset
from onnxopt.errors import DataError
from onnxopt.runtime import Runner

MODEL, EVAL = BUNDLED / "model.onnx", BUNDLED / "eval.npz"
COUNT = 40


def _digits() -> tuple[np.ndarray, np.ndarray]:
    with np.load(EVAL) as data:
        return data["image"][:COUNT], data["labels"][:COUNT]


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first eval samples as 8-bit PNGs in one sub-folder per class."""
    folder = tmp_path_factory.mktemp("digits")
    images, labels = _digits()
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / str(label)).mkdir(exist_ok=True)
        Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8), mode="L").save(
            folder / str(label) / f"{i:03d}.png"
        )
    return folder


def _inputs():
    return Runner(str(MODEL)).inputs


def test_folder_gives_the_npz_pixels_and_labels(digit_folder: Path) -> None:
    dataset = open_dataset(str(digit_folder), _inputs())
    assert isinstance(dataset, ImageFolderDataset) and dataset.has_labels and dataset.num_samples == COUNT
    assert dataset.layout == "nhwc" and dataset.channels == "gray" and dataset.size == (28, 28)
    batches = list(dataset.batches(16))
    pixels = np.concatenate([b.feeds["image"] for b in batches])
    labels = np.concatenate([b.labels for b in batches])
    images, expected = _digits()
    order = np.argsort(expected, kind="stable")  # files are read class by class
    assert np.array_equal(labels, expected[order])
    assert np.abs(pixels - images[order]).max() <= 0.5 / 255 + 1e-6


def test_accuracy_from_images_matches_npz(digit_folder: Path) -> None:
    from_images = compare_files(MODEL, MODEL, data=str(digit_folder))
    assert from_images.samples == COUNT and from_images.reference_accuracy is not None
    assert from_images.reference_accuracy > 0.8


def test_preprocessing_resize_mean_std_and_nchw(digit_folder: Path, tmp_path: Path) -> None:
    model = parse(
        '<ir_version: 8, opset_import: ["": 13]> g (float[N, 1, 14, 14] x) => (float[N, 1, 14, 14] y) { y = Relu(x) }'
    )
    inputs = Runner(model.SerializeToString()).inputs
    options = ImageOptions.parse(size="14", mean="0.5", std="0.25")
    dataset = open_dataset(str(digit_folder), inputs, images=options)
    assert dataset.layout == "nchw"
    batch = next(iter(dataset.batches(4))).feeds["x"]
    assert batch.shape == (4, 1, 14, 14) and batch.dtype == np.float32
    first = sorted((digit_folder / "0").iterdir())[0]
    resized = np.asarray(Image.open(first).resize((14, 14), Image.Resampling.BILINEAR), dtype=np.float32)
    assert np.allclose(batch[0, 0], (resized / 255 - 0.5) / 0.25, atol=1e-5)


def test_rgb_bgr_and_npy_images(tmp_path: Path) -> None:
    model = parse(
        '<ir_version: 8, opset_import: ["": 13]> g (float[N, 2, 5, 5] x) => (float[N, 2, 5, 5] y) { y = Relu(x) }'
    )
    pixels = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10
    Image.fromarray(pixels.transpose(1, 2, 0)[..., [0, 1, 0]]).save(tmp_path / "a.png")
    inputs = Runner(model.SerializeToString()).inputs
    with pytest.raises(DataError, match="cannot tell the layout"):
        open_dataset(str(tmp_path), inputs)
    three = parse(
        '<ir_version: 8, opset_import: ["": 13]> g (float[N, 3, 3, 3] x) => (float[N, 3, 3, 3] y) { y = Relu(x) }'
    )
    inputs = Runner(three.SerializeToString()).inputs
    rgb = next(iter(open_dataset(str(tmp_path), inputs, images=ImageOptions(scale=1.0)).batches(1))).feeds["x"]
    bgr = next(
        iter(open_dataset(str(tmp_path), inputs, images=ImageOptions(scale=1.0, channels="bgr")).batches(1))
    ).feeds["x"]
    assert np.array_equal(rgb[0, 0], pixels[0]) and np.array_equal(bgr[0, 2], pixels[0])
    np.save(tmp_path / "b.npy", pixels.transpose(1, 2, 0)[..., [0, 1, 0]].astype(np.float32))
    both = next(iter(open_dataset(str(tmp_path), inputs, images=ImageOptions(scale=1.0)).batches(2))).feeds["x"]
    assert np.array_equal(both[0], both[1])  # the PNG and the .npy hold the same pixels


def test_single_npy_file(tmp_path: Path) -> None:
    images, _ = _digits()
    np.save(tmp_path / "x.npy", images)
    dataset = open_dataset(str(tmp_path / "x.npy"), _inputs())
    assert isinstance(dataset, NpyDataset) and dataset.num_samples == COUNT
    got = np.concatenate([b.feeds["image"] for b in dataset.batches(7)])
    assert np.array_equal(got, images)
    np.save(tmp_path / "bad.npy", images[..., 0])
    with pytest.raises(DataError, match="has shape"):
        open_dataset(str(tmp_path / "bad.npy"), _inputs())


def _mixed(tmp_path: Path) -> Path:
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("L", (28, 28)).save(folder / "a.png")
    Image.new("L", (32, 30)).save(folder / "b.png")
    return folder


def test_mixed_sizes_need_size(tmp_path: Path) -> None:
    folder = _mixed(tmp_path)
    with pytest.raises(DataError, match=r"mixed sizes .* give --size"):
        open_dataset(str(folder), _inputs())
    dataset = open_dataset(str(folder), _inputs(), images=ImageOptions(size=(28, 28)))
    assert next(iter(dataset.batches(2))).feeds["image"].shape == (2, 28, 28, 1)


def test_model_size_mismatch_names_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    Image.new("L", (32, 32)).save(folder / "a.png")
    with pytest.raises(DataError, match="give --size 28x28"):
        open_dataset(str(folder), _inputs())


def _cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "x.png").write_bytes(b"\x89PNG not really")
    empty = tmp_path / "empty"
    empty.mkdir()
    return {
        "unreadable image": (["--data", str(unreadable)], "cannot read image"),
        "mixed sizes": (["--data", str(_mixed(tmp_path))], "mixed sizes"),
        "empty folder": (["--data", str(empty)], "no images"),
        "image options on npz": (["--data", str(EVAL), "--size", "28"], "apply to an image folder"),
        "bad size": (["--data", str(empty), "--size", "abc"], "--size abc"),
        "bad mean": (["--data", str(empty), "--mean", "x,y"], "--mean x,y"),
    }


@pytest.mark.parametrize(
    "case", ["unreadable image", "mixed sizes", "empty folder", "image options on npz", "bad size", "bad mean"]
)
@pytest.mark.parametrize("command", ["optimize", "compare", "bench"])
def test_bad_image_data_is_one_line_exit_2(
    tmp_path: Path, case: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    extra, message = _cases(tmp_path)[case]
    argv = {
        "optimize": ["optimize", str(MODEL), "-o", str(tmp_path / "o.onnx")],
        "compare": ["compare", str(MODEL), str(MODEL)],
        "bench": ["bench", str(MODEL), "--runs", "2"],
    }[command]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()
    onnx.checker.check_model(str(MODEL))
