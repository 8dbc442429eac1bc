"""The OpenAI-compatible endpoints: best-of-n in front of any LLM, for clients of the official ``openai`` SDK.

``POST /v1/chat/completions`` and ``POST /v1/completions`` sample ``best_of`` candidates, score each with Cappy
against the request, and answer with the best ``n`` (best first) in OpenAI's response shape, each choice with its
``cappy_score``. Where candidates come from: the upstream server (``--upstream URL``, one call per candidate, in
parallel, see :mod:`cappy.serve.upstream`), else the server's generator (``--generator``).

- Sampling: the request's own temperature, top_p, max_tokens, stop and seed; candidate i of an upstream gets seed
  ``seed + i`` (a request without a seed gets a random one), so candidates differ and a seeded request can be
  replayed. With ``recipe``, the candidates follow that named recipe's decodings (greedy and beam as temperature 0,
  top_k sent as the ``top_k`` extension field that vLLM and llama.cpp take), with the recipe's max_tokens and stop
  unless the request gives its own. A local generator seeds its samples from the seed as ``/best-of-n`` does.
- What Cappy scores: the instruction is the conversation flattened by :mod:`cappy.chat` (the TRL reward's rule: a
  single user message is its content; otherwise one ``role: content`` line per message; a message without content
  counts as empty), or the completion prompt as it is; the response is the candidate's text.
- A local generator gets a chat as the same flattened text, followed by a line ``assistant:`` when the conversation
  is more than one user message (no chat template: a chat-tuned model is best served behind an upstream server).
- ``usage`` sums prompt and completion tokens over every call that answered (the prompt counted once per call).
- ``stream: true`` sends the chosen answers as OpenAI's chunk events once every candidate is in and scored
  (selection needs them all): per choice a role chunk, a content chunk and a final chunk with ``finish_reason`` and
  ``cappy_score``; then a usage chunk when ``stream_options.include_usage``; then ``data: [DONE]``.
- Some candidate calls failed: the best is chosen among those that came, ``cappy_candidates_received`` says how many
  and ``cappy_errors`` why the others failed. All failed: the first failure's status (502/503/504, the upstream's
  message quoted). No upstream and no generator: 503 ``no_generator``.
- The ``Server-Timing`` header gives the milliseconds spent sampling (``sample``) and scoring (``score``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from cappy.chat import flatten_prompt
from cappy.generate import Decoding, Recipe
from cappy.serve.errors import ApiError
from cappy.serve.openai_schemas import (
    OPENAI_ERRORS,
    SEED_MAX,
    STREAM_CONTENT,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    OpenAIErrorBody,
    _SamplingRequest,
)
from cappy.serve.routes import best_first, check_count, check_open, unless_disconnected
from cappy.serve.schemas import direction_of
from cappy.serve.upstream import Sampled, UpstreamFailure

router = APIRouter()
MAX_ERRORS_SHOWN = 4  # distinct failure messages listed in cappy_errors


@dataclass
class Pool:
    """The candidates one request got, with what they cost."""

    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None
    errors: list[str] = field(default_factory=list)


def _stops(stop: str | list[str] | None) -> list[str] | None:
    return [stop] if isinstance(stop, str) else stop


def _max_tokens(body: _SamplingRequest) -> int | None:
    return getattr(body, "max_completion_tokens", None) or body.max_tokens


def _no_source() -> ApiError:
    return ApiError(
        503,
        "no_generator",
        "this server has no upstream and no generator: start cappy serve with --upstream URL (an OpenAI-compatible "
        "server) or --generator to use the OpenAI-compatible endpoints",
    )


def _recipe(request: Request, name: str, count: int | None) -> Recipe:
    if request.app.state.recipes is None:
        raise _no_source()
    try:
        return request.app.state.recipes(name, count)
    except (ValueError, KeyError) as err:
        raise ApiError(400, "bad_recipe", str(err), param="recipe") from None


def _counts(request: Request, body: _SamplingRequest) -> tuple[int, int, Recipe | None]:
    """(n, best_of, recipe) of a request: best_of is the request's, else the named recipe's count, else the
    server's, and at least n; above the server's item limit a 413. The recipe is cut or grown to best_of."""
    state = request.app.state
    limit = state.config.max_items_per_request
    n = body.n or 1
    check_count("n", n, limit)
    if body.recipe is None:
        best_of = max(body.best_of or state.config.best_of, n)
        check_count("best_of", best_of, limit)
        return n, best_of, None
    best_of = max(body.best_of or _recipe(request, body.recipe, None).num_candidates, n)
    check_count("best_of", best_of, limit)
    return n, best_of, _recipe(request, body.recipe, best_of)


# ---------------------------------------------------------------------- sampling
def _upstream_calls(
    body: _SamplingRequest, payload: dict[str, Any], model: str, best_of: int, recipe: Recipe | None, seed: int
) -> list[dict[str, Any]]:
    """The SDK keyword arguments of each candidate's call."""
    common: dict[str, Any] = {"model": model, **payload}
    for name in ("presence_penalty", "frequency_penalty", "user"):
        if getattr(body, name) is not None:
            common[name] = getattr(body, name)
    max_tokens, stop = _max_tokens(body), _stops(body.stop)
    # the length field by the name the client used (OpenAI's newer models take only max_completion_tokens)
    length_field = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
    per: list[tuple[dict[str, Any], dict[str, Any]]] = []
    if recipe is None:
        params = {k: getattr(body, k) for k in ("temperature", "top_p") if getattr(body, k) is not None}
        per = [(params, {})] * best_of
    else:
        max_tokens = max_tokens or recipe.max_new_tokens
        stop = stop or (list(recipe.stop) or None)
        for d in recipe.decodings:
            params, extra = {"temperature": 0.0}, {}
            if d.method == "sample":
                params = {"temperature": d.temperature, **({"top_p": d.top_p} if d.top_p != 1.0 else {})}
                extra = {"top_k": d.top_k} if d.top_k else {}
            per += [(params, extra)] * d.n
    if max_tokens is not None:
        common[length_field] = max_tokens
    if stop:
        common["stop"] = stop
    calls = []
    for i, (params, extra) in enumerate(per[:best_of]):
        call = {**common, **params, "seed": (seed + i) % (SEED_MAX + 1)}
        if extra:
            call["extra_body"] = extra
        calls.append(call)
    return calls


async def _from_upstream(request: Request, endpoint: str, calls: list[dict[str, Any]]) -> Pool:
    upstream = request.app.state.upstream
    results = await asyncio.gather(*(upstream.sample(endpoint, c) for c in calls), return_exceptions=True)
    pool = Pool()
    failures: list[UpstreamFailure] = []
    for r in results:
        if isinstance(r, Sampled):
            pool.texts.append(r.text)
            pool.finish_reasons.append(r.finish_reason)
            pool.prompt_tokens += r.prompt_tokens
            pool.completion_tokens += r.completion_tokens
            pool.model = pool.model or r.model
        elif isinstance(r, UpstreamFailure):
            failures.append(r)
        elif isinstance(r, BaseException):
            if isinstance(r, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise r
            failures.append(upstream.failure(r))
    if not pool.texts:
        first = failures[0]
        more = f" ({len(failures)} of {len(calls)} calls failed)" if len(calls) > 1 else ""
        raise ApiError(first.status, first.kind, first.message + more)
    pool.errors = list(dict.fromkeys(f.message for f in failures))[:MAX_ERRORS_SHOWN]
    return pool


def _local_recipe(request: Request, body: _SamplingRequest, best_of: int, recipe: Recipe | None) -> Recipe:
    default = request.app.state.generation.make_recipe(None, None)
    max_tokens, stop = _max_tokens(body), _stops(body.stop)
    if recipe is not None:
        changes: dict[str, Any] = {}
        if max_tokens is not None:
            changes["max_new_tokens"] = max_tokens
            changes["min_new_tokens"] = min(recipe.min_new_tokens, max_tokens)
        if stop is not None:
            changes["stop"] = tuple(stop)
        return dataclasses.replace(recipe, **changes)
    temperature = 1.0 if body.temperature is None else body.temperature
    if temperature == 0:
        decoding = Decoding("greedy")  # one greedy candidate stands for all: greedy decoding is deterministic
    else:
        decoding = Decoding("sample", n=best_of, temperature=temperature, top_p=body.top_p or 1.0)
    return Recipe(
        "request",
        (decoding,),
        min_new_tokens=0,
        max_new_tokens=max_tokens or default.max_new_tokens,
        max_prompt_tokens=default.max_prompt_tokens,
        truncation_side=default.truncation_side,
        stop=tuple(stop or ()),
    )


async def _from_generator(request: Request, prompt: str, recipe: Recipe, best_of: int, seed: int) -> Pool:
    generation = request.app.state.generation
    try:
        cands, prompt_tokens = await generation.sample(prompt, recipe, seed)
    except (ValueError, KeyError) as err:
        raise ApiError(400, "bad_recipe", f"the generator rejected the request: {err}") from None
    except Exception as err:
        raise ApiError(502, "generator_failed", f"the generator failed: {type(err).__name__}: {err}") from None
    if not cands:
        raise ApiError(502, "generator_failed", "the generator returned no candidates")
    pool = Pool(prompt_tokens=prompt_tokens, model=generation.display_name)
    for c in cands:
        pool.texts.append(c.text)
        pool.finish_reasons.append("length" if c.num_tokens >= recipe.max_new_tokens else "stop")
        pool.completion_tokens += int(c.num_tokens)
    while len(pool.texts) < best_of:  # the one greedy candidate, repeated
        pool.texts.append(pool.texts[0])
        pool.finish_reasons.append(pool.finish_reasons[0])
    return pool


# ---------------------------------------------------------------------- one request
async def _best_of_n(
    request: Request, body: _SamplingRequest, endpoint: str, instruction: str, upstream_payload: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, float]]:
    """Sample, score and rank; returns the response body (without choices' shape) and the timings."""
    state = request.app.state
    n, best_of, recipe = _counts(request, body)
    if state.upstream is None and state.generation is None:
        raise _no_source()
    seed = body.seed if body.seed is not None else random.randrange(SEED_MAX + 1)
    check_open(request)
    t0 = time.perf_counter()
    if state.upstream is not None:
        model = body.model or await _default_model(request)
        calls = _upstream_calls(body, upstream_payload, model, best_of, recipe, seed)
        pool = await _from_upstream(request, endpoint, calls)
        pool.model = body.model or pool.model or model
    else:
        local = _local_recipe(request, body, best_of, recipe)
        pool = await _from_generator(request, _generation_prompt(body, instruction), local, best_of, seed)
    t1 = time.perf_counter()
    texts = pool.texts
    scores = await state.batcher.score([instruction] * len(texts), texts, direction_of(body.truncation_direction))
    t2 = time.perf_counter()
    order = [int(i) for i in best_first(scores)[:n]]
    out: dict[str, Any] = {
        "created": int(time.time()),
        "model": pool.model or "unknown",
        "picks": [(i, float(scores[i]), texts[i], pool.finish_reasons[i]) for i in order],
        "usage": {
            "prompt_tokens": pool.prompt_tokens,
            "completion_tokens": pool.completion_tokens,
            "total_tokens": pool.prompt_tokens + pool.completion_tokens,
        },
        "system_fingerprint": None,
        "cappy_best_of": best_of,
        "cappy_candidates_received": len(texts),
    }
    if pool.errors:
        out["cappy_errors"] = pool.errors
    if body.return_candidates:
        out["cappy_candidates"] = [
            {"index": i, "text": t, "score": float(s), "finish_reason": f}
            for i, (t, s, f) in enumerate(zip(texts, scores, pool.finish_reasons))
        ]
    return out, {"sample": 1000 * (t1 - t0), "score": 1000 * (t2 - t1)}


async def _default_model(request: Request) -> str:
    try:
        return await request.app.state.upstream.default_model()
    except UpstreamFailure as err:
        raise ApiError(err.status, err.kind, err.message) from None


def _generation_prompt(body: _SamplingRequest, instruction: str) -> str:
    messages = getattr(body, "messages", None)
    if messages is None or (len(messages) == 1 and messages[0].role == "user"):
        return instruction
    return f"{instruction}\nassistant:"


def _messages(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The conversation as sent (for an upstream), and the same with empty text for a missing content."""
    return [m.model_dump(mode="json", exclude_unset=True) for m in body.messages]


def _instruction(messages: list[dict[str, Any]]) -> str:
    try:
        return flatten_prompt([{**m, "content": m.get("content") or ""} for m in messages])
    except ValueError as err:
        raise ApiError(400, "bad_messages", str(err), param="messages") from None


async def _answer(
    request: Request, body: _SamplingRequest, endpoint: str, instruction: str, payload: dict[str, Any]
) -> Any:
    out, timing = await unless_disconnected(request, _best_of_n(request, body, endpoint, instruction, payload))
    headers = {"Server-Timing": ", ".join(f"{k};dur={v:.1f}" for k, v in timing.items())}
    picks = out.pop("picks")
    if endpoint == "chat":
        out = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", **out}
        out["choices"] = [
            {
                "index": k,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
                "cappy_score": score,
                "cappy_candidate": i,
            }
            for k, (i, score, text, finish) in enumerate(picks)
        ]
    else:
        out = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", **out}
        out["choices"] = [
            {
                "index": k,
                "text": text,
                "finish_reason": finish,
                "logprobs": None,
                "cappy_score": score,
                "cappy_candidate": i,
            }
            for k, (i, score, text, finish) in enumerate(picks)
        ]
    if not body.stream:
        return JSONResponse(out, headers=headers)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    events = _chat_events(out, include_usage) if endpoint == "chat" else _completion_events(out, include_usage)
    headers["Cache-Control"] = "no-cache"
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


# ---------------------------------------------------------------------- streaming
def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


CAPPY_TOP_LEVEL = ("cappy_best_of", "cappy_candidates_received", "cappy_errors", "cappy_candidates")


def _chat_events(out: dict[str, Any], include_usage: bool) -> Iterator[str]:
    """The chosen answers of a chat completion as ``chat.completion.chunk`` events, then ``[DONE]``."""
    head = {"id": out["id"], "object": "chat.completion.chunk", "created": out["created"], "model": out["model"]}
    head["system_fingerprint"] = None
    cappy = {k: out[k] for k in CAPPY_TOP_LEVEL if k in out}
    for k, choice in enumerate(out["choices"]):
        i = choice["index"]
        yield _event(
            {
                **head,
                "choices": [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            }
        )
        if choice["message"]["content"]:
            delta = {"content": choice["message"]["content"]}
            yield _event({**head, "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}]})
        last = {"index": i, "delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"]}
        last.update(cappy_score=choice["cappy_score"], cappy_candidate=choice["cappy_candidate"])
        yield _event({**head, "choices": [last], **(cappy if k == len(out["choices"]) - 1 else {})})
    if include_usage:
        yield _event({**head, "choices": [], "usage": out["usage"]})
    yield "data: [DONE]\n\n"


def _completion_events(out: dict[str, Any], include_usage: bool) -> Iterator[str]:
    """The chosen completions as ``text_completion`` chunk events, then ``[DONE]``."""
    head = {"id": out["id"], "object": "text_completion", "created": out["created"], "model": out["model"]}
    cappy = {k: out[k] for k in CAPPY_TOP_LEVEL if k in out}
    for k, choice in enumerate(out["choices"]):
        i = choice["index"]
        if choice["text"]:
            yield _event(
                {**head, "choices": [{"index": i, "text": choice["text"], "logprobs": None, "finish_reason": None}]}
            )
        last = {"index": i, "text": "", "logprobs": None, "finish_reason": choice["finish_reason"]}
        last.update(cappy_score=choice["cappy_score"], cappy_candidate=choice["cappy_candidate"])
        yield _event({**head, "choices": [last], **(cappy if k == len(out["choices"]) - 1 else {})})
    if include_usage:
        yield _event({**head, "choices": [], "usage": out["usage"]})
    yield "data: [DONE]\n\n"


# ---------------------------------------------------------------------- endpoints
@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**OPENAI_ERRORS, 200: {"content": STREAM_CONTENT}},
    summary="OpenAI chat completion: best_of candidates scored by Cappy against the conversation, the best n returned",
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    messages = _messages(body)
    return await _answer(request, body, "chat", _instruction(messages), {"messages": messages})


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses={**OPENAI_ERRORS, 200: {"content": STREAM_CONTENT}},
    summary="OpenAI completion: best_of candidates scored by Cappy against the prompt, the best n returned",
)
async def completions(body: CompletionRequest, request: Request) -> Any:
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    return await _answer(request, body, "completions", prompt, {"prompt": prompt})


async def _models(request: Request) -> list[dict[str, Any]]:
    state = request.app.state
    if state.upstream is not None:
        try:
            return await state.upstream.models()
        except UpstreamFailure as err:
            raise ApiError(err.status, err.kind, err.message) from None
    if state.generation is not None:
        return [
            {"id": state.generation.display_name, "object": "model", "created": state.started, "owned_by": "cappy"}
        ]
    return []


@router.get(
    "/v1/models",
    response_model=ModelList,
    responses={k: v for k, v in OPENAI_ERRORS.items() if k in (401, 502, 503, 504)},
    summary="The models requests may name: the upstream's, or the local generator",
)
async def list_models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": await _models(request)})


@router.get(
    "/v1/models/{model_id:path}",
    response_model=ModelCard,
    responses={
        **{k: v for k, v in OPENAI_ERRORS.items() if k in (401, 502, 503, 504)},
        404: {"model": OpenAIErrorBody, "description": "no such model"},
    },
    summary="One model of /v1/models",
)
async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
    for card in await _models(request):
        if card["id"] == model_id:
            return JSONResponse(card)
    raise ApiError(404, "model_not_found", f"the model {model_id!r} does not exist here; see /v1/models", "model")


def add_openai_routes(app: FastAPI) -> None:
    """The OpenAI-compatible endpoints (always in the schema; without an upstream or a generator they answer 503)."""
    app.include_router(router)
