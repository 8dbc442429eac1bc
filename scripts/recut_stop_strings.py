"""Re-cut a llama.cpp generation cache at its recipe's stop strings, by the stop rule the generator has now.

A cache written before the rule was fixed can hold candidates that run on past a stop string that began inside the
recipe's minimum length (e.g. "Quebec\\nQ: What country is next to Canada?\\nA: Denmark"). Decoding is sequential
and llama.cpp's "beam" decodings run greedy, so the candidate the fixed generator makes is exactly the old one's
prefix up to the new cut: this script finds that cut on the candidate's tokens, keeps the text before it and
recomputes the candidate's log-probabilities over the kept tokens (the prompt and those tokens decoded alone). It
reports how many candidates held a stop string; with ``--write`` it rewrites the cache in place (atomically).

The tokens are recovered by tokenizing the stored text (the generator strips whitespace from a candidate's ends):
a candidate counts as exact when that gives its recorded token count; the others are cut on the retokenized text
and counted apart in the report.

Example:
    python scripts/recut_stop_strings.py results/gemma-270m/bigbench-adapt-val/gens.jsonl --write
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from cappy.generate import load_recipe
from cappy.generate.base import stop_cut
from cappy.generate.llamacpp import LlamaCppGenerator, _log_softmax
from cappy.io import atomic_write


def candidate_tokens(gen: LlamaCppGenerator, text: str, num_tokens: int) -> tuple[list[int], bool]:
    """The candidate's tokens as generated, as far as the stripped text tells: (tokens, exact count)."""
    first = None
    for lead in ("", " ", "\n", "  ", "\n\n"):
        for special in (False, True):
            toks = gen.llm.tokenize((lead + text).encode("utf-8"), add_bos=False, special=special)
            first = first or toks
            if len(toks) == num_tokens:
                return toks, True
    return first or [], False


def pieces_of(gen: LlamaCppGenerator, toks: list[int]) -> list[str]:
    """One text piece per token, as the generator builds them (incremental UTF-8 decoding)."""
    out, prev = [], ""
    raw = b""
    for t in toks:
        raw += gen.llm.detokenize([t], prev_tokens=None)
        cur = raw.decode("utf-8", errors="ignore")
        out.append(cur[len(prev) :])
        prev = cur
    return out


class Replayer:
    """Log-probabilities of a candidate's tokens after its prompt, with the generator's own numerics: the prompt
    evaluated once from an empty KV cache (a last prompt token re-evaluated alone over a reused prefix rounds
    differently in the quantised kernels), then each candidate decoded alone from the prompt's end."""

    def __init__(self, gen: LlamaCppGenerator) -> None:
        self.gen, self.prompt, self.base, self.first = gen, None, 0, None

    def __call__(self, prompt: str, recipe, toks: list[int]) -> list[float]:
        gen = self.gen
        if prompt != self.prompt:
            gen.llm.reset()
            tokens = gen._prompt_tokens(prompt, recipe)
            self.prompt, self.base, self.first = prompt, len(tokens), gen._eval_prompt(tokens)
        gen.llm.n_tokens = self.base
        logits, out = self.first, []
        for tok in toks:
            out.append(float(_log_softmax(logits)[tok]))
            gen.llm.eval([tok])
            logits = gen._logits()
        return out


def recut(
    path: Path, write: bool, n_threads: int | None, replay_logprobs: bool = True, out: Path | None = None
) -> dict:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    recipes = {name: load_recipe(name) for name in {r["recipe"] for r in rows}}
    counts: Counter = Counter(rows=len(rows))
    if not any(rc.stop for rc in recipes.values()):
        return {"cache": str(path), **counts, "note": "no recipe with stop strings"}
    gen = LlamaCppGenerator(n_threads=n_threads, n_ctx=1024, n_parallel=1)
    replay = Replayer(gen)
    examples = []
    for row in tqdm(rows, desc=path.parent.name, mininterval=10):
        recipe = recipes[row["recipe"]]
        if not recipe.stop:
            continue
        toks, exact = candidate_tokens(gen, row["text"], row["num_tokens"])
        cut = stop_cut(pieces_of(gen, toks), recipe.stop, recipe.min_new_tokens)
        if cut is None or cut[0].strip() == row["text"]:
            continue
        text, kept = cut[0].strip(), cut[1]
        counts["held_a_stop_string"] += 1
        counts["exact_tokens" if exact else "retokenized"] += 1
        counts[f"decoding:{row['decoding']}"] += 1
        if len(examples) < 5:
            examples.append({"before": row["text"], "after": text})
        if write and replay_logprobs:
            lps = replay(row["prompt"], recipe, toks[:kept])
            row["logprob_sum"] = math.fsum(lps)
            row["logprob_mean"] = row["logprob_sum"] / kept if kept else 0.0
        row["text"], row["num_tokens"] = text, kept
    gen.close()
    if write and (counts["held_a_stop_string"] or out is not None):
        with atomic_write(out or path) as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return {"cache": str(path), **counts, "examples": examples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("caches", nargs="+", type=Path, help="generation cache JSONL files (cappy generate's format)")
    ap.add_argument("--write", action="store_true", help="rewrite each cache in place (default: only count)")
    ap.add_argument("--n-threads", type=int, default=None)
    ap.add_argument(
        "--no-replay",
        action="store_true",
        help="cut texts and token counts only, leaving the log-probabilities of re-cut candidates as they were "
        "(stale): fast, for a copy whose readers never use them (e.g. adaptation's train candidates)",
    )
    ap.add_argument("--out", type=Path, default=None, help="with one cache: write the re-cut cache here, not in place")
    ap.add_argument("--report", type=Path, default=None, help="also write the counts as JSON here")
    args = ap.parse_args()
    if args.out is not None and len(args.caches) != 1:
        ap.error("--out takes exactly one cache")
    if args.no_replay and args.out is None:
        ap.error("--no-replay leaves stale log-probabilities: write the result elsewhere with --out")
    write = args.write or args.out is not None
    reports = [recut(p, write, args.n_threads, not args.no_replay, args.out) for p in args.caches]
    for r in reports:
        print(json.dumps({k: v for k, v in r.items() if k != "examples"}))
    if args.report:
        with atomic_write(args.report) as f:
            f.write(json.dumps(reports, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
