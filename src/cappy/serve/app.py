"""The HTTP service: scoring, TEI- and Cohere/Jina-style reranking, best-of-N, and a playground page.

:func:`create_app` assembles the parts: the endpoints (``routes``), their bodies (``schemas``), JSON errors
(``errors``), the API key and body-size guard (``guard``), the served schema with this server's limits
(``openapi``), and one :class:`~cappy.serve.batcher.MicroBatcher` that every request scoring pairs goes
through, so concurrent requests share model calls and a large request is scored in slices taken in turn with
small ones (``ServeConfig.slice_tokens``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI

from cappy import __version__
from cappy.generate import DEFAULT_RECIPE, Generator
from cappy.model import Cappy
from cappy.serve.batcher import MicroBatcher
from cappy.serve.config import API_KEY_ENV, ServeConfig, with_env_api_key
from cappy.serve.errors import ApiError, add_error_handlers
from cappy.serve.generation import Generation
from cappy.serve.guard import PUBLIC_PATHS, Guard
from cappy.serve.openapi import install_openapi
from cappy.serve.routes import add_routes
from cappy.serve.scoring import pair_cost, score_function

__all__ = ["API_KEY_ENV", "PUBLIC_PATHS", "ApiError", "ServeConfig", "create_app", "with_env_api_key"]

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
) -> FastAPI:
    """Build the FastAPI app around a loaded scorer (and optionally a :class:`cappy.generate.Generator` for
    /best-of-n: ``recipe`` is its default recipe, a shipped name or a YAML file; requests may name shipped recipes
    only; every sample is seeded from ``seed``).

    Example:
        >>> app = create_app(Cappy.from_pretrained("cappy-mini"), ServeConfig(api_key="s3cret"))
        >>> uvicorn.run(app, host="127.0.0.1", port=8080)
    """
    config = with_env_api_key(config or ServeConfig())
    generation = Generation(generator, generator_name, recipe, seed) if generator is not None else None
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
    app.state.page = resources.files("cappy.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    app.state.closing = False
    add_error_handlers(app)
    add_routes(app, offer_best_of_n=generation is not None)
    install_openapi(app, config.max_items_per_request, generation.recipe_names if generation else None)
    app.add_middleware(Guard, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    return app
