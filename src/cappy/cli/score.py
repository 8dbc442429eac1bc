"""`cappy score` and `cappy rank`: add scores to JSONL rows."""

from __future__ import annotations

import argparse
import sys
from itertools import islice
from typing import Any

from cappy.cli import DTYPE_HELP
from cappy.io import atomic_write, dumps, iter_jsonl

DEFAULT_MODEL = "cappy-mini"
_ROWS_PER_CHUNK = 2048


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory, embedded name or hub id")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    p.add_argument(
        "--dtype",
        default="auto",
        help=DTYPE_HELP,
    )
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
    from cappy.model import Cappy

    return Cappy.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, max_length=args.max_length, batch_size=args.batch_size
    )


def _field(row: dict[str, Any], name: str, lineno: int, kind: type) -> Any:
    if name not in row:
        raise ValueError(f"line {lineno}: missing field {name!r}")
    value = row[name]
    if not isinstance(value, kind):
        raise ValueError(f"line {lineno}: field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    if kind is list:
        if not value:
            raise ValueError(f"line {lineno}: field {name!r} is an empty list")
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise ValueError(f"line {lineno}: {name}[{i}] must be str, got {type(v).__name__}")
    return value


def _valid_rows(args: argparse.Namespace, fields: list[tuple[str, type]], stats: dict[str, int]):
    for lineno, row in iter_jsonl(args.input, skip_bad_lines=args.skip_bad_lines, stats=stats):
        try:
            values = [_field(row, name, lineno, kind) for name, kind in fields]
        except ValueError as err:
            if not args.skip_bad_lines:
                raise ValueError(f"{args.input}:{err}") from None
            stats["bad_lines"] += 1
            continue
        yield row, values


def _report(command: str, n: int, stats: dict[str, int]) -> None:
    msg = f"cappy {command}: {n} rows"
    if stats.get("bad_lines"):
        msg += f", {stats['bad_lines']} bad lines skipped"
    print(msg, file=sys.stderr)


def run_score(args: argparse.Namespace) -> int:
    scorer = _load(args)
    stats: dict[str, int] = {}
    rows = _valid_rows(args, [(args.instruction_field, str), (args.response_field, str)], stats)
    n = 0
    with atomic_write(args.output) as out:
        while chunk := list(islice(rows, _ROWS_PER_CHUNK)):
            scores = scorer.score([v[0] for _, v in chunk], [v[1] for _, v in chunk])
            for (row, _), s in zip(chunk, scores):
                out.write(dumps({**row, "score": float(s)}) + "\n")
            n += len(chunk)
    _report("score", n, stats)
    return 0


def run_rank(args: argparse.Namespace) -> int:
    scorer = _load(args)
    stats: dict[str, int] = {}
    rows = _valid_rows(args, [(args.instruction_field, str), (args.candidates_field, list)], stats)
    n = 0
    with atomic_write(args.output) as out:
        while chunk := list(islice(rows, _ROWS_PER_CHUNK)):
            instr = [v[0] for _, v in chunk for _ in v[1]]
            cands = [c for _, v in chunk for c in v[1]]
            flat = scorer.score(instr, cands)
            pos = 0
            for row, (_, cs) in chunk:
                scores = [float(x) for x in flat[pos : pos + len(cs)]]
                pos += len(cs)
                best = max(range(len(scores)), key=lambda i: (scores[i], -i))
                out.write(dumps({**row, "scores": scores, "best": best}) + "\n")
            n += len(chunk)
    _report("rank", n, stats)
    return 0
