"""A joint first adaptation stage over many BIG-Bench tasks' train prompts, before the per-task stage.

Pairs are built per task with the library's recipe (:func:`cappy.adaptation.adaptation_pairs`: candidates labelled by
Rouge-L, references 1.0, mismatched answers drawn within the task), pooled over the tasks, and cappy-mini is trained
on a sample of ``--num-pairs`` of them with the ``adapt_cpu`` preset otherwise. ``--hold-aside`` drops the prompts
that ``bigbench_adapt_select.py`` holds aside, so the result can be measured there without a leak. Train splits
only: validation prompts are never read.

Reproduces the joint first stage of docs/EXPERIMENTS.md (no gain over per-task adaptation on held-aside prompts).

Example:
    python scripts/bigbench_joint_stage.py --gens results/gemma-270m/bigbench-adapt-train/gens.jsonl \\
        --gens results/gemma-270m/bigbench-train-select/gens.jsonl --max-train 100 --hold-aside \\
        --num-pairs 8192 --out ~/.cache/cappy/runs/joint/J1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cappy.adaptation import adaptation_pairs, as_examples
from cappy.data.bigbench import held_aside
from cappy.evaluate.bigbench import BBConfig, default_tasks, task_prompts
from cappy.generate import CandidateSource
from cappy.io import atomic_write, dumps
from cappy.model import export_checkpoint
from cappy.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).parent))
from bigbench_adapt_select import parse_setting  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gens", action="append", required=True, help="generation caches (train prompts), in order")
    ap.add_argument("--recipe", default="cpu8_stop")
    ap.add_argument("--task", action="append", default=[], help="task folders (default: every task)")
    ap.add_argument("--max-train", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hold-aside", action="store_true", help="drop the held-aside quarter of every task")
    ap.add_argument("--held-fraction", type=float, default=0.25)
    ap.add_argument("--mismatched", type=int, default=8)
    ap.add_argument("--model", default="cappy-mini")
    ap.add_argument("--num-pairs", type=int, default=8192)
    ap.add_argument("--set", default="", help="key=value,... TrainConfig overrides")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = [CandidateSource(args.recipe, cache=g, seed=args.seed) for g in args.gens]
    rows, counts = [], {}
    for path in [Path(t) for t in args.task] or default_tasks():
        # the seeded samples of --max-train and of 20 prompts (the task-selection cache's): the union, in order
        by_prompt = {}
        for cap in (args.max_train, 20):
            name, sample, _ = task_prompts(path, BBConfig(max_examples=0, max_train=cap, seed=args.seed))
            by_prompt |= {ex.input: ex for ex in sample if ex.input not in by_prompt}
        train_ex = list(by_prompt.values())
        if args.hold_aside:
            train_ex = [ex for ex in train_ex if not held_aside(ex.input, args.held_fraction, args.seed)]
        # a prompt counts when one of the caches holds it; the rest of the task's sample has no candidates yet
        cands, exs = [], []
        for ex in train_ex:
            for src in sources:
                try:
                    cands.append(src.get([ex.input])[0])
                except ValueError as err:
                    if "no candidates" not in str(err):  # e.g. a prompt with candidates of several runs: not skipped
                        raise
                    continue
                exs.append(ex)
                break
        if len(exs) < 2:
            continue
        task_rows = adaptation_pairs(as_examples(exs), cands, task=name, mismatched=args.mismatched, seed=args.seed)
        rows += task_rows
        counts[name] = {"prompts": len(exs), "pairs": len(task_rows)}
        print(f"{name}: {len(exs)} prompts, {len(task_rows)} pairs", flush=True)
    pairs = out / "pairs.jsonl"
    with atomic_write(pairs) as f:
        for r in rows:
            f.write(dumps(r) + "\n")
    (out / "counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    overrides = parse_setting("x:" + args.set)[1]
    cfg = TrainConfig.from_yaml(
        "adapt_cpu",
        {
            "model": args.model,
            "train": [str(pairs)],
            "output_dir": str(out / "run"),
            "num_pairs": args.num_pairs,
            **overrides,
        },
    )
    print(f"{len(rows)} pairs from {len(counts)} tasks; training on {cfg.num_pairs}", flush=True)
    train(cfg)
    run = out / "run"
    export_checkpoint(run / "best" if (run / "best" / "config.json").exists() else run, out / "model")
    print(f"-> {out / 'model'}")


if __name__ == "__main__":
    main()
