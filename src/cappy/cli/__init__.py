"""`cappy <command>`: a thin layer that parses arguments and calls the library.

Each command lives in its own module of this package with a ``register(subparsers)`` function that adds its
parser(s) and sets ``func``; every module here that has ``register`` is picked up, in alphabetical order. Command
modules import nothing from each other: the options several commands share (the generator's, --dtype) are defined
here, in the package itself.

Settings. A job (`cappy train`, `cappy adapt`, every `cappy eval` suite) has one config dataclass (TrainConfig,
AdaptConfig, MCEvalConfig, BigBenchEvalConfig, PairsEvalConfig); its command line is read from that class
(:func:`add_job_options`), never retyped here. One rule for every job:

- ``--set KEY=VALUE`` (repeatable; the value read as YAML: ``--set lr=1e-4 --set tasks=[a,b]``) changes any
  setting, a nested one by its dotted name (``--set adapt_training.max_length=256``) or, where unambiguous, by its
  own (``--set max_length=256``). ``--config FILE`` (``cappy train``: its CONFIG argument) gives a YAML file of the
  whole job; options and ``--set`` go on top of it. An unknown key or a wrong type is an error naming the key, the
  close matches and the valid keys (cappy.config).
- A setting has a dedicated option only when it names the job's inputs and outputs (``--train``, ``--dev``,
  ``--model``, ``--out``, ``--output-dir``, ``--task``, ``--gens``), picks what runs (``--methods``, ``--adapt``,
  the generator's options), or is one of the few a user changes on most runs and the documentation shows
  (``--max-examples``, ``--max-train``, ``--scale``, ``--mismatched``, ``--no-progress``). Such an option is
  declared on the field (``setting(..., flags=(...))``), so its help and default come from the dataclass.
- Spellings that were replaced fail, naming the new one: ``cappy train --lr 1e-4`` (any ``--key value`` of a
  setting without its own option) says ``use --set lr=1e-4``; ``--adapt-override K=V`` says ``use --set
  adapt_training.K=V``; ``cappy adapt --config PRESET`` says ``use --preset PRESET``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import pkgutil
import shlex
import sys
import traceback
import typing
from collections.abc import Callable, Mapping
from typing import Any

import yaml

import cappy.generate
import cappy.logs
from cappy.batch import end_process_group, generation_cache_path
from cappy.config import ConfigError, apply_overrides, field_type, parse_set, read_yaml_mapping, resolve_key
from cappy.errors import CappyError, InputError
from cappy.generate.base import DEFAULT_RECIPE  # stdlib-only module: building the parser stays light

# The --dtype values of every command that loads a scorer (cappy.model.resolve_precision); here, not in
# cappy.model, so that building the parser does not import torch.
DTYPE_HELP = "auto, float32, bfloat16, float16, bf16-autocast (auto: bf16 on CPUs with native bf16, else float32)"
# The scorer's engines (cappy.model.backends.BACKENDS), repeated so the parser needs no imports.
SCORER_BACKENDS = ("auto", "torch", "openvino")
SCORER_BACKEND_HELP = (
    "the scorer's engine: torch, openvino (CPU), or auto (default: openvino on a CPU where installed)"
)
BACKENDS = ("llamacpp", "hf", "openai")  # cappy.generate.BACKENDS, repeated so the parser needs no imports
DEBUG_ENV = "CAPPY_DEBUG"
# What `cappy` reports as the user's error (one line, exit 2); anything else is a bug and keeps its traceback.
USAGE_ERRORS = (CappyError, OSError, yaml.YAMLError, argparse.ArgumentError)


def add_generator_args(
    p: argparse.ArgumentParser, required: bool = True, model_alias: bool = False, for_job: bool = False
) -> None:
    """The options that pick and configure a generator (`cappy generate`, `boost`, `eval bigbench`, `adapt`).

    ``for_job``: the options fill a job config (:func:`generator_settings`), so one not given is absent from the
    parsed arguments and the config's value (its default, or its YAML file's) stands."""
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
    if for_job:
        _given_only(g._group_actions)


def _given_only(actions: list[argparse.Action]) -> None:
    """Leave these options out of the parsed arguments unless given (their defaults still show in --help)."""
    for action in actions:
        if action.default is not None and action.default is not False and action.help:
            action.help += f" (default: {action.default})"
        action.default = argparse.SUPPRESS


def generator_settings(args: argparse.Namespace, seed: str = "seed") -> dict[str, Any]:
    """The generator options given (``add_generator_args(for_job=True)``) as job-config settings: ``--backend`` is
    ``generator``, ``--seed`` the field named ``seed``, ``--device`` both the job's device and the generator's, the
    rest ``generator_options.*``."""
    given = vars(args)
    out: dict[str, Any] = {}
    for dest, key in (("backend", "generator"), ("gen_model", "gen_model"), ("recipe", "recipe"), ("seed", seed)):
        if dest in given:
            out[key] = given[dest]
    for dest in ("base_url", "endpoint", "api_key_env", "timeout", "max_retries", "n_threads", "n_ctx", "dtype"):
        if dest in given:
            out[f"generator_options.{dest}"] = given[dest]
    if "concurrency" in given:
        out["generator_options.n_parallel"] = out["generator_options.concurrency"] = given["concurrency"]
    if "no_server_extensions" in given:
        out["generator_options.server_extensions"] = False
    if "device" in given:
        out["device"] = out["generator_options.device"] = given["device"]
    if getattr(args, "verbose", False):
        out["generator_options.verbose"] = True  # llama.cpp's own log lines only with --verbose
    return out


def generator_factory(args: argparse.Namespace) -> Any:
    """A zero-argument builder of the generator that ``args`` describe (None without --backend): a model loads
    only when candidates are missing."""
    if not args.backend:
        return None
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
    return lambda: cappy.generate.load_generator(args.backend, args.gen_model, **options)


def add_cache_args(p: argparse.ArgumentParser, for_job: bool = False) -> None:
    """--gens and --no-cache of the commands that generate candidates on the way (`cappy boost`, `cappy adapt`)."""
    gens = p.add_argument(
        "--gens",
        default=None,
        help="generation cache to read, and to append to with --backend (default with --backend: "
        "$CAPPY_CACHE or ~/.cache/cappy, generations/<backend>-<model>-<recipe>-seed<seed>.jsonl, one file per "
        "generator, recipe and seed, so a rerun or adapt-then-boost generates nothing twice)",
    )
    no_cache = p.add_argument(
        "--no-cache", action="store_true", help="with --backend and no --gens: keep no generation cache"
    )
    if for_job:
        _given_only([gens, no_cache])


def candidate_cache(args: argparse.Namespace) -> str | None:
    """The generation cache a command reads and appends to: --gens, else the default cache of its generator, recipe
    and seed when it generates (said on stderr), else None (--no-cache)."""
    return choose_cache(
        args.command, args.gens, args.no_cache, args.backend, args.gen_model, args.recipe, args.seed, args.base_url
    )


def choose_cache(
    command: str,
    gens: str | None,
    no_cache: bool,
    backend: str | None,
    gen_model: str | None,
    recipe: Any,
    seed: int,
    base_url: str | None,
) -> str | None:
    """The rule of :func:`candidate_cache` on plain values (a job's config gives them)."""
    if backend is None and gens is None:
        raise InputError("give --gens (a generation cache) or --backend (to generate candidates)")
    if gens is not None:
        if no_cache:
            raise InputError("--no-cache and --gens contradict each other: give one")
        return gens
    if no_cache:
        return None
    path = generation_cache_path(backend, gen_model, recipe or DEFAULT_RECIPE, seed, base_url)
    print(f"cappy {command}: generation cache {path} (--gens to choose, --no-cache for none)", file=sys.stderr)
    return str(path)


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars unless --no-progress, and only on a terminal (a redirected stderr gets no bar lines)."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def quiet_libraries(verbose: bool, llama: bool = False) -> None:
    """Unless --verbose: no weight-loading bars or info lines from transformers and the hub on stderr, and (with
    ``llama``, for commands that may load llama.cpp) only llama.cpp's errors. Called just before a model loads."""
    if verbose:
        return
    cappy.logs.quiet_libraries()
    if llama:
        from cappy.generate.llamacpp import llama_log_errors_only  # deferred: numpy; keeps cappy --help fast

        try:
            llama_log_errors_only()
        except ImportError:  # the llamacpp extra is not installed: nothing to quiet
            pass


# ---------------------------------------------------------------------- job configs on the command line
SET_HELP = (
    "change a setting: KEY=VALUE, the value read as YAML (lr=1e-4, tasks=[a,b], adapt=true); repeatable, the last "
    "of a key wins; a nested setting by its dotted name or, where unambiguous, by its own"
)


class _ListOption(argparse.Action):
    """A repeatable option of a list setting; a value written as a YAML list (``'[a.jsonl, b/]'``) adds its items."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        for v in values if isinstance(values, list) else [values]:
            parsed = yaml.safe_load(v) if v.lstrip().startswith("[") else None
            items += [str(x) for x in parsed] if isinstance(parsed, list) else [v]
        setattr(namespace, self.dest, items)


def add_job_options(p: argparse.ArgumentParser, cls: type, config_option: bool = True) -> None:
    """A job's options, read from its config dataclass ``cls``: ``--config FILE`` (a YAML file of its settings),
    ``--set KEY=VALUE``, and an option for each field that declares ``flags`` (type, choices, help and default from
    the field). An option not given is absent from the parsed arguments, so a YAML file's value stands."""
    if config_option:
        p.add_argument(
            "--config",
            default=argparse.SUPPRESS,
            metavar="FILE",
            help=f"YAML file of the job's settings ({cls.__name__}); options and --set go on top",
        )
    p.add_argument("--set", dest="set_items", action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
                   help=SET_HELP)  # fmt: skip
    dests = []
    for f in dataclasses.fields(cls):
        flags = f.metadata.get("flags")
        if not flags:
            continue
        dests.append(f.name)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": f.metadata.get("help", "")}
        hint = field_type(cls, f.name)
        base = _base_type(hint)
        if base is bool:
            kwargs["action"] = "store_false" if flags[0].startswith("--no-") else "store_true"
        elif base is list:
            kwargs |= {"action": _ListOption, "nargs": "+" if f.name == "train" else None}
            kwargs["help"] += " (repeatable)" if "repeatable" not in kwargs["help"] else ""
            kwargs["metavar"] = flags[0].lstrip("-").upper().replace("-", "_")
        else:
            kwargs["type"] = base if base in (int, float) else str
            kwargs["metavar"] = {int: "N", float: "X"}.get(base, flags[0].lstrip("-").upper().replace("-", "_"))
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
            default = f.default if f.default is not dataclasses.MISSING else None
            if default not in (None, ""):
                kwargs["help"] += f" (default: {default})"
        p.add_argument(*flags, **kwargs)
    p.set_defaults(job_class=cls, job_options=tuple(dests))


def _base_type(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is not list else []
    if len(args) == 1 and typing.get_origin(hint) is not dict:
        hint = args[0]
    return list if hint is list or typing.get_origin(hint) is list else hint


def job_config(
    args: argparse.Namespace,
    base: Mapping[str, Any] | None = None,
    base_source: str = "",
    defaults: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Any:
    """The job's config from the command line: ``defaults`` (the command's own, e.g. progress bars on), then the
    YAML file (``--config``, or ``base`` read from ``base_source``), then the options given and ``extra`` settings
    derived from other options, then ``--set``. A setting given both as an option and with --set is an error."""
    cls = args.job_class
    data: dict[str, Any] = dict(defaults or {})
    if base is None and getattr(args, "config", None):
        base_source = args.config
        base = read_yaml_mapping(args.config, f"{cls.__name__} settings")
    if base is not None:  # checked alone, so that its errors name the file; only the settings it has
        checked = cls.from_dict(base, source=base_source, validate=False).to_dict()
        data |= {name: checked[name] for name in (str(k).replace("-", "_") for k in base)}
    given = {name: getattr(args, name) for name in args.job_options if hasattr(args, name)}
    given |= dict(extra or {})
    sets = parse_set(getattr(args, "set_items", None) or [])
    by_option = {tuple(resolve_key(cls, k, "option")): k for k in given}
    for key in sets:
        path = _path(cls, key)  # an unknown key is said by apply_overrides below, with its value
        if path in by_option:
            raise ConfigError(f"{'.'.join(path)} is given both as an option and as --set {key}=...: give one")
    data = apply_overrides(cls, data, given, "option")
    data = apply_overrides(cls, data, sets, "--set")
    return cls.from_dict(data, source=base_source or "command line")


def old_spelling(args: argparse.Namespace, extra: list[str]) -> str | None:
    """The message for options that are gone (see the package docstring), or None when ``extra`` holds none."""
    cls = getattr(args, "job_class", None)
    replaced: dict[str, Callable[[str], str]] = getattr(args, "replaced_options", {})
    said = []
    i = 0
    while i < len(extra):
        tok = extra[i]
        i += 1
        if not tok.startswith("--"):
            continue
        name, eq, value = tok[2:].partition("=")
        if not eq and i < len(extra) and not extra[i].startswith("--"):
            value, i = extra[i], i + 1
        if f"--{name}" in replaced:
            said.append(f"--{name} is gone: {replaced[f'--{name}'](value or 'KEY=VALUE')}")
            continue
        key = name.replace("-", "_")
        if cls is not None and _path(cls, key) is not None:
            said.append(f"--{name} is not an option of {command_name(args)}: use --set {key}={value or 'VALUE'}")
    return "; ".join(said) or None


def _path(cls: type, key: str) -> tuple[str, ...] | None:
    try:
        return tuple(resolve_key(cls, key))
    except ConfigError:
        return None


def command_name(args: argparse.Namespace) -> str:
    """``cappy eval bigbench``, ``cappy train``: how messages name the command that runs."""
    return " ".join(["cappy", args.command, *([args.suite] if getattr(args, "suite", None) else [])])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cappy", description="Cappy: score, rank, boost and train with a small scorer."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and details to stderr")
    parser.add_argument(
        "--debug", action="store_true", help=f"print the traceback of a usage or input error too (or {DEBUG_ENV}=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"cappy.cli.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `cappy <command>` and return its exit status.

    A usage or input error (a :class:`~cappy.errors.CappyError`, a file that cannot be read or written, bad YAML)
    is one line on stderr, ``cappy <command>: error: <message>``, and exit status 2 (a generation failure 1, a
    failed training run 3: the error's ``exit_code``); Ctrl-C is 130. Any other exception is a bug in cappy: it
    propagates with its traceback (exit status 1). ``--debug`` or ``CAPPY_DEBUG=1`` prints the traceback of a
    usage error too.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        said = old_spelling(args, extra)
        if said is None:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        print(f"{command_name(args)}: error: {said}", file=sys.stderr)
        return 2
    args.command_line = "cappy " + shlex.join(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    ok = False
    try:
        code = int(args.func(args) or 0)
        ok = code == 0
        return code
    except USAGE_ERRORS as err:
        if args.debug or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
            traceback.print_exc()
        print(f"{command_name(args)}: error: {err}", file=sys.stderr)
        return int(getattr(err, "exit_code", 2))
    except KeyboardInterrupt:
        return 130
    finally:
        end_process_group(ok)


if __name__ == "__main__":
    sys.exit(main())
