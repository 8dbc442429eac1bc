"""`cappy export`: re-save a checkpoint compactly (float16/bfloat16) with a model card, e.g. to embed cappy-mini."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="re-save a Cappy checkpoint in half precision with a model card")
    p.add_argument("checkpoint", help="a Cappy checkpoint directory (e.g. a `cappy train` run's best/)")
    p.add_argument("--out", required=True, help="output directory (e.g. src/cappy/models/cappy-mini)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    p.add_argument("--card", default=None, help="markdown file used as the model card (README.md)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from cappy.model import export_checkpoint  # deferred: imports torch

    card = Path(args.card).read_text() if args.card else None
    out = export_checkpoint(args.checkpoint, args.out, args.dtype, model_card=card)
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(f"exported {args.checkpoint} as {args.dtype} to {out} ({size:.1f} MB)")
    return 0
