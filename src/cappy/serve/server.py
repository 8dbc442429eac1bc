"""Running the service: load the scorer with serving defaults, build the app, run it under uvicorn until SIGTERM."""

from __future__ import annotations

import signal
import sys
from typing import Any

import torch
import uvicorn

from cappy.errors import InputError
from cappy.generate import DEFAULT_RECIPE
from cappy.model import Cappy, resolve_device
from cappy.serve.app import create_app
from cappy.serve.config import ServeConfig, UpstreamConfig, with_env_api_key

CPU_TOKEN_BUDGET = 2048  # small length-sorted batches waste less padding on a micro-batch of mixed lengths
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _stopped(signum: int, frame: Any) -> None:
    print("cappy serve: stopped after finishing accepted requests", file=sys.stderr, flush=True)
    sys.exit(0)


def serve(
    model: str,
    config: ServeConfig,
    host: str = "127.0.0.1",
    port: int = 8080,
    device: str = "auto",
    dtype: str = "auto",
    backend: str = "auto",
    max_length: int | None = None,
    batch_size: int = 64,
    max_tokens_per_batch: int | None = None,
    num_threads: int | None = None,
    generator: Any = None,
    generator_name: str | None = None,
    recipe: str = DEFAULT_RECIPE,
    seed: int = 0,
    log_level: str = "info",
    graceful_timeout: float = 30.0,
    upstream: UpstreamConfig | None = None,
    truncation_direction: str | None = None,
) -> None:
    """Serve ``model`` on ``host:port``. On CPU, torch gets one thread less than its default (at least 1), leaving
    a core to the HTTP side, and forward batches a budget of :data:`CPU_TOKEN_BUDGET` tokens, unless given.
    ``backend``: the scorer's engine (:func:`cappy.model.backends.resolve_backend`).
    ``upstream``: the OpenAI-compatible server /v1/chat/completions and /v1/completions sample from.
    ``truncation_direction``: which end of a too-long instruction is cut, unless a request says (None: the
    checkpoint's own, "right" unless it declares "left").
    Example: ``serve("cappy-mini", ServeConfig(api_key="s3cret"), port=8080)``
    """
    config = with_env_api_key(config)
    if host not in LOCAL_HOSTS and config.api_key is None:
        print(
            f"cappy serve: warning: listening on {host} without an API key; anyone who reaches it can use it",
            file=sys.stderr,
        )
    on_cpu = resolve_device(device).type == "cpu"
    threads = num_threads
    if threads is None and on_cpu:
        threads = max(1, torch.get_num_threads() - 1)
    if threads is not None:
        if threads < 1:
            raise InputError(f"num_threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    budget = max_tokens_per_batch if max_tokens_per_batch is not None else (CPU_TOKEN_BUDGET if on_cpu else 16384)
    scorer = Cappy.from_pretrained(
        model,
        device=device,
        dtype=dtype,
        backend=backend,
        max_length=max_length,
        batch_size=batch_size,
        max_tokens_per_batch=budget,
        instruction_truncation=truncation_direction,
    )
    if generator is not None and generator_name is None:
        generator_name = getattr(generator, "model_id", type(generator).__name__)
    app = create_app(
        scorer, config, generator=generator, generator_name=generator_name, recipe=recipe, seed=seed, upstream=upstream
    )
    print(f"cappy serve: {scorer!r} on http://{host}:{port}", file=sys.stderr, flush=True)
    if upstream is not None:
        print(
            f"cappy serve: /v1/chat/completions and /v1/completions pick the best of {config.best_of} candidates "
            f"from {upstream.url}",
            file=sys.stderr,
            flush=True,
        )
    # uvicorn turns SIGTERM into a graceful shutdown, then re-raises it; this handler makes that a clean exit.
    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=graceful_timeout,
        access_log=log_level == "debug",
    )
