"""`cappy boost`: pick the best LLM candidate per prompt with Cappy, next to the baseline strategies."""

from __future__ import annotations

import argparse
import sys

from cappy.batch import boost_jsonl, check_input
from cappy.cli import (
    DEFAULT_RECIPE,
    DTYPE_HELP,
    add_cache_args,
    add_generator_args,
    candidate_cache,
    generator_factory,
    quiet_libraries,
)
from cappy.generate import CandidateSource


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "boost",
        help="best-of-N: choose among LLM candidates with Cappy and baseline strategies",
        description=(
            "Candidates come from a generation cache (--gens) or are generated first with --backend (recipe "
            f"{DEFAULT_RECIPE} unless --recipe) and appended to the cache, so a killed run resumes and a rerun "
            "generates nothing. Without --gens the cache is the default one of the generator, recipe and seed (the "
            "one `cappy adapt` writes, so adapt-then-boost picks among candidates of the kind it trained on); "
            "--no-cache keeps none. Every strategy selects from the same candidates."
        ),
    )
    p.add_argument("--input", required=True, help="JSONL with a prompt per row, optionally references")
    p.add_argument("--output", required=True, help="JSONL with candidates, scores and each strategy's choice")
    add_cache_args(p)
    p.add_argument("--model", default="cappy-mini", help="the Cappy scorer: checkpoint dir, embedded name or hub id")
    p.add_argument("--scorer-device", default="auto")
    p.add_argument("--scorer-dtype", default="auto", help=DTYPE_HELP)
    p.add_argument(
        "--strategy",
        action="append",
        default=None,
        help="cappy, first:<decoding>, self_score_sum, self_score_mean, random, oracle:rouge_l, consensus:rouge_l "
        "(repeatable; default: cappy)",
    )
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--id-field", default="id")
    p.add_argument("--references-field", default="references", help="a string or list of strings per row")
    p.add_argument("--summary", default=None, help="also write the mean Rouge-L x100 per strategy as JSON here")
    p.add_argument("--no-progress", action="store_true")
    add_generator_args(p, required=False)
    p.set_defaults(func=run_boost)


def run_boost(args: argparse.Namespace) -> int:
    from cappy.boost import check_strategy  # deferred: numpy; keeps cappy --help fast

    strategies = [check_strategy(s) for s in (args.strategy or ["cappy"])]
    cache = candidate_cache(args)
    check_input(args.input, [(args.prompt_field, str)])  # a missing or empty input fails before any model loads
    # a cache alone is read whatever its recipe and seed (one run per prompt); generating needs a recipe
    recipe = args.recipe or (DEFAULT_RECIPE if args.backend else None)
    source = CandidateSource(
        recipe, cache=cache, generator=generator_factory(args), seed=args.seed, show_progress=not args.no_progress
    )
    quiet_libraries(args.verbose, llama=args.backend == "llamacpp")
    scorer = None
    if "cappy" in strategies:
        from cappy.model import Cappy  # deferred: imports torch

        scorer = Cappy.from_pretrained(args.model, device=args.scorer_device, dtype=args.scorer_dtype)
    report = boost_jsonl(
        args.input,
        args.output,
        source,
        scorer,
        strategies,
        prompt_field=args.prompt_field,
        id_field=args.id_field,
        references_field=args.references_field,
        seed=args.seed,
        summary=args.summary,
        show_progress=not args.no_progress,
    )  # a GenerationError ends the command with exit status 1 (cappy.cli.main)
    means = ", ".join(f"{s}={v:.2f}" for s, v in report["rouge_l_x100"].items())
    print(
        f"cappy boost: {report['prompts']} prompts" + (f"; mean Rouge-L x100: {means}" if means else ""),
        file=sys.stderr,
    )
    return 0
