"""Sampled im2col: the input patches a 2-D Conv multiplies at a few output positions per image.

Shared by ``reconstruct`` (least-squares refits) and ``prune-channels``
(ThiNet importance), which both need a Conv's inputs as rows of a matrix
without materializing every output position.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxopt.passes._graph_edit import constant_array


def _geometry(node: ir.Node) -> tuple[int, int, list[int], list[int], list[int]]:
    """(kh, kw, strides, dilations, pads [top, left, bottom, right]) of the 2-D Conv ``node``."""
    shape = node.inputs[1].shape if node.inputs[1] is not None else None
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape):
        weight = constant_array(node.inputs[1])  # a kernel whose value carries no static shape: read it
        assert weight is not None
        shape = weight.shape
    kh, kw = int(shape[2]), int(shape[3])
    strides = list(node.attributes.get_ints("strides", [1, 1]))
    dilations = list(node.attributes.get_ints("dilations", [1, 1]))
    pads = list(node.attributes.get_ints("pads", [0, 0, 0, 0]))
    return kh, kw, strides, dilations, pads


def output_size(node: ir.Node, height: int, width: int) -> tuple[int, int]:
    """The output height and width of the 2-D Conv ``node`` on an input of that size (explicit pads)."""
    kh, kw, (sh, sw), (dh, dw), (top, left, bottom, right) = _geometry(node)
    return (height + top + bottom - dh * (kh - 1) - 1) // sh + 1, (width + left + right - dw * (kw - 1) - 1) // sw + 1


def sampled_patches(
    node: ir.Node, x: np.ndarray, positions: int, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Patches ``[P, C_in * kh * kw]`` at up to ``positions`` random output positions of each image of ``x``,
    and where they are: (image, row, column) of each patch."""
    oh, ow = output_size(node, x.shape[2], x.shape[3])
    picks = np.stack([pick_positions(oh, ow, positions, rng) for _ in range(x.shape[0])])  # [n, count]
    return patches_at(node, x, picks)


def pick_positions(oh: int, ow: int, positions: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``positions`` distinct flat output positions of one image (``row * ow + column``)."""
    return rng.choice(oh * ow, min(positions, oh * ow), replace=False)


def patches_at(
    node: ir.Node, x: np.ndarray, picks: np.ndarray, dtype: type = np.float64
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The input patches of the 2-D Conv ``node`` at flat output positions ``picks`` ``[n, count]`` (one row of
    picks per image of ``x``) as ``dtype``, and where they are: (image, row, column) of each patch."""
    kh, kw, (sh, sw), (dh, dw), (top, left, _, _) = _geometry(node)
    n, count = picks.shape
    height, width = x.shape[2], x.shape[3]
    _, ow = output_size(node, height, width)
    images = np.repeat(np.arange(n), count)
    rows_h, rows_w = np.divmod(picks.reshape(-1), ow)
    hh = rows_h[:, None] * sh + np.arange(kh)[None, :] * dh - top  # [P, kh], in the unpadded input
    ww = rows_w[:, None] * sw + np.arange(kw)[None, :] * dw - left  # [P, kw]
    # gathered from x itself (padding the whole activation per call cost more than the gather); taps that fall in
    # the zero padding read a clipped position and are zeroed
    ch, cw = np.clip(hh, 0, height - 1), np.clip(ww, 0, width - 1)
    if x.shape[1] < kh * kw:  # few channels, many taps (a stem): one fancy index over every element
        patches = x[images[:, None, None, None], np.arange(x.shape[1])[None, :, None, None],
                    ch[:, None, :, None], cw[:, None, None, :]]  # fmt: skip
        inside = ((hh >= 0) & (hh < height))[:, :, None] & ((ww >= 0) & (ww < width))[:, None, :]  # [P, kh, kw]
        return _rows(patches * inside[:, None] if not inside.all() else patches, dtype), (images, rows_h, rows_w)
    taps = []  # else one kernel tap at a time, [P, C] each: 1.6-4.5x faster on ResNet-50's layers
    for i in range(kh):
        for j in range(kw):
            tap = x[images, :, ch[:, i], cw[:, j]]
            inside = (hh[:, i] >= 0) & (hh[:, i] < height) & (ww[:, j] >= 0) & (ww[:, j] < width)
            taps.append(tap if inside.all() else tap * inside[:, None])
    patches = np.stack(taps, axis=-1)  # [P, C, kh * kw]: channel-major, as the kernel's layout
    return _rows(patches, dtype), (images, rows_h, rows_w)


def _rows(patches: np.ndarray, dtype: type) -> np.ndarray:
    return patches.reshape(patches.shape[0], -1).astype(dtype, copy=False)
