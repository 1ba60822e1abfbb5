"""convert, TFLite as found in the wild: sparse weights, MediaPipe's transposed convolution, float16 weights,
and outputs small enough that the source's own rounding noise sets the tolerance (the ``tf`` extra).

Every model is built here with Keras and ``tf.lite.TFLiteConverter`` (the MediaPipe op by rewriting the
converter's ``TRANSPOSE_CONV`` in the flatbuffer); nothing is downloaded.
"""

from __future__ import annotations

import struct

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import one_line_error

pytest.importorskip("tensorflow", reason="the tf extra is not installed")
pytest.importorskip("tf2onnx", reason="the tf extra is not installed")

import onnxopt.convert as convert_module
from onnxopt.convert import ConversionError, convert_file, sources, tf_import
from onnxopt.convert.tflite_rewrite import SparseLevel, densify, transpose_conv_bias_geometry

SPARSE_CSR, DENSE = 1, 0
CUSTOM, TRANSPOSE_CONV, DEQUANTIZE, DENSIFY = 32, 67, 6, 124


def _flatbuffer():
    tf_import.tensorflow()
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils, schema


def _model_object(data: bytes):
    flatbuffer_utils, _ = _flatbuffer()
    return flatbuffer_utils.read_model_from_bytearray(bytearray(data))


def _opcode(model, op) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(int(code.builtinCode), int(code.deprecatedBuiltinCode))


def _tflite(model, **options) -> bytes:
    tf = tf_import.tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    for name, value in options.items():
        if name == "supported_types":
            converter.target_spec.supported_types = value
        else:
            setattr(converter, name, value)
    return converter.convert()


def _interpreter(data: bytes):
    tf = tf_import.tensorflow()
    resolver = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = tf.lite.Interpreter(model_content=data, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    return interpreter


def _run_tflite(data: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = _interpreter(data)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def _run_onnx(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


# ---------------------------------------------------------------------- sparse weights


@pytest.mark.parametrize(
    ("shape", "order", "formats", "block_size", "block_map"),
    [
        ((6, 8), [0, 1], [DENSE, SPARSE_CSR], [], []),  # CSR, what the converter emits for conv kernels
        ((6, 8), [1, 0], [SPARSE_CSR, SPARSE_CSR], [], []),  # column-major, both levels compressed
        ((6, 8), [0, 1, 2], [DENSE, SPARSE_CSR], [4], [1]),  # 1x4 blocks (fully connected weights)
        ((4, 6, 8), [2, 0, 1], [SPARSE_CSR, DENSE, SPARSE_CSR], [], []),  # a dense level between sparse ones
        ((8, 12), [1, 0, 3, 2], [SPARSE_CSR, SPARSE_CSR], [2, 4], [0, 1]),  # 2x4 blocks, walked in reverse order
    ],
)
def test_densify_inverts_tflites_own_sparse_encoder(shape, order, formats, block_size, block_map) -> None:
    """TFLite's C++ FormatConverter encodes a random tensor with zero blocks; densify gives it back exactly."""
    tf_import.tensorflow()
    wrapper = pytest.importorskip("tensorflow.lite.python.format_converter_wrapper_pybind11")
    kinds = {
        DENSE: wrapper.TfLiteDimensionType.TF_LITE_DIM_DENSE,
        SPARSE_CSR: wrapper.TfLiteDimensionType.TF_LITE_DIM_SPARSE_CSR,
    }
    rng = np.random.default_rng(len(order))
    blocks = [block_size[block_map.index(d)] if d in block_map else 1 for d in range(len(shape))]
    keep = rng.random([s // b for s, b in zip(shape, blocks, strict=True)]) < 0.4
    for d, b in enumerate(blocks):
        keep = np.repeat(keep, b, axis=d)
    dense = (rng.normal(size=shape) * keep).astype(np.float32)
    encoder = wrapper.FormatConverterFp32(list(shape), order, [kinds[f] for f in formats], block_size, block_map)
    encoder.DenseToSparse(dense.ravel())
    metadata, values = encoder.GetDimMetadata(), np.array(encoder.GetData(), np.float32)
    levels = []
    for level, dim in enumerate(order):
        if dim < len(shape) and formats[dim] == SPARSE_CSR:
            levels.append(
                SparseLevel(segments=np.array(metadata[2 * level]), indices=np.array(metadata[2 * level + 1]))
            )
        else:
            levels.append(SparseLevel(dense_size=metadata[2 * level][0]))
    np.testing.assert_array_equal(densify(values, shape, order, block_map, levels), dense)


def test_densify_declines_metadata_that_does_not_fit() -> None:
    csr = [SparseLevel(dense_size=2), SparseLevel(segments=np.array([0, 1, 2]), indices=np.array([0, 3]))]
    assert densify(np.array([1.0, 2.0]), (2, 4), [0, 1], [], csr).tolist() == [[1, 0, 0, 0], [0, 0, 0, 2]]
    with pytest.raises(ValueError, match="buffer holds 3"):
        densify(np.array([1.0, 2.0, 3.0]), (2, 4), [0, 1], [], csr)
    out_of_range = [csr[0], SparseLevel(segments=np.array([0, 1, 2]), indices=np.array([0, 4]))]
    with pytest.raises(ValueError, match="outside dimension 1"):
        densify(np.array([1.0, 2.0]), (2, 4), [0, 1], [], out_of_range)
    with pytest.raises(ValueError, match="traversal order"):
        densify(np.array([1.0, 2.0]), (2, 4), [0, 0], [], csr)


def _sparse_keras_model():
    """Conv2D with a 2:4 pattern over input channels (TFLite stores it CSR, densified by a DENSIFY op) and a
    Dense with whole 1x4 blocks zero (stored block-sparse, read sparse by FULLY_CONNECTED itself)."""
    keras = tf_import.keras()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    image = keras.Input((8, 8, 8), batch_size=1, name="image")
    conv = keras.layers.Conv2D(16, 3, padding="same", activation="relu")
    dense = keras.layers.Dense(8, name="scores")
    model = keras.Model(image, dense(keras.layers.GlobalAveragePooling2D()(conv(image))))
    two_of_four = np.zeros(8, np.float32)
    two_of_four[[0, 2, 4, 7]] = 1
    conv.kernel.assign(conv.kernel.numpy() * two_of_four[None, None, :, None])
    conv.bias.assign(rng.normal(0, 0.5, 16).astype(np.float32))
    blocks = (rng.random((4, 8)) < 0.5).repeat(4, axis=0)  # Keras (in, out); TFLite [out, in] in 1x4 blocks
    dense.kernel.assign((dense.kernel.numpy() * blocks).astype(np.float32))
    dense.bias.assign(rng.normal(0, 0.5, 8).astype(np.float32))
    return model


@pytest.mark.parametrize("int8", [False, True])
def test_sparse_weights_are_densified_and_match_the_interpreter(tmp_path, int8) -> None:
    tf = tf_import.tensorflow()
    model = _sparse_keras_model()
    rng = np.random.default_rng(1)
    options = {"optimizations": [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]}
    if int8:
        options["optimizations"].append(tf.lite.Optimize.DEFAULT)
        options["representative_dataset"] = lambda: (
            [rng.normal(0, 1, (1, 8, 8, 8)).astype(np.float32)] for _ in range(16)
        )
    data = _tflite(model, **options)
    flat = _model_object(data)
    sparse = [t for t in flat.subgraphs[0].tensors if t.sparsity is not None]
    assert len(sparse) == 2  # the converter really emitted TFLite's sparse format, for both kernels
    assert any(t.sparsity.blockMap is not None and len(t.sparsity.blockMap) for t in sparse) or int8
    assert DENSIFY in {_opcode(flat, op) for op in flat.subgraphs[0].operators}
    path = tmp_path / "sparse.tflite"
    path.write_bytes(data)

    result = convert_file(path, tmp_path / "sparse.onnx")  # was: "cannot reshape array of size 96 into ..."
    (check,) = result.checks
    assert result.notes == ["densified 2 sparse weight tensor(s) for tf2onnx"]
    # (int8: within one step of the output's quantization, as any int8 conversion; float: within rounding)
    assert result.kind == ("tflite-int8" if int8 else "tflite-float") and check.max_abs <= check.allowed * 1.000001
    x = rng.normal(0, 1, (1, 8, 8, 8)).astype(np.float32)
    ours, theirs = _run_onnx(tmp_path / "sparse.onnx", x), _run_tflite(data, x)
    assert np.abs(ours - theirs).max() <= (1e-5 * np.abs(theirs).max() if not int8 else check.allowed * 1.000001)
    if not int8:  # the densified weights are the Keras kernels themselves
        assert np.abs(ours - np.asarray(model(x))).max() <= 1e-5 * np.abs(ours).max()


def test_sparse_metadata_that_does_not_fit_is_aone_line_error(tmp_path, capsys) -> None:
    tf = tf_import.tensorflow()
    flatbuffer_utils, _ = _flatbuffer()
    flat = _model_object(_tflite(_sparse_keras_model(), optimizations=[tf.lite.Optimize.EXPERIMENTAL_SPARSITY]))
    tensor = next(t for t in flat.subgraphs[0].tensors if t.sparsity is not None)
    buffer = flat.buffers[tensor.buffer]
    buffer.data = np.asarray(buffer.data)[:-4]  # one value fewer than the metadata reaches
    path = tmp_path / "broken.tflite"
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(flat)))
    line = one_line_error(["convert", str(path), "-o", str(tmp_path / "x.onnx")], capsys)
    assert "sparse tensor" in line and "cannot be densified" in line and not (tmp_path / "x.onnx").exists()


# ---------------------------------------------------------------------- MediaPipe Convolution2DTransposeBias


def _as_mediapipe(data: bytes, padding: int | None = None, name: str = "Convolution2DTransposeBias") -> bytes:
    """The converter's TRANSPOSE_CONV (output_shape, weights, input, bias) rewritten as MediaPipe stores its
    custom op: CUSTOM ``name`` with inputs (input, weights, bias) and custom options packing
    TfLiteTransposeConvParams (int32 padding: 1 SAME / 2 VALID, stride_width, stride_height, activation)."""
    flatbuffer_utils, schema = _flatbuffer()
    flat = _model_object(data)
    flat.operatorCodes.append(schema.OperatorCodeT(deprecatedBuiltinCode=CUSTOM, builtinCode=CUSTOM, customCode=name))
    for op in flat.subgraphs[0].operators:
        if _opcode(flat, op) != TRANSPOSE_CONV:
            continue
        options = op.builtinOptions
        assert options.fusedActivationFunction == 0 and len(op.inputs) == 4  # MediaPipe's op has neither
        same = 1 if options.padding == schema.Padding.SAME else 2
        op.opcodeIndex = len(flat.operatorCodes) - 1
        op.inputs = [op.inputs[2], op.inputs[1], op.inputs[3]]
        op.builtinOptionsType, op.builtinOptions = 0, None
        raw = struct.pack("<iiii", same if padding is None else padding, options.strideW, options.strideH, 0)
        op.customOptions = np.frombuffer(raw, np.uint8)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(flat))


def _mediapipe_reference(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, stride: int, same: bool) -> np.ndarray:
    """MediaPipe's ``TransposeConvBias`` loop (transpose_conv_bias.cc) in float64: the output starts at the
    bias, and input (y, x) tap (fy, fx) adds to output (y·s - pad_h + fy, x·s - pad_w + fx) when inside it."""
    _, height, width, _ = x.shape
    _, kh, kw, _ = weights.shape

    def geometry(size: int, kernel: int) -> tuple[int, int]:
        total = max(0, kernel - (size - 1) % stride - 1) if same else 0
        return stride * (size - 1) + kernel - total, total // 2

    (out_h, pad_h), (out_w, pad_w) = geometry(height, kh), geometry(width, kw)
    y = np.broadcast_to(bias.astype(np.float64), (x.shape[0], out_h, out_w, weights.shape[0])).copy()
    for i in range(height):
        for j in range(width):
            for fy in range(kh):
                for fx in range(kw):
                    oy, ox = i * stride - pad_h + fy, j * stride - pad_w + fx
                    if 0 <= oy < out_h and 0 <= ox < out_w:
                        y[:, oy, ox, :] += x[:, i, j, :].astype(np.float64) @ weights[:, fy, fx, :].T.astype(np.float64)
    return y


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"),
    [(2, 2, "same"), (3, 2, "same"), (4, 2, "same"), (3, 2, "valid"), (3, 1, "same")],
)
def test_mediapipe_transpose_conv_bias_becomes_conv_transpose(tmp_path, kernel, stride, padding) -> None:
    keras = tf_import.keras()
    keras.utils.set_random_seed(kernel * 10 + stride)
    layer = keras.layers.Conv2DTranspose(4, kernel, strides=stride, padding=padding)
    image = keras.Input((5, 6, 3), batch_size=1)
    model = keras.Model(image, layer(image))
    layer.bias.assign(np.array([0.5, -1.0, 1.5, 2.0], np.float32))
    data = _as_mediapipe(_tflite(model))
    with pytest.raises(RuntimeError, match="unresolved custom op"):  # TFLite alone cannot run it
        _interpreter(data)
    path = tmp_path / "mediapipe.tflite"
    path.write_bytes(data)

    result = convert_file(path, tmp_path / "mp.onnx")
    assert result.kind == "tflite-float" and result.max_abs <= result.checks[0].allowed
    assert "Convolution2DTransposeBias" in result.notes[0] and "reference: the rewritten model" in result.notes[0]
    graph = onnx.load(str(tmp_path / "mp.onnx")).graph
    (deconv,) = [n for n in graph.node if n.op_type == "ConvTranspose"]
    assert len(deconv.input) == 3  # the bias is ConvTranspose's own
    x = np.random.default_rng(2).normal(0, 1, (1, 5, 6, 3)).astype(np.float32)
    ours = _run_onnx(tmp_path / "mp.onnx", x)
    weights = np.transpose(layer.kernel.numpy(), (2, 0, 1, 3))  # Keras (kh, kw, out, in) -> OHWI
    expected = _mediapipe_reference(x, weights, layer.bias.numpy(), stride, padding == "same")
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-5 * np.abs(expected).max()
    keras_out = np.asarray(model(x))
    if keras_out.shape == ours.shape:  # VALID, or SAME where MediaPipe's and TF's output sizes agree
        assert np.abs(ours - keras_out).max() <= 1e-5 * np.abs(keras_out).max()


def test_transpose_conv_bias_geometry() -> None:
    # MediaPipe's SAME: out = s(n - 1) + k - P, P = max(0, k - (n - 1) % s - 1); not always TF's n·s
    assert transpose_conv_bias_geometry(6, 2, 2, True) == (12, 0)
    assert transpose_conv_bias_geometry(5, 2, 2, True) == (9, 0)
    assert transpose_conv_bias_geometry(5, 4, 2, True) == (9, 1)
    assert transpose_conv_bias_geometry(5, 3, 2, False) == (11, 0)


def test_mediapipe_decoder_inside_a_graph_matches_keras(tmp_path) -> None:
    """A segmentation-decoder shape: conv, the custom op upsampling x2 (kernel 2, stride 2), conv, sigmoid
    (no activation right after the custom op: the converter would fuse it, and MediaPipe's op has none)."""
    keras = tf_import.keras()
    keras.utils.set_random_seed(3)
    layers = keras.layers
    image = keras.Input((8, 8, 3), batch_size=1, name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(image)
    up = layers.Conv2DTranspose(6, 2, strides=2, padding="same")
    x = layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="mask")(up(x))
    model = keras.Model(image, x)
    up.bias.assign(np.linspace(-0.5, 0.5, 6).astype(np.float32))
    path = tmp_path / "decoder.tflite"
    path.write_bytes(_as_mediapipe(_tflite(model)))
    result = convert_file(path, tmp_path / "decoder.onnx", nchw=True)
    assert result.checks[0].max_abs <= result.checks[0].allowed
    x = np.random.default_rng(4).normal(0, 1, (1, 8, 8, 3)).astype(np.float32)
    ours = _run_onnx(tmp_path / "decoder.onnx", np.transpose(x, (0, 3, 1, 2)))
    assert np.abs(ours - np.asarray(model(x))).max() <= 1e-5


def _one_transpose_conv() -> bytes:
    keras = tf_import.keras()
    keras.utils.set_random_seed(5)
    image = keras.Input((4, 4, 2), batch_size=1)
    layer = keras.layers.Conv2DTranspose(2, 2, strides=2, padding="same")
    model = keras.Model(image, layer(image))
    layer.bias.assign(np.array([1.0, -1.0], np.float32))  # a zero bias would be dropped by the converter
    return _tflite(model)


def test_custom_ops_that_cannot_be_mapped_are_one_line_errors(tmp_path, capsys) -> None:
    bad_padding = tmp_path / "bad_padding.tflite"
    bad_padding.write_bytes(_as_mediapipe(_one_transpose_conv(), padding=0))
    line = one_line_error(["convert", str(bad_padding), "-o", str(tmp_path / "x.onnx")], capsys)
    assert "Convolution2DTransposeBias" in line and "padding 0" in line

    unknown = tmp_path / "unknown.tflite"  # another MediaPipe custom op, which has no mapping
    unknown.write_bytes(_as_mediapipe(_one_transpose_conv(), name="MaxUnpooling2D"))
    line = one_line_error(["convert", str(unknown), "-o", str(tmp_path / "x.onnx")], capsys)
    assert "custom op(s) MaxUnpooling2D cannot be converted" in line and not (tmp_path / "x.onnx").exists()


# ---------------------------------------------------------------------- float16 weights


def test_float16_weights_match_the_interpreter(tmp_path) -> None:
    tf = tf_import.tensorflow()
    keras = tf_import.keras()
    keras.utils.set_random_seed(6)
    layers = keras.layers
    image = keras.Input((8, 8, 3), batch_size=1, name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(image)
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = layers.Conv2DTranspose(4, 2, strides=2, padding="same")(x)
    x = layers.Dense(5, name="head")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(image, x)
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(np.random.default_rng(7).normal(0, 0.5, layer.bias.shape).astype(np.float32))
    data = _tflite(model, optimizations=[tf.lite.Optimize.DEFAULT], supported_types=[tf.float16])
    flat = _model_object(data)
    graph = flat.subgraphs[0]
    dequantized = [graph.tensors[op.inputs[0]] for op in graph.operators if _opcode(flat, op) == DEQUANTIZE]
    assert len(dequantized) >= 4 and all(t.type == 1 for t in dequantized)  # FLOAT16 constants
    path = tmp_path / "fp16.tflite"
    path.write_bytes(data)
    result = convert_file(path, tmp_path / "fp16.onnx")
    (check,) = result.checks
    assert result.kind == "tflite-float" and check.max_abs <= check.allowed
    x = np.random.default_rng(8).normal(0, 1, (1, 8, 8, 3)).astype(np.float32)
    ours, theirs = _run_onnx(tmp_path / "fp16.onnx", x), _run_tflite(data, x)
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


# ---------------------------------------------------------------------- the source's own noise


def _cancelling_tflite() -> bytes:
    """out = x·W' - x·W with W' = W + 1e-3·D: an output ~40x smaller than the terms that cancel in it, so
    float32 rounding of those terms (which TFLite and onnxruntime do in different orders) is ~1e-4 of it."""
    keras = tf_import.keras()
    keras.utils.set_random_seed(9)
    rng = np.random.default_rng(9)
    x = keras.Input((64,), batch_size=1, name="x")
    big, near = keras.layers.Dense(16), keras.layers.Dense(16)
    model = keras.Model(x, keras.layers.Subtract(name="tiny")([near(x), big(x)]))
    w = rng.normal(0, 1, (64, 16)).astype(np.float32)
    b = rng.normal(0, 1, 16).astype(np.float32)
    big.kernel.assign(w)
    near.kernel.assign(w + 1e-3 * rng.normal(0, 1, (64, 16)).astype(np.float32))
    big.bias.assign(b)
    near.bias.assign(b)
    return _tflite(model)


def test_a_tiny_output_is_judged_against_the_sources_own_noise(tmp_path, monkeypatch) -> None:
    path = tmp_path / "tiny.tflite"
    path.write_bytes(_cancelling_tflite())
    (check,) = convert_file(path, tmp_path / "tiny.onnx").checks
    assert check.noise > 0 and check.max_abs <= check.allowed <= 10 * check.noise * (1 + 1e-9)

    monkeypatch.setattr(convert_module, "NOISE_MULTIPLE", 0.0)  # the tolerance before the floor
    with pytest.raises(ConversionError, match="differs from the source"):
        convert_file(path, tmp_path / "refused.onnx")
    assert not (tmp_path / "refused.onnx").exists()


def test_the_noise_floor_still_refuses_a_wrong_conversion(tmp_path, monkeypatch) -> None:
    """The converted model's output shifted by 5% of its magnitude: far beyond the source's noise."""
    path = tmp_path / "tiny.tflite"
    data = _cancelling_tflite()
    path.write_bytes(data)
    offset = 0.05 * float(np.abs(_run_tflite(data, np.ones((1, 64), np.float32))).max())
    real = sources.from_tflite

    def skewed(*args, **kwargs):
        converted = real(*args, **kwargs)
        graph = converted.proto.graph
        output = graph.output[0].name
        for node in graph.node:
            node.output[:] = [f"{output}_unskewed" if o == output else o for o in node.output]
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(offset, np.float32), "skew"))
        graph.node.append(onnx.helper.make_node("Add", [f"{output}_unskewed", "skew"], [output]))
        return converted

    monkeypatch.setattr(sources, "from_tflite", skewed)
    with pytest.raises(ConversionError, match="differs from the source"):
        convert_file(path, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
