"""The endpoints. Each reads what it needs from ``request.app.state`` (set by :func:`cappy.serve.app.create_app`):
``scorer``, ``config``, ``batcher``, ``model_name``, ``generation`` (None without a generator), ``page``,
``closing`` and ``disconnected``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, TypeVar

import numpy as np
import torch
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from cappy import __version__
from cappy.serve.batcher import ShuttingDown
from cappy.serve.errors import ApiError, ClientGone
from cappy.serve.generation import candidate_fields
from cappy.serve.schemas import (
    ERRORS,
    GENERATION_ERRORS,
    BestOfNRequest,
    BestOfNResponse,
    RerankRequest,
    RerankResponse,
    RerankV2Request,
    RerankV2Response,
    ScoreRequest,
    ScoreResponse,
    TeiRank,
    TeiRerankRequest,
    direction_of,
)
from cappy.serve.scoring import first_tokens, pair_lengths

logger = logging.getLogger(__name__)
T = TypeVar("T")
router = APIRouter()


# ---------------------------------------------------------------------- helpers
async def _wait_disconnect(receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (its queued pairs are then never scored)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise ClientGone()


def check_open(request: Request) -> None:
    """Raise :class:`ShuttingDown` (a 503) once the server is closing."""
    if request.app.state.closing:
        raise ShuttingDown("the server is shutting down")


async def score_pairs(
    request: Request, instructions: list[str], responses: list[str], direction: str | None = None
) -> np.ndarray:
    """Scores of the pairs through the batcher (``direction``: the instruction's truncation side, None: the
    scorer's); cancelled if the client leaves."""
    check_open(request)
    return await unless_disconnected(request, request.app.state.batcher.score(instructions, responses, direction))


def check_count(name: str, n: int, limit: int) -> None:
    """A 400 for zero items, a 413 above ``limit``. Example: ``check_count("pairs", 9, 8)`` raises a 413"""
    if n == 0:
        raise ApiError(400, "empty_input", f"{name} is empty; send at least one")
    if n > limit:
        raise ApiError(413, "too_many_items", f"{name} has {n} items, more than this server's limit of {limit}")


def _check_text(name: str, text: str) -> None:
    if not text.strip():
        raise ApiError(400, "empty_input", f"{name} is empty")


def best_first(scores: np.ndarray) -> np.ndarray:
    """Indices of ``scores``, highest first, ties in input order: ``[1, 3, 2]`` -> ``[1, 2, 0]``."""
    return np.argsort(-scores, kind="stable")


# ---------------------------------------------------------------------- endpoints
@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def playground(request: Request) -> HTMLResponse:
    return HTMLResponse(request.app.state.page)


@router.get("/health", summary="Liveness: 200 while serving, 503 while shutting down")
async def health(request: Request) -> JSONResponse:
    if request.app.state.closing:
        return JSONResponse({"status": "shutting_down"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/info", summary="The model, its limits and counters")
async def info(request: Request) -> dict[str, Any]:
    state = request.app.state
    scorer, config, batcher = state.scorer, state.config, state.batcher
    mcfg = scorer.model.config
    limits = {k: v for k, v in asdict(config).items() if k not in ("api_key", "model_name")}
    limits["slice_tokens"] = batcher.max_slice_cost or 0  # the value in force (None in the config: the default)
    return {
        "model": state.model_name,
        "model_type": getattr(mcfg, "model_type", None),
        "architecture": (getattr(mcfg, "architectures", None) or [type(scorer.model).__name__])[0],
        "device": str(scorer.device),
        "dtype": str(next(scorer.model.parameters()).dtype).replace("torch.", ""),
        "precision": scorer.precision,
        "backend": getattr(scorer, "backend", "torch"),
        "max_input_length": scorer.max_length,
        "max_batch": config.max_batch_pairs,
        "forward_batch": {"max_pairs": scorer.batch_size, "max_tokens": scorer.max_tokens_per_batch},
        "torch_threads": torch.get_num_threads(),
        "generator": state.generation.name if state.generation is not None else None,
        "upstream": state.upstream.config.url if state.upstream is not None else None,
        "version": __version__,
        "limits": limits,
        "auth": config.api_key is not None,
        "stats": {**batcher.stats, "queued_pairs": batcher.queued_pairs, "disconnected": state.disconnected},
    }


@router.post("/score", response_model=ScoreResponse, responses=ERRORS, summary="Score (instruction, response) pairs")
async def score(body: ScoreRequest, request: Request) -> JSONResponse:
    check_count("pairs", len(body.pairs), request.app.state.config.max_items_per_request)
    instructions, responses = [p.instruction for p in body.pairs], [p.response for p in body.pairs]
    scores = await score_pairs(request, instructions, responses, direction_of(body.truncation_direction))
    return JSONResponse({"scores": scores.tolist()})


@router.post(
    "/rerank",
    response_model=list[TeiRank],
    responses=ERRORS,
    summary="Rerank texts for a query (Text Embeddings Inference shape), best first",
)
async def rerank_tei(body: TeiRerankRequest, request: Request) -> JSONResponse:
    state = request.app.state
    _check_text("query", body.query)
    check_count("texts", len(body.texts), state.config.max_items_per_request)
    direction = direction_of(body.truncation_direction)
    if body.truncate is False:
        lengths = await state.batcher.run_in_worker(pair_lengths, state.scorer, body.query, body.texts, direction)
        limit = state.scorer.max_length
        for i, (n, at_least) in enumerate(lengths):
            if n > limit:
                raise ApiError(
                    413,
                    "input_too_long",
                    f"texts[{i}] with the query is {'at least ' if at_least else ''}{n} tokens, more than the "
                    f"model's {limit}; send truncate=true to cut it",
                )
    scores = await score_pairs(request, [body.query] * len(body.texts), body.texts, direction)
    out = []
    for i in best_first(scores):
        item: dict[str, Any] = {"index": int(i), "score": float(scores[i])}
        if body.return_text:
            item["text"] = body.texts[i]
        out.append(item)
    return JSONResponse(out)


@router.post(
    "/v1/rerank",
    response_model=RerankResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
    summary="Rerank documents for a query (Cohere/Jina shape), best first",
)
async def rerank_v1(body: RerankRequest, request: Request) -> JSONResponse:
    state = request.app.state
    _check_text("query", body.query)
    check_count("documents", len(body.documents), state.config.max_items_per_request)
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    check_open(request)
    # usage counts the tokens of the pairs as scored (truncated, unpadded), from the encoding that scored them
    scores, lengths = await unless_disconnected(
        request, state.batcher.score_with_lengths([body.query] * len(texts), texts)
    )
    results = []
    for i in best_first(scores)[: body.top_n]:
        item: dict[str, Any] = {"index": int(i), "relevance_score": float(scores[i])}
        if body.return_documents:
            item["document"] = {"text": texts[i]}
        results.append(item)
    usage = {"total_tokens": int(lengths.sum())}
    return JSONResponse({"results": results, "model": state.model_name, "usage": usage})


@router.post(
    "/v2/rerank",
    response_model=RerankV2Response,
    responses=ERRORS,
    summary="Rerank documents for a query (Cohere v2 shape), best first",
)
async def rerank_v2(body: RerankV2Request, request: Request) -> JSONResponse:
    state = request.app.state
    _check_text("query", body.query)
    check_count("documents", len(body.documents), state.config.max_items_per_request)
    texts = body.documents
    if body.max_tokens_per_doc is not None:
        texts = await state.batcher.run_in_worker(first_tokens, state.scorer, texts, body.max_tokens_per_doc)
    scores = await score_pairs(request, [body.query] * len(texts), texts)
    results = [{"index": int(i), "relevance_score": float(scores[i])} for i in best_first(scores)[: body.top_n]]
    meta = {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
    return JSONResponse({"id": uuid.uuid4().hex, "results": results, "meta": meta})


async def best_of_n(body: BestOfNRequest, request: Request) -> JSONResponse:
    state = request.app.state
    generation = state.generation
    if generation is None:
        raise ApiError(
            501, "no_generator", "this server has no generator; start it with --generator to use /best-of-n"
        )
    limit = state.config.max_items_per_request
    _check_text("prompt", body.prompt)
    if body.n is not None:
        check_count("n", body.n, limit)
    check_open(request)
    try:
        produced = await unless_disconnected(request, generation.candidates(body.prompt, body.recipe, body.n))
        cands = [candidate_fields(c) for c in produced][: body.n or limit]
    except (ClientGone, asyncio.CancelledError):
        raise
    except (ValueError, KeyError) as err:  # an unknown recipe name, or a recipe the generator rejects
        raise ApiError(400, "bad_recipe", f"the generator rejected the request: {err}") from None
    except Exception as err:
        logger.exception("generation failed")
        raise ApiError(502, "generator_failed", f"the generator failed: {type(err).__name__}: {err}") from None
    if not cands:
        raise ApiError(502, "generator_failed", "the generator returned no candidates")
    scores = await score_pairs(request, [body.prompt] * len(cands), [c["text"] for c in cands])
    out = [{"index": i, **c, "score": float(s)} for i, (c, s) in enumerate(zip(cands, scores))]
    best = int(best_first(scores)[0])
    return JSONResponse(
        {
            "prompt": body.prompt,
            "candidates": out,
            "chosen": out[best],
            "model": state.model_name,
            "generator": generation.display_name,
        }
    )


def add_routes(app: FastAPI, offer_best_of_n: bool) -> None:
    """Every endpoint; /best-of-n is in the schema only when ``offer_best_of_n`` (a call without a generator
    still gets a 501)."""
    app.include_router(router)
    app.add_api_route(
        "/best-of-n",
        best_of_n,
        methods=["POST"],
        response_model=BestOfNResponse,
        include_in_schema=offer_best_of_n,
        responses=GENERATION_ERRORS,
        summary="Generate n candidates for a prompt, score them all, return them with the best one",
    )
