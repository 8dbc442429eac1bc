"""`cappy generate`: sample a recipe's candidates for each prompt of a JSONL file into a resumable cache."""

from __future__ import annotations

import argparse
import sys

from cappy.batch import read_prompts
from cappy.cli import DEFAULT_RECIPE, add_generator_args, generator_factory, quiet_libraries
from cappy.generate import generate_to_cache, load_recipe


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate LLM candidates for prompts into a resumable JSONL cache",
        description="Append one line per (prompt, candidate) to --out; rerunning after a kill continues the run.",
    )
    p.add_argument("--input", required=True, help="JSONL with a prompt per row (and optionally an id)")
    p.add_argument("--out", required=True, help="the generation cache (JSONL, appended to)")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--id-field", default="id", help="row field used as prompt_id when present (else sha1 of prompt)")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_generator_args(p, model_alias=True)
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe or DEFAULT_RECIPE)
    # Read all prompts first: a bad line fails before any model is loaded.
    prompts = [(p, i) for _, p, i, _ in read_prompts(args.input, args.prompt_field, args.id_field)][: args.limit]
    quiet_libraries(args.verbose, llama=args.backend == "llamacpp")
    generator = generator_factory(args)()
    try:
        stats = generate_to_cache(
            generator,
            prompts,
            recipe,
            args.out,
            seed=args.seed,
            show_progress=not args.no_progress,
            total=len(prompts),
        )
    finally:  # a GenerationError ends the command with exit status 1 (cappy.cli.main)
        generator.close()
    print(
        f"cappy generate: {stats.prompts} prompts ({stats.prompts_skipped} already done), "
        f"{stats.rows_written} rows written, {stats.rows_existing} were there",
        file=sys.stderr,
    )
    return 0
