"""Build the bundled digits CNN (``models/digits_cnn``) deterministically.

Trains the seed architecture -- Conv 32 3x3 ReLU, BatchNormalization, MaxPool,
Conv 64 3x3 ReLU, BatchNormalization, MaxPool, Flatten, Dense 128 ReLU,
Dense 10 softmax -- on mlxtend's 5,000-image MNIST subset (real handwritten
digits shipped inside the mlxtend package; nothing is downloaded), exports it
to ONNX through a traced ``tf.function`` and ``tf2onnx.convert.from_function``
(``from_keras`` fails on Keras 3), and writes a held-out labelled eval set.

The BatchNormalization nodes are kept in the ONNX graph: that is what the
``fold-bn`` pass is for.

Needs the ``tf`` extra plus mlxtend::

    pip install -e '.[tf]' mlxtend
    python tools/build_digits_model.py            # writes models/digits_cnn/
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # bit-reproducible CPU kernels

import numpy as np

SEED = 0
N_EVAL = 1000
EPOCHS = 8
INPUT_NAME = "image"


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = (images.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    return images, labels.astype(np.int64)


def _build_model():  # type: ignore[no-untyped-def]
    import keras

    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1), name=INPUT_NAME),
            layers.Conv2D(32, 3, activation="relu"),
            layers.BatchNormalization(),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.BatchNormalization(),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ]
    )


def _export_onnx(model, path: Path) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, 28, 28, 1), tf.float32, name=INPUT_NAME),)

    @tf.function(input_signature=spec)
    def serve(image):  # type: ignore[no-untyped-def]
        return {"probabilities": model(image, training=False)}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=13)
    _restore_batchnorm_nodes(proto, model)
    _stable_names(proto)
    proto.producer_name = "onnxopt tools/build_digits_model.py"
    path.write_bytes(proto.SerializeToString())


def _stable_names(proto) -> None:  # type: ignore[no-untyped-def]
    """Rename tf2onnx's counter-numbered names (``Transpose__44``, ``const_axes__25``) by order of use.

    tf2onnx numbers what it creates from a process-wide counter, so the same
    model would get different names (and bytes) from run to run.
    """
    import re

    pattern = re.compile(r"__\d+")
    keep = {v.name for v in [*proto.graph.input, *proto.graph.output]}
    renamed: dict[str, str] = {}

    def stable(name: str) -> str:
        if not name or name in keep or not pattern.search(name):
            return name
        if name not in renamed:
            renamed[name] = f"{pattern.sub('', name)}_n{len(renamed)}"
        return renamed[name]

    for node in proto.graph.node:
        node.name = stable(node.name)
        node.input[:] = [stable(n) for n in node.input]
        node.output[:] = [stable(n) for n in node.output]
    for init in proto.graph.initializer:
        init.name = stable(init.name)
    for info in proto.graph.value_info:
        info.name = stable(info.name)


def _restore_batchnorm_nodes(proto, model) -> None:  # type: ignore[no-untyped-def]
    """Put real BatchNormalization nodes back where tf2onnx emitted Mul+Add.

    Keras 3 traces inference-mode BN as ``x * (gamma/sqrt(var+eps)) + shift``,
    which tf2onnx exports as a Mul and an Add. The bundled model must carry the
    BN nodes themselves, so each pair is replaced by ``BatchNormalization``
    with the layer's own gamma, beta, moving mean, moving variance and epsilon,
    after checking that the pair's constants are what that BN computes.
    """
    import keras
    from onnx import helper, numpy_helper

    bn_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    inits = {init.name: init for init in proto.graph.initializer}
    nodes = list(proto.graph.node)
    muls = [n for n in nodes if n.op_type == "Mul" and n.name.endswith("batchnorm/mul_1")]
    if len(muls) != len(bn_layers):
        raise RuntimeError(f"expected {len(bn_layers)} BN Mul nodes, found {len(muls)}")
    for layer, mul in zip(bn_layers, muls, strict=True):
        (add,) = [n for n in nodes if n.op_type == "Add" and mul.output[0] in n.input]
        gamma, beta, mean, var = (np.asarray(w, dtype=np.float32) for w in layer.get_weights())
        scale = gamma / np.sqrt(var + layer.epsilon)
        emitted = numpy_helper.to_array(inits[mul.input[1]]).reshape(-1)
        if not np.allclose(emitted, scale, rtol=1e-5, atol=1e-6):
            raise RuntimeError(f"{layer.name}: Mul constant does not match gamma/sqrt(var+eps)")
        prefix = layer.name
        for suffix, value in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
            proto.graph.initializer.append(numpy_helper.from_array(value, f"{prefix}/{suffix}"))
        bn = helper.make_node(
            "BatchNormalization",
            [mul.input[0], f"{prefix}/gamma", f"{prefix}/beta", f"{prefix}/mean", f"{prefix}/var"],
            [add.output[0]],
            name=f"{prefix}/BatchNormalization",
            epsilon=float(layer.epsilon),
        )
        index = list(proto.graph.node).index(mul)
        proto.graph.node.remove(mul)
        proto.graph.node.remove(add)
        proto.graph.node.insert(index, bn)
    used = {i for n in proto.graph.node for i in n.input}
    for init in [i for i in proto.graph.initializer if i.name not in used]:
        proto.graph.initializer.remove(init)


def _onnx_accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {INPUT_NAME: images})
    return float((probabilities.argmax(axis=1) == labels).mean())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "models" / "digits_cnn")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()

    images, labels = _load_digits()
    order = np.random.default_rng(SEED).permutation(len(images))
    eval_idx, train_idx = order[:N_EVAL], order[N_EVAL:]

    model = _build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images[train_idx], labels[train_idx], epochs=EPOCHS, batch_size=64, shuffle=True, verbose=2)
    _, keras_acc = model.evaluate(images[eval_idx], labels[eval_idx], verbose=0)

    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / "model.onnx"
    eval_path = args.out / "eval.npz"
    _export_onnx(model, model_path)
    np.savez_compressed(eval_path, **{INPUT_NAME: images[eval_idx], "labels": labels[eval_idx]})
    train_path = args.out / "train.npz"  # what distillation and the seed example train on
    np.savez_compressed(train_path, **{INPUT_NAME: images[train_idx], "labels": labels[train_idx]})
    print(f"keras eval accuracy: {keras_acc:.4f}")
    print(f"onnx eval accuracy:  {_onnx_accuracy(model_path, images[eval_idx], labels[eval_idx]):.4f}")
    for path in (model_path, eval_path, train_path):
        print(f"{_sha256(path)}  {path.name}")


if __name__ == "__main__":
    main()
