"""Write BIG-Bench prompts of one split as JSONL for `cappy generate` (prompt, references, task, id).

The prompts are the ones `cappy eval bigbench` samples (the official split, the same seeded sample per task), so a
generation cache made from this file is read by the evaluation and by adaptation without generating again.

Reproduces the prompt files of the committed caches (docs/RESULTS.md, BIG-Bench sections):
``results/gemma-270m/bigbench-train-select/train_prompts.jsonl``, ``bigbench-adapt-train/train_prompts.jsonl`` and
``bigbench-adapt-val/val_prompts.jsonl``.

Example (about 20 train prompts of every task, for choosing tasks on train data only):
    python scripts/bigbench_prompts.py --split train --max-per-task 20 --seed 0 --out prompts.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cappy.evaluate.bigbench import BBConfig, default_tasks, task_prompts
from cappy.io import atomic_write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=["train", "validation"], required=True)
    ap.add_argument("--max-per-task", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--task", action="append", default=[], help="task folder (repeatable); default: every task")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    tasks = [Path(t) for t in args.task] or default_tasks()
    cfg = BBConfig(max_examples=args.max_per_task, max_train=args.max_per_task, seed=args.seed)
    n = 0
    with atomic_write(args.out) as f:
        for path in tasks:
            name, train, val = task_prompts(path, cfg)
            # no "id": the prompt id stays the sha1 of the prompt, as in the evaluation, so the seeds match too
            for ex in train if args.split == "train" else val:
                row = {"prompt": ex.input, "references": list(ex.references), "task": name}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
    print(f"{n} prompts from {len(tasks)} tasks -> {args.out}")


if __name__ == "__main__":
    main()
