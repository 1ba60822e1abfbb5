"""Which channel importance keeps a pruned model most accurate: every ``prune-channels`` importance, on the
bundled digits CNN (trained), held out.

    python tools/bench_prune_importance.py [--ratios 0.3,0.5] [--out tools/bench_prune_importance_results]

``models/digits_cnn/eval.npz`` is split: the first 256 samples are what pruning ranks (activation, ThiNet)
and ``reconstruct`` refits on; accuracy is measured on the other 744, which neither saw. Each row runs
``lossless,prune-channels:ratio=R;importance=I;multiple=8,reconstruct,remove-unused`` (the ``prune`` recipe
with the importance and ratio varied). The result decides ``prune-channels``' default importance.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from onnxopt.api import compare_files, optimize
from onnxopt.passes.prune_channels import IMPORTANCES

DIGITS = Path(__file__).resolve().parent.parent / "models" / "digits_cnn"
CALIBRATION = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "bench_prune_importance_results")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxopt-prune-") as folder:
        work = Path(folder)
        with np.load(DIGITS / "eval.npz") as data:
            np.savez(work / "calibration.npz", **{k: v[:CALIBRATION] for k, v in data.items()})
            np.savez(work / "held_out.npz", **{k: v[CALIBRATION:] for k, v in data.items()})
        source = DIGITS / "model.onnx"
        for ratio in [float(r) for r in args.ratios.split(",")]:
            for importance in IMPORTANCES:
                out = work / f"pruned_{importance}_{ratio}.onnx"
                prune = f"prune-channels:ratio={ratio};importance={importance};multiple=8"
                spec = f"lossless,{prune},reconstruct,remove-unused"
                result = optimize(source, out, passes=spec, data=str(work / "calibration.npz"))
                held = compare_files(source, out, data=str(work / "held_out.npz"))
                record = next(r for r in result.pipeline.records if r.name == "prune-channels")
                rows.append(
                    {
                        "ratio": ratio,
                        "importance": importance,
                        "status": record.status,
                        "parameters_ratio": round(
                            result.pipeline.final.parameters / max(result.pipeline.original.parameters, 1), 3
                        ),
                        "fp32_accuracy": round(held.reference_accuracy, 4),
                        "pruned_accuracy": round(held.candidate_accuracy, 4),
                        "drop_points": round(100 * (held.reference_accuracy - held.candidate_accuracy), 2),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    summary = {"held_out_samples": 1000 - CALIBRATION, "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
