"""The upstream LLM server of the OpenAI-compatible endpoints, through the official ``openai`` SDK (``AsyncOpenAI``).

One call samples one candidate (``n=1``: many servers ignore ``n``, and a failed call then costs one candidate, not
all). At most ``UpstreamConfig.concurrency`` calls are in flight over the whole server. The SDK retries a call that
timed out, could not connect or got 408/409/429/5xx, ``max_retries`` times with its exponential backoff; then the
failure is an :class:`UpstreamFailure` with the HTTP status this server answers: 503 the upstream cannot be reached
(or is overloaded: 429/503), 504 it did not answer in time (or answered 408/504), 502 any other error answer (with
the upstream's status and message) or an answer that is not a completion.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from cappy.serve.config import UpstreamConfig


class UpstreamFailure(Exception):
    """An upstream call that failed for good: the HTTP ``status`` and error ``kind`` this server answers with.

    Example: ``UpstreamFailure(503, "upstream_unavailable", "cannot reach http://127.0.0.1:8000/v1: ...")``
    """

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


@dataclass
class Sampled:
    """One candidate from one upstream call, with that call's token counts (0 where the upstream gives none)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str | None


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as err:
        raise ImportError("--upstream needs the official openai SDK: pip install 'cappy[serve]'") from err
    return openai


def _upstream_message(err: Any) -> str:
    """The message an upstream error answer carries (OpenAI's ``{"error": {"message"}}`` and common variants)."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
        if isinstance(body.get("detail"), str):  # FastAPI-based servers
            return body["detail"]
    return str(getattr(err, "message", err))


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


class Upstream:
    """An OpenAI-compatible server to sample candidates from.

    Example:
        >>> up = Upstream(UpstreamConfig("http://127.0.0.1:8000/v1"))
        >>> await up.sample("chat", {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "seed": 1})
        Sampled(text='Hello!', finish_reason='stop', prompt_tokens=9, completion_tokens=3, model='m')
        >>> await up.close()
    """

    def __init__(self, config: UpstreamConfig) -> None:
        self.openai = _import_openai()
        self.config = config
        # No key: no Authorization header at all (OPENAI_API_KEY is never read; local servers need no key).
        self._headers = None if config.api_key else {"Authorization": self.openai.Omit()}
        self.client = self.openai.AsyncOpenAI(
            base_url=config.url,
            api_key=config.api_key or "none",
            timeout=config.timeout,
            max_retries=config.max_retries,
        )
        self._slots: asyncio.Semaphore | None = None
        self._default_model: str | None = config.model

    def _semaphore(self) -> asyncio.Semaphore:
        if self._slots is None:  # made on the serving event loop
            self._slots = asyncio.Semaphore(self.config.concurrency)
        return self._slots

    def failure(self, err: BaseException) -> UpstreamFailure:
        """``err`` (from the SDK) as the failure this server answers with."""
        openai, url = self.openai, self.config.url
        tries = f"after {self.config.max_retries + 1} attempt(s)"
        if isinstance(err, UpstreamFailure):
            return err
        if isinstance(err, openai.APITimeoutError):
            return UpstreamFailure(
                504, "upstream_timeout", f"the upstream {url} did not answer within {self.config.timeout:g} s {tries}"
            )
        if isinstance(err, openai.APIConnectionError):
            cause = err.__cause__ or err
            return UpstreamFailure(
                503,
                "upstream_unavailable",
                f"cannot reach the upstream {url} ({type(cause).__name__}: {cause}) {tries}",
            )
        if isinstance(err, openai.APIStatusError):
            status = err.status_code
            message = f"the upstream {url} answered HTTP {status}: {_upstream_message(err)}"
            if status in (429, 503):
                return UpstreamFailure(503, "upstream_overloaded", f"{message} ({tries})")
            if status in (408, 504):
                return UpstreamFailure(504, "upstream_timeout", f"{message} ({tries})")
            return UpstreamFailure(502, "upstream_error", message)
        return UpstreamFailure(502, "upstream_bad_answer", f"the upstream {url} answered {type(err).__name__}: {err}")

    async def sample(self, endpoint: str, body: dict[str, Any]) -> Sampled:
        """One candidate from ``/chat/completions`` (``endpoint="chat"``) or ``/completions``: ``body`` holds the
        SDK's keyword arguments, plus ``extra_body`` for fields outside OpenAI's API. Raises :class:`UpstreamFailure`.
        """
        create = self.client.chat.completions.create if endpoint == "chat" else self.client.completions.create
        async with self._semaphore():
            try:
                answer = await create(**body, n=1, extra_headers=self._headers)
            except self.openai.OpenAIError as err:
                raise self.failure(err) from err
        choices = _field(answer, "choices")
        if not choices:
            raise UpstreamFailure(502, "upstream_bad_answer", f"the upstream {self.config.url} answered no choices")
        choice = choices[0]
        if endpoint == "chat":
            text = _field(_field(choice, "message") or {}, "content")
        else:
            text = _field(choice, "text")
        if text is None:
            text = ""  # e.g. a tool call: no text to score but an empty one
        if not isinstance(text, str):
            raise UpstreamFailure(502, "upstream_bad_answer", f"the upstream answered a {type(text).__name__} text")
        usage = _field(answer, "usage")
        return Sampled(
            text=text,
            finish_reason=str(_field(choice, "finish_reason") or "stop"),
            prompt_tokens=int(_field(usage, "prompt_tokens") or 0) if usage is not None else 0,
            completion_tokens=int(_field(usage, "completion_tokens") or 0) if usage is not None else 0,
            model=_field(answer, "model"),
        )

    async def models(self) -> list[dict[str, Any]]:
        """The upstream's models as ``{"id", "object", "created", "owned_by"}``. Raises :class:`UpstreamFailure`."""
        try:
            page = await self.client.models.list(extra_headers=self._headers)
        except self.openai.OpenAIError as err:
            raise self.failure(err) from err
        out = []
        for m in page.data:
            created = _field(m, "created")
            out.append(
                {
                    "id": str(_field(m, "id")),
                    "object": "model",
                    "created": int(created) if isinstance(created, int | float) else 0,
                    "owned_by": str(_field(m, "owned_by") or "upstream"),
                }
            )
        return out

    async def default_model(self) -> str:
        """The model of requests that name none: the configured one, else the first the upstream lists."""
        if self._default_model is None:
            listed = await self.models()
            if not listed:
                raise UpstreamFailure(
                    502, "upstream_no_model", f"the upstream {self.config.url} lists no model; name one in the request"
                )
            self._default_model = listed[0]["id"]
        return self._default_model

    async def close(self) -> None:
        await self.client.close()
