"""`cappy eval mc|bigbench|pairs`: evaluate scorers and LLM baselines (cappy.evaluate.runs does the work; the
settings of each suite are its config: MCEvalConfig, BigBenchEvalConfig, PairsEvalConfig)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cappy.cli import add_generator_args, add_job_options, generator_settings, job_config, quiet_libraries
from cappy.evaluate.config import METHODS, BigBenchEvalConfig, MCEvalConfig, PairsEvalConfig  # light: no numpy


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
    mc.add_argument("--list-methods", action="store_true", help="print the method names and exit")
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
    cfg = job_config(args, extra={"command": args.command_line})
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
