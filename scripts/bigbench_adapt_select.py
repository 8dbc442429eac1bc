"""Choose adaptation settings on train data only: per task, hold aside a quarter of its train prompts, adapt
cappy-mini on the rest with each candidate setting, and measure the Rouge-L of its picks on the held-aside prompts
next to every baseline strategy on the same candidates. Validation prompts are never read.

Reproduces the choice of the ``adapt_cpu`` preset (docs/RESULTS.md, BIG-Bench adaptation: 19.8 against the best
baseline's 12.8 on the held-aside prompts of the nine short-prompt tasks) and every held-aside comparison of
docs/EXPERIMENTS.md; ``--extra-refs`` wrote ``results/cappy-mini/bigbench-adapt/held-aside-settings/extra-refs/``.

Example:
    python scripts/bigbench_adapt_select.py --gens results/gemma-270m/bigbench-adapt-train/gens.jsonl \\
        --task ../shared/data/bigbench/matrixshapes --setting base: --setting lr1e-4:lr=1e-4 \\
        --out ~/.cache/cappy/runs/adapt_select
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import yaml

from cappy import Cappy, adapt
from cappy.boost import boost_candidates
from cappy.data.bigbench import held_aside
from cappy.evaluate.bigbench import BBConfig, load_bigbench_task, strategies_for, task_prompts
from cappy.generate import CandidateSource
from cappy.io import atomic_write


def parse_setting(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    overrides = {}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        overrides[k] = yaml.safe_load(v)
    return name, overrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gens", required=True, help="generation cache of the train prompts")
    ap.add_argument("--recipe", default="cpu8_stop")
    ap.add_argument("--task", action="append", required=True)
    ap.add_argument("--max-train", type=int, default=100)
    ap.add_argument("--held-fraction", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="cappy-mini")
    ap.add_argument("--setting", action="append", required=True, help="NAME:key=value,key=value (adapt overrides)")
    ap.add_argument(
        "--extra-refs",
        type=int,
        default=0,
        help="N more train examples of the task (outside the --max-train sample, never a held-aside prompt) added "
        "to the fit set without candidates: their references (label 1) and mismatched answers only",
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.extra_refs < 0:
        ap.error(f"--extra-refs must be >= 0, got {args.extra_refs}")
    out = Path(args.out)
    source = CandidateSource(args.recipe, cache=args.gens, seed=args.seed)
    base = Cappy.from_pretrained(args.model, device="cpu")
    settings = [parse_setting(s) for s in args.setting]
    table: dict[str, dict] = {}
    for path in args.task:
        name, train, _ = task_prompts(path, BBConfig(max_examples=0, max_train=args.max_train, seed=args.seed))
        held = [ex for ex in train if held_aside(ex.input, args.held_fraction, args.seed)]
        fit = [ex for ex in train if not held_aside(ex.input, args.held_fraction, args.seed)]
        if len(held) < 2 or len(fit) < 2:
            print(f"{name}: {len(train)} train prompts, too few to hold some aside; skipped", flush=True)
            continue
        extra = []
        if args.extra_refs:
            taken = {ex.input for ex in train}
            rest = [ex for ex in load_bigbench_task(path).split()[0] if ex.input not in taken]
            # redundant with `taken` (every held-aside prompt is in the sample), but it fixes which examples the
            # recorded --extra-refs runs drew (docs/EXPERIMENTS.md), so it stays
            rest = [ex for ex in rest if not held_aside(ex.input, args.held_fraction, args.seed)]
            extra = random.Random(f"{args.seed}:{name}:extra").sample(rest, min(args.extra_refs, len(rest)))
            if len(extra) < args.extra_refs:
                print(f"{name}: only {len(extra)} train examples outside the sample for --extra-refs", flush=True)
        prompts = [ex.input for ex in held]
        cands = source.get(prompts)
        refs = [list(ex.references) for ex in held]
        strategies = strategies_for(cands, with_cappy=True)
        res = boost_candidates(prompts, cands, base, strategies, refs, seed=args.seed)
        row = {s: float(np.mean([r.metric[s] for r in res])) for s in strategies}
        row["n_fit"], row["n_held"], row["n_extra"] = len(fit), len(held), len(extra)
        fit_cands = source.get([ex.input for ex in fit]) + [[] for _ in extra]
        for sname, overrides in settings:
            start = time.perf_counter()
            tuned = adapt(
                base, fit + extra, candidates=fit_cands, output_dir=out / sname / name, task=name, **overrides
            )
            took = time.perf_counter() - start
            picked = boost_candidates(prompts, cands, tuned, ["cappy"], refs, seed=args.seed)
            row[f"adapted:{sname}"] = float(np.mean([r.metric["cappy"] for r in picked]))
            row[f"seconds:{sname}"] = round(took, 1)
            print(f"{name} {sname}: {100 * row[f'adapted:{sname}']:.1f} ({took:.0f}s)", flush=True)
        table[name] = row
        with atomic_write(out / "select.json") as f:
            f.write(json.dumps(table, indent=2) + "\n")
    methods = [m for m in next(iter(table.values())) if not m.startswith(("n_", "seconds:"))]
    print("| task | " + " | ".join(methods) + " |")
    for t, row in table.items():
        print(f"| {t} | " + " | ".join(f"{100 * row[m]:.1f}" for m in methods) + " |")
    print(
        "| **mean** | "
        + " | ".join(f"**{100 * np.mean([r[m] for r in table.values()]):.1f}**" for m in methods)
        + " |"
    )


if __name__ == "__main__":
    main()
