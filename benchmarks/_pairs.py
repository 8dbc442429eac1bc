"""Real (instruction, response) pairs of varied length from ../shared/data/pretrain, for benchmarks only."""

from __future__ import annotations

import json
import random
from pathlib import Path

PRETRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "pretrain"


def _rows(name: str, limit: int):
    with open(PRETRAIN / name) as f:
        for i, line in enumerate(f):
            if i >= limit:
                break
            yield json.loads(line)


def real_pairs(n: int = 1000, seed: int = 0) -> tuple[list[str], list[str]]:
    """About ``n`` pairs: long passages (BoolQ, SciQ support), mid (Social IQa), short (TriviaQA, SciQ)."""
    out: list[tuple[str, str]] = []
    for r in _rows("super_glue_boolq_val.jsonl", n // 4):
        out.append((f"{r['passage']}\nQuestion: {r['question']}?", "yes" if r["label"] == 1 else "no"))
    for r in _rows("sciq_val.jsonl", n // 4):
        instr = (r["support"] + "\n" if r["support"] else "") + r["question"]
        out.append((instr, r["correct_answer"]))
        out.append((instr, r["distractor1"]))
    for r in _rows("social_i_qa_val.jsonl", n // 8):
        out.append((f"{r['context']} {r['question']}", r["answerA"]))
    for r in _rows("trivia_qa_rc_wikipedia_nocontext_val.jsonl", n):
        if len(out) >= n:
            break
        out.append((r["question"], r["answer"]["value"]))
    random.Random(seed).shuffle(out)
    out = out[:n]
    return [a for a, _ in out], [b for _, b in out]
