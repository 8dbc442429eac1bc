"""Merge `cappy eval bigbench` runs over disjoint task sets into one results.json and report.md: per-task scores as
they are, means over all tasks recomputed, the paired bootstrap against the best baseline redone over every prompt.

``--beside NAME=RUN[:METHOD]`` adds METHOD (default cappy_adapted) of an earlier merged run on the same prompts as
method NAME, with a paired bootstrap of cappy_adapted minus it; the runs must agree prompt by prompt on
first:greedy (same prompts, same candidates), else it is an error.

Reproduces the merged BIG-Bench adaptation runs of docs/RESULTS.md (``results/cappy-mini/bigbench-adapt/
validation-12-tasks/``: adapted cappy-mini against the best baseline over 477 validation prompts of 12 tasks).

Example:
    python scripts/bigbench_merge.py runs/eval/bb_a runs/eval/bb_b --out runs/eval/bb_all \\
        --beside cappy_adapted_old=results/cappy-mini/bigbench-adapt/previous-preset-12-tasks
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cappy.evaluate.bigbench import compare_to_best_baseline, paired_bootstrap_tasks
from cappy.evaluate.report import write_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="eval output folders with results.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--beside", action="append", default=[], help="NAME=RUN[:METHOD], an earlier run's method")
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
    beside = []
    for spec in args.beside:
        name, _, rest = spec.partition("=")
        path, _, method = rest.partition(":")
        method = method or "cappy_adapted"
        if not name or not path or name in per_task:
            raise ValueError(f"--beside {spec!r}: expected NAME=RUN[:METHOD] with a NAME that is not a method already")
        other = json.loads((Path(path) / "results.json").read_text())["per_prompt"]
        for t, v in merged["per_prompt"].items():
            if t in other and method not in other[t]:
                raise ValueError(f"{path}: task {t} has no method {method!r} (has {sorted(other[t])})")
            if t not in other or other[t].get("first:greedy") != v.get("first:greedy"):
                raise ValueError(f"{path}: task {t} is missing or has other prompts/candidates (first:greedy differs)")
            v[name] = other[t][method]
            per_task.setdefault(name, {})[t] = float(np.mean(other[t][method]))
        beside.append(name)
    for m, vals in per_task.items():
        merged["methods"][m] = {"mean": float(np.mean(list(vals.values()))), "per_task": vals}
    merged["comparisons"] = compare_to_best_baseline(merged["per_prompt"], merged["methods"], seed=args.seed)
    for name in beside:
        pp = merged["per_prompt"]
        boot = paired_bootstrap_tasks(
            {t: v["cappy_adapted"] for t, v in pp.items()}, {t: v[name] for t, v in pp.items()}, seed=args.seed
        )
        merged["comparisons"][f"cappy_adapted - {name}"] = {"versus": name, **boot}
    merged["sample"] = {**runs[0]["sample"], "tasks": len(merged["per_prompt"]), "merged_from": args.runs}
    cmd = " ".join(args.runs + [f"--beside {b}" for b in args.beside])
    meta = {"command": f"python scripts/bigbench_merge.py {cmd}", "models": runs[0].get("models")}
    meta["runs"] = [{"command": r.get("command"), "adaptation": r.get("adaptation")} for r in runs]
    write_run(merged, Path(args.out), meta, plots=True)
    print((Path(args.out) / "report.md").read_text())


if __name__ == "__main__":
    main()
