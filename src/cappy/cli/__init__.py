"""`cappy <command>`: a thin layer that parses arguments and calls the library.

Each command lives in its own module of this package with a ``register(subparsers)`` function that adds its
parser(s) and sets ``func``; every module here that has ``register`` is picked up, in alphabetical order. Command
modules import nothing from each other: the options several commands share (the generator's, --dtype) are defined
here, in the package itself.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import shlex
import sys
from typing import Any

# The --dtype values of every command that loads a scorer (cappy.model.resolve_precision); here, not in
# cappy.model, so that building the parser does not import torch.
DTYPE_HELP = "auto, float32, bfloat16, float16, bf16-autocast (auto: bf16 autocast on CPUs with native bf16)"
BACKENDS = ("llamacpp", "hf", "openai")  # cappy.generate.BACKENDS, repeated so the parser needs no imports


def add_generator_args(p: argparse.ArgumentParser, required: bool = True, model_alias: bool = False) -> None:
    """The options that pick and configure a generator (`cappy generate`, `boost`, `eval bigbench`, `adapt`)."""
    g = p.add_argument_group("generator")
    g.add_argument("--backend", choices=BACKENDS, required=required, help="llamacpp, hf (transformers) or openai")
    g.add_argument(
        *(("--gen-model", "--model") if model_alias else ("--gen-model",)),
        dest="gen_model",
        default=None,
        help="llamacpp: GGUF path (default: packaged Gemma 3 270M); hf: model dir or hub id; openai: model name",
    )
    g.add_argument(
        "--recipe", default=None, help="a shipped recipe name (paper17, cpu8_stop, quick, ...) or a YAML file"
    )
    g.add_argument("--seed", type=int, default=0, help="base seed of every sample")
    g.add_argument("--base-url", default=None, help="openai: server URL including /v1")
    g.add_argument("--endpoint", choices=("completions", "chat"), default="completions", help="openai endpoint")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai: environment variable with the API key")
    g.add_argument("--timeout", type=float, default=60.0, help="openai: seconds per request")
    g.add_argument("--max-retries", type=int, default=3, help="openai: retries on 429/5xx/unreachable")
    g.add_argument(
        "--parallel",
        "--concurrency",
        dest="concurrency",
        type=int,
        default=None,
        help="llamacpp: sequences decoded together (default 16); openai: requests in flight (default 4)",
    )
    g.add_argument("--no-server-extensions", action="store_true", help="openai: send only standard OpenAI fields")
    g.add_argument("--n-threads", type=int, default=None, help="llamacpp: CPU threads")
    g.add_argument("--n-ctx", type=int, default=1024, help="llamacpp: context size")
    g.add_argument("--device", default="auto", help="hf: cpu, cuda or auto")
    g.add_argument("--dtype", default=None, help="hf: float32, bfloat16 or float16")


def generator_factory(args: argparse.Namespace) -> Any:
    """A zero-argument builder of the generator that ``args`` describe (None without --backend): a model loads
    only when candidates are missing."""
    if not args.backend:
        return None
    from cappy.generate import load_generator

    options = {
        "n_ctx": args.n_ctx,
        "n_threads": args.n_threads,
        "n_parallel": args.concurrency,
        "device": args.device,
        "dtype": args.dtype,
        "base_url": args.base_url,
        "api_key_env": args.api_key_env,
        "endpoint": args.endpoint,
        "timeout": args.timeout,
        "max_retries": args.max_retries,
        "concurrency": args.concurrency,
        "server_extensions": not args.no_server_extensions,
    }
    return lambda: load_generator(args.backend, args.gen_model, **options)


def parse_key_values(items: list[str], option: str) -> dict[str, Any]:
    """``["lr=1e-4", "max_length=128"]`` -> ``{"lr": 1e-4, "max_length": 128}`` (YAML values)."""
    import yaml

    out = {}
    for kv in items:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise ValueError(f"{option} {kv!r}: expected KEY=VALUE")
        out[k.replace("-", "_")] = yaml.safe_load(v)
    return out


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
    ok = False
    try:
        code = int(args.func(args) or 0)
        ok = code == 0
        return code
    except (ValueError, TypeError, OSError, KeyError) as err:
        print(f"cappy {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        from cappy.batch import end_process_group

        end_process_group(ok)


if __name__ == "__main__":
    sys.exit(main())
