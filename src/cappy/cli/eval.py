"""`cappy eval mc|bigbench|pairs`: evaluate scorers and LLM baselines (cappy.evaluate.runs does the work)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cappy.cli import (
    DEFAULT_RECIPE,
    DTYPE_HELP,
    add_generator_args,
    generator_factory,
    parse_key_values,
    quiet_libraries,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate scorers and LLM baselines on task suites")
    esub = p.add_subparsers(dest="suite", metavar="<suite>")
    esub.required = True

    mc = esub.add_parser("mc", help="zero-shot multiple-choice classification (PromptSource templates)")
    mc.add_argument(
        "--task", action="append", default=[], help="DATASET[/CONFIG]=PATH, repeatable (default: the held-out suite)"
    )
    mc.add_argument("--max-examples", type=int, default=100, help="seeded sample of examples per task (0 = all)")
    mc.add_argument("--max-templates", type=int, default=5, help="templates per task, original-task ones first")
    mc.add_argument("--seed", type=int, default=0)
    mc.add_argument("--methods", default="cappy,llm_sum,llm_mean,chance", help="comma-separated")
    mc.add_argument("--list-methods", action="store_true", help="print the method names and exit")
    mc.add_argument("--model", default="cappy-mini", help="Cappy checkpoint for the 'cappy' method")
    mc.add_argument("--llm", default="llamacpp", help="llamacpp[:GGUF] or hf:PATH for the llm_* methods")
    mc.add_argument("--llm-cache", default=None, help="log-likelihood cache (default: OUT/loglik_cache.jsonl)")
    mc.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    mc.add_argument("--device", default="auto")
    mc.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    _add_output_args(mc, required=False)
    mc.set_defaults(func=run_mc)

    bb = esub.add_parser("bigbench", help="BIG-Bench boosting: select among LLM candidates, Rouge-L x100")
    bb.add_argument("--task", action="append", default=[], help="BIG-Bench task folder or task.json, repeatable")
    bb.add_argument("--max-tasks", type=int, default=None, help="only the first N tasks of the default suite")
    bb.add_argument("--max-examples", type=int, default=100, help="validation prompts per task (seeded sample)")
    bb.add_argument("--max-train", type=int, default=200, help="train prompts per task for adaptation")
    bb.add_argument("--model", default=None, help="Cappy checkpoint for zero-shot selection (method 'cappy')")
    bb.add_argument("--gens", default=None, help="generation cache JSONL (default: OUT/generations.jsonl)")
    bb.add_argument("--adapt", action="store_true", help="also adapt --model per task (method 'cappy_adapted')")
    bb.add_argument("--adapt-config", default=None, help="training preset or YAML (default: adapt_cpu on CPU)")
    bb.add_argument("--adapt-scale", type=float, default=None, help="multiply the preset's num_pairs")
    bb.add_argument("--adapt-override", action="append", default=[], help="KEY=VALUE for the adaptation config")
    bb.add_argument(
        "--adapt-recipe",
        default=None,
        help="recipe of the train prompts' candidates for --adapt (default: --recipe); same cache and generator",
    )
    bb.add_argument("--scorer-dtype", default="auto", help=DTYPE_HELP)
    _add_output_args(bb, required=True)
    add_generator_args(bb, required=False)
    bb.set_defaults(func=run_bigbench)

    pr = esub.add_parser("pairs", help="dev metrics on labelled pairs: hard-pair and choice accuracy (promotion)")
    pr.add_argument("--dev", required=True, help="pair file or folder with source (and task) columns")
    pr.add_argument("--model", action="append", required=True, help="Cappy checkpoint, repeatable (compared)")
    pr.add_argument("--out", default=None, help="write the metrics as JSON here")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    pr.set_defaults(func=run_pairs)


def _add_output_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--out", required=required, default=None, help="output folder")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--allow-contaminated", action="store_true", help="skip the contamination guard")


def run_mc(args: argparse.Namespace) -> int:
    from cappy.evaluate.mc import METHODS, MCConfig, MCTask
    from cappy.evaluate.runs import run_mc

    if args.list_methods:
        for name, desc in METHODS.items():
            print(f"{name:10s} {desc}")
        return 0
    if not args.out:
        raise ValueError("--out DIR is required")
    quiet_libraries(args.verbose, llama=args.llm.startswith("llamacpp"))
    run_mc(
        [MCTask.parse(s) for s in args.task] or None,
        [m.strip() for m in args.methods.split(",") if m.strip()],
        MCConfig(max_examples=args.max_examples or None, max_templates=args.max_templates or None, seed=args.seed),
        args.out,
        model=args.model,
        llm=args.llm,
        llm_cache=args.llm_cache,
        threads=args.threads,
        device=args.device,
        dtype=args.dtype,
        allow_contaminated=args.allow_contaminated,
        plots=not args.no_plots,
        show_progress=not args.no_progress,
        command=args.command_line,
    )
    print((Path(args.out) / "report.md").read_text())
    return 0


def run_bigbench(args: argparse.Namespace) -> int:
    from cappy.evaluate.bigbench import BBConfig
    from cappy.evaluate.runs import run_bigbench
    from cappy.generate import CandidateSource

    gens = args.gens or str(Path(args.out) / "generations.jsonl")
    factory = generator_factory(args)
    recipe = args.recipe or DEFAULT_RECIPE
    source = CandidateSource(recipe, cache=gens, generator=factory, seed=args.seed, show_progress=not args.no_progress)
    train_source = None
    if args.adapt_recipe is not None:
        if not args.adapt:
            raise ValueError("--adapt-recipe needs --adapt (it names the recipe of the adaptation candidates)")
        train_source = CandidateSource(
            args.adapt_recipe, cache=gens, generator=factory, seed=args.seed, show_progress=not args.no_progress
        )
    quiet_libraries(args.verbose, llama=args.backend == "llamacpp")
    run_bigbench(
        args.task or None,
        BBConfig(max_examples=args.max_examples or None, max_train=args.max_train or None, seed=args.seed),
        args.out,
        source,
        model=args.model,
        adapt=args.adapt,
        adapt_config=args.adapt_config,
        adapt_scale=args.adapt_scale,
        adapt_overrides=parse_key_values(args.adapt_override, "--adapt-override"),
        adapt_candidates=train_source,
        max_tasks=args.max_tasks,
        device=args.device,
        dtype=args.scorer_dtype,
        allow_contaminated=args.allow_contaminated,
        plots=not args.no_plots,
        show_progress=not args.no_progress,
        command=args.command_line,
    )
    print((Path(args.out) / "report.md").read_text())
    return 0


def run_pairs(args: argparse.Namespace) -> int:
    import json

    from cappy.evaluate.pairs import evaluate_pairs
    from cappy.model import Cappy

    results = {}
    for name in args.model:
        scorer = Cappy.from_pretrained(name, device=args.device, dtype=args.dtype)
        results[name] = r = evaluate_pairs(scorer, args.dev, show_progress=True)
        c = r["choice_accuracy"]
        print(
            f"{name}: hard pairwise {r['hard_pairwise_accuracy']:.4f} ({r['hard_pairs']} pairs), "
            f"all pairs {r['pairwise_accuracy']:.4f}, choice {c['mean']:.4f} ({c['questions']} questions)"
        )
        for src, v in r["by_source"].items():
            print(f"  {src:16s} {v['accuracy']:.4f} ({v['pairs']} pairs)")
        for task, v in c["by_task"].items():
            print(f"  choice {task:30s} {v['accuracy']:.4f} ({v['questions']})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0
