"""Choose BIG-Bench tasks for adaptation on train data only: where the candidates leave room above greedy.

For every task of a ``bigbench_prompts.py --split train`` file and its generation cache, the mean Rouge-L x100 of
the greedy candidate and of the best candidate (the oracle) over the task's train prompts. A task is kept when its
oracle exceeds greedy by at least ``--min-gap`` points; at most ``--max-tasks`` are kept, largest gap first.
Prints a markdown table of every task, the kept ones marked.

Reproduces the 12 adaptation tasks of docs/RESULTS.md (BIG-Bench adaptation: tasks chosen on train data only).

Example:
    python scripts/bigbench_select.py --prompts prompts.jsonl --gens gens.jsonl --recipe cpu8_stop --seed 0
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from cappy.generate.cache import read_generations
from cappy.metrics import rouge_l


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", required=True, help="JSONL with prompt, references, task")
    ap.add_argument("--gens", required=True, help="generation cache")
    ap.add_argument("--recipe", required=True, help="recipe name recorded in the cache")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-gap", type=float, default=5.0)
    ap.add_argument("--max-tasks", type=int, default=12)
    args = ap.parse_args()
    gens = read_generations(args.gens, recipe=args.recipe, seed=args.seed)
    greedy, oracle, missing = defaultdict(list), defaultdict(list), defaultdict(int)
    with open(args.prompts, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            cands = gens.get(row["prompt"])
            if not cands:
                missing[row["task"]] += 1
                continue
            scores = [rouge_l(c.text, row["references"]) for c in cands]
            first = next(i for i, c in enumerate(cands) if c.decoding == "greedy")
            greedy[row["task"]].append(100 * scores[first])
            oracle[row["task"]].append(100 * max(scores))
    rows = sorted(
        ((t, len(greedy[t]), float(np.mean(greedy[t])), float(np.mean(oracle[t]))) for t in greedy),
        key=lambda r: r[3] - r[2],
        reverse=True,
    )
    kept = [t for t, _, g, o in rows if o - g >= args.min_gap][: args.max_tasks]
    print("| task | train prompts | greedy | oracle | gap | kept |")
    print("|---|---|---|---|---|---|")
    for t, n, g, o in rows:
        print(f"| {t} | {n} | {g:.1f} | {o:.1f} | {o - g:+.1f} | {'yes' if t in kept else ''} |")
    if missing:
        print(f"\nprompts without candidates (not counted): {dict(missing)}")
    print(f"\nkept ({len(kept)}): {' '.join(kept)}")


if __name__ == "__main__":
    main()
