"""N samples per prompt on Gemma 3 270M (llama.cpp): the N samples decoded together vs N cold calls.

Old way: every sample evaluates the prompt from scratch and decodes alone (what N independent completion calls
cost). Middle (v1): the prompt is evaluated once and each sample rolls the KV cache back to its end, decoding alone;
it must give the old way's candidates exactly. New way (the default): the prompt is evaluated once and the N
samples decode together, one batch per step (llama.cpp multi-sequence batches); its candidates differ only by the
rounding of batched kernels. All three run the same recipe on the same real BIG-Bench inputs in one process,
prompt by prompt, alternating. The last line is ``speedup_shared_prompt=<old / new>``.

Example: ``python benchmarks/generate_throughput.py --prompts 4 --recipe paper17 --max-new-tokens 16``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from cappy.generate import load_recipe
from cappy.generate.llamacpp import LlamaCppGenerator

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bigbench"


def bigbench_prompts(tasks: list[str], per_task: int) -> list[str]:
    out = []
    for task in tasks:
        spec = json.loads((DATA / task / "task.json").read_text(encoding="utf-8"))
        pre = spec.get("example_input_prefix", "\nQ: ")
        post = spec.get("example_output_prefix", "\nA: ")
        out += [f"{pre}{ex['input']}{post}".lstrip() for ex in spec["examples"][:per_task]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="few_shot_nlg,topical_chat", help="BIG-Bench tasks in shared/data/bigbench")
    ap.add_argument("--prompts", type=int, default=2, help="prompts per task")
    ap.add_argument("--recipe", default="paper17")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="override the recipe's max_new_tokens")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--n-threads", type=int, default=1, help="1 is fastest on a busy 2-core machine")
    args = ap.parse_args()

    recipe = load_recipe(args.recipe)
    if args.max_new_tokens is not None:
        recipe = dataclasses.replace(recipe, max_new_tokens=args.max_new_tokens)
    prompts = bigbench_prompts(args.tasks.split(","), args.prompts)
    old = LlamaCppGenerator(share_prompt=False, n_threads=args.n_threads, n_ctx=1024)
    mid = LlamaCppGenerator(n_parallel=1, n_threads=args.n_threads, n_ctx=1024)
    new = LlamaCppGenerator(n_threads=args.n_threads, n_ctx=1024)
    prompt_tokens = [len(new._prompt_tokens(p, recipe)) for p in prompts]
    warm = dataclasses.replace(recipe, max_new_tokens=2, min_new_tokens=0)
    for g in (old, mid, new):
        g.generate(prompts[:1], warm)
    print(
        f"model={new.model_id} recipe={recipe.name} candidates/prompt={recipe.num_candidates} "
        f"max_new_tokens={recipe.max_new_tokens} prompts={len(prompts)} "
        f"prompt_tokens(mean)={sum(prompt_tokens) / len(prompts):.0f} threads={args.n_threads} "
        f"n_parallel={new.n_parallel}"
    )
    t_old = t_mid = t_new = 0.0
    tok_old = tok_new = 0
    for _ in range(args.repeats):
        for p in prompts:  # alternate prompt by prompt so that load on the machine hits the ways alike
            mid.llm.reset()  # no reuse from the previous prompt: only within-prompt sharing is measured
            t0 = time.perf_counter()
            a = old.generate([p], recipe)[0]
            t1 = time.perf_counter()
            m = mid.generate([p], recipe)[0]
            t2 = time.perf_counter()
            b = new.generate([p], recipe)[0]
            t3 = time.perf_counter()
            t_old, t_mid, t_new = t_old + t1 - t0, t_mid + t2 - t1, t_new + t3 - t2
            tok_old += sum(c.num_tokens for c in a)
            tok_new += sum(c.num_tokens for c in b)
            if [c.text for c in a] != [c.text for c in m]:
                raise SystemExit("the cold and the shared-prompt ways produced different candidates")
    n = len(prompts) * args.repeats
    print(f"old (N cold calls): {t_old:.2f}s, {n / t_old:.3f} prompts/s, {tok_old / t_old:.1f} tokens/s")
    print(f"v1 (one prompt evaluation, samples one by one): {t_mid:.2f}s, {n / t_mid:.3f} prompts/s")
    print(
        f"new (one prompt evaluation, samples in one batch): {t_new:.2f}s, {n / t_new:.3f} prompts/s, "
        f"{tok_new / t_new:.1f} tokens/s"
    )
    print(f"speedup_vs_v1={t_mid / t_new:.2f}")
    print(f"speedup_shared_prompt={t_old / t_new:.2f}")


if __name__ == "__main__":
    main()
