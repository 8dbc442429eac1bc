"""`cappy train CONFIG.yaml [--key value ...]`: pretrain or adapt a scorer (see cappy.train.TrainConfig)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a scorer from a YAML config (pretraining or task adaptation)",
        description="Train a Cappy scorer. Settings come from CONFIG.yaml; any setting can be overridden with "
        "--key value (YAML syntax for the value, e.g. --lr 1e-4 --train '[a.jsonl, b/]'). Runs as one process, "
        "or under `accelerate launch` / `torchrun` on many devices.",
    )
    p.add_argument("config", help="YAML file of cappy.train.TrainConfig settings")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="--key value pairs that replace config settings")
    p.set_defaults(func=run_train)


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """``["--lr", "1e-4", "--no-progress"]``-style tokens to a dict; ``--key=value`` works too.

    Example: ``parse_overrides(["--lr", "1e-4", "--train", "[a.jsonl]"])`` -> ``{"lr": 1e-4, "train": ["a.jsonl"]}``
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or tok == "--":
            raise ValueError(f"expected --key value, got {tok!r}")
        key = tok[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            raw = tokens[i + 1]
            i += 2
        else:
            raise ValueError(f"--{key} needs a value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        # YAML 1.1 reads "1e-4" as a string; numbers written that way are meant as numbers.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in "eE.") else value
            except ValueError:
                pass
        out[key.replace("-", "_")] = value
    return out


def run_train(args: argparse.Namespace) -> int:
    from cappy.train import TrainConfig, TrainingError, train

    cfg = TrainConfig.from_yaml(args.config, parse_overrides(args.overrides))
    try:
        result = train(cfg)
    except TrainingError as err:
        print(f"cappy train: error: {err}", file=sys.stderr)
        return 3
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, int | float | str | None)}), file=sys.stderr)
    return 0
