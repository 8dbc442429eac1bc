"""Count the obvious and the easy questions a scorer, or Gemma 3 270M by log-likelihood, answers right.

The 20 obvious questions (``tests/data/obvious_questions.jsonl``) are asked as ``Question: ...\\nAnswer:``, the 8
easy ones (``tests/data/easy_questions.jsonl``) as they are, the test suite's two guards of a shipped scorer
(``tests/test_cappy_mini.py``). A Cappy scorer picks with ``Cappy.choose``; ``--gemma`` ranks the choices by their
summed and per-token mean log-likelihood under the packaged Gemma 3 270M GGUF (llama.cpp, 1 thread).

Reproduces (docs/EXPERIMENTS.md, the obvious-questions bar): cappy-mini 10 of 20 obvious and 5 of 8 easy questions;
Gemma 3 270M 16 of 20 (summed) and 15 (mean) obvious, 4 and 7 easy
(``results/cappy-mini/obvious-questions/gemma_loglik.json``); the v1/v2 merge at weight 0.85 4 of 8 easy
(``results/cappy-mini/v2-candidate-rebuilt/merge-0.85/guards.txt``).

Example:
    python scripts/obvious_questions.py --model cappy-mini --model ~/.cache/cappy/runs/mini_v2/best
    python scripts/obvious_questions.py --gemma > gemma_loglik.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def read_questions(path: Path, framed: bool) -> list[tuple[str, list[str], int]]:
    """(prompt, choices, index of the right one) per line of a ``{"question", "choices", "answer"}`` JSONL file."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            r = json.loads(line)
            prompt = f"Question: {r['question']}\nAnswer:" if framed else r["question"]
            out.append((prompt, list(r["choices"]), int(r["answer"])))
        except (ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{path}:{n}: not a question row ({e})") from None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], help="a scorer name or folder (repeatable)")
    ap.add_argument("--dtype", action="append", default=[], help="scorer dtype(s) (default: float32 and auto)")
    ap.add_argument("--gemma", action="store_true", help="Gemma 3 270M log-likelihood instead of a scorer")
    ap.add_argument("--obvious", type=Path, default=DATA / "obvious_questions.jsonl")
    ap.add_argument("--easy", type=Path, default=DATA / "easy_questions.jsonl")
    args = ap.parse_args()
    if not args.model and not args.gemma:
        ap.error("give --model (repeatable) or --gemma")
    sets = {"obvious": read_questions(args.obvious, framed=True), "easy": read_questions(args.easy, framed=False)}

    if args.gemma:
        from cappy.evaluate.loglik import LlamaCppLogLik

        ll = LlamaCppLogLik(n_threads=1)
        out = {}
        for name, items in sets.items():
            sums = means = 0
            for prompt, choices, gold in items:
                res = ll.loglik(prompt, [" " + c for c in choices])
                s = [lp for lp, _ in res]
                m = [lp / max(n, 1) for lp, n in res]
                sums += int(max(range(len(s)), key=s.__getitem__) == gold)
                means += int(max(range(len(m)), key=m.__getitem__) == gold)
            out[name] = {"questions": len(items), "llm_sum": sums, "llm_mean": means}
        print(json.dumps(out))

    from cappy import Cappy

    for model in args.model:
        for dtype in args.dtype or ["float32", "auto"]:
            scorer = Cappy.from_pretrained(model, device="cpu", dtype=dtype)
            for name, items in sets.items():
                right = [scorer.choose(prompt, choices) == gold for prompt, choices, gold in items]
                print(f"{model} {dtype} {name} {sum(right)} of {len(right)} {right}", flush=True)


if __name__ == "__main__":
    main()
