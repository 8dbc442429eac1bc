"""The HTTP service: scoring, TEI- and Cohere/Jina-style reranking, best-of-N, and a playground page.

Every request that scores pairs goes through one :class:`~cappy.serve.batcher.MicroBatcher`, so concurrent
requests share model calls. Errors are JSON ``{"error": message, "error_type": kind}``: 400 empty input,
401 missing/wrong API key, 413 too many items or too large a body, 422 malformed, 429 queue full, 501 no
generator configured, 502 the generator failed, 503 shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
import math
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from importlib import resources
from typing import Annotated, Any, TypeVar

import numpy as np
import torch
from annotated_types import Ge
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from cappy.generate import CandidateSource, Generator
from cappy.model import Cappy, encode_pairs
from cappy.serve.batcher import MicroBatcher, Overloaded, ShuttingDown
from cappy.serve.generation import recipe_factory

logger = logging.getLogger(__name__)

T = TypeVar("T")
API_KEY_ENV = "CAPPY_API_KEY"
# Reachable without the API key: the liveness probe and the page shell (it holds no data; its calls need the key).
PUBLIC_PATHS = frozenset({"/health", "/"})
_CANDIDATE_FIELDS = (
    "decoding",
    "sample_index",
    "logprob_sum",
    "logprob_mean",
    "num_tokens",
    "model",
    "recipe",
    "seed",
)


@dataclass
class ServeConfig:
    """Limits and knobs of the service.

    Example: ``create_app(scorer, ServeConfig(max_items_per_request=64, api_key="s3cret"))``
    """

    max_items_per_request: int = 256  # pairs, texts, documents or candidates in one request (413 beyond)
    max_batch_pairs: int = 256  # pairs gathered into one scoring call
    max_wait_ms: float = 2.0  # how long an idle model waits for more requests to join a batch
    max_queue_pairs: int = 8192  # pairs accepted and not yet scored (429 beyond)
    max_body_bytes: int = 16 * 2**20  # request body size (413 beyond)
    api_key: str | None = None  # when set, every endpoint but /health and / needs "Authorization: Bearer <key>"
    model_name: str | None = None  # the name /info and /v1/rerank report (default: the scorer's path)

    def __post_init__(self) -> None:
        for name in ("max_items_per_request", "max_batch_pairs", "max_queue_pairs", "max_body_bytes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_queue_pairs < self.max_items_per_request:
            raise ValueError(
                f"max_queue_pairs ({self.max_queue_pairs}) must be at least max_items_per_request "
                f"({self.max_items_per_request}), or a full request could never be accepted"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty; leave it unset to serve without a key")


class ApiError(Exception):
    """An error answered as ``{"error": message, "error_type": kind}`` with an HTTP status."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


class _ClientGone(Exception):
    pass


# ---------------------------------------------------------------------- request and response schemas
class _Body(BaseModel):
    # strict: a request's types are the schema's (no 0 for false, no "3" for 3), so what the schema rejects we do
    model_config = ConfigDict(extra="ignore", strict=True)


# What the schema tells clients (and fuzzers) about inputs that the endpoints reject with 400 empty_input: a text
# with no visible character, an empty list. Only documented here; the endpoints check them, so the error stays 400.
_NOT_BLANK: dict[str, Any] = {"json_schema_extra": {"pattern": r"\S"}}
_NOT_EMPTY: dict[str, Any] = {"json_schema_extra": {"minItems": 1}}


# Request fields bounded by ServeConfig.max_items_per_request (written into the served schema by create_app).
_LIMITED_FIELDS = [
    ("ScoreRequest", "pairs"),
    ("TeiRerankRequest", "texts"),
    ("RerankRequest", "documents"),
    ("RerankV2Request", "documents"),
    ("BestOfNRequest", "n"),
]


def _json_int(value: Any) -> Any:
    """JSON Schema's integer: an int or a float without a fraction (2.0); never a string or a bool (strict)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_json_int)]
PositiveJsonInt = Annotated[int, Ge(1), BeforeValidator(_json_int)]  # Ge first, so the schema shows "minimum"


class Pair(_Body):
    instruction: str
    response: str


class ScoreRequest(_Body):
    pairs: list[Pair] = Field(description="the (instruction, response) pairs to score", **_NOT_EMPTY)


class ScoreResponse(BaseModel):
    scores: list[float] = Field(description="one raw Cappy score per pair, in input order; higher is better")


class TeiRerankRequest(_Body):
    """Hugging Face Text Embeddings Inference's /rerank request."""

    query: str = Field(**_NOT_BLANK)
    texts: list[str] = Field(**_NOT_EMPTY)
    raw_scores: bool = Field(False, description="accepted for compatibility; Cappy scores are always raw")
    return_text: bool = False
    truncate: bool | None = Field(
        None,
        description="false: a pair longer than the model's max input length is a 413 error; "
        "true or absent: cut longest-first (Cappy's training format)",
    )


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


class Document(_Body):
    text: str


class RerankRequest(_Body):
    """Cohere/Jina /v1/rerank request; ``model`` is accepted and ignored (one model is served)."""

    model: str | None = None
    query: str = Field(**_NOT_BLANK)
    documents: list[str | Document] = Field(**_NOT_EMPTY)
    top_n: PositiveJsonInt | None = None
    return_documents: bool = False


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: Document | None = None


class RerankV2Request(_Body):
    """Cohere v2 /v2/rerank request (``cohere.ClientV2.rerank``): documents are strings; ``model`` and
    ``priority`` are accepted and ignored (one model, one queue)."""

    model: str | None = None
    query: str = Field(**_NOT_BLANK)
    documents: list[str] = Field(**_NOT_EMPTY)
    top_n: PositiveJsonInt | None = None
    max_tokens_per_doc: PositiveJsonInt | None = Field(None, description="cut each document to this many tokens first")
    priority: JsonInt | None = None


class RerankV2Result(BaseModel):
    index: int
    relevance_score: float


class RerankV2Response(BaseModel):
    id: str
    results: list[RerankV2Result]
    meta: dict[str, Any]


class RerankResponse(BaseModel):
    results: list[RerankResult]
    model: str
    usage: dict[str, int]


class BestOfNRequest(_Body):
    prompt: str = Field(**_NOT_BLANK)
    n: PositiveJsonInt | None = Field(None, description="how many candidates (default: all the recipe makes)")
    recipe: str | None = Field(None, description="the generator's recipe name (its default when absent)")


class Candidate(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int
    text: str
    score: float
    decoding: str | None = None


class BestOfNResponse(BaseModel):
    prompt: str
    candidates: list[Candidate]
    chosen: Candidate
    model: str
    generator: str


class ErrorBody(BaseModel):
    error: str
    error_type: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in [
        (400, "empty input"),
        (401, "missing or wrong API key"),
        (413, "too many items, too long an input, or too large a body"),
        (422, "malformed request"),
        (429, "queue full; retry later"),
        (503, "shutting down"),
    ]
}


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": kind}, status_code=status, headers=headers)


# ---------------------------------------------------------------------- ASGI guard: API key and body size
class _Guard:
    """Checks the API key, then reads the body up to a size limit before the app sees it.

    After the body has been replayed to the app, further ``receive`` calls reach the server, so the app can
    still notice a client that disconnects.
    """

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    def _authorized(self, scope: dict[str, Any]) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.api_key is not None and scope["path"] not in PUBLIC_PATHS and not self._authorized(scope):
            msg = "missing or wrong API key: send 'Authorization: Bearer <key>'"
            await _error(401, "unauthorized", msg, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_big = _error(413, "payload_too_large", f"the request body is larger than {self.max_body_bytes} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                await too_big(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await too_big(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _wait_disconnect(receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
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
    raise _ClientGone()


def _check_count(name: str, n: int, limit: int) -> None:
    if n == 0:
        raise ApiError(400, "empty_input", f"{name} is empty; send at least one")
    if n > limit:
        raise ApiError(413, "too_many_items", f"{name} has {n} items, more than this server's limit of {limit}")


def _check_text(name: str, text: str) -> None:
    if not text.strip():
        raise ApiError(400, "empty_input", f"{name} is empty")


def _order(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")


def _candidate_fields(cand: Any) -> dict[str, Any]:
    get = cand.get if isinstance(cand, dict) else (lambda k, d=None: getattr(cand, k, d))
    text = get("text")
    if not isinstance(text, str):
        raise TypeError(f"a candidate without a str text: {cand!r}")
    out = {"text": text}
    for key in _CANDIDATE_FIELDS:
        value = get(key)
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # JSON has no NaN/inf (e.g. the log-probability of an empty candidate)
        if value is not None:
            out[key] = value if isinstance(value, str | int | float | bool) else str(value)
    return out


def _telemetry_off() -> dict[str, Any]:
    # FastAPI releases with native OpenTelemetry trace every request by default; a scoring service has no use for it.
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    return {}


def with_env_api_key(config: ServeConfig) -> ServeConfig:
    """``config`` with ``api_key`` from $CAPPY_API_KEY when it has none (the one place that reads it)."""
    if config.api_key is None and os.environ.get(API_KEY_ENV):
        return replace(config, api_key=os.environ[API_KEY_ENV])
    return config


def create_app(
    scorer: Cappy,
    config: ServeConfig | None = None,
    generator: Generator | None = None,
    generator_name: str | None = None,
    recipe: str = "quick",
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
    model_name = config.model_name or str(scorer.name_or_path or type(scorer.model).__name__)
    batcher = MicroBatcher(
        # with the token counts of the encoding it scored, for /v1/rerank's usage (no second tokenization)
        lambda i, r: scorer.score(i, r, show_progress_bar=False, return_lengths=True),
        max_batch_pairs=config.max_batch_pairs,
        max_wait_ms=config.max_wait_ms,
        max_queue_pairs=config.max_queue_pairs,
        returns_lengths=True,
    )
    gen_executor = candidates = make_recipe = None
    if generator is not None:
        make_recipe = recipe_factory(recipe)
        candidates = CandidateSource(make_recipe(None, None), generator=generator, seed=seed)
        gen_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cappy-generate")
    page = resources.files("cappy.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    state = {"closing": False, "disconnected": 0}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            # uvicorn has already waited for in-flight requests; this finishes anything still queued.
            state["closing"] = True
            await batcher.close()
            if gen_executor is not None:
                gen_executor.shutdown(wait=True)

    app = FastAPI(
        title="Cappy",
        version=_version(),
        description="Score (instruction, response) pairs, rerank candidates and pick the best of N with a Cappy "
        "scorer. Scores are the model's raw regression output (no sigmoid); higher is better.",
        lifespan=lifespan,
        redoc_url=None,
        **_telemetry_off(),
    )
    app.state.batcher = batcher
    app.state.config = config
    base_openapi = app.openapi

    def openapi_with_limits() -> dict[str, Any]:
        """The schema with this server's item limit on every list and on n (a 413 beyond it)."""
        if app.openapi_schema is None:
            schema = base_openapi()
            limit = config.max_items_per_request
            for name, field in _LIMITED_FIELDS:
                prop = schema.get("components", {}).get("schemas", {}).get(name, {}).get("properties", {}).get(field)
                if prop is None:
                    continue
                for branch in [prop, *prop.get("anyOf", [])]:
                    if branch.get("type") == "array":
                        branch["maxItems"] = limit
                    elif branch.get("type") == "integer":
                        branch["maximum"] = limit
            recipe_prop = (
                schema.get("components", {}).get("schemas", {}).get("BestOfNRequest", {}).get("properties", {})
            )
            for branch in recipe_prop.get("recipe", {}).get("anyOf", []):
                if make_recipe is not None and branch.get("type") == "string":
                    branch["enum"] = list(make_recipe.names)  # the recipe names this server accepts
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi_with_limits  # type: ignore[method-assign]
    app.add_middleware(_Guard, api_key=config.api_key, max_body_bytes=config.max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return _error(err.status, err.kind, err.message)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, err: Overloaded) -> JSONResponse:
        return _error(429, "overloaded", str(err), {"Retry-After": "1"})

    @app.exception_handler(ShuttingDown)
    async def _shutting_down(request: Request, err: ShuttingDown) -> JSONResponse:
        return _error(503, "shutting_down", str(err), {"Retry-After": "5"})

    @app.exception_handler(_ClientGone)
    async def _gone(request: Request, err: _ClientGone) -> Response:
        state["disconnected"] += 1
        return Response(status_code=499)  # nginx's "client closed request"; nobody is left to read it

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in err.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            message = "malformed request: the body is not valid JSON"
        else:
            where = ".".join(x for x in first["loc"] if x != "body") or "body"
            message = f"malformed request: {where}: {first['msg']}"
        if len(details) > 1:
            message += f" (and {len(details) - 1} more)"
        return JSONResponse({"error": message, "error_type": "validation", "details": details}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        return _error(err.status_code, kinds.get(err.status_code, "http_error"), str(err.detail), err.headers)

    async def score_pairs(request: Request, instructions: list[str], responses: list[str]) -> np.ndarray:
        if state["closing"]:
            raise ShuttingDown("the server is shutting down")
        return await _unless_disconnected(request, batcher.score(instructions, responses))

    # ------------------------------------------------------------------ endpoints
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", summary="Liveness: 200 while serving, 503 while shutting down")
    async def health() -> JSONResponse:
        if state["closing"]:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/info", summary="The model, its limits and counters")
    async def info() -> dict[str, Any]:
        mcfg = scorer.model.config
        return {
            "model": model_name,
            "model_type": getattr(mcfg, "model_type", None),
            "architecture": (getattr(mcfg, "architectures", None) or [type(scorer.model).__name__])[0],
            "device": str(scorer.device),
            "dtype": str(next(scorer.model.parameters()).dtype).replace("torch.", ""),
            "precision": scorer.precision,
            "max_input_length": scorer.max_length,
            "max_batch": config.max_batch_pairs,
            "forward_batch": {"max_pairs": scorer.batch_size, "max_tokens": scorer.max_tokens_per_batch},
            "torch_threads": torch.get_num_threads(),
            "generator": generator_name if generator is not None else None,
            "version": _version(),
            "limits": {k: v for k, v in asdict(config).items() if k not in ("api_key", "model_name")},
            "auth": config.api_key is not None,
            "stats": {**batcher.stats, "queued_pairs": batcher.queued_pairs, "disconnected": state["disconnected"]},
        }

    @app.post("/score", response_model=ScoreResponse, responses=_ERRORS, summary="Score (instruction, response) pairs")
    async def score(body: ScoreRequest, request: Request) -> JSONResponse:
        _check_count("pairs", len(body.pairs), config.max_items_per_request)
        scores = await score_pairs(request, [p.instruction for p in body.pairs], [p.response for p in body.pairs])
        return JSONResponse({"scores": scores.tolist()})

    @app.post(
        "/rerank",
        response_model=list[TeiRank],
        responses=_ERRORS,
        summary="Rerank texts for a query (Text Embeddings Inference shape), best first",
    )
    async def rerank_tei(body: TeiRerankRequest, request: Request) -> JSONResponse:
        _check_text("query", body.query)
        _check_count("texts", len(body.texts), config.max_items_per_request)
        if body.truncate is False:
            lengths = await batcher.run_in_worker(_pair_lengths, scorer, body.query, body.texts)
            for i, n in enumerate(lengths):
                if n > scorer.max_length:
                    raise ApiError(
                        413,
                        "input_too_long",
                        f"texts[{i}] with the query is {n} tokens, more than the model's {scorer.max_length}; "
                        "send truncate=true to cut it",
                    )
        scores = await score_pairs(request, [body.query] * len(body.texts), body.texts)
        out = []
        for i in _order(scores):
            item: dict[str, Any] = {"index": int(i), "score": float(scores[i])}
            if body.return_text:
                item["text"] = body.texts[i]
            out.append(item)
        return JSONResponse(out)

    @app.post(
        "/v1/rerank",
        response_model=RerankResponse,
        response_model_exclude_none=True,
        responses=_ERRORS,
        summary="Rerank documents for a query (Cohere/Jina shape), best first",
    )
    async def rerank_v1(body: RerankRequest, request: Request) -> JSONResponse:
        _check_text("query", body.query)
        _check_count("documents", len(body.documents), config.max_items_per_request)
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        if state["closing"]:
            raise ShuttingDown("the server is shutting down")
        # usage counts the tokens of the pairs as scored (truncated, unpadded), from the encoding that scored them
        scores, lengths = await _unless_disconnected(
            request, batcher.score_with_lengths([body.query] * len(texts), texts)
        )
        tokens = int(lengths.sum())
        results = []
        for i in _order(scores)[: body.top_n]:
            item: dict[str, Any] = {"index": int(i), "relevance_score": float(scores[i])}
            if body.return_documents:
                item["document"] = {"text": texts[i]}
            results.append(item)
        return JSONResponse({"results": results, "model": model_name, "usage": {"total_tokens": tokens}})

    @app.post(
        "/v2/rerank",
        response_model=RerankV2Response,
        responses=_ERRORS,
        summary="Rerank documents for a query (Cohere v2 shape), best first",
    )
    async def rerank_v2(body: RerankV2Request, request: Request) -> JSONResponse:
        _check_text("query", body.query)
        _check_count("documents", len(body.documents), config.max_items_per_request)
        texts = body.documents
        if body.max_tokens_per_doc is not None:
            texts = await batcher.run_in_worker(_first_tokens, scorer, texts, body.max_tokens_per_doc)
        scores = await score_pairs(request, [body.query] * len(texts), texts)
        results = [{"index": int(i), "relevance_score": float(scores[i])} for i in _order(scores)[: body.top_n]]
        meta = {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
        return JSONResponse({"id": uuid.uuid4().hex, "results": results, "meta": meta})

    @app.post(
        "/best-of-n",
        response_model=BestOfNResponse,
        include_in_schema=generator is not None,  # a server without a generator does not offer it
        responses={
            **_ERRORS,
            501: {"model": ErrorBody, "description": "no generator configured"},
            502: {"model": ErrorBody, "description": "the generator failed"},
        },
        summary="Generate n candidates for a prompt, score them all, return them with the best one",
    )
    async def best_of_n(body: BestOfNRequest, request: Request) -> JSONResponse:
        if candidates is None or gen_executor is None or make_recipe is None:
            raise ApiError(
                501, "no_generator", "this server has no generator; start it with --generator to use /best-of-n"
            )
        _check_text("prompt", body.prompt)
        if body.n is not None:
            _check_count("n", body.n, config.max_items_per_request)
        if state["closing"]:
            raise ShuttingDown("the server is shutting down")
        loop = asyncio.get_running_loop()
        try:
            asked = make_recipe(body.recipe, body.n)
            produced = await _unless_disconnected(
                request, loop.run_in_executor(gen_executor, candidates.get, [body.prompt], None, asked)
            )
            cands = [_candidate_fields(c) for c in produced[0]][: body.n or config.max_items_per_request]
        except (_ClientGone, asyncio.CancelledError):
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
        best = int(_order(scores)[0])
        return JSONResponse(
            {
                "prompt": body.prompt,
                "candidates": out,
                "chosen": out[best],
                "model": model_name,
                "generator": generator_name or type(generator).__name__,
            }
        )

    return app


def _first_tokens(scorer: Cappy, texts: Sequence[str], n: int) -> list[str]:
    """Each text cut after its first ``n`` tokens (the tokenizer's own offsets; shorter texts unchanged)."""
    enc = scorer.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    return [t if len(off) <= n else t[: off[n - 1][1]] for t, off in zip(texts, enc["offset_mapping"])]


def _pair_lengths(scorer: Cappy, query: str, texts: Sequence[str]) -> list[int]:
    """Each (query, text) pair's length in Cappy's encoding before any truncation."""
    enc = encode_pairs(scorer.tokenizer, [query] * len(texts), list(texts), max_length=None)
    return [len(x) for x in enc["input_ids"]]


def _version() -> str:
    from cappy import __version__

    return __version__
