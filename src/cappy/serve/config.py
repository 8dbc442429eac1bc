"""The service's limits and knobs (:class:`ServeConfig`), the upstream LLM server of the OpenAI-compatible
endpoints (:class:`UpstreamConfig`), and the one reader of ``$CAPPY_API_KEY`` and ``$CAPPY_UPSTREAM_API_KEY``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from cappy.errors import InputError

API_KEY_ENV = "CAPPY_API_KEY"
UPSTREAM_API_KEY_ENV = "CAPPY_UPSTREAM_API_KEY"


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
    # Fair serving: a request estimated above this many tokens is scored in slices of about this many, taken in
    # turn with other requests' work, so a small request waits about one slice behind a large one. None: the
    # scorer's forward-batch token budget (one slice is then about one forward batch); 0: no slicing.
    slice_tokens: int | None = None
    # /v1/chat/completions and /v1/completions: candidates per request when it sends no best_of (nor a recipe)
    best_of: int = 4

    def __post_init__(self) -> None:
        for name in ("max_items_per_request", "max_batch_pairs", "max_queue_pairs", "max_body_bytes", "best_of"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.max_wait_ms < 0:
            raise InputError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_queue_pairs < self.max_items_per_request:
            raise InputError(
                f"max_queue_pairs ({self.max_queue_pairs}) must be at least max_items_per_request "
                f"({self.max_items_per_request}), or a full request could never be accepted"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("api_key is empty; leave it unset to serve without a key")
        if self.slice_tokens is not None and (not isinstance(self.slice_tokens, int) or self.slice_tokens < 0):
            raise InputError(f"slice_tokens must be None, 0 (off) or a positive int, got {self.slice_tokens!r}")
        if self.best_of > self.max_items_per_request:
            raise InputError(
                f"best_of ({self.best_of}) must be at most max_items_per_request ({self.max_items_per_request})"
            )


@dataclass
class UpstreamConfig:
    """An OpenAI-compatible server (vLLM, llama.cpp server, Ollama, TGI, a hosted API) that the OpenAI-compatible
    endpoints sample candidates from. ``url`` includes the API prefix (``http://127.0.0.1:8000/v1``).

    Example: ``create_app(scorer, upstream=UpstreamConfig("http://127.0.0.1:8000/v1", concurrency=8))``
    """

    url: str
    api_key: str | None = field(default=None, repr=False)  # sent as "Authorization: Bearer <key>"; never shown
    model: str | None = None  # for requests that name no model (default: the first the upstream lists)
    timeout: float = 120.0  # seconds for one upstream call
    max_retries: int = 2  # retries of a call that timed out, could not connect, or got 408/409/429/5xx
    concurrency: int = 16  # upstream calls in flight at once, over all requests

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise InputError(f"the upstream URL must start with http:// or https://, got {self.url!r}")
        self.url = self.url.rstrip("/")
        if not self.timeout > 0:
            raise InputError(f"upstream timeout must be > 0 seconds, got {self.timeout!r}")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise InputError(f"upstream max_retries must be an int >= 0, got {self.max_retries!r}")
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise InputError(f"upstream concurrency must be a positive int, got {self.concurrency!r}")
        if self.api_key is not None and not self.api_key.strip():
            self.api_key = None


def with_env_api_key(config: ServeConfig) -> ServeConfig:
    """``config`` with ``api_key`` from $CAPPY_API_KEY when it has none (the one place that reads it).

    Example: ``with_env_api_key(ServeConfig()).api_key`` -> the variable's value, or None
    """
    if config.api_key is None and os.environ.get(API_KEY_ENV):
        return replace(config, api_key=os.environ[API_KEY_ENV])
    return config


def with_env_upstream_key(upstream: UpstreamConfig) -> UpstreamConfig:
    """``upstream`` with ``api_key`` from $CAPPY_UPSTREAM_API_KEY when it has none (the one place that reads it).

    Example: ``with_env_upstream_key(UpstreamConfig("http://127.0.0.1:8000/v1")).api_key``
    """
    if upstream.api_key is None and os.environ.get(UPSTREAM_API_KEY_ENV):
        return replace(upstream, api_key=os.environ[UPSTREAM_API_KEY_ENV])
    return upstream
