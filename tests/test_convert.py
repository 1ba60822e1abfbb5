"""convert: Keras 3, SavedModel and TFLite to ONNX, verified against the source framework (the ``tf`` extra)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import one_line_error

pytest.importorskip("tensorflow", reason="the tf extra is not installed")
pytest.importorskip("tf2onnx", reason="the tf extra is not installed")

from onnxopt.convert import ConversionError, convert_file, tf_import

RNG = np.random.default_rng(0)


def _keras_model():
    """Functional Keras 3 model: Conv, BatchNormalization, DepthwiseConv, SeparableConv, Dense, residual Add."""
    keras = tf_import.keras()
    keras.utils.set_random_seed(0)
    layers = keras.layers
    image = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same")(image)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    y = layers.DepthwiseConv2D(3, padding="same")(x)
    y = layers.BatchNormalization()(y)
    y = layers.SeparableConv2D(8, 3, padding="same", activation="relu")(y)
    x = layers.Add()([x, y])
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(5, activation="softmax", name="scores")(x)
    model = keras.Model(image, out)
    # non-trivial BN statistics, as after training
    model(RNG.normal(0, 1, (32, 16, 16, 3)).astype(np.float32), training=True)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(RNG.normal(0, 0.5, layer.moving_mean.shape).astype(np.float32))
            layer.moving_variance.assign(RNG.uniform(0.5, 2, layer.moving_variance.shape).astype(np.float32))
    return model


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras")
    model = _keras_model()
    path = folder / "model.keras"
    model.save(str(path))
    return model, path


def _onnx_run(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_keras3_functional_model_matches_keras(keras_file, tmp_path) -> None:
    model, path = keras_file
    result = convert_file(path, tmp_path / "m.onnx")
    assert result.kind == "keras" and all(c.max_abs <= c.allowed for c in result.checks)
    converted = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(converted, full_check=True)
    assert [i.name for i in converted.graph.input] == ["image"] and converted.graph.output[0].name == "scores"
    assert converted.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    x = RNG.normal(0, 1, (7, 16, 16, 3)).astype(np.float32)
    ours, keras_out = _onnx_run(tmp_path / "m.onnx", x), np.asarray(model(x, training=False))
    assert np.abs(ours - keras_out).max() <= 1e-4 * np.abs(keras_out).max()


def test_nchw_inputs_without_leftover_transposes(keras_file, tmp_path) -> None:
    model, path = keras_file
    result = convert_file(path, tmp_path / "nchw.onnx", nchw=True)
    converted = onnx.load(str(tmp_path / "nchw.onnx"))
    dims = [d.dim_value for d in converted.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [3, 16, 16]
    assert result.transposes == 0
    x = RNG.normal(0, 1, (2, 16, 16, 3)).astype(np.float32)
    ours = _onnx_run(tmp_path / "nchw.onnx", np.transpose(x, (0, 3, 1, 2)))
    assert np.abs(ours - np.asarray(model(x, training=False))).max() < 1e-5


def _tflite(model, int8: bool) -> bytes:
    tf = tf_import.tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        rng = np.random.default_rng(1)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [rng.normal(0, 1, (1, 16, 16, 3)).astype(np.float32)] for _ in range(32)
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


@pytest.mark.parametrize("int8", [False, True])
def test_tflite_matches_the_interpreter(keras_file, tmp_path, int8) -> None:
    model, _ = keras_file
    path = tmp_path / ("m8.tflite" if int8 else "m.tflite")
    path.write_bytes(_tflite(model, int8))
    result = convert_file(path, tmp_path / "t.onnx")
    (check,) = result.checks
    if int8:
        assert result.kind == "tflite-int8" and check.allowed == 1.0  # one step of the int8 output
    else:
        assert result.kind == "tflite-float"  # allowed: 1e-5 of the output's magnitude
    assert check.max_abs <= check.allowed


def test_saved_model_serving_signature(keras_file, tmp_path) -> None:
    tf = tf_import.tensorflow()
    model, _ = keras_file
    folder = tmp_path / "saved"
    tf.saved_model.save(model, str(folder))
    result = convert_file(folder, tmp_path / "s.onnx")
    assert result.kind == "savedmodel" and result.max_abs <= result.checks[0].allowed


def test_a_mismatch_is_an_error_and_writes_nothing(keras_file, tmp_path, monkeypatch) -> None:
    from onnxopt.convert import sources

    real = sources.from_keras_model

    def skewed(*args, **kwargs):
        converted = real(*args, **kwargs)
        reference = converted.reference
        converted.reference = lambda feeds: [r * 1.01 for r in reference(feeds)]
        return converted

    monkeypatch.setattr(sources, "from_keras_model", skewed)
    with pytest.raises(ConversionError, match="differs from the source"):
        convert_file(keras_file[1], tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_corrupt_keras_file(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.keras"
    bad.write_bytes(os.urandom(2048))
    line = one_line_error(["convert", str(bad), "-o", str(tmp_path / "x.onnx")], capsys)
    assert "cannot load the Keras model" in line and not (tmp_path / "x.onnx").exists()


def test_saved_model_without_signature(tmp_path, capsys) -> None:
    tf = tf_import.tensorflow()

    class Bare(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.v = tf.Variable(1.0)

    tf.saved_model.save(Bare(), str(tmp_path / "bare"), signatures={})
    line = one_line_error(["convert", str(tmp_path / "bare"), "-o", str(tmp_path / "x.onnx")], capsys)
    assert "no signature" in line


def test_tflite_with_a_custom_op(tmp_path, capsys) -> None:
    tf = tf_import.tensorflow()

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def special(x):
        return tf.math.bessel_i0e(x) + 1.0  # no TFLite builtin: a custom op when allowed

    converter = tf.lite.TFLiteConverter.from_concrete_functions([special.get_concrete_function()], special)
    converter.allow_custom_ops = True
    path = tmp_path / "custom.tflite"
    path.write_bytes(converter.convert())
    line = one_line_error(["convert", str(path), "-o", str(tmp_path / "x.onnx")], capsys)
    assert "custom op" in line and "Bessel" in line


def test_not_a_source(tmp_path, capsys) -> None:
    other = tmp_path / "model.pt"
    other.write_bytes(b"not a model")
    assert "not a Keras" in one_line_error(["convert", str(other), "-o", str(tmp_path / "x.onnx")], capsys)


def test_legacy_h5(keras_file, tmp_path) -> None:
    model, _ = keras_file
    model.save(str(tmp_path / "legacy.h5"))
    result = convert_file(tmp_path / "legacy.h5", tmp_path / "h5.onnx")
    assert result.kind == "keras" and result.checks[0].max_abs <= result.checks[0].allowed
