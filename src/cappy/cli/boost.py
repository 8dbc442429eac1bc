"""`cappy boost`: pick the best LLM candidate per prompt with Cappy, next to the baseline strategies."""

from __future__ import annotations

import argparse
import sys

from cappy.cli import DTYPE_HELP, add_generator_args, generator_factory


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
    from cappy.batch import boost_jsonl
    from cappy.boost import check_strategy
    from cappy.generate import CandidateSource, GenerationError

    strategies = [check_strategy(s) for s in (args.strategy or ["cappy"])]
    if args.backend is None and args.gens is None:
        raise ValueError("give --gens (a generation cache) or --backend (to generate candidates)")
    # a cache alone is read whatever its recipe and seed (one run per prompt); generating needs a recipe
    recipe = args.recipe or ("paper17" if args.backend else None)
    source = CandidateSource(
        recipe, cache=args.gens, generator=generator_factory(args), seed=args.seed, show_progress=not args.no_progress
    )
    scorer = None
    if "cappy" in strategies:
        from cappy.model import Cappy

        scorer = Cappy.from_pretrained(args.model, device=args.scorer_device, dtype=args.scorer_dtype)
    try:
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
        )
    except GenerationError as err:
        print(f"cappy boost: error: {err}", file=sys.stderr)
        return 1
    means = ", ".join(f"{s}={v:.2f}" for s, v in report["rouge_l_x100"].items())
    print(
        f"cappy boost: {report['prompts']} prompts" + (f"; mean Rouge-L x100: {means}" if means else ""),
        file=sys.stderr,
    )
    return 0
