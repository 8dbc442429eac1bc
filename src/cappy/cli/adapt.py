"""`cappy adapt`: adapt a Cappy to a task from its training examples (cappy.adapt does the work)."""

from __future__ import annotations

import argparse
import sys

from cappy.cli import (
    DEFAULT_RECIPE,
    DTYPE_HELP,
    add_cache_args,
    add_generator_args,
    candidate_cache,
    generator_factory,
    parse_key_values,
    quiet_libraries,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt a scorer to a task: LLM candidates labelled against gold answers, then finetune the scorer",
        description="Each training example is an instruction with its gold answer(s). Candidates come from --gens "
        f"(a generation cache) and/or are generated with --backend (recipe {DEFAULT_RECIPE} unless --recipe) and "
        "appended to the cache, so a killed run resumes; without --gens the cache is the default one of the "
        "generator, recipe and seed, the one `cappy boost --backend` reads (--no-cache: none). Each candidate is "
        "labelled by Rouge-L against the references, the references themselves 1.0, and a copy of --model "
        "is trained on the pairs (preset adapt_cpu on CPU, adapt_paper on GPU). The LLM is never trained.",
    )
    p.add_argument("--train", required=True, help="training examples: JSONL, CSV, Parquet, a BIG-Bench task, ...")
    p.add_argument("--split", default=None, help="split of a BIG-Bench task or save_to_disk folder (e.g. train)")
    p.add_argument("--instruction-field", default="instruction")
    p.add_argument("--references-field", default="references", help="a string or a list of strings per row")
    p.add_argument("--id-field", default="id")
    p.add_argument("--model", default="cappy-mini", help="the Cappy to adapt: checkpoint dir, embedded name or hub id")
    p.add_argument("--out", required=True, help="output folder: model/ (the adapted scorer), pairs, training log")
    add_cache_args(p)
    p.add_argument("--config", default=None, help="training preset or YAML (default: adapt_cpu on CPU)")
    p.add_argument("--scale", type=float, default=None, help="multiply the preset's num_pairs")
    p.add_argument(
        "--mismatched",
        type=int,
        default=None,
        help="per example, this many other examples' references as extra pairs labelled against its own "
        "(default: the preset's adaptation: mismatched)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a training setting")
    p.add_argument(
        "--keep-run", action="store_true", help="keep the training run's folder (run/: checkpoint and optimizer state)"
    )
    p.add_argument("--task-name", default="adapt", help="the task name recorded in the model's training data")
    p.add_argument("--scorer-dtype", default="auto", help=DTYPE_HELP)
    p.add_argument("--no-progress", action="store_true")
    add_generator_args(p, required=False)
    p.set_defaults(func=run_adapt)


def run_adapt(args: argparse.Namespace) -> int:
    from cappy.adaptation import adapt, read_examples
    from cappy.generate import CandidateSource

    cache = candidate_cache(args)
    overrides = parse_key_values(args.set, "--set")
    device = overrides.pop("device", args.device)  # --set device=X is the same as --device X
    if "mismatched" in overrides:
        raise ValueError("mismatched is not a training setting: use --mismatched N instead of --set mismatched=N")
    examples = read_examples(args.train, args.instruction_field, args.references_field, args.id_field, args.split)
    source = CandidateSource(
        args.recipe or DEFAULT_RECIPE,
        cache=cache,
        generator=generator_factory(args),
        seed=args.seed,
        show_progress=not args.no_progress,
    )
    quiet_libraries(args.verbose, llama=args.backend == "llamacpp")
    try:
        tuned = adapt(
            args.model,
            examples,
            candidates=source,
            output_dir=args.out,
            config=args.config,
            scale=args.scale,
            task=args.task_name,
            device=device,
            dtype=args.scorer_dtype,
            show_progress=not args.no_progress,
            mismatched=args.mismatched,
            keep_run=args.keep_run,
            **overrides,
        )
    finally:
        source.close()
    info = tuned.adaptation
    c = info.counts
    print(
        f"cappy adapt: {c['examples']} examples, {c['pairs']} pairs ({c['gold']} gold, {c['mismatched']} mismatched)"
        f" -> {info.model_dir}" + (" (reused)" if info.reused else ""),
        file=sys.stderr,
    )
    return 0
