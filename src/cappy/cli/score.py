"""`cappy score` and `cappy rank`: add scores to JSONL rows."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cappy.cli import DTYPE_HELP

DEFAULT_MODEL = "cappy-mini"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory, embedded name or hub id")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    p.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    p.add_argument("--max-length", type=int, default=None, help="max tokens per pair (default: the checkpoint's, 512)")
    p.add_argument("--batch-size", type=int, default=64, help="max pairs per forward pass")
    p.add_argument("--input", default="-", help="JSONL file, or - for stdin")
    p.add_argument("--output", default="-", help="JSONL file (written atomically), or - for stdout")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed lines instead of stopping")
    p.add_argument("--instruction-field", default="instruction")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score (instruction, response) rows of a JSONL file")
    _add_model_args(p)
    p.add_argument("--response-field", default="response")
    p.set_defaults(func=run_score)

    p = sub.add_parser("rank", help="rank the candidates of each row of a JSONL file")
    _add_model_args(p)
    p.add_argument("--candidates-field", default="candidates")
    p.set_defaults(func=run_rank)


def _load(args: argparse.Namespace) -> Any:
    from cappy.batch import process_device
    from cappy.model import Cappy

    device = process_device(args.device)  # under accelerate/torchrun: this process's own device
    return Cappy.from_pretrained(
        args.model, device=device, dtype=args.dtype, max_length=args.max_length, batch_size=args.batch_size
    )


def _report(command: str, stats: dict[str, int]) -> int:
    if stats["rank"] != 0:
        return 0
    msg = f"cappy {command}: {stats['rows']} rows"
    if stats.get("bad_lines"):
        msg += f", {stats['bad_lines']} bad lines skipped"
    print(msg, file=sys.stderr)
    return 0


def run_score(args: argparse.Namespace) -> int:
    from cappy.batch import score_jsonl

    fields = {"instruction_field": args.instruction_field, "response_field": args.response_field}
    return _report(
        "score", score_jsonl(_load(args), args.input, args.output, **fields, skip_bad_lines=args.skip_bad_lines)
    )


def run_rank(args: argparse.Namespace) -> int:
    from cappy.batch import rank_jsonl

    fields = {"instruction_field": args.instruction_field, "candidates_field": args.candidates_field}
    return _report(
        "rank", rank_jsonl(_load(args), args.input, args.output, **fields, skip_bad_lines=args.skip_bad_lines)
    )
