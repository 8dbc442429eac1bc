"""`cappy score` and `cappy rank`: add scores to JSONL rows."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cappy.batch import check_input, process_device, rank_jsonl, score_jsonl
from cappy.cli import DTYPE_HELP, SCORER_BACKEND_HELP, SCORER_BACKENDS, quiet_libraries, show_progress

DEFAULT_MODEL = "cappy-mini"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory, embedded name or hub id")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    p.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    p.add_argument("--backend", choices=SCORER_BACKENDS, default="auto", help=SCORER_BACKEND_HELP)
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="max tokens per pair (default: the checkpoint's own, 128 for cappy-mini; 512 if it declares none)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="max pairs per forward pass")
    p.add_argument(
        "--truncation-direction",
        choices=["right", "left"],
        default=None,
        help="which end of a too-long instruction is cut: right (its end) or left (its start, keeping a question at "
        "the end of a long few-shot prompt) (default: the checkpoint's, right unless it declares left)",
    )
    p.add_argument("--input", default="-", help="JSONL file, or - for stdin")
    p.add_argument("--output", default="-", help="JSONL file (written atomically), or - for stdout")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed lines instead of stopping")
    p.add_argument("--instruction-field", default="instruction")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (none either when stderr is not a terminal)"
    )
    # also accepted after the command; SUPPRESS keeps `cappy -v score` from being reset by this parser's default
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log details, and the libraries' own loading bars and log lines, to stderr",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score (instruction, response) rows of a JSONL file",
        description='Adds "score" to each row. The input is checked (it exists, is not empty, its first row '
        "parses) before the model loads; an input without rows is an error.",
    )
    _add_model_args(p)
    p.add_argument("--response-field", default="response")
    p.set_defaults(func=run_score)

    p = sub.add_parser(
        "rank",
        help="rank the candidates of each row of a JSONL file",
        description='Adds "scores" (one per candidate) and "best" (the index of the highest) to each row; with '
        "--sort, the candidates are rewritten best first.",
    )
    _add_model_args(p)
    p.add_argument("--candidates-field", default="candidates")
    p.add_argument(
        "--sort",
        action="store_true",
        help='write each row\'s candidates best first, with "scores" in that order, "order" (each one\'s input '
        'index) and "best" 0',
    )
    p.set_defaults(func=run_rank)


def _load(args: argparse.Namespace) -> Any:
    from cappy.model import Cappy  # deferred: imports torch

    quiet_libraries(args.verbose)
    device = process_device(args.device)  # under accelerate/torchrun: this process's own device
    return Cappy.from_pretrained(
        args.model,
        device=device,
        dtype=args.dtype,
        backend=args.backend,
        max_length=args.max_length,
        batch_size=args.batch_size,
        instruction_truncation=args.truncation_direction,
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
    fields = {"instruction_field": args.instruction_field, "response_field": args.response_field}
    check_input(args.input, [(args.instruction_field, str), (args.response_field, str)], args.skip_bad_lines)
    scorer = _load(args)
    progress = show_progress(args)
    stats = score_jsonl(
        scorer, args.input, args.output, **fields, skip_bad_lines=args.skip_bad_lines, show_progress=progress
    )
    return _report("score", stats)


def run_rank(args: argparse.Namespace) -> int:
    fields = {"instruction_field": args.instruction_field, "candidates_field": args.candidates_field}
    check_input(args.input, [(args.instruction_field, str), (args.candidates_field, list)], args.skip_bad_lines)
    scorer = _load(args)
    stats = rank_jsonl(
        scorer,
        args.input,
        args.output,
        **fields,
        skip_bad_lines=args.skip_bad_lines,
        sort=args.sort,
        show_progress=show_progress(args),
    )
    return _report("rank", stats)
