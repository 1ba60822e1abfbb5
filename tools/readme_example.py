"""The README's example, regenerated: run the main job on the bundled model and paste what it prints.

    python tools/readme_example.py [--check]

Runs the README's first command (``onnxopt optimize models/digits_cnn/model.onnx digits_cnn.int8.onnx --recipe int8
...``) exactly as a user types it, in a temporary folder that holds only a link to ``models/``, so the paths it
prints are the user's and nothing is written into the repository. Its output replaces the text between the
markers in ``README.md`` and the whole of ``docs/EXAMPLE.md`` (with the date, onnxopt's version and the exit
status). The int8 recipe times its decisions on this machine (about 40 s of CPU on 2 cores), so another machine
or run prints other timings, and may decide differently: run it on an idle machine. ``--check`` runs nothing and
exits 1 when README.md's example differs from docs/EXAMPLE.md's.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLE = ROOT / "docs" / "EXAMPLE.md"
BEGIN = "<!-- example output: written by tools/readme_example.py, do not edit by hand -->"
END = "<!-- end of example output -->"
MAIN_JOB = [
    "optimize",
    "models/digits_cnn/model.onnx",
    "digits_cnn.int8.onnx",
    "--recipe",
    "int8",
    "--data",
    "models/digits_cnn/train.npz",
    "--eval-data",
    "models/digits_cnn/eval.npz",
    "--report",
    "digits_cnn.report.html",
]


def run_main_job() -> tuple[str, int]:
    """What ``onnxopt <MAIN_JOB>`` prints on stdout, run from a folder that looks like the repository root."""
    with tempfile.TemporaryDirectory(prefix="onnxopt-example-") as work:
        (Path(work) / "models").symlink_to(ROOT / "models", target_is_directory=True)
        env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-m", "onnxopt", *MAIN_JOB], cwd=work, env=env, capture_output=True, text=True
        )
    if proc.returncode not in (0, 3):  # 3: written, but a lossy pass fell back; the output says which
        sys.exit(f"readme_example: onnxopt exited {proc.returncode}:\n{proc.stderr}")
    return proc.stdout.rstrip() + "\n", proc.returncode


def example_block(output: str) -> str:
    return f"{BEGIN}\n```\n{output}```\n{END}"


def replace_block(text: str, output: str, where: Path) -> str:
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        sys.exit(f"readme_example: {where.relative_to(ROOT)} has no example markers ({BEGIN!r} ... {END!r})")
    return pattern.sub(lambda _: example_block(output), text, count=1)


def example_doc(output: str, returncode: int) -> str:
    from onnxopt import __version__

    command = "onnxopt " + " ".join(MAIN_JOB)
    today = datetime.date.today().isoformat()
    return (
        "# The main job on the bundled model\n\n"
        "Written by `python tools/readme_example.py` (do not edit by hand): the README's first command, run from\n"
        f"the repository root with onnxopt {__version__} on {today}, exit status {returncode}. The int8 recipe\n"
        "times its decisions on the machine it runs on (named in the first and last lines), so another machine\n"
        "prints other timings and may decide differently. How to read it:\n"
        "[the README](../README.md#reading-the-verdict).\n\n"
        f"```bash\n{command}\n```\n\n{example_block(output)}\n"
    )


def current(text: str) -> str | None:
    found = re.search(re.escape(BEGIN) + r"\n```\n(.*?)```\n" + re.escape(END), text, re.S)
    return found.group(1) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare README.md's example with docs/EXAMPLE.md's")
    args = parser.parse_args()
    if args.check:
        shown = current(README.read_text())
        same = shown is not None and EXAMPLE.exists() and shown == current(EXAMPLE.read_text())
        print("README.md and docs/EXAMPLE.md show the same output" if same else "the examples differ: rerun")
        sys.exit(0 if same else 1)
    output, returncode = run_main_job()
    README.write_text(replace_block(README.read_text(), output, README))
    EXAMPLE.parent.mkdir(exist_ok=True)
    EXAMPLE.write_text(example_doc(output, returncode))
    print(f"wrote the example ({len(output.splitlines())} lines) into README.md and docs/EXAMPLE.md")


if __name__ == "__main__":
    main()
