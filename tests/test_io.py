"""Model I/O: validation errors, atomic save, external data, opset conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import BUNDLED, parse, run

from onnxopt import io
from onnxopt.errors import ModelLoadError, OutputError

MODEL = BUNDLED / "model.onnx"


def small_model(opset: int = 13) -> onnx.ModelProto:
    return parse(
        f"""<ir_version: 7, opset_import: ["": {opset}]>
        g (float[1, 4] x) => (float[1, 3] y) {{ y = MatMul(x, w) }}""",
        w=np.arange(12, dtype=np.float32).reshape(4, 3),
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"\x08\x07\x12\x04junk" * 3, "ONNX"), (b"hello world, not protobuf\n", "ONNX")],
)
def test_load_refuses_non_models(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        io.load(path)


def test_load_refuses_another_message_type(tmp_path: Path) -> None:
    path = tmp_path / "tensor.onnx"
    path.write_bytes(onnx.numpy_helper.from_array(np.ones(3, np.float32), "t").SerializeToString())
    with pytest.raises(ModelLoadError):
        io.load(path)


def test_old_opset_loads_at_its_own_opset_or_converted(tmp_path: Path) -> None:
    path = tmp_path / "old.onnx"
    onnx.save(small_model(opset=7), str(path))
    assert io.opset_version(io.load(path)) == 7  # nothing is refused for its age
    assert io.opset_version(io.load(path, target_opset=11)) == 11


def test_upgrade_opset_keeps_outputs() -> None:
    model = small_model(opset=11)
    upgraded = io.to_proto(io.upgrade_opset(io.from_proto(model), 13))
    assert upgraded.opset_import[0].version == 13
    x = {"x": np.ones((1, 4), np.float32)}
    np.testing.assert_array_equal(run(model, x)[0], run(upgraded, x)[0])


def test_save_is_atomic_and_leaves_no_temporaries(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    io.save(io.load(MODEL), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    onnx.checker.check_model(str(out))


def test_save_refuses_the_input_and_missing_folders(tmp_path: Path) -> None:
    copy = tmp_path / "m.onnx"
    copy.write_bytes(MODEL.read_bytes())
    with pytest.raises(OutputError, match="input"):
        io.save(io.load(copy), copy, protect=(copy,))
    with pytest.raises(OutputError, match="does not exist"):
        io.save(io.load(copy), tmp_path / "no" / "m.onnx")


def test_external_data_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "ext.onnx"
    io.save(io.load(MODEL), out, external_data=True)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 800_000
    assert out.stat().st_size < 100_000
    reloaded = io.load(out)
    x = {"image": np.zeros((1, 28, 28, 1), np.float32)}
    np.testing.assert_array_equal(run(onnx.load(str(MODEL)), x)[0], run(io.to_proto(reloaded), x)[0])


def test_missing_external_data_is_a_clean_error(tmp_path: Path) -> None:
    out = tmp_path / "ext.onnx"
    io.save(io.load(MODEL), out, external_data=True)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(ModelLoadError, match="external data"):
        io.load(out)
