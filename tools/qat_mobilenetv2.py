"""Per-tensor int8 on a MobileNetV2 (width 0.5, ReLU6), trained here on a small real task: plain PTQ against
quantization-aware fine-tuning (the ``qat`` pass), accuracy on held-out samples.

Tasks (``--task``): ``digits`` (the bundled handwritten digits, 28x28 padded to 32x32) or ``glyphs`` (34
printed characters -- digits and capitals without I and O -- rendered at 32x32 in the DejaVu fonts with random
size, tilt, ink, offset and a noisy captcha background; ``--train-samples`` of them, and 2,000 other held-out
ones, from disjoint seeded streams).

Why this model: a MobileNetV2 whose BatchNormalization is folded into its depthwise convolutions has channels
of very different weight ranges, and one scale per weight tensor (what many accelerators take) leaves the
small ones a few levels -- the textbook case where post-training quantization collapses and QAT recovers.

What it does, deterministically for ``--seed``:

1. trains Keras' ``MobileNetV2(alpha=0.5)`` from scratch (Adam, or AdamW with ``--weight-decay``) on the
   task's training images except their last 512, which are kept apart as the unlabelled fitting data of the
   quantizers;
2. converts it to ONNX with onnxopt's own converter (tf2onnx), NCHW;
3. quantizes it per tensor (``lossless,quantize:fallback=none;per_channel=false``: every node int8 compute,
   one weight scale per tensor, no equalization) calibrated on those 512, and per channel for reference;
4. fine-tunes the per-tensor model with the ``qat`` pass on the same 512 (no labels: the float model's
   outputs are the targets);
5. scores float, PTQ and QAT on the held-out set (the digits' 1,000 eval images, or 2,000 rendered glyphs),
   which none of the steps saw.

    python tools/qat_mobilenetv2.py [--task digits|glyphs] [--train-samples 16000] [--epochs 12]
        [--weight-decay 0] [--qat-epochs 6] [--out tools/qat_mobilenetv2_results.json]

Needs the ``tf`` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # bit-reproducible CPU kernels

import numpy as np
import onnx

from onnxopt.api import optimize
from onnxopt.bench import machine_description
from onnxopt.convert.sources import from_keras_model
from onnxopt.runtime import Runner

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "digits_cnn"
FITTING = 512  # unlabelled samples the quantizers calibrate and fine-tune on
GLYPHS = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I, O: they read as 1, 0
GLYPHS_HELD_OUT = 2000


def _pad(images: np.ndarray) -> np.ndarray:
    """[N, 28, 28, 1] -> [N, 32, 32, 1]: MobileNetV2's smallest input."""
    return np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0))).astype(np.float32)


def render_glyphs(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` rendered characters as [N, 32, 32, 1] float32 in [0, 1] (dark ink on light ground) and labels."""
    sys.path.insert(0, str(ROOT / "tools"))
    from real_tasks import _glyph_layer, _ink, _noise_background, _pick_font

    rng = np.random.default_rng(seed)
    images = np.empty((count, 32, 32, 1), np.float32)
    labels = rng.integers(len(GLYPHS), size=count)
    for i, label in enumerate(labels):
        canvas = _noise_background(rng, (32, 32)).convert("RGBA")
        font = _pick_font(rng, int(rng.integers(16, 27)), [None, "Bold", "Serif", "Mono"][int(rng.integers(4))])
        glyph = _glyph_layer(rng, GLYPHS[label], font, _ink(rng, 0, 120), float(rng.uniform(-20, 20)))
        x = int(rng.integers(0, max(1, 33 - glyph.width)))
        y = int(rng.integers(0, max(1, 33 - glyph.height)))
        canvas.alpha_composite(glyph, (x, y))
        images[i, :, :, 0] = np.asarray(canvas.convert("L"), np.float32) / 255.0
    return images, labels.astype(np.int64)


def task_data(task: str, train_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, held-out images, held-out labels), NHWC 32x32."""
    if task == "glyphs":
        images, labels = render_glyphs(train_samples, seed)
        held_images, held_labels = render_glyphs(GLYPHS_HELD_OUT, seed + 1_000_003)
        return images, labels, held_images, held_labels
    with np.load(DIGITS / "train.npz") as archive:
        images, labels = _pad(archive["image"]), archive["labels"]
    with np.load(DIGITS / "eval.npz") as archive:
        return images, labels, _pad(archive["image"]), archive["labels"]


def train(images: np.ndarray, labels: np.ndarray, epochs: int, seed: int, classes: int, weight_decay: float):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    model = tf.keras.applications.MobileNetV2(
        input_shape=(32, 32, 1), alpha=0.5, weights=None, classes=classes, classifier_activation=None
    )
    for layer in model.layers:  # Keras' 0.999 leaves the moving statistics half-way after a few hundred steps
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(
        optimizer=(
            tf.keras.optimizers.AdamW(2e-3, weight_decay=weight_decay)
            if weight_decay
            else tf.keras.optimizers.Adam(2e-3)
        ),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(images, labels, batch_size=64, epochs=epochs, verbose=2, shuffle=True)
    return model


def accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the ONNX model at ``path`` on NCHW ``images`` (onnxruntime, CPU)."""
    proto = onnx.load(str(path))
    runner, name = Runner(proto), proto.graph.input[0].name
    logits = np.concatenate([runner.run({name: images[i : i + 100]})[0] for i in range(0, len(images), 100)])
    return float(np.mean(logits.argmax(axis=1) == labels))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12, help="float training epochs")
    parser.add_argument("--qat-epochs", type=int, default=6, help="qat pass epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=("digits", "glyphs"), default="digits")
    parser.add_argument("--train-samples", type=int, default=16000, help="glyphs: rendered training samples")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled weight decay (0: Adam)")
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "qat_mobilenetv2_results.json")
    args = parser.parse_args()
    images, labels, held_images, held_labels = task_data(args.task, args.train_samples, args.seed)
    classes = len(GLYPHS) if args.task == "glyphs" else 10
    train_images, train_labels = images[:-FITTING], labels[:-FITTING]
    fitting = images[-FITTING:]
    started = time.perf_counter()
    keras_model = train(train_images, train_labels, args.epochs, args.seed, classes, args.weight_decay)
    trained_seconds = time.perf_counter() - started
    logits = keras_model.predict(held_images, batch_size=100, verbose=0)
    keras_accuracy = float(np.mean(logits.argmax(axis=1) == held_labels))
    print(f"Keras model, held-out accuracy {keras_accuracy:.4f}", file=sys.stderr)
    proto = from_keras_model(keras_model, opset=17, nchw=True).proto
    nchw = lambda x: np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # noqa: E731
    input_name = proto.graph.input[0].name
    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine_description(),
        "task": args.task, "weight_decay": args.weight_decay,
        "train_samples": len(train_images), "fitting_samples": FITTING, "held_out_samples": len(held_images),
        "float_epochs": args.epochs, "float_training_seconds": round(trained_seconds, 1),
        "keras_held_out_accuracy": keras_accuracy,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="onnxopt-mnv2-") as tmp:
        work = Path(tmp)
        model = work / "fp32.onnx"
        onnx.save(proto, str(model))
        data = work / "fitting.npz"
        np.savez(data, **{input_name: nchw(fitting)})
        held = nchw(held_images)
        variants = {
            "fp32": None,
            "ptq per-channel": "lossless,quantize:fallback=none",
            "ptq per-tensor": "lossless,quantize:fallback=none;per_channel=false",
            "ptq per-tensor + qat": (
                f"lossless,quantize:fallback=none;per_channel=false,qat:epochs={args.qat_epochs};batch=32"
            ),
        }
        rows = {}
        for name, passes in variants.items():
            start = time.perf_counter()
            path = model
            notes: list[str] = []
            if passes is not None:
                path = work / (name.replace(" ", "_").replace("+", "") + ".onnx")
                result = optimize(model, path, passes=passes, data=str(data), seed=args.seed)
                notes = [n for r in result.pipeline.records if r.name == "qat" for n in r.notes]
            rows[name] = {
                "passes": passes,
                "held_out_accuracy": accuracy(path, held, held_labels),
                "seconds": round(time.perf_counter() - start, 1),
                "file_bytes": path.stat().st_size,
                "notes": notes,
            }
            print(name, rows[name], file=sys.stderr)
    results["variants"] = rows
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
