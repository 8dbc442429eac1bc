"""`cappy generate`: sample a recipe's candidates for each prompt of a JSONL file into a resumable cache."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import Any

from cappy.io import iter_jsonl

BACKENDS = ("llamacpp", "hf", "openai")


def add_backend_args(p: argparse.ArgumentParser, required: bool = True, model_alias: bool = False) -> None:
    """The options that pick and configure a generator (shared with `cappy boost`, where --model is the scorer)."""
    g = p.add_argument_group("generator")
    g.add_argument("--backend", choices=BACKENDS, required=required, help="llamacpp, hf (transformers) or openai")
    g.add_argument(
        *(("--gen-model", "--model") if model_alias else ("--gen-model",)),
        dest="gen_model",
        default=None,
        help="llamacpp: GGUF path (default: packaged Gemma 3 270M); hf: model dir or hub id; openai: model name",
    )
    g.add_argument("--recipe", default="paper17", help="a shipped recipe name (paper17, quick) or a YAML file")
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


def build_generator(args: argparse.Namespace) -> Any:
    """The generator that ``args`` describe."""
    if args.backend == "llamacpp":
        from cappy.generate.llamacpp import LlamaCppGenerator

        parallel = {} if args.concurrency is None else {"n_parallel": args.concurrency}
        return LlamaCppGenerator(args.gen_model, n_ctx=args.n_ctx, n_threads=args.n_threads, **parallel)
    if args.backend == "hf":
        from cappy.generate.hf import HFGenerator

        if not args.gen_model:
            raise ValueError("--backend hf needs --gen-model (a model directory or hub id)")
        return HFGenerator(args.gen_model, device=args.device, dtype=args.dtype)
    from cappy.generate.openai import OpenAIGenerator

    if not args.base_url or not args.gen_model:
        raise ValueError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1) and --gen-model")
    return OpenAIGenerator(
        args.base_url,
        args.gen_model,
        api_key=os.environ.get(args.api_key_env),
        endpoint=args.endpoint,
        timeout=args.timeout,
        max_retries=args.max_retries,
        concurrency=4 if args.concurrency is None else args.concurrency,
        server_extensions=not args.no_server_extensions,
    )


def iter_prompts(
    path: str, prompt_field: str, id_field: str, extra_fields: tuple[str, ...] = ()
) -> Iterator[tuple[int, str, str | None, dict[str, Any]]]:
    """``(line, prompt, id or None, row)`` for each JSONL row; a missing or non-string prompt is an error."""
    for lineno, row in iter_jsonl(path):
        prompt = row.get(prompt_field)
        if not isinstance(prompt, str):
            got = "missing" if prompt_field not in row else f"a {type(prompt).__name__}"
            raise ValueError(f"{path}:{lineno}: field {prompt_field!r} must be a string, it is {got}")
        pid = row.get(id_field)
        if pid is not None and not isinstance(pid, str | int):
            raise ValueError(f"{path}:{lineno}: field {id_field!r} must be a string or int")
        yield lineno, prompt, (str(pid) if pid is not None else None), row


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate LLM candidates for prompts into a resumable JSONL cache",
        description="Append one line per (prompt, candidate) to --out; rerunning after a kill continues the run.",
    )
    p.add_argument("--input", required=True, help="JSONL with a prompt per row (and optionally an id)")
    p.add_argument("--out", required=True, help="the generation cache (JSONL, appended to)")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--id-field", default="id", help="row field used as prompt_id when present (else sha1 of prompt)")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_backend_args(p, model_alias=True)
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from itertools import islice

    from cappy.generate.base import GenerationError, load_recipe
    from cappy.generate.cache import generate_to_cache

    recipe = load_recipe(args.recipe)
    # Read all prompts first: a bad line fails before any model is loaded.
    prompts = [(p, i) for _, p, i, _ in iter_prompts(args.input, args.prompt_field, args.id_field)]
    if args.limit is not None:
        prompts = list(islice(prompts, args.limit))
    generator = build_generator(args)
    try:
        stats = generate_to_cache(
            generator,
            prompts,
            recipe,
            args.out,
            seed=args.seed,
            show_progress=not args.no_progress,
            total=len(prompts),
        )
    except GenerationError as err:
        print(f"cappy generate: error: {err}", file=sys.stderr)
        return 1
    finally:
        generator.close()
    print(
        f"cappy generate: {stats.prompts} prompts ({stats.prompts_skipped} already done), "
        f"{stats.rows_written} rows written, {stats.rows_existing} were there",
        file=sys.stderr,
    )
    return 0
