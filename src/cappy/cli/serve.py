"""`cappy serve`: the HTTP scoring and reranking service (see cappy.serve)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from cappy.cli import DTYPE_HELP

DEFAULT_MODEL = "cappy-mini"
CPU_TOKEN_BUDGET = 2048


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a scorer over HTTP: /score, /rerank, /v1/rerank, /best-of-n, playground")
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory, embedded name or hub id")
    p.add_argument("--model-name", default=None, help="the name /info and /v1/rerank report (default: --model)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    p.add_argument(
        "--dtype",
        default="auto",
        help=DTYPE_HELP,
    )
    p.add_argument("--max-length", type=int, default=None, help="max tokens per pair (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=64, help="max pairs per forward pass")
    p.add_argument(
        "--max-tokens-per-batch",
        type=int,
        default=None,
        help=f"token budget of one forward pass (default: {CPU_TOKEN_BUDGET} on CPU, where small length-sorted "
        "batches waste less padding on a micro-batch of mixed lengths; the library default elsewhere)",
    )
    p.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="torch CPU threads for scoring (default on CPU: one less than torch's default, at least 1, leaving a "
        "core to the HTTP side; oversubscribed torch threads stall each other)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on all but /health and the page / (default: $CAPPY_API_KEY)",
    )
    p.add_argument("--max-items", type=int, default=256, help="max pairs/texts/documents/candidates per request")
    p.add_argument("--max-batch-pairs", type=int, default=256, help="max pairs gathered into one scoring call")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long an idle model waits to fill a batch")
    p.add_argument("--max-queue", type=int, default=8192, help="max pairs waiting; beyond it requests get 429")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="max request body size in MB")
    p.add_argument(
        "--graceful-timeout", type=float, default=30.0, help="seconds to finish accepted requests on shutdown"
    )
    g = p.add_argument_group("generator (enables /best-of-n)")
    g.add_argument("--generator", choices=("llamacpp", "hf", "openai"), default=None, help="a cappy.generate backend")
    g.add_argument(
        "--gen-model",
        default=None,
        help="llamacpp: GGUF path (default: packaged Gemma 3 270M); hf: model dir or hub id; openai: model name",
    )
    g.add_argument("--gen-base-url", default=None, help="openai: server URL including /v1")
    g.add_argument("--gen-device", default="auto", help="hf: cpu, cuda or auto")
    g.add_argument("--gen-dtype", default=None, help="hf: float32, bfloat16 or float16")
    g.add_argument("--gen-threads", type=int, default=None, help="llamacpp: CPU threads")
    g.add_argument("--recipe", default="quick", help="default recipe of /best-of-n (a shipped name or a YAML file)")
    g.add_argument("--gen-seed", type=int, default=0, help="base seed of the samples")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run_serve)


def _generator(args: argparse.Namespace) -> tuple[Any, str, Any]:
    """(generator, name, recipe_factory) for --generator, built by `cappy generate`'s own builder."""
    from cappy.cli.generate import build_generator
    from cappy.serve.generation import SeededGenerator, recipe_factory

    make_recipe = recipe_factory(args.recipe)
    ns = argparse.Namespace(
        backend=args.generator,
        gen_model=args.gen_model,
        base_url=args.gen_base_url,
        device=args.gen_device,
        dtype=args.gen_dtype,
        n_threads=args.gen_threads,
        n_ctx=1024,
        api_key_env="OPENAI_API_KEY",
        endpoint="completions",
        timeout=60.0,
        max_retries=3,
        concurrency=4,
        no_server_extensions=False,
    )
    generator = build_generator(ns)
    name = f"{args.generator}:{getattr(generator, 'model_id', args.gen_model)}"
    return SeededGenerator(generator, seed=args.gen_seed), name, make_recipe


def _stopped(signum: int, frame: Any) -> None:
    print("cappy serve: stopped after finishing accepted requests", file=sys.stderr, flush=True)
    sys.exit(0)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cappy.model import Cappy, resolve_device
    from cappy.serve import ServeConfig, create_app

    api_key = args.api_key if args.api_key is not None else os.environ.get("CAPPY_API_KEY") or None
    config = ServeConfig(
        max_items_per_request=args.max_items,
        max_batch_pairs=args.max_batch_pairs,
        max_wait_ms=args.max_wait_ms,
        max_queue_pairs=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 2**20),
        api_key=api_key,
        model_name=args.model_name or str(args.model),
    )
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(
            f"cappy serve: warning: listening on {args.host} without --api-key; anyone who reaches it can use it",
            file=sys.stderr,
        )
    generator, gen_name, make_recipe = _generator(args) if args.generator else (None, None, None)
    import torch

    on_cpu = resolve_device(args.device).type == "cpu"
    threads = args.num_threads
    if threads is None and on_cpu:
        threads = max(1, torch.get_num_threads() - 1)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--num-threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    budget = args.max_tokens_per_batch
    if budget is None:
        budget = CPU_TOKEN_BUDGET if on_cpu else 16384
    scorer = Cappy.from_pretrained(
        args.model,
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        batch_size=args.batch_size,
        max_tokens_per_batch=budget,
    )
    extra = {"recipe_factory": make_recipe} if make_recipe is not None else {}
    app = create_app(scorer, config, generator=generator, generator_name=gen_name, **extra)
    print(f"cappy serve: {scorer!r} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    # uvicorn turns SIGTERM into a graceful shutdown, then re-raises it; this handler makes that a clean exit.
    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
        access_log=args.log_level == "debug",
    )
    return 0
