"""`cappy data build` (mixture -> pair shards) and `cappy data templates` (list PromptSource templates)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from cappy.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build pretraining pairs; list PromptSource templates")
    dsub = p.add_subparsers(dest="data_command", metavar="<data command>")
    dsub.required = True

    b = dsub.add_parser("build", help="turn a mixture YAML into Parquet pair shards + manifest.json")
    b.add_argument("mixture", help="mixture YAML (see configs/mixtures/offline.yaml)")
    b.add_argument("--out", default=None, help="output folder (shards, manifest.json); required unless --dry-run")
    b.add_argument(
        "--dry-run",
        action="store_true",
        help="print what the build would read (dataset, subset, split, templates, cap, LLM candidates) and the "
        "expected prompts, pairs and their order, without reading or fetching any data",
    )
    b.add_argument("--seed", type=int, default=None, help="override the mixture's seed")
    b.add_argument("--shard-rows", type=int, default=None, help="override the mixture's rows per shard")
    b.add_argument("--data-root", default=None, help="override the mixture's data_root (relative paths of datasets)")
    b.add_argument(
        "--generations", action="append", default=[], help="generation-cache JSONL with LLM candidates (repeatable)"
    )
    b.add_argument("--allow-heldout", action="store_true", help="allow held-out (evaluation) datasets in the mixture")
    b.add_argument(
        "--skip-bad", action="store_true", help="skip and count malformed lines and failing renders; default: stop"
    )
    b.add_argument("--overwrite", action="store_true", help="discard an existing build in --out")
    b.add_argument("--keep-state", action="store_true", help="keep the resume state (OUT/.build) after finishing")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=run_build)

    e = dsub.add_parser("prompts", help="write a mixture's rendered instructions as JSONL for `cappy generate`")
    e.add_argument("mixture", help="mixture YAML")
    e.add_argument("--out", required=True, help="JSONL file (written atomically): prompt, references, task, template")
    e.add_argument("--seed", type=int, default=None, help="override the mixture's seed (use the build's seed)")
    e.add_argument("--data-root", default=None, help="override the mixture's data_root")
    e.add_argument("--max-examples", type=int, default=None, help="at most this many examples per dataset")
    e.add_argument("--sample", type=int, default=None, help="keep a seeded random sample of this many prompts")
    e.add_argument(
        "--free-text-only",
        action="store_true",
        default=None,
        help="only templates without answer choices (default: as the mixture's llm_candidates says)",
    )
    e.add_argument("--allow-heldout", action="store_true", help="allow held-out (evaluation) datasets")
    e.add_argument("--skip-bad", action="store_true", help="skip and count malformed lines and failing renders")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=run_prompts)

    sp = dsub.add_parser("split", help="split built pairs into train.parquet and dev.jsonl by instruction")
    sp.add_argument("source", help="a `cappy data build` folder (or one Parquet file)")
    sp.add_argument("--out", required=True, help="output folder for train.parquet and dev.jsonl")
    sp.add_argument("--dev-fraction", type=float, default=0.02, help="share of instructions held out for dev")
    sp.add_argument("--max-dev-rows", type=int, default=3000)
    sp.add_argument("--cap", action="append", default=[], help="TASK=ROWS: at most ROWS train pairs of TASK")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=run_split)

    t = dsub.add_parser("templates", help="list template folders, or the templates of one dataset")
    t.add_argument("dataset", nargs="?", help="dataset name or template key, e.g. super_glue/boolq")
    t.add_argument("--root", default=None, help="folder of templates.yaml files (default: PromptSource's)")
    t.set_defaults(func=run_templates)


def run_build(args: argparse.Namespace) -> int:
    # deferred: numpy and jinja2; keeps cappy --help fast
    from cappy.data.pairs import BuildOptions, Mixture, PairBuilder

    mix = Mixture.from_yaml(args.mixture, args.seed, args.shard_rows, args.data_root, args.generations)
    if args.dry_run:
        from cappy.data.preview import format_plan, plan_build

        plans = plan_build(mix, allow_heldout=args.allow_heldout)
        sys.stdout.write(format_plan(mix, plans, generations=len(mix.generations), path=args.mixture))
        return 0
    if args.out is None:
        raise InputError("cappy data build: --out is required (or --dry-run to only print the plan)")
    opts = BuildOptions(args.allow_heldout, args.skip_bad, not args.no_progress, args.overwrite, args.keep_state)
    start = time.perf_counter()
    m = PairBuilder(mix, args.out, opts).build()
    src = ", ".join(f"{k} {v}" for k, v in sorted(m["sources"].items()))
    print(
        f"cappy data build: {m['rows']} pairs in {len(m['shards'])} shards ({src}); {m['duplicates']['total']} "
        f"duplicates dropped; {time.perf_counter() - start:.1f}s -> {args.out}",
        file=sys.stderr,
    )
    return 0


def run_prompts(args: argparse.Namespace) -> int:
    from cappy.data.pairs import Mixture, export_prompts  # deferred: numpy and jinja2; keeps cappy --help fast

    mix = Mixture.from_yaml(args.mixture, seed=args.seed, data_root=args.data_root)
    counts = export_prompts(
        mix,
        args.out,
        free_text_only=args.free_text_only,
        max_examples=args.max_examples,
        sample=args.sample,
        allow_heldout=args.allow_heldout,
        skip_bad=args.skip_bad,
        progress=not args.no_progress,
    )
    print(
        f"cappy data prompts: {counts['prompts']} prompts from {counts['units']} templates "
        f"({counts['duplicates']} duplicates dropped) -> {args.out}",
        file=sys.stderr,
    )
    return 0


def run_templates(args: argparse.Namespace) -> int:
    # deferred: numpy and jinja2; keeps cappy --help fast
    from cappy.data.templates import list_template_keys, load_templates, template_key

    if args.dataset is None:
        for key in list_template_keys(args.root):
            print(key)
        return 0
    key = template_key(args.dataset)
    for t in load_templates(key, args.root):
        kind = "choices" if t.answer_choices is not None else "free"
        print(f"{t.name}\toriginal_task={t.original_task}\t{kind}\t{t.id}")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from cappy.data.split import SplitConfig, split_pairs  # deferred: numpy and jinja2; keeps cappy --help fast

    caps = {name: int(n) for name, _, n in (c.rpartition("=") for c in args.cap) if name and n.isdigit()}
    if len(caps) != len(args.cap):
        raise InputError(f"--cap {args.cap}: each must be TASK=ROWS")
    summary = split_pairs(args.source, args.out, SplitConfig(args.dev_fraction, args.max_dev_rows, caps, args.seed))
    print(json.dumps(summary, indent=2))
    return 0
