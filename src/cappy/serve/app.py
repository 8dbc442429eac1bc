"""The HTTP service: scoring, TEI- and Cohere/Jina-style reranking, best-of-N, OpenAI-compatible best-of-n
completions in front of any LLM server, and a playground page.

:func:`create_app` assembles the parts: the endpoints (``routes``; the OpenAI-compatible ones in ``openai_routes``
with their bodies in ``openai_schemas`` and the upstream client in ``upstream``), their bodies (``schemas``), JSON
errors (``errors``), the API key and body-size guard (``guard``), the served schema with this server's limits
(``openapi``), and one :class:`~cappy.serve.batcher.MicroBatcher` that every request scoring pairs goes
through, so concurrent requests share model calls and a large request is scored in slices taken in turn with
small ones (``ServeConfig.slice_tokens``).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI

from cappy import __version__
from cappy.generate import DEFAULT_RECIPE, Generator
from cappy.model import Cappy
from cappy.serve.batcher import MicroBatcher
from cappy.serve.config import API_KEY_ENV, ServeConfig, UpstreamConfig, with_env_api_key, with_env_upstream_key
from cappy.serve.errors import ApiError, add_error_handlers
from cappy.serve.generation import Generation, recipe_factory
from cappy.serve.guard import PUBLIC_PATHS, Guard
from cappy.serve.openai_routes import add_openai_routes
from cappy.serve.openapi import install_openapi
from cappy.serve.routes import add_routes
from cappy.serve.scoring import pair_cost, score_function
from cappy.serve.upstream import Upstream

__all__ = [
    "API_KEY_ENV",
    "PUBLIC_PATHS",
    "ApiError",
    "ServeConfig",
    "UpstreamConfig",
    "create_app",
    "with_env_api_key",
]

DESCRIPTION = (
    "Score (instruction, response) pairs, rerank candidates and pick the best of N with a Cappy "
    "scorer. Scores are the model's raw regression output (no sigmoid); higher is better."
)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    await app.state.batcher.start()
    try:
        yield
    finally:
        # uvicorn has already waited for in-flight requests; this finishes anything still queued.
        app.state.closing = True
        await app.state.batcher.close()
        if app.state.generation is not None:
            app.state.generation.close()
        if app.state.upstream is not None:
            await app.state.upstream.close()


def _telemetry_off() -> dict[str, Any]:
    # FastAPI releases with native OpenTelemetry trace every request by default; a scoring service has no use for it.
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    return {}


def _batcher(scorer: Cappy, config: ServeConfig) -> MicroBatcher:
    slice_tokens = scorer.max_tokens_per_batch if config.slice_tokens is None else config.slice_tokens
    return MicroBatcher(
        score_function(scorer),
        max_batch_pairs=config.max_batch_pairs,
        max_wait_ms=config.max_wait_ms,
        max_queue_pairs=config.max_queue_pairs,
        returns_lengths=True,
        max_slice_cost=slice_tokens or None,
        pair_cost=pair_cost(scorer.max_length) if slice_tokens else None,
    )


def create_app(
    scorer: Cappy,
    config: ServeConfig | None = None,
    generator: Generator | None = None,
    generator_name: str | None = None,
    recipe: str = DEFAULT_RECIPE,
    seed: int = 0,
    upstream: UpstreamConfig | None = None,
) -> FastAPI:
    """Build the FastAPI app around a loaded scorer, optionally with a :class:`cappy.generate.Generator` (for
    /best-of-n, and the OpenAI-compatible endpoints when there is no upstream: ``recipe`` is its default recipe, a
    shipped name or a YAML file; requests may name shipped recipes only; every sample is seeded from ``seed``) and an
    upstream OpenAI-compatible server (candidates of /v1/chat/completions and /v1/completions; its key from
    $CAPPY_UPSTREAM_API_KEY when the config has none).

    Example:
        >>> app = create_app(Cappy.from_pretrained("cappy-mini"), ServeConfig(api_key="s3cret"))
        >>> app = create_app(scorer, upstream=UpstreamConfig("http://127.0.0.1:8000/v1"))  # best-of-n for any LLM
        >>> uvicorn.run(app, host="127.0.0.1", port=8080)
    """
    config = with_env_api_key(config or ServeConfig())
    generation = Generation(generator, generator_name, recipe, seed) if generator is not None else None
    if generation is not None:
        recipes = generation.make_recipe
    else:
        recipes = recipe_factory(recipe) if upstream is not None else None
    app = FastAPI(
        title="Cappy",
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan,
        redoc_url=None,
        **_telemetry_off(),
    )
    app.state.scorer = scorer
    app.state.config = config
    app.state.batcher = _batcher(scorer, config)
    app.state.model_name = config.model_name or str(scorer.name_or_path or type(scorer.model).__name__)
    app.state.generation = generation
    app.state.upstream = Upstream(with_env_upstream_key(upstream)) if upstream is not None else None
    app.state.recipes = recipes  # (name, count) -> Recipe, for the OpenAI-compatible endpoints' recipe field
    app.state.started = int(time.time())
    app.state.page = resources.files("cappy.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    app.state.closing = False
    add_error_handlers(app)
    add_routes(app, offer_best_of_n=generation is not None)
    add_openai_routes(app)
    install_openapi(app, config.max_items_per_request, sorted(recipes.names) if recipes is not None else None)
    app.add_middleware(Guard, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    return app
