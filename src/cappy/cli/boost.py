"""`cappy boost`: pick the best LLM candidate per prompt with Cappy, next to the baseline strategies."""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from typing import Any

from cappy.cli import DTYPE_HELP
from cappy.cli.generate import add_backend_args, build_generator, iter_prompts
from cappy.io import atomic_write, dumps


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "boost",
        help="best-of-N: choose among LLM candidates with Cappy and baseline strategies",
        description=(
            "Candidates come from a generation cache (--gens) or are generated first with --backend (appended to "
            "--gens when given, so a killed run resumes). Every strategy selects from the same candidates."
        ),
    )
    p.add_argument("--input", required=True, help="JSONL with a prompt per row, optionally references")
    p.add_argument("--output", required=True, help="JSONL with candidates, scores and each strategy's choice")
    p.add_argument("--gens", default=None, help="generation cache to read (and to append to with --backend)")
    p.add_argument("--model", default="cappy-mini", help="the Cappy scorer: checkpoint dir, embedded name or hub id")
    p.add_argument("--scorer-device", default="auto")
    p.add_argument(
        "--scorer-dtype",
        default="auto",
        help=DTYPE_HELP,
    )
    p.add_argument(
        "--strategy",
        action="append",
        default=None,
        help="cappy, first:<decoding>, self_score_sum, self_score_mean, random, oracle:rouge_l (repeatable; "
        "default: cappy)",
    )
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--id-field", default="id")
    p.add_argument("--references-field", default="references", help="a string or list of strings per row")
    p.add_argument("--summary", default=None, help="also write the mean Rouge-L x100 per strategy as JSON here")
    p.add_argument("--no-progress", action="store_true")
    add_backend_args(p, required=False)
    p.set_defaults(func=run_boost)


def _references(path: str, lineno: int, row: dict[str, Any], field: str) -> list[str] | None:
    if field not in row:
        return None
    refs = row[field]
    refs = [refs] if isinstance(refs, str) else refs
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise ValueError(f"{path}:{lineno}: field {field!r} must be a string or a non-empty list of strings")
    return refs


def _cached(args: argparse.Namespace, prompts: list[str], model: str | None, recipe: str | None) -> list[list]:
    from cappy.generate.cache import read_generations

    by_prompt = read_generations(args.gens, model=model, recipe=recipe, seed=args.seed if model else None)
    out = []
    for i, p in enumerate(prompts):
        cands = by_prompt.get(p)
        if not cands:
            raise ValueError(f"{args.gens}: no candidates for prompt {i + 1} of {args.input} ({p[:60]!r})")
        runs = {(c.extra["model"], c.extra["recipe"], c.extra["seed"]) for c in cands}
        if len(runs) > 1:
            raise ValueError(
                f"{args.gens}: prompt {p[:60]!r} has candidates from several runs {sorted(runs)}; "
                "pass --backend/--gen-model/--recipe/--seed to pick one"
            )
        out.append(cands)
    return out


def run_boost(args: argparse.Namespace) -> int:
    from cappy.boost import boost_candidates, check_strategy, summarize
    from cappy.generate.base import GenerationError, load_recipe

    strategies = [check_strategy(s) for s in (args.strategy or ["cappy"])]
    rows = list(iter_prompts(args.input, args.prompt_field, args.id_field))
    prompts = [p for _, p, _, _ in rows]
    refs = [_references(args.input, ln, row, args.references_field) for ln, _, _, row in rows]
    have_refs = [r is not None for r in refs]
    if any(have_refs) and not all(have_refs):
        missing = rows[have_refs.index(False)][0]
        raise ValueError(f"{args.input}:{missing}: field {args.references_field!r} is missing (other rows have it)")
    references = refs if all(have_refs) and refs else None
    if references is None and any(s.startswith("oracle:") for s in strategies):
        raise ValueError(f"oracle strategies need references: rows of {args.input} have no {args.references_field!r}")

    if args.backend is None and args.gens is None:
        raise ValueError("give --gens (a generation cache) or --backend (to generate candidates)")
    recipe = load_recipe(args.recipe)
    try:
        if args.backend is not None:
            generator = build_generator(args)
            try:
                if args.gens is not None:
                    from cappy.generate.cache import generate_to_cache

                    pairs = [(p, i) for _, p, i, _ in rows]
                    generate_to_cache(
                        generator, pairs, recipe, args.gens, args.seed, not args.no_progress, total=len(pairs)
                    )
                    candidates = _cached(args, prompts, generator.model_id, recipe.name)
                else:
                    candidates = generator.generate(
                        prompts, recipe, seed=args.seed, show_progress=not args.no_progress
                    )
            finally:
                generator.close()
        else:
            candidates = _cached(args, prompts, None, None)
    except GenerationError as err:
        print(f"cappy boost: error: {err}", file=sys.stderr)
        return 1

    scorer = None
    if "cappy" in strategies:
        from cappy.model import Cappy

        scorer = Cappy.from_pretrained(args.model, device=args.scorer_device, dtype=args.scorer_dtype)
    results = boost_candidates(
        prompts, candidates, scorer, strategies, references, seed=args.seed, show_progress=not args.no_progress
    )
    with atomic_write(args.output) as out:
        for (_, prompt, pid, _), res in zip(rows, results):
            row = res.to_dict()
            row = {"prompt_id": pid if pid is not None else _pid(prompt), **row}
            out.write(dumps(row) + "\n")
    summary = summarize(results)
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for s in strategies:
        for r in results:
            d = r.candidates[r.chosen[s]].decoding
            counts[s][d] = counts[s].get(d, 0) + 1
    report = {"prompts": len(results), "strategies": strategies, "rouge_l_x100": summary, "chosen_decodings": counts}
    if args.summary:
        with atomic_write(args.summary) as f:
            f.write(json.dumps(report, indent=2) + "\n")
    line = ", ".join(f"{s}={summary[s]:.2f}" for s in strategies if s in summary)
    print(f"cappy boost: {len(results)} prompts" + (f"; mean Rouge-L x100: {line}" if line else ""), file=sys.stderr)
    return 0


def _pid(prompt: str) -> str:
    from cappy.generate.base import prompt_id_of

    return prompt_id_of(prompt)
