"""`cappy train CONFIG [--model M] [--train PATH ...] [--dev PATH] [--output-dir DIR] [--set KEY=VALUE ...]`:
pretrain or adapt a scorer (see cappy.train.TrainConfig)."""

from __future__ import annotations

import argparse
import json
import sys

from cappy.cli import add_job_options, job_config
from cappy.train.config import TrainConfig, preset_path, yaml_settings  # no torch: the parser reads the fields


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a scorer from a YAML config (pretraining or task adaptation)",
        description="Train a Cappy scorer. Settings come from CONFIG (a YAML file of cappy.train.TrainConfig "
        "settings, or a shipped preset: adapt_cpu, adapt_paper); --model, --train, --dev and --output-dir name the "
        "run's inputs and output, and --set KEY=VALUE changes any other setting (the value read as YAML, e.g. "
        "--set lr=1e-4 --set num_pairs=4096). Runs as one process, or under `accelerate launch` / `torchrun` on "
        "many devices.",
    )
    p.add_argument("config", help="YAML file of cappy.train.TrainConfig settings, or a shipped preset's name")
    add_job_options(p, TrainConfig, config_option=False)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from cappy.train import train  # deferred: imports torch

    cfg = job_config(args, base=yaml_settings(args.config), base_source=str(preset_path(args.config)))
    result = train(cfg)  # a TrainingError ends the command with exit status 3 (cappy.cli.main)
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, int | float | str | None)}), file=sys.stderr)
    return 0
