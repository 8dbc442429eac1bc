"""`cappy report`: merge the results of several eval runs into one markdown table."""

from __future__ import annotations

import argparse
import sys

from cappy.evaluate.report import merge_reports
from cappy.io import atomic_write


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("report", help="merge the results of several eval runs into one markdown table")
    r.add_argument("dirs", nargs="+", help="eval output folders (each with results.json)")
    r.add_argument("--out", default="-", help="markdown file, or - for stdout")
    r.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    text = merge_reports(args.dirs)
    with atomic_write(args.out) as f:
        f.write(text)
    if args.out != "-":
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
