"""Generation through an OpenAI-compatible HTTP server (vLLM, TGI, llama.cpp server, Ollama, OpenAI).

Only the standard library is used for HTTP. Each decoding of a prompt is one request asking for ``n`` choices;
a server that returns fewer (many ignore ``n``) gets the rest as parallel ``n=1`` requests with distinct seeds,
and later prompts go straight to those. Timeouts, 429 and 5xx answers and refused connections are retried a
bounded number of times with exponential backoff; then a :class:`GenerationError` says what failed.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cappy.generate.base import Candidate, Decoding, GenerationError, Generator, Recipe, derive_seed

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class OpenAIGenerator(Generator):
    """A model behind ``{base_url}/completions`` or ``{base_url}/chat/completions``.

    ``base_url`` includes the API prefix, e.g. "http://127.0.0.1:8000/v1". ``server_extensions`` sends the
    non-OpenAI fields that vLLM and llama.cpp understand (``top_k``, ``min_tokens``, ``truncate_prompt_tokens``);
    turn it off for the OpenAI API itself. Beam search is not part of the API, so "beam" decodings run greedy
    (temperature 0) and are recorded as "greedy".
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
            raise ValueError(f"endpoint must be 'completions' or 'chat', got {endpoint!r}")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if max_retries < 0 or timeout <= 0 or concurrency < 1:
            raise ValueError("need max_retries >= 0, timeout > 0 and concurrency >= 1")
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
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cappy-openai")
        # several prompts at once, so the pool keeps `concurrency` requests in flight across prompts (vLLM and the
        # llama.cpp server batch concurrent requests)
        self.prompts_in_flight = concurrency
        self._lock = threading.Lock()
        self.requests_sent = 0

    # ------------------------------------------------------------------ HTTP
    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.max_retries + 1):
            with self._lock:
                self.requests_sent += 1
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            retry_after = None
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                try:
                    out = json.loads(raw)
                except ValueError:
                    raise GenerationError(f"{self.url}: the answer is not JSON: {raw[:200]!r}") from None
                if not isinstance(out, dict) or not isinstance(out.get("choices"), list):
                    raise GenerationError(f"{self.url}: the answer has no 'choices' list: {str(out)[:200]}")
                return out
            except urllib.error.HTTPError as err:
                detail = err.read()[:500].decode("utf-8", "replace")
                if err.code not in RETRY_STATUS or attempt == self.max_retries:
                    raise GenerationError(
                        f"{self.url}: HTTP {err.code} after {attempt + 1} attempt(s): {detail}"
                    ) from None
                retry_after = _retry_after(err.headers.get("Retry-After"))
                reason = f"HTTP {err.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                reason = str(getattr(err, "reason", err) or type(err).__name__)
                if attempt == self.max_retries:
                    raise GenerationError(
                        f"cannot reach {self.url} ({reason}) after {attempt + 1} attempt(s); is the server running "
                        "and is the URL right (it includes the /v1 prefix)?"
                    ) from None
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

    def _parse(self, answer: dict[str, Any], d: Decoding) -> list[tuple[str, list[float] | None, int]]:
        choices = sorted(answer["choices"], key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        usage = answer.get("usage") or {}
        out = []
        for c in choices:
            if not isinstance(c, dict):
                raise GenerationError(f"{self.url}: a choice is not an object: {str(c)[:200]}")
            if self.endpoint == "chat":
                text = (c.get("message") or {}).get("content")
                lp = c.get("logprobs") or {}
                items = lp.get("content") if isinstance(lp, dict) else None
                logprobs = [float(t["logprob"]) for t in items] if items else None
            else:
                text = c.get("text")
                lp = c.get("logprobs") or {}
                raw = lp.get("token_logprobs") if isinstance(lp, dict) else None
                logprobs = [float(x) for x in raw if x is not None] if raw else None
            if not isinstance(text, str):
                raise GenerationError(f"{self.url}: a choice has no text: {str(c)[:200]}")
            if logprobs is not None:
                num = len(logprobs)
            elif len(choices) == 1 and isinstance(usage.get("completion_tokens"), int):
                num = usage["completion_tokens"]
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


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
