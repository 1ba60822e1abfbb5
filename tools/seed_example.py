"""The seed's example, end to end: Keras CNN -> trained on the bundled digits -> ONNX -> clip -> int8 -> bench.

    python tools/seed_example.py [--epochs 8] [--width 1.0] [--out seed_example/]

Steps (every one through onnxopt's public API, as a user would run them):

1. build the seed's CNN in Keras (``seed_cnn``: Conv 32 -> BN -> pool -> Conv 64 -> BN -> pool -> Dense
   128 -> Dense 10 softmax; ``width`` scales every hidden width) and train it on
   ``models/digits_cnn/train.npz`` (seeded, deterministic);
2. save it as ``.keras`` and ``onnxopt convert`` it (verified against Keras);
3. ``onnxopt optimize`` with the ``int8`` recipe after MSE clipping, calibrated on the first 256 samples of
   ``eval.npz``, deciding speed at batch 32 (int8 only where it is faster on this CPU; weights stored int8
   everywhere), with a Markdown report that benchmarks the float and int8 models at batch 32;
4. accuracy of both models on the other 744 samples of ``eval.npz``, which training and calibration never saw.

Needs the ``tf`` extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "digits_cnn"
# clip to the MSE-optimal int8 range, then the int8 recipe's passes (equalize, quantize with the speed check)
RECIPE = "lossless,clip-weights:mode=mse,equalize,quantize:fallback=profile;bias_correct=true"
CALIBRATION = 256  # the first samples of eval.npz calibrate; the rest are held out


def seed_cnn(width: float = 1.0, seed: int = 0):  # type: ignore[no-untyped-def]
    """The seed's CNN (the bundled model's architecture), hidden widths times ``width``."""
    from onnxopt.convert import tf_import

    keras = tf_import.keras()
    keras.utils.set_random_seed(seed)
    layers = keras.layers

    def w(n: int) -> int:
        return max(1, round(n * width))

    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1), name="image"),
            layers.Conv2D(w(32), 3, activation="relu"),
            layers.BatchNormalization(),
            layers.MaxPooling2D(),
            layers.Conv2D(w(64), 3, activation="relu"),
            layers.BatchNormalization(),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(w(128), activation="relu"),
            layers.Dense(10, activation="softmax", name="probabilities"),
        ]
    )


def train(model, epochs: int, seed: int = 0, limit: int | None = None):  # type: ignore[no-untyped-def]
    """Train on the bundled training set (deterministic for ``seed``)."""
    from onnxopt.convert import tf_import

    tf = tf_import.tensorflow()
    keras = tf_import.keras()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    with np.load(DIGITS / "train.npz") as data:
        images, labels = data["image"][:limit], data["labels"][:limit]
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images, labels, epochs=epochs, batch_size=64, shuffle=True, verbose=0)
    return model


def run(out: Path, epochs: int, width: float = 1.0, limit: int | None = None, bench_seconds: float = 1.0) -> dict:
    """Every step; returns what each produced (paths and the optimize result)."""
    from onnxopt.api import compare_files, optimize
    from onnxopt.bench import BenchConfig
    from onnxopt.convert import convert_file
    from onnxopt.report import optimize_report, write_report

    out.mkdir(parents=True, exist_ok=True)
    model = train(seed_cnn(width), epochs, limit=limit)
    keras_path = out / "seed_cnn.keras"
    model.save(str(keras_path))
    conversion = convert_file(keras_path, out / "seed_cnn.onnx")
    with np.load(DIGITS / "eval.npz") as data:
        np.savez(out / "calibration.npz", **{k: v[:CALIBRATION] for k, v in data.items()})
        np.savez(out / "held_out.npz", **{k: v[CALIBRATION:] for k, v in data.items()})
    result = optimize(
        out / "seed_cnn.onnx",
        out / "seed_cnn_int8.onnx",
        passes=RECIPE,
        data=str(out / "calibration.npz"),
        bench=BenchConfig(seconds=bench_seconds, batches=(32,), memory=False),
        batch=32,
    )
    report = out / "report.md"
    write_report(optimize_report(result), str(report))
    held_out = compare_files(out / "seed_cnn.onnx", out / "seed_cnn_int8.onnx", data=str(out / "held_out.npz"))
    return {
        "keras": keras_path, "conversion": conversion, "optimize": result, "report": report, "held_out": held_out,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("seed_example"))
    args = parser.parse_args()
    steps = run(args.out, args.epochs, args.width)
    result = steps["optimize"]
    cmp = steps["held_out"]
    print(f"converted: max |onnx - keras| {steps['conversion'].max_abs:.3g}")
    print(
        f"accuracy on {cmp.samples} held-out samples (not trained or calibrated on): "
        f"float {cmp.reference_accuracy:.4f}, int8 {cmp.candidate_accuracy:.4f}"
    )
    print(f"file: {result.input_file_bytes:,} -> {result.output_file_bytes:,} bytes")
    if result.latency is not None:
        ratio = result.latency.measurements[1].ratio
        print(f"latency at batch 32: {ratio.median:.3f}x float" if ratio else "")
    print(f"report: {steps['report']}")


if __name__ == "__main__":
    main()
