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

from cappy.generate.base import DEFAULT_RECIPE  # stdlib-only module: building the parser stays light

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
        "--recipe",
        default=None,
        help=f"a shipped recipe name ({DEFAULT_RECIPE} (the default), paper17_stop, cpu8, ...) or a YAML file",
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
        "verbose": bool(getattr(args, "verbose", False)),  # llama.cpp's own log lines only with --verbose
    }
    return lambda: load_generator(args.backend, args.gen_model, **options)


def add_cache_args(p: argparse.ArgumentParser) -> None:
    """--gens and --no-cache of the commands that generate candidates on the way (`cappy boost`, `cappy adapt`)."""
    p.add_argument(
        "--gens",
        default=None,
        help="generation cache to read, and to append to with --backend (default with --backend: "
        "$CAPPY_CACHE or ~/.cache/cappy, generations/<backend>-<model>-<recipe>-seed<seed>.jsonl, one file per "
        "generator, recipe and seed, so a rerun or adapt-then-boost generates nothing twice)",
    )
    p.add_argument("--no-cache", action="store_true", help="with --backend and no --gens: keep no generation cache")


def candidate_cache(args: argparse.Namespace) -> str | None:
    """The generation cache a command reads and appends to: --gens, else the default cache of its generator, recipe
    and seed when it generates (said on stderr), else None (--no-cache)."""
    if args.backend is None and args.gens is None:
        raise ValueError("give --gens (a generation cache) or --backend (to generate candidates)")
    if args.gens is not None:
        if args.no_cache:
            raise ValueError("--no-cache and --gens contradict each other: give one")
        return args.gens
    if args.no_cache:
        return None
    from cappy.batch import generation_cache_path

    path = generation_cache_path(args.backend, args.gen_model, args.recipe or DEFAULT_RECIPE, args.seed, args.base_url)
    print(f"cappy {args.command}: generation cache {path} (--gens to choose, --no-cache for none)", file=sys.stderr)
    return str(path)


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars unless --no-progress, and only on a terminal (a redirected stderr gets no bar lines)."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def quiet_libraries(verbose: bool, llama: bool = False) -> None:
    """Unless --verbose: no weight-loading bars or info lines from transformers and the hub on stderr, and (with
    ``llama``, for commands that may load llama.cpp) only llama.cpp's errors. Called just before a model loads."""
    if verbose:
        return
    import huggingface_hub.utils
    import transformers.utils.logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    if llama:
        _llama_errors_only()


_LLAMA_LOG_CALLBACK: Any = None  # kept referenced: llama.cpp holds only a C pointer to it


def _llama_errors_only() -> None:
    """Route llama.cpp's log to stderr only for errors. llama-cpp-python's own callback reads ggml's log levels
    from an older enum (a warning, 3, counts as an error there), so ``verbose=False`` still prints lines such as
    ``llama_kv_cache_iswa: using full-size SWA cache`` on every context it creates. Process-wide, set once."""
    global _LLAMA_LOG_CALLBACK
    if _LLAMA_LOG_CALLBACK is not None:
        return
    try:
        import ctypes

        import llama_cpp
    except ImportError:  # the llamacpp extra is not installed: nothing to quiet
        return
    error, cont = 4, 5  # ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous line)
    last = [0]

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: Any) -> None:
        if level != cont:
            last[0] = level
        if last[0] == error:
            print(text.decode("utf-8", "replace"), end="", file=sys.stderr, flush=True)

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    _LLAMA_LOG_CALLBACK = callback


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
