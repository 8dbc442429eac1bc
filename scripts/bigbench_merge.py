"""Merge `cappy eval bigbench` runs over disjoint task sets into one results.json and report.md: per-task scores as
they are, means over all tasks recomputed, the paired bootstrap against the best baseline redone over every prompt.

Example:
    python scripts/bigbench_merge.py runs/eval/bb_a runs/eval/bb_b --out runs/eval/bb_all
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cappy.evaluate.bigbench import compare_to_best_baseline
from cappy.evaluate.report import write_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="eval output folders with results.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    runs = [json.loads((Path(r) / "results.json").read_text()) for r in args.runs]
    merged: dict = {"metric": "rouge_l", "suite": "bigbench", "tasks": {}, "methods": {}, "per_prompt": {}}
    per_task: dict[str, dict[str, float]] = {}
    for run in runs:
        if set(run["per_prompt"]) & set(merged["per_prompt"]):
            raise ValueError(f"tasks {sorted(set(run['per_prompt']) & set(merged['per_prompt']))} are in two runs")
        merged["tasks"].update(run["tasks"])
        merged["per_prompt"].update(run["per_prompt"])
        for m, v in run["methods"].items():
            for t, x in v["per_task"].items():
                per_task.setdefault(m, {})[t] = x
    for m, vals in per_task.items():
        merged["methods"][m] = {"mean": float(np.mean(list(vals.values()))), "per_task": vals}
    merged["comparisons"] = compare_to_best_baseline(merged["per_prompt"], merged["methods"], seed=args.seed)
    merged["sample"] = {**runs[0]["sample"], "tasks": len(merged["per_prompt"]), "merged_from": args.runs}
    meta = {"command": "python scripts/bigbench_merge.py " + " ".join(args.runs), "models": runs[0].get("models")}
    meta["runs"] = [{"command": r.get("command"), "adaptation": r.get("adaptation")} for r in runs]
    write_run(merged, Path(args.out), meta, plots=True)
    print((Path(args.out) / "report.md").read_text())


if __name__ == "__main__":
    main()
