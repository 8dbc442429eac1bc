"""Mismatched-negative sampling: the released way (re-sort the whole pool per example) vs cappy's reservoir.

Run: .venv/bin/python benchmarks/data_mismatched.py [--examples 4000] [--k 1]
Both draw k responses of other examples for every example of one template, over the real TriviaQA answers of
../shared/data/pretrain (falls back to synthetic answers), in one process. The old way is O(n^2 log n) in
total, the new way O(n). Last line: speedup=<x>
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from cappy.data.state import Reservoir

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pretrain"


def answers(n: int) -> list[str]:
    path = DATA / "trivia_qa_rc_wikipedia_nocontext_val.jsonl"
    if path.exists():
        from cappy.data.readers import read_examples

        out = []
        for ex in read_examples(path):
            out.append(ex["answer"]["value"])
            if len(out) == n:
                return out
    return [f"answer {i}" for i in range(n)]


def released_way(golds: list[str], k: int, seed: int) -> list[list[str]]:
    """For every example, shuffle-sort the whole pool of responses and take the first k that are not its gold."""
    rng = random.Random(seed)
    out = []
    for gold in golds:
        order = sorted(range(len(golds)), key=lambda _: rng.random())
        picked = []
        for j in order:
            if golds[j] != gold and golds[j] not in picked:
                picked.append(golds[j])
                if len(picked) == k:
                    break
        out.append(picked)
    return out


def reservoir_way(golds: list[str], k: int, seed: int, block: int = 1024) -> list[list[str]]:
    rng = random.Random(seed)
    pool = Reservoir(4096, rng)
    out = []
    for start in range(0, len(golds), block):
        chunk = golds[start : start + block]
        for g in chunk:
            pool.add(g)
        out.extend(pool.sample(k, {g}) for g in chunk)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=4000)
    ap.add_argument("--k", type=int, default=1)
    args = ap.parse_args()
    golds = answers(args.examples)
    t0 = time.perf_counter()
    old = released_way(golds, args.k, 0)
    t1 = time.perf_counter()
    new = reservoir_way(golds, args.k, 0)
    t2 = time.perf_counter()
    assert all(g not in o for g, o in zip(golds, old)) and all(g not in n for g, n in zip(golds, new))
    short = sum(args.k - len(n) for n in new)
    print(f"examples={len(golds)} k={args.k} released={t1 - t0:.3f}s reservoir={t2 - t1:.4f}s shortfall={short}")
    print(f"speedup={(t1 - t0) / (t2 - t1):.0f}")


if __name__ == "__main__":
    sys.exit(main())
