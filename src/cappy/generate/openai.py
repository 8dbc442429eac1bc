"""Generation through an OpenAI-compatible HTTP server (vLLM, TGI, llama.cpp server, Ollama, OpenAI).

Requests go through the official ``openai`` SDK (``pip install 'cappy[openai]'``). Each decoding of a prompt is one
request asking for ``n`` choices; a server that returns fewer (many ignore ``n``) gets the rest as parallel ``n=1``
requests with distinct seeds, and later prompts go straight to those. Timeouts, 408/409/429/5xx answers and refused
connections are retried a bounded number of times with exponential backoff; then a :class:`GenerationError` says
what failed.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cappy.errors import InputError
from cappy.generate.base import Candidate, Decoding, GenerationError, Generator, Recipe, derive_seed

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})

#: what the SDK's ``create`` takes as keyword arguments; the rest of a request body goes in ``extra_body``
_SDK_FIELDS = frozenset(
    {"model", "prompt", "messages", "max_tokens", "n", "seed", "logprobs", "temperature", "top_p", "stop"}
)


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as err:
        raise ImportError(
            "the OpenAI-compatible backend needs the official openai SDK: pip install 'cappy[openai]'"
        ) from err
    return openai


def _field(obj: Any, name: str) -> Any:
    """``obj.name`` of an SDK object, or ``obj[name]`` of a dict (what the SDK leaves of fields it does not know)."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


class OpenAIGenerator(Generator):
    """A model behind ``{base_url}/completions`` or ``{base_url}/chat/completions``, through the ``openai`` SDK.

    ``base_url`` includes the API prefix, e.g. "http://127.0.0.1:8000/v1". ``api_key`` None sends no
    ``Authorization`` header (local servers need none; ``OPENAI_API_KEY`` is not read here, the CLI reads it).
    ``server_extensions`` sends the non-OpenAI fields that vLLM and llama.cpp understand (``top_k``, ``min_tokens``,
    ``truncate_prompt_tokens``); turn it off for the OpenAI API itself. ``extra_body`` is merged into every request
    body last. Beam search is not part of the API, so "beam" decodings run greedy (temperature 0) and are recorded
    as "greedy".
    Example:
        >>> gen = OpenAIGenerator("http://127.0.0.1:8000/v1", "google/flan-t5-xl", endpoint="completions")
        >>> gen.generate(["Q: What is 2+2?\\nA:"], "paper17")[0][0].text
    """

    supports_beam = False

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        endpoint: str = "completions",
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        concurrency: int = 4,
        server_extensions: bool = True,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if endpoint not in ("completions", "chat"):
            raise InputError(f"endpoint must be 'completions' or 'chat', got {endpoint!r}")
        if not base_url.startswith(("http://", "https://")):
            raise InputError(f"base_url must start with http:// or https://, got {base_url!r}")
        if max_retries < 0 or timeout <= 0 or concurrency < 1:
            raise InputError("need max_retries >= 0, timeout > 0 and concurrency >= 1")
        openai = _import_openai()
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/{'chat/completions' if endpoint == 'chat' else 'completions'}"
        self.model = model
        self.model_id = model
        self.api_key = api_key
        self.endpoint = endpoint
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.server_extensions = server_extensions
        self.extra_body = dict(extra_body or {})
        self.n_supported: bool | None = None  # unknown until a server answers a request with n > 1
        # The SDK needs some key: a placeholder, with the header omitted from every request when the caller gave none
        # (so neither it nor OPENAI_API_KEY reaches a server that was not meant to get a key). The SDK's own retries
        # are off: its backoff is fixed (0.5 s doubling to 8 s), and the loop in _post honours `backoff`,
        # `max_backoff`, counts `requests_sent` and says after how many attempts it gave up.
        self._client = openai.OpenAI(
            base_url=self.base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=0
        )
        self._headers = None if api_key else {"Authorization": openai.Omit()}
        self._openai = openai
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cappy-openai")
        # several prompts at once, so the pool keeps `concurrency` requests in flight across prompts (vLLM and the
        # llama.cpp server batch concurrent requests)
        self.prompts_in_flight = concurrency
        self._lock = threading.Lock()
        self.requests_sent = 0

    # ------------------------------------------------------------------ HTTP
    def _create(self, body: dict[str, Any]) -> Any:
        kwargs = {k: v for k, v in body.items() if k in _SDK_FIELDS}
        extra = {k: v for k, v in body.items() if k not in _SDK_FIELDS}
        create = self._client.chat.completions.create if self.endpoint == "chat" else self._client.completions.create
        return create(**kwargs, extra_body=extra or None, extra_headers=self._headers)

    def _post(self, body: dict[str, Any]) -> Any:
        """One request (``body`` is the JSON sent), retried on timeouts, refused connections and 408/409/429/5xx."""
        errors = self._openai
        for attempt in range(self.max_retries + 1):
            with self._lock:
                self.requests_sent += 1
            retry_after = None
            try:
                answer = self._create(body)
            except errors.APIStatusError as err:
                detail = _status_detail(err)
                if err.status_code not in RETRY_STATUS or attempt == self.max_retries:
                    raise GenerationError(
                        f"{self.url}: HTTP {err.status_code} after {attempt + 1} attempt(s): {detail}"
                    ) from err
                retry_after = _retry_after(err.response.headers.get("Retry-After"))
                reason = f"HTTP {err.status_code}"
            except errors.APIConnectionError as err:  # APITimeoutError included
                if isinstance(err, errors.APITimeoutError):
                    reason = f"no answer within {self.timeout:g}s"
                else:
                    reason = str(err.__cause__ or err) or type(err).__name__
                if attempt == self.max_retries:
                    raise GenerationError(
                        f"cannot reach {self.url} ({reason}) after {attempt + 1} attempt(s); is the server running "
                        "and is the URL right (it includes the /v1 prefix)?"
                    ) from err
            except json.JSONDecodeError as err:
                raise GenerationError(f"{self.url}: the answer is not JSON ({err})") from err
            except errors.OpenAIError as err:
                raise GenerationError(f"{self.url}: {type(err).__name__}: {err}") from err
            else:
                if isinstance(answer, str | bytes):  # the SDK returns a body that is not JSON as it is
                    raise GenerationError(f"{self.url}: the answer is not JSON: {answer[:200]!r}")
                if not isinstance(_field(answer, "choices"), list):
                    raise GenerationError(f"{self.url}: the answer has no 'choices' list: {str(answer)[:200]}")
                return answer
            delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
            if retry_after is not None:
                delay = min(self.max_backoff, retry_after)
            logger.info("%s: %s; retrying in %.2fs (attempt %d)", self.url, reason, delay, attempt + 1)
            time.sleep(delay)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ requests and answers
    def _body(self, prompt: str, d: Decoding, recipe: Recipe, n: int, seed: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": recipe.max_new_tokens, "n": n, "seed": seed}
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
            body["logprobs"] = True
        else:
            body["prompt"] = prompt
            body["logprobs"] = 1
        if d.method == "sample":
            body["temperature"] = d.temperature
            body["top_p"] = d.top_p
        else:
            body["temperature"] = 0.0
            body["top_p"] = 1.0
        if recipe.stop:
            body["stop"] = list(recipe.stop)[:4]  # OpenAI accepts at most 4
        if self.server_extensions:
            # 0 disables top-k in llama.cpp, llama-cpp-python (which rejects -1) and current vLLM.
            body["top_k"] = d.top_k if d.method == "sample" else 0
            body["min_tokens"] = recipe.min_new_tokens
            body["truncate_prompt_tokens"] = recipe.max_prompt_tokens
        body.update(self.extra_body)
        return body

    def _parse(self, answer: Any, d: Decoding) -> list[tuple[str, list[float] | None, int]]:
        """(text, token log-probs or None, token count) per choice of an SDK ``Completion`` / ``ChatCompletion``."""
        objects = (dict, self._openai.BaseModel)
        choices = sorted(
            _field(answer, "choices"), key=lambda c: (_field(c, "index") or 0) if isinstance(c, objects) else 0
        )
        completion_tokens = _field(_field(answer, "usage"), "completion_tokens")
        out = []
        for c in choices:
            if not isinstance(c, objects):
                raise GenerationError(f"{self.url}: a choice is not an object: {str(c)[:200]}")
            if self.endpoint == "chat":
                text = _field(_field(c, "message"), "content")
                items = _field(_field(c, "logprobs"), "content")
                raw = [_field(t, "logprob") for t in items] if isinstance(items, list) else None
            else:
                text = _field(c, "text")
                raw = _field(_field(c, "logprobs"), "token_logprobs")
            logprobs = [float(x) for x in raw if x is not None] if isinstance(raw, list) and raw else None
            if not isinstance(text, str):
                raise GenerationError(f"{self.url}: a choice has no text: {str(c)[:200]}")
            if logprobs is not None:
                num = len(logprobs)
            elif len(choices) == 1 and isinstance(completion_tokens, int):
                num = completion_tokens
            else:
                num = 0
            out.append((text.strip(), logprobs, num))
        return out

    def _generate_prompt(
        self, prompt: str, prompt_id: str, recipe: Recipe, plan: list[Decoding], seed: int
    ) -> list[Candidate]:
        def ask(d: Decoding, n: int, sample: int):
            return self._parse(
                self._post(self._body(prompt, d, recipe, n, derive_seed(seed, prompt_id, d.name, sample))), d
            )

        # First round: one request per decoding, all of n at once (unless the server is known to ignore n).
        first = {}
        for d in plan:
            if d.n == 1 or self.n_supported is not False:
                first[d.name] = self._pool.submit(ask, d, d.n, 0)
        got = {name: fut.result() for name, fut in first.items()}
        # Second round: whatever is missing, one sample per request, each with its own seed.
        rest = {}
        for d in plan:
            have = got.get(d.name, [])[: d.n]
            got[d.name] = have
            if d.n > 1 and d.name in first:
                with self._lock:
                    if self.n_supported is None:
                        self.n_supported = len(have) >= d.n
                        if not self.n_supported:
                            logger.warning(
                                "%s returned %d of n=%d choices; sending one request per sample",
                                self.url,
                                len(have),
                                d.n,
                            )
            for i in range(len(have), d.n):
                rest[(d.name, i)] = self._pool.submit(ask, d, 1, i)
        for (name, _i), fut in sorted(rest.items(), key=lambda kv: kv[0][1]):
            answer = fut.result()
            if not answer:
                raise GenerationError(f"{self.url}: the server returned no choice")
            got[name].append(answer[0])
        out = []
        for d in plan:
            for i, (text, logprobs, num) in enumerate(got[d.name]):
                out.append(Candidate.from_logprobs(text, d.name, i, logprobs, num))
        return out

    def _generate_many(
        self, items: list[tuple[str, str]], recipe: Recipe, plan: list[Decoding], seed: int
    ) -> list[list[Candidate]]:
        if len(items) == 1:
            return [self._generate_prompt(items[0][0], items[0][1], recipe, plan, seed)]
        # one waiting thread per prompt; the requests themselves all go through the bounded pool
        with ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="cappy-openai-prompt") as prompts:
            futures = [prompts.submit(self._generate_prompt, p, pid, recipe, plan, seed) for p, pid in items]
            return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()


def _status_detail(err: Any) -> str:
    """The start of an error answer's body (the server's own message), else the SDK's summary of it."""
    try:
        text = err.response.text
    except Exception:  # a streamed or unread body: the SDK's message says enough
        text = ""
    return (text or str(err.message))[:500]


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
