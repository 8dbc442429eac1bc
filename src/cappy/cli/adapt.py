"""`cappy adapt`: adapt a Cappy to a task from its training examples (cappy.adapt does the work; its settings are
cappy.adaptation.AdaptConfig)."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

import cappy.adaptation
from cappy.adaptation import AdaptConfig  # light (no torch): the parser reads the settings' fields
from cappy.cli import (
    DEFAULT_RECIPE,
    add_cache_args,
    add_generator_args,
    add_job_options,
    choose_cache,
    generator_settings,
    job_config,
    quiet_libraries,
)
from cappy.config import ConfigError, read_yaml_mapping
from cappy.train.config import ADAPTATION_SECTION, TrainConfig, available_presets


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt a scorer to a task: LLM candidates labelled against gold answers, then finetune the scorer",
        description="Each training example is an instruction with its gold answer(s). Candidates come from --gens "
        f"(a generation cache) and/or are generated with --backend (recipe {DEFAULT_RECIPE} unless --recipe) and "
        "appended to the cache, so a killed run resumes; without --gens the cache is the default one of the "
        "generator, recipe and seed, the one `cappy boost --backend` reads (--no-cache: none). Each candidate is "
        "labelled by Rouge-L against the references, the references themselves 1.0, and a copy of --model "
        "is trained on the pairs (preset adapt_cpu on CPU, adapt_paper on GPU; --preset to choose). The LLM is "
        "never trained. Any setting of cappy.adaptation.AdaptConfig, and any training setting of "
        "cappy.train.TrainConfig, is changed with --set KEY=VALUE (e.g. --set lr=1e-4 --set mismatched=2). "
        "Training resumes too: after a kill the same command continues from the last checkpoint in "
        "OUT/run/training_state (every save_every updates) to the weights of an uninterrupted run, and says so; if "
        "that run had other settings the command stops and names them (--overwrite discards it). The same command "
        "after a finished run reuses its model; other settings train a new one.",
    )
    add_job_options(p, AdaptConfig)
    add_cache_args(p, for_job=True)
    add_generator_args(p, required=False, for_job=True)
    p.set_defaults(func=run_adapt)


def _not_a_preset(path: str) -> None:
    """`cappy adapt --config` named the training preset before it named the job's YAML file: say so."""
    if not Path(path).is_file():
        if path in available_presets():
            raise ConfigError(
                f"--config {path}: a training preset is --preset {path} (--config is a YAML file of cappy adapt's "
                "settings)"
            )
        return
    data = read_yaml_mapping(path, "AdaptConfig settings")
    own = {f.name for f in fields(AdaptConfig)}
    training = [k for k in data if k not in own and k in {f.name for f in fields(TrainConfig)}]
    if ADAPTATION_SECTION in data or training:
        raise ConfigError(
            f"--config {path}: the file holds training settings ({', '.join(training) or ADAPTATION_SECTION}): a "
            f"training preset is --preset {path}; a YAML file of cappy adapt's settings puts them under training:"
        )


def run_adapt(args: argparse.Namespace) -> int:
    if getattr(args, "config", None):
        _not_a_preset(args.config)
    extra = generator_settings(args, seed="gen_seed")
    if getattr(args, "gens", None) is not None:
        extra["candidates"] = args.gens
    cfg = job_config(args, defaults={"show_progress": True}, extra=extra)
    if not cfg.examples:
        raise ConfigError("give the training examples: --train FILE (or examples: in the --config file)")
    if not isinstance(cfg.candidates, str | type(None)) or not isinstance(cfg.generator, str | type(None)):
        raise ConfigError("candidates and generator are a cache path and a backend name on the command line")
    cache = choose_cache(
        "adapt",
        cfg.candidates,
        getattr(args, "no_cache", False),
        cfg.generator,
        cfg.gen_model,
        cfg.recipe,
        cfg.gen_seed,
        cfg.generator_options.get("base_url"),
    )
    quiet_libraries(args.verbose, llama=cfg.generator == "llamacpp")
    # its lines say when a run resumes, is discarded or replaced: shown without --verbose
    logging.getLogger("cappy.adaptation").setLevel(logging.INFO)
    tuned = cappy.adaptation.adapt(config=cfg.with_overrides({"candidates": cache}, "command line"))
    info = tuned.adaptation
    c = info.counts
    print(
        f"cappy adapt: {c['examples']} examples, {c['pairs']} pairs ({c['gold']} gold, {c['mismatched']} mismatched)"
        f" -> {info.model_dir}"
        + (" (reused)" if info.reused else "")
        + (f" (resumed from {info.resumed})" if getattr(info, "resumed", None) else ""),
        file=sys.stderr,
    )
    return 0
