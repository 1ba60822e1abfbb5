"""Every command against every file of the bad-input corpus (tests/data/bad_inputs, from make_bad_inputs.py).

Each must give exactly one line on stderr, ``onnxopt: error: ...`` (nothing
from onnxruntime's own logger either: stderr is captured at the file-descriptor
level), exit 2, leave no output file, and leave the input byte-for-byte as it
was. ``control_flow.onnx`` (If and Loop) is valid and must simply work.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BUNDLED

from onnxopt.cli import main

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "bad_inputs"
GOOD = BUNDLED / "model.onnx"
VALID = {"control_flow.onnx", "opset7.onnx"}  # an old opset is valid: accepted at its own opset (issue 14)
# scalar (rank-0) first inputs, and an input fixed at [0, 4] run at the size --input-shape gives (issue 33)
VALID |= {"scalar_mul.onnx", "scalar_if.onnx", "zero_batch.onnx"}
SHAPES = {"zero_batch.onnx": ["--input-shape", "x:3x4"]}
FILES = sorted(p.name for p in CORPUS.iterdir())
COMMANDS = ["optimize", "compare-reference", "compare-candidate", "bench", "inspect"]


def _argv(command: str, model: Path, out: Path) -> list[str]:
    return {
        "optimize": ["optimize", str(model), "-o", str(out)],
        "compare-reference": ["compare", str(model), str(GOOD if model.name not in VALID else model)],
        "compare-candidate": ["compare", str(GOOD if model.name not in VALID else model), str(model)],
        "bench": ["bench", str(model), "--runs", "2", "--warmup", "0", "--no-memory"],
        "inspect": ["inspect", str(model)],
    }[command] + SHAPES.get(model.name, [])


def test_zero_dimension_needs_an_input_shape(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Random inputs for an input fixed at [0, 4] would be empty: no silent exit 0 without comparing."""
    model = CORPUS / "zero_batch.onnx"
    for argv in (["optimize", str(model), "-o", str(tmp_path / "o.onnx")], ["compare", str(model), str(model)]):
        assert main(argv) == 2
        lines = capfd.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "--input-shape x:Dx4" in lines[0], lines
    assert list(tmp_path.iterdir()) == []
    assert main(["compare", str(model), str(model), "--input-shape", "x:5x4", "--json"]) == 0
    assert json.loads(capfd.readouterr().out)["comparison"]["samples"] == 8


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def test_corpus_is_what_the_script_makes(tmp_path: Path) -> None:
    sys.path.insert(0, str(DATA))
    from make_bad_inputs import write

    write(tmp_path / "fresh")
    fresh = sorted(p.name for p in (tmp_path / "fresh").iterdir())
    assert fresh == FILES
    for name in fresh:
        assert _digest(tmp_path / "fresh" / name) == _digest(CORPUS / name), f"{name}: rerun make_bad_inputs.py"


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", FILES)
def test_every_command_on_every_corpus_file(
    name: str, command: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    model = CORPUS / name
    before = _digest(model)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = main(_argv(command, model, out_dir / "result.onnx"))
    captured = capfd.readouterr()
    assert _digest(model) == before, "the input changed"
    if name in VALID:
        assert code == 0, captured.err
        if command == "optimize":
            assert [p.name for p in out_dir.iterdir()] == ["result.onnx"]
        return
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("onnxopt: error: "), captured.err
    assert "Traceback" not in captured.err
    assert list(out_dir.iterdir()) == [], "an output was left behind"


@pytest.mark.parametrize("name", ["random_bytes.onnx", "cyclic.onnx", "unknown_domain.onnx", "control_flow.onnx"])
def test_as_a_separate_process(name: str, tmp_path: Path) -> None:
    """The installed entry point behaves the same (exit status, one line, no traceback)."""
    proc = subprocess.run(
        [sys.executable, "-m", "onnxopt.cli", "optimize", str(CORPUS / name), "-o", str(tmp_path / "o.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if name in VALID:
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "o.onnx").is_file()
    else:
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / "o.onnx").exists()
