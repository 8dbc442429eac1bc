"""`cappy merge`: the weighted average of checkpoints of one architecture (e.g. a model and its fine-tuned child)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="save the weighted average of checkpoints of one architecture (linear merge)")
    p.add_argument("checkpoints", nargs="+", help="two or more checkpoints (directories or cappy-mini)")
    p.add_argument(
        "--weights",
        type=float,
        nargs="+",
        default=None,
        help="one weight per checkpoint, summing to 1 (default: equal)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None, help="default: float32")
    p.add_argument("--card", default=None, help="markdown file used as the model card (README.md)")
    p.set_defaults(func=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    from cappy.model import merge_checkpoints  # deferred: imports torch

    weights = args.weights or [1.0 / len(args.checkpoints)] * len(args.checkpoints)
    card = Path(args.card).read_text() if args.card else None
    out = merge_checkpoints(args.checkpoints, weights, args.out, dtype=args.dtype, model_card=card)
    print(f"merged {len(args.checkpoints)} checkpoints with weights {weights} into {out}")
    return 0
