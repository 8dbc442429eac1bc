"""`cappy <command>`: a thin layer that parses arguments and calls the library.

Each command lives in its own module of this package with a ``register(subparsers)`` function that adds its
parser(s) and sets ``func``; every module here that has ``register`` is picked up, in alphabetical order.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import shlex
import sys

# The --dtype values of every command that loads a scorer (cappy.model.resolve_precision); here, not in
# cappy.model, so that building the parser does not import torch.
DTYPE_HELP = "auto, float32, bfloat16, float16, bf16-autocast (auto: bf16 autocast on CPUs with native bf16)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cappy", description="Cappy: score, rank, boost and train with a small scorer."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and details to stderr")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"cappy.cli.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = "cappy " + shlex.join(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError, KeyError) as err:
        print(f"cappy {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
