"""The ``onnxopt`` command: the README main job, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import BUNDLED, file_digest, one_line_error, parse

from onnxopt.cli import main

MODEL = BUNDLED / "model.onnx"
EVAL = BUNDLED / "eval.npz"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnxopt.cli", *args], capture_output=True, text=True, timeout=300)


def test_main_job_lossless_on_bundled_model(tmp_path: Path) -> None:
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    before = file_digest(MODEL)
    proc = run_cli(
        "optimize", str(MODEL), "-o", str(out), "--recipe", "lossless", "--data", str(EVAL), "--report", str(report)
    )
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout and "max drift" in proc.stdout
    assert file_digest(MODEL) == before
    optimized = onnx.load(str(out))
    onnx.checker.check_model(optimized, full_check=True)
    # the first BN folds into the next Conv; the second (after a Relu, before MaxPool->Transpose) has no layer
    # to fold into and is kept: onnxruntime runs it as a blocked 1x1 Conv, faster than a Mul+Add
    assert [n.op_type for n in optimized.graph.node].count("BatchNormalization") == 1
    data = json.loads(report.read_text())
    assert data["schema"] == "onnxopt.report/2"
    cmp = data["comparison"]
    assert cmp["samples"] == 1000
    assert cmp["reference_accuracy"] == cmp["candidate_accuracy"] > 0.9
    assert cmp["outputs"][0]["max_rel"] <= 1e-5
    assert all(p["status"] != "rolled back" for p in data["passes"])


def test_output_is_deterministic(tmp_path: Path) -> None:
    for name in ("a.onnx", "b.onnx"):
        assert main(["optimize", str(MODEL), "-o", str(tmp_path / name), "--data", "random:4"]) == 0
    assert file_digest(tmp_path / "a.onnx") == file_digest(tmp_path / "b.onnx")


def test_markdown_report(tmp_path: Path) -> None:
    report = tmp_path / "r.md"
    args = ["optimize", str(MODEL), "-o", str(tmp_path / "o.onnx"), "--passes", "fold-bn,remove-unused"]
    assert main([*args, "--report", str(report)]) == 0
    text = report.read_text()
    assert "| fold-bn | applied |" in text
    assert "## Outputs against the reference" in text


def test_passes_lists_every_registered_pass(capsys: pytest.CaptureFixture[str]) -> None:
    from onnxopt.passes import REGISTRY

    assert main(["passes", "--json"]) == 0
    listed = {p["name"] for p in json.loads(capsys.readouterr().out)}
    assert listed == set(REGISTRY)


def test_passes_gives_every_parameter_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Each parameter's help is its field's ``metadata["help"]``: present, and no two fields of a pass share one."""
    import dataclasses

    from onnxopt.passes import REGISTRY

    assert main(["passes", "--json"]) == 0
    listed = {p["name"]: p["parameters"] for p in json.loads(capsys.readouterr().out)}
    for name, cls in REGISTRY.items():
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        params = listed[name]
        assert [p["name"] for p in params] == list(fields)
        for param in params:
            assert param["meaning"], f"{name}: {param['name']} has no help"
            assert param["meaning"] == fields[param["name"]].metadata["help"], f"{name}: {param['name']}"
        helps = [p["meaning"] for p in params]
        assert len(set(helps)) == len(helps), f"{name}: two parameters share a help text"


def test_inspect_reports_macs_and_ops(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(MODEL), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["opset"][""] == 13
    assert summary["op_histogram"]["BatchNormalization"] == 2
    # conv1: 26*26*32*9 + conv2: 11*11*64*32*9 MACs per sample at least
    assert summary["macs"] >= 26 * 26 * 32 * 9 + 11 * 11 * 64 * 32 * 9
    assert summary["parameters"] > 200_000


def test_compare_reports_accuracy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["compare", str(MODEL), str(MODEL), "--data", str(EVAL), "--json"]) == 0
    printed = capsys.readouterr().out
    document = json.loads(printed)
    assert document["schema"].startswith("onnxopt.report/") and document["kind"] == "compare"
    (tmp_path / "c.json").write_text(printed)  # the same versioned document: onnxopt report renders it
    assert main(["report", str(tmp_path / "c.json"), "-o", str(tmp_path / "c.md")]) == 0
    result = document["comparison"]
    assert result["samples"] == 1000
    assert result["outputs"][0]["max_abs"] == 0.0
    assert result["reference_accuracy"] == result["candidate_accuracy"]
    assert result["random_inputs"] is False and result["data"] == str(EVAL)


RANDOM_WARNING = "WARNING: inputs: 8 seeded random samples (no --data, seed 0): agreement only, not accuracy"


def test_compare_without_data_says_the_inputs_were_random(tmp_path: Path) -> None:
    report = tmp_path / "compare.md"
    proc = run_cli("compare", str(MODEL), str(MODEL), "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    assert RANDOM_WARNING in proc.stdout and "pass --data to compare on real inputs" in proc.stdout
    assert "**Random inputs** (no --data, seed 0): agreement only, not accuracy" in report.read_text()
    as_json = run_cli("compare", str(MODEL), str(MODEL), "--json")
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)["comparison"]  # stdout stays JSON; the warning goes to stderr
    assert result["random_inputs"] is True and result["data"] == "no --data, seed 0"
    assert RANDOM_WARNING in as_json.stderr


def test_compare_with_data_prints_no_random_inputs_warning() -> None:
    proc = run_cli("compare", str(MODEL), str(MODEL), "--data", str(EVAL))
    assert proc.returncode == 0, proc.stderr
    assert "accuracy: reference" in proc.stdout
    assert "WARNING" not in proc.stdout + proc.stderr and "random" not in proc.stdout


def _unknown_op_model(path: Path) -> None:
    model = parse(
        """<ir_version: 8, opset_import: ["": 13, "com.example": 1]>
        g (float[1, 4] x) => (float[1, 4] y) { y = com.example.Frobnicate(x) }"""
    )
    onnx.save(model, str(path))


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(MODEL.read_bytes()[: MODEL.stat().st_size // 2])
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 20)
    unknown = tmp_path / "unknown_op.onnx"
    _unknown_op_model(unknown)
    wrong_key = tmp_path / "wrong_key.npz"
    np.savez(wrong_key, pixels=np.zeros((2, 28, 28, 1), np.float32))
    wrong_dtype = tmp_path / "wrong_dtype.npz"
    np.savez(wrong_dtype, image=np.zeros((2, 28, 28, 1), np.float64))
    wrong_shape = tmp_path / "wrong_shape.npz"
    np.savez(wrong_shape, image=np.zeros((2, 28, 28, 3), np.float32))
    return {
        "empty file": (empty, []),
        "truncated model": (truncated, []),
        "text file": (text, []),
        "unknown op": (unknown, []),
        "missing file": (tmp_path / "nope.onnx", []),
        "directory": (tmp_path, []),
        "data with wrong key": (MODEL, ["--data", str(wrong_key)]),
        "data with wrong dtype": (MODEL, ["--data", str(wrong_dtype)]),
        "data with wrong shape": (MODEL, ["--data", str(wrong_shape)]),
        "missing data file": (MODEL, ["--data", str(tmp_path / "none.npz")]),
        "unknown pass": (MODEL, ["--passes", "fold-everything"]),
        "bad pass parameter": (MODEL, ["--passes", "fold-constants:max_input=-3"]),
        "unknown recipe": (MODEL, ["--recipe", "turbo"]),
        "report in a missing folder": (MODEL, ["--report", str(tmp_path / "nowhere" / "r.json")]),
        "report of unknown format": (MODEL, ["--report", str(tmp_path / "r.pdf")]),
    }


CASES = [
    "empty file",
    "truncated model",
    "text file",
    "unknown op",
    "missing file",
    "directory",
    "data with wrong key",
    "data with wrong dtype",
    "data with wrong shape",
    "missing data file",
    "unknown pass",
    "bad pass parameter",
    "unknown recipe",
    "report in a missing folder",
    "report of unknown format",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    model, extra = _bad_inputs(tmp_path)[case]
    digest = file_digest(model) if model.is_file() else None
    out = tmp_path / "out" / "result.onnx"
    out.parent.mkdir()
    proc = run_cli("optimize", str(model), "-o", str(out), *extra)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxopt: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(out.parent.iterdir()) == []
    if digest:
        assert file_digest(model) == digest
    if case in ("data with wrong key",):
        assert "'image'" in lines[0]


def test_refuses_to_overwrite_input_without_in_place(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(MODEL.read_bytes())
    digest = file_digest(model)
    proc = run_cli("optimize", str(model), "-o", str(model))
    assert proc.returncode == 2 and "--in-place" in proc.stderr
    assert file_digest(model) == digest
    assert main(["optimize", str(model), "--in-place", "--passes", "fold-bn"]) == 0
    assert file_digest(model) != digest
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(model)).graph.node}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("command", [["inspect"], ["compare", str(MODEL)]])
def test_other_commands_reject_bad_files(command: list[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_text("garbage")
    args = [command[0], str(bad), *command[1:]] if command[0] == "inspect" else [command[0], command[1], str(bad)]
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["optimize", str(MODEL), "-o", "x.onnx", "--storage", "zip"],
        ["bench", str(MODEL), "--runs", "abc"],
        ["compare", str(MODEL)],
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_are_one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxopt: error: ") and "--help" in lines[0]


def test_version_and_python_dash_m() -> None:
    import onnxopt

    for command in ([sys.executable, "-m", "onnxopt", "--version"], [sys.executable, "-m", "onnxopt.cli", "--version"]):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip() == f"onnxopt {onnxopt.__version__}", proc


def test_positional_output_like_onnxsim(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    proc = run_cli("optimize", str(MODEL), str(out), "--data", "random:4")
    assert proc.returncode == 0, proc.stderr
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    clash = run_cli("optimize", str(MODEL), str(out), "-o", str(tmp_path / "other.onnx"))
    assert clash.returncode == 2 and "two outputs given" in clash.stderr
    assert not (tmp_path / "other.onnx").exists()


def test_a_misspelt_command_gets_a_suggestion(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["optimze", str(MODEL)])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unknown command 'optimze'; did you mean 'optimize'?" in line


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (["optimize", str(MODEL), "x.onnx", "--passes", "fold-bm"], "did you mean 'fold-bn'?"),
        (["optimize", str(MODEL), "x.onnx", "--recipe", "int9"], "did you mean 'int8'?"),
        (["optimize", str(MODEL), "x.onnx", "--passes", "quantize:calibraton=mse"], "did you mean 'calibration'?"),
    ],
)
def test_misspelt_names_get_a_suggestion(args, suggestion, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert suggestion in one_line_error(args, capsys)
    assert not (tmp_path / "x.onnx").exists()


def test_the_summary_opens_with_the_verdict_and_quiet_prints_only_it(tmp_path: Path, capsys) -> None:
    out = tmp_path / "w.onnx"
    train = tmp_path / "fit.npz"
    with np.load(EVAL) as data:
        np.savez(train, image=data["image"][:200], labels=data["labels"][:200])
    args = ["optimize", str(MODEL), str(out), "--passes", "quantize:weights_only=true", "--data", str(train)]
    assert main([*args, "--eval-data", str(EVAL), "--bench", "--bench-seconds", "0.2"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("passes quantize: ") and "x smaller; latency " in first
    assert any(word in first for word in ("(faster)", "(slower)", "(no measurable difference)"))
    assert "pts (1000 held-out samples)" in first
    assert "avx" in first or "integer features" in first or "neon" in first  # the CPU's integer features
    assert main([*args, "-q"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "latency not measured" in printed[0]
    assert "which the passes also fitted on" in printed[0]


def test_a_missing_eval_data_is_named_and_nothing_is_written(tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.onnx"
    line = one_line_error(
        ["optimize", str(MODEL), str(out), "--data", str(EVAL), "--eval-data", str(tmp_path / "none.npz")], capsys
    )
    assert "--eval-data" in line and "no such file" in line and not out.exists()


# --- issue 33: NaN/Inf in --data and --eval-data; scalar (rank-0) inputs given by --data

CORPUS = Path(__file__).parent / "data" / "bad_inputs"


def _rows(tmp_path: Path, name: str, bad: int | None = None, **extra: np.ndarray) -> Path:
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    if bad is not None:
        x[bad, 1] = np.nan
    path = tmp_path / name
    np.savez(path, x=x, **extra)
    return path


def test_nonfinite_data_is_refused_by_every_command(tmp_path: Path, capsys) -> None:
    model = CORPUS / "scalar_mul.onnx"
    before = file_digest(model)
    nan, clean = _rows(tmp_path, "nan.npz", 17, s=np.float32(2)), _rows(tmp_path, "ok.npz", s=np.float32(2))
    out = tmp_path / "o.onnx"
    for args in (
        ["optimize", str(model), str(out), "--recipe", "int8", "--data", str(nan)],
        ["optimize", str(model), str(out), "--data", str(clean), "--eval-data", str(nan)],
        ["compare", str(model), str(model), "--data", str(nan)],
        ["bench", str(model), "--data", str(nan), "--runs", "2", "--warmup", "0", "--no-memory"],
    ):
        line = one_line_error(args, capsys)
        flag = "--eval-data" if "--eval-data" in args else "--data"
        assert f"{flag} {nan}: array 'x' holds NaN in sample 17 (1 of 40 samples" in line, line
        assert "--drop-nonfinite" in line
    assert not out.exists() and file_digest(model) == before


def test_drop_nonfinite_says_how_many(tmp_path: Path, capsys) -> None:
    model, out = CORPUS / "scalar_mul.onnx", tmp_path / "o.onnx"
    nan = _rows(tmp_path, "nan.npz", 17, s=np.float32(2))
    assert main(["optimize", str(model), str(out), "--data", str(nan), "--drop-nonfinite", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["comparison"]["samples"] == 39
    assert "1 of 40 samples held NaN or Inf and were left out (--drop-nonfinite)" in json.dumps(report)
    assert main(["compare", str(model), str(model), "--data", str(nan), "--drop-nonfinite"]) == 0
    assert "39 samples" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["scalar_mul.onnx", "scalar_if.onnx"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_scalar_first_input_from_data(name: str, per_sample: bool, tmp_path: Path, capsys) -> None:
    """A rank-0 input is a scalar array (one value for every sample) or an [N] array (one per sample)."""
    if name == "scalar_mul.onnx":
        scalar = {"s": np.linspace(0.5, 2, 40, dtype=np.float32) if per_sample else np.float32(1.5)}
    else:
        scalar = {"c": np.arange(40) % 3 == 0 if per_sample else np.array(True)}
    data, model, out = _rows(tmp_path, "d.npz", **scalar), CORPUS / name, tmp_path / "o.onnx"
    assert main(["optimize", str(model), str(out), "--data", str(data), "--json"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["comparison"]["samples"] == 40 and out.is_file()
    assert main(["compare", str(model), str(out), "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["comparison"]["samples"] == 40
    bench = ["bench", str(model), str(out), "--data", str(data), "--batch", "4", "--runs", "2", "--no-memory"]
    assert main([*bench, "--warmup", "0"]) == 0


def test_renamed_batch_flags_keep_their_old_name() -> None:
    """``--batch`` is the deployment batch; compare's chunk, bench's batch list and distill's training batch have
    names of their own, and the old ``--batch`` still reaches them (hidden from --help)."""
    from onnxopt.cli import _parser

    parser = _parser()
    compare = ["compare", "a.onnx", "b.onnx"]
    assert parser.parse_args([*compare, "--chunk", "8"]).chunk == 8
    assert parser.parse_args([*compare, "--batch", "8"]).batch == 8
    assert parser.parse_args(["bench", "a.onnx", "--batches", "1,8"]).batches == "1,8"
    assert parser.parse_args(["bench", "a.onnx", "--batch", "1,8"]).batch == "1,8"
    distill = ["distill", "--teacher", "t.onnx", "--student", "width=0.5", "--data", "d.npz", "-o", "s.onnx"]
    assert parser.parse_args(distill).train_batch == 64
    assert parser.parse_args([*distill, "--batch", "16"]).train_batch == 16
    assert parser.parse_args([*distill, "--train-batch", "16"]).train_batch == 16
