"""How ``optimize --recipe lossless`` without ``--data`` fares on every onnx backend-test model onnxruntime runs.

The same cases as ``tests/test_backend_models.py`` (``light``, ``pytorch-converted``, ``pytorch-operator``,
``simple``), counted: compared on random inputs, checked structurally only (random inputs cannot run the
original), failed; skipped ones are those onnxruntime cannot run at all. Writes
``tools/backend_survey_results.json`` and prints the counts.

    python tools/backend_survey.py
"""

from __future__ import annotations

import collections
import json
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from backend_models import cases, materialize_light

import onnxopt
from onnxopt.errors import UnsupportedModelError
from onnxopt.runtime import Runner

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    counts: collections.Counter[str] = collections.Counter()
    rows = []
    opsets: collections.Counter[int] = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for case_id, path in cases():
            if case_id in {"light/light_vgg19", "light/light_zfnet512", "light/light_bvlc_alexnet"}:
                continue  # 240-550 MB each once materialized; the test covers them as slow cases
            model_path = path
            if case_id.startswith("light/"):
                model_path = Path(tmp) / "model.onnx"
                onnx.save(materialize_light(onnx.load(str(path))), str(model_path))
            try:
                Runner(model_path)
            except UnsupportedModelError:
                counts["skipped: onnxruntime cannot run it"] += 1
                continue
            opset = next(o.version for o in onnx.load(str(model_path), load_external_data=False).opset_import
                         if o.domain in ("", "ai.onnx"))  # fmt: skip
            opsets[opset] += 1
            try:
                result = onnxopt.optimize(model_path, Path(tmp) / "out.onnx", recipe="lossless", guard_samples=2)
            except Exception as e:  # counted: the acceptance is that none fails
                counts["failed"] += 1
                rows.append({"case": case_id, "opset": opset, "status": f"failed: {e}"})
                continue
            status = "compared" if result.pipeline.outputs_compared else "structural guard only"
            counts[status] += 1
            rows.append({"case": case_id, "opset": opset, "status": status, "max_rel": result.comparison.max_rel})
    document = {"counts": dict(counts), "runnable_by_opset": dict(sorted(opsets.items())), "cases": rows}
    (ROOT / "tools" / "backend_survey_results.json").write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps({"counts": document["counts"], "runnable_by_opset": document["runnable_by_opset"]}, indent=2))


if __name__ == "__main__":
    main()
