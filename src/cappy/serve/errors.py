"""Every error of the service answered as JSON ``{"error": message, "error_type": kind}``; on the
OpenAI-compatible paths (:func:`is_openai_path`) in OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}`` with ``code`` the same kind, so the ``openai`` SDK reads them as it reads OpenAI's own.

400 empty input, 401 missing/wrong API key, 404/405 unknown path or method, 413 too many items or too large a
body, 422 malformed (with ``details``), 429 queue full, 499 the client went away, 501 no generator configured,
502 the generator or the upstream failed, 503 shutting down (or, on the OpenAI paths, no generator or upstream, or
the upstream unreachable), 504 the upstream timed out.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from cappy.serve.batcher import Overloaded, ShuttingDown

OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models")


def is_openai_path(path: str) -> bool:
    """Whether ``path`` is one of the OpenAI-compatible endpoints (whose errors take OpenAI's shape)."""
    return path in OPENAI_PATHS or path.startswith("/v1/models/")


def openai_error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status. Example: ``openai_error_type(401)`` -> ``"authentication_error"``"""
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


class ApiError(Exception):
    """An error answered as ``{"error": message, "error_type": kind}`` with an HTTP status (``param``: the request
    field at fault, shown on the OpenAI paths).

    Example: ``raise ApiError(400, "empty_input", "pairs is empty; send at least one")``
    """

    def __init__(self, status: int, kind: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.param = status, kind, message, param


class ClientGone(Exception):
    """The client disconnected before its answer was ready (its queued work was withdrawn)."""


def error_response(
    status: int,
    kind: str,
    message: str,
    headers: dict[str, str] | None = None,
    path: str | None = None,
    param: str | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """The JSON error body with its status, in OpenAI's shape when ``path`` is an OpenAI path (also used by the
    ASGI guard, before the app sees a request). ``extra``: more top-level fields of the body."""
    if path is not None and is_openai_path(path):
        error = {"message": message, "type": openai_error_type(status), "param": param, "code": kind}
        return JSONResponse({"error": error, **(extra or {})}, status_code=status, headers=headers)
    return JSONResponse({"error": message, "error_type": kind, **(extra or {})}, status_code=status, headers=headers)


async def _api_error(request: Request, err: ApiError) -> JSONResponse:
    return error_response(err.status, err.kind, err.message, path=request.url.path, param=err.param)


async def _overloaded(request: Request, err: Overloaded) -> JSONResponse:
    return error_response(429, "overloaded", str(err), {"Retry-After": "1"}, path=request.url.path)


async def _shutting_down(request: Request, err: ShuttingDown) -> JSONResponse:
    return error_response(503, "shutting_down", str(err), {"Retry-After": "5"}, path=request.url.path)


async def _gone(request: Request, err: ClientGone) -> Response:
    request.app.state.disconnected += 1
    return Response(status_code=499)  # nginx's "client closed request"; nobody is left to read it


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
    param = ".".join(x for x in first["loc"] if x != "body") or None
    return error_response(422, "validation", message, path=request.url.path, param=param, extra={"details": details})


async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    kinds = {404: "not_found", 405: "method_not_allowed"}
    kind = kinds.get(err.status_code, "http_error")
    return error_response(err.status_code, kind, str(err.detail), err.headers, path=request.url.path)


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error above as JSON; counts disconnected clients in ``app.state.disconnected``."""
    app.state.disconnected = 0
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(Overloaded, _overloaded)  # type: ignore[arg-type]
    app.add_exception_handler(ShuttingDown, _shutting_down)  # type: ignore[arg-type]
    app.add_exception_handler(ClientGone, _gone)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
