"""Gemma 3 270M (packaged GGUF, llama.cpp, 1 thread) on the 20 obvious questions: the choice with the highest summed
and per-token mean log-likelihood after "Question: ...\nAnswer:" (the prompt cappy-mini gets), and the 8 easy
questions of tests/test_cappy_mini.py asked as they are there. Run from the repository root."""

import json
import sys

sys.path.insert(0, "tests")
from cappy.evaluate.loglik import LlamaCppLogLik  # noqa: E402
from test_cappy_mini import EASY  # noqa: E402

ll = LlamaCppLogLik(n_threads=1)
rows = [json.loads(x) for x in open("tests/data/obvious_questions.jsonl")]
out = {}
for name, items in (
    ("obvious", [(f"Question: {r['question']}\nAnswer:", r["choices"], r["answer"]) for r in rows]),
    ("easy", [(q, c, g) for q, c, g in EASY]),
):
    sums = means = 0
    for prompt, choices, gold in items:
        res = ll.loglik(prompt, [" " + c for c in choices])
        s = [lp for lp, _ in res]
        m = [lp / max(n, 1) for lp, n in res]
        sums += int(max(range(len(s)), key=s.__getitem__) == gold)
        means += int(max(range(len(m)), key=m.__getitem__) == gold)
    out[name] = {"questions": len(items), "llm_sum": sums, "llm_mean": means}
print(json.dumps(out))
