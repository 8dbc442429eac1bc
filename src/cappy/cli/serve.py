"""`cappy serve`: the HTTP scoring and reranking service (see cappy.serve)."""

from __future__ import annotations

import argparse

from cappy.cli import BACKENDS, DEFAULT_RECIPE, DTYPE_HELP, SCORER_BACKEND_HELP, SCORER_BACKENDS, quiet_libraries
from cappy.generate import load_generator, load_recipe

DEFAULT_MODEL = "cappy-mini"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a scorer over HTTP: /score, /rerank, /v1/rerank, /best-of-n, OpenAI-compatible "
        "/v1/chat/completions (best-of-n in front of any LLM server), playground",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory, embedded name or hub id")
    p.add_argument("--model-name", default=None, help="the name /info and /v1/rerank report (default: --model)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    p.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    p.add_argument("--backend", choices=SCORER_BACKENDS, default="auto", help=SCORER_BACKEND_HELP)
    p.add_argument("--max-length", type=int, default=None, help="max tokens per pair (default: the checkpoint's)")
    p.add_argument(
        "--truncation-direction",
        choices=["right", "left"],
        default=None,
        help="which end of a too-long instruction is cut: right (its end) or left (its start, keeping a question at "
        "the end of a long prompt); requests may say otherwise (default: the checkpoint's, right unless it declares)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="max pairs per forward pass")
    p.add_argument(
        "--max-tokens-per-batch",
        type=int,
        default=None,
        help="token budget of one forward pass (default: 2048 on CPU, where small length-sorted batches waste less "
        "padding on a micro-batch of mixed lengths; 16384 elsewhere)",
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
    g.add_argument("--generator", choices=BACKENDS, default=None, help="a cappy.generate backend")
    g.add_argument(
        "--gen-model",
        default=None,
        help="llamacpp: GGUF path (default: packaged Gemma 3 270M); hf: model dir or hub id; openai: model name",
    )
    g.add_argument("--gen-base-url", default=None, help="openai: server URL including /v1")
    g.add_argument("--gen-device", default="auto", help="hf: cpu, cuda or auto")
    g.add_argument("--gen-dtype", default=None, help="hf: float32, bfloat16 or float16")
    g.add_argument("--gen-threads", type=int, default=None, help="llamacpp: CPU threads")
    g.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        help=f"default recipe of /best-of-n: a shipped name or a YAML file (default {DEFAULT_RECIPE}); a request's n "
        "keeps its first n candidates, or adds samples",
    )
    g.add_argument("--gen-seed", type=int, default=0, help="base seed of the samples")
    u = p.add_argument_group("upstream (/v1/chat/completions and /v1/completions: best-of-n for any LLM server)")
    u.add_argument(
        "--upstream",
        default=None,
        metavar="URL",
        help="an OpenAI-compatible server including /v1 (vLLM, llama.cpp server, Ollama, TGI, a hosted API) to sample "
        "candidates from; without it those endpoints use --generator",
    )
    u.add_argument(
        "--upstream-api-key", default=None, help="the upstream's key (default: $CAPPY_UPSTREAM_API_KEY; none sent)"
    )
    u.add_argument("--upstream-model", default=None, help="for requests naming no model (default: its first listed)")
    u.add_argument("--upstream-timeout", type=float, default=120.0, help="seconds for one upstream call")
    u.add_argument(
        "--upstream-retries",
        type=int,
        default=2,
        help="retries of a call that timed out, failed to connect or got 5xx",
    )
    u.add_argument("--upstream-concurrency", type=int, default=16, help="upstream calls in flight at once, at most")
    u.add_argument("--best-of", type=int, default=4, help="candidates per request that sends no best_of (default 4)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from cappy.serve import ServeConfig, UpstreamConfig, serve  # deferred: imports torch and fastapi

    config = ServeConfig(
        max_items_per_request=args.max_items,
        max_batch_pairs=args.max_batch_pairs,
        max_wait_ms=args.max_wait_ms,
        max_queue_pairs=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 2**20),
        api_key=args.api_key,
        model_name=args.model_name or str(args.model),
        best_of=args.best_of,
    )
    upstream = None
    if args.upstream:
        upstream = UpstreamConfig(
            args.upstream,
            api_key=args.upstream_api_key,
            model=args.upstream_model,
            timeout=args.upstream_timeout,
            max_retries=args.upstream_retries,
            concurrency=args.upstream_concurrency,
        )
    quiet_libraries(args.verbose or args.log_level == "debug", llama=args.generator == "llamacpp")
    generator = name = None
    if args.generator:
        load_recipe(args.recipe)  # a bad recipe fails before any model loads
        options = {"base_url": args.gen_base_url, "device": args.gen_device, "dtype": args.gen_dtype}
        generator = load_generator(args.generator, args.gen_model, n_threads=args.gen_threads, **options)
        name = f"{args.generator}:{generator.model_id}"
    serve(
        args.model,
        config,
        host=args.host,
        port=args.port,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        max_length=args.max_length,
        batch_size=args.batch_size,
        max_tokens_per_batch=args.max_tokens_per_batch,
        num_threads=args.num_threads,
        generator=generator,
        generator_name=name,
        recipe=args.recipe,
        seed=args.gen_seed,
        log_level=args.log_level,
        graceful_timeout=args.graceful_timeout,
        upstream=upstream,
        truncation_direction=args.truncation_direction,
    )
    return 0
