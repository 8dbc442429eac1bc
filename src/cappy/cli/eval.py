"""`cappy eval mc|bigbench|pairs`: evaluate scorers and LLM baselines (cappy.evaluate.runs does the work; the
settings of each suite are its config: MCEvalConfig, BigBenchEvalConfig, PairsEvalConfig)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cappy.cli import add_generator_args, add_job_options, generator_settings, job_config, quiet_libraries
from cappy.evaluate.config import METHODS, BigBenchEvalConfig, MCEvalConfig, PairsEvalConfig  # light: no numpy
from cappy.evaluate.suites import SUITES, describe_suites


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate scorers and LLM baselines on task suites")
    esub = p.add_subparsers(dest="suite", metavar="<suite>")
    esub.required = True

    mc = esub.add_parser(
        "mc",
        help="zero-shot multiple-choice classification (PromptSource templates)",
        description="Every setting of cappy.evaluate.MCEvalConfig: an option below, --set KEY=VALUE, or --config.",
    )
    add_job_options(mc, MCEvalConfig)
    # not a field flag: the parser's own "suite" is the subcommand (mc, bigbench, pairs)
    mc.add_argument(
        "--suite",
        dest="task_suite",
        default=argparse.SUPPRESS,
        metavar="NAME",
        help="a named task suite (--list-suites); --task then replaces a suite task's data, e.g. "
        "--suite paper --task story_cloze/2016=PATH; the paper suite evaluates every template and example unless "
        "--max-examples/--max-templates say otherwise",
    )
    mc.add_argument("--list-methods", action="store_true", help="print the method names and exit")
    mc.add_argument("--list-suites", action="store_true", help="print the suites, their tasks and sources and exit")
    mc.set_defaults(func=run_mc)

    bb = esub.add_parser(
        "bigbench",
        help="BIG-Bench boosting: select among LLM candidates, Rouge-L x100",
        description="Every setting of cappy.evaluate.BigBenchEvalConfig: an option below, --set KEY=VALUE, or "
        "--config; the adaptation's training settings (cappy.train.TrainConfig) as --set adapt_training.KEY=VALUE "
        "(or --set KEY=VALUE where no other setting has that name, e.g. --set max_length=256).",
    )
    add_job_options(bb, BigBenchEvalConfig)
    add_generator_args(bb, required=False, for_job=True)
    bb.set_defaults(
        func=run_bigbench,
        replaced_options={"--adapt-override": lambda kv: f"use --set adapt_training.{kv} (or --set {kv})"},
    )

    pr = esub.add_parser(
        "pairs",
        help="dev metrics on labelled pairs: hard-pair and choice accuracy (promotion)",
        description="Every setting of cappy.evaluate.PairsEvalConfig: an option below, --set KEY=VALUE, or --config.",
    )
    add_job_options(pr, PairsEvalConfig)
    pr.set_defaults(func=run_pairs)


def run_mc(args: argparse.Namespace) -> int:
    from cappy.evaluate.runs import run_mc  # deferred: numpy and jinja2; keeps cappy --help fast

    if args.list_methods:
        for name, desc in METHODS.items():
            print(f"{name:10s} {desc}")
        return 0
    if args.list_suites:
        print(describe_suites())
        return 0
    extra: dict[str, Any] = {"command": args.command_line}
    defaults: dict[str, Any] = {}
    if hasattr(args, "task_suite"):
        extra["suite"] = args.task_suite
        if args.task_suite in SUITES:  # the suite's own sampling (the paper's: all), under any file or option
            defaults = {"max_examples": SUITES[args.task_suite].max_examples or 0}
            defaults["max_templates"] = SUITES[args.task_suite].max_templates or 0
    cfg = job_config(args, defaults=defaults, extra=extra)
    quiet_libraries(args.verbose, llama=cfg.llm.startswith("llamacpp"))
    run_mc(cfg)
    print((Path(cfg.out) / "report.md").read_text())
    return 0


def run_bigbench(args: argparse.Namespace) -> int:
    from cappy.evaluate.runs import run_bigbench  # deferred: numpy and jinja2; keeps cappy --help fast

    cfg = job_config(args, extra={**generator_settings(args), "command": args.command_line})
    quiet_libraries(args.verbose, llama=cfg.generator == "llamacpp")
    run_bigbench(cfg)
    print((Path(cfg.out) / "report.md").read_text())
    return 0


def run_pairs(args: argparse.Namespace) -> int:
    from cappy.evaluate.runs import run_pairs  # deferred: numpy and jinja2; keeps cappy --help fast

    cfg = job_config(args)
    for name, r in run_pairs(cfg).items():
        c = r["choice_accuracy"]
        print(
            f"{name}: hard pairwise {r['hard_pairwise_accuracy']:.4f} ({r['hard_pairs']} pairs), "
            f"all pairs {r['pairwise_accuracy']:.4f}, choice {c['mean']:.4f} ({c['questions']} questions)"
        )
        for src, v in r["by_source"].items():
            print(f"  {src:16s} {v['accuracy']:.4f} ({v['pairs']} pairs)")
        for task, v in c["by_task"].items():
            print(f"  choice {task:30s} {v['accuracy']:.4f} ({v['questions']})")
    return 0
