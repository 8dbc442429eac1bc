"""The ASGI guard in front of the app: the API key, then the body size limit."""

from __future__ import annotations

import hmac
from typing import Any

from cappy.serve.errors import error_response

# Reachable without the API key: the liveness probe and the page shell (it holds no data; its calls need the key).
PUBLIC_PATHS = frozenset({"/health", "/"})


class Guard:
    """Checks the API key, then reads the body up to a size limit before the app sees it.

    After the body has been replayed to the app, further ``receive`` calls reach the server, so the app can
    still notice a client that disconnects.

    Example: ``app.add_middleware(Guard, api_key="s3cret", max_body_bytes=16 * 2**20)``
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
            denied = error_response(401, "unauthorized", msg, {"WWW-Authenticate": "Bearer"}, path=scope["path"])
            await denied(scope, receive, send)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_big = error_response(
            413,
            "payload_too_large",
            f"the request body is larger than {self.max_body_bytes} bytes",
            path=scope["path"],
        )
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
