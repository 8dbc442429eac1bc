"""The OpenAI-compatible endpoints of ``cappy serve`` (/v1/chat/completions, /v1/completions, /v1/models) with the
official ``openai`` SDK: against a scripted upstream on 127.0.0.1 (error mapping, retries, partial failures, exact
request bodies), a local generator, and a real ``python -m cappy.generate.llama_server`` serving Gemma 3 270M.
Also the truncation direction of /score, /rerank and the new endpoints.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest

from cappy.chat import flatten_prompt
from cappy.serve import MicroBatcher, ServeConfig, UpstreamConfig, create_app
from cappy.serve.openai_schemas import ChatCompletionResponse, CompletionResponse, ModelList
from llama_server import free_port, llama_server
from test_serve import TinyGenerator, running, wait_for
from tolerances import assert_scores_close

openai = pytest.importorskip("openai")
pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_torch_thread")]

CHAT = [
    {"role": "system", "content": "Answer in one short sentence."},
    {"role": "user", "content": "What is two plus two?"},
]
# Texts the scripted upstream answers with, picked by the request's seed: different lengths and words, so the tiny
# scorer gives them clearly different scores.
ANSWERS = [
    "four",
    "The answer is 4.",
    "I think it is five, or maybe six.",
    "Two plus two equals four, as every child learns at school.",
    "no",
    "Bonjour",
    "yes yes yes",
    "It is 4",
]


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default listen backlog of 5 refuses a burst of parallel candidate calls


class FakeUpstream:
    """An OpenAI-compatible server on 127.0.0.1 that answers from a script and records every request.

    A 200 answer's text is ``ANSWERS[seed % 8]``, with usage 10 prompt tokens and one completion token per word.
    ``script`` holds statuses consumed in order (200 afterwards); ``fail_seeds`` always fail with 500; ``delay``
    holds each answer back.
    """

    def __init__(self, script=(), fail_seeds=(), delay=0.0, models=("fake-7b", "fake-70b")):
        self.script = list(script)
        self.fail_seeds = set(fail_seeds)
        self.delay = delay
        self.models = models
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.auth: list[str | None] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left, as the timeout test intends

            def do_GET(self):
                outer.auth.append(self.headers.get("Authorization"))
                data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"} for m in outer.models]
                self._send(200, {"object": "list", "data": data})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer._lock:
                    outer.bodies.append(body)
                    outer.paths.append(self.path)
                    outer.auth.append(self.headers.get("Authorization"))
                    status = outer.script.pop(0) if outer.script else 200
                if outer.delay:
                    time.sleep(outer.delay)
                seed = body.get("seed", 0)
                if status == 200 and seed in outer.fail_seeds:
                    status = 500
                if status != 200:
                    self._send(status, {"error": {"message": f"scripted {status} for seed {seed}", "type": "x"}})
                    return
                text = ANSWERS[seed % len(ANSWERS)]
                usage = {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 0}
                if self.path.endswith("/chat/completions"):
                    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    obj = "chat.completion"
                else:
                    choice = {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
                    obj = "text_completion"
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": obj,
                        "created": 1,
                        "model": body["model"],
                        "choices": [choice],
                        "usage": usage,
                    },
                )

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    servers = []

    def make(**kw):
        s = FakeUpstream(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def proxy(scorer, upstream_url, config=None, **upstream):
    upstream.setdefault("max_retries", 0)
    upstream.setdefault("timeout", 10)
    return running(
        create_app(
            scorer, config or ServeConfig(max_items_per_request=8), upstream=UpstreamConfig(upstream_url, **upstream)
        )
    )


def sdk(base, **kw):
    kw.setdefault("api_key", "unused")
    return openai.OpenAI(base_url=f"{base}/v1", max_retries=0, timeout=60, **kw)


# ---------------------------------------------------------------------- chat and completions, scripted upstream
def test_chat_best_of_scores_every_candidate_against_the_conversation(tiny_scorer, fake):
    up = fake()
    with proxy(tiny_scorer, up.url) as (base, _):
        out = sdk(base).chat.completions.create(
            model="fake-7b",
            messages=CHAT,
            temperature=0.7,
            top_p=0.9,
            max_tokens=20,
            stop=["\n\n"],
            seed=5,
            extra_body={"best_of": 4, "return_candidates": True},
        )
    # one upstream call per candidate, the request's sampling parameters, seeds seed + i
    assert sorted(b["seed"] for b in up.bodies) == [5, 6, 7, 8]
    for b in up.bodies:
        assert b["messages"] == CHAT and b["model"] == "fake-7b" and b["n"] == 1
        assert (b["temperature"], b["top_p"], b["max_tokens"], b["stop"]) == (0.7, 0.9, 20, ["\n\n"])
        assert "best_of" not in b and "return_candidates" not in b  # Cappy's fields stay here
    assert set(up.paths) == {"/v1/chat/completions"}
    cands = out.cappy_candidates
    assert sorted(c["text"] for c in cands) == sorted(ANSWERS[s % 8] for s in (5, 6, 7, 8))
    offline = tiny_scorer.score([flatten_prompt(CHAT)] * 4, [c["text"] for c in cands])
    assert_scores_close([c["score"] for c in cands], offline)  # micro-batched: float32 rounding
    best = int(np.argmax(offline))
    assert out.choices[0].message.content == cands[best]["text"] and out.choices[0].cappy_candidate == best
    assert out.choices[0].cappy_score == max(c["score"] for c in cands)
    assert len(out.choices) == 1 and out.choices[0].finish_reason == "stop" and out.object == "chat.completion"
    words = sum(len(c["text"].split()) for c in cands)
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (40, words, 40 + words)
    assert out.model == "fake-7b" and out.cappy_best_of == out.cappy_candidates_received == 4
    ChatCompletionResponse.model_validate(out.model_dump())  # the documented response shape


def test_n_returns_the_best_n_best_first_and_raises_best_of(tiny_scorer, fake):
    up = fake()
    with proxy(tiny_scorer, up.url) as (base, _):
        client = sdk(base)
        out = client.chat.completions.create(
            model="m", messages=CHAT, n=3, seed=0, extra_body={"best_of": 6, "return_candidates": True}
        )
        scores = [c["score"] for c in out.cappy_candidates]
        assert [c.index for c in out.choices] == [0, 1, 2]
        assert [c.cappy_candidate for c in out.choices] == [
            int(i) for i in np.argsort(scores, kind="stable")[::-1][:3]
        ]
        assert [c.cappy_score for c in out.choices] == sorted(scores, reverse=True)[:3]
        up.bodies.clear()
        out = client.chat.completions.create(model="m", messages=CHAT, n=3, seed=0, extra_body={"best_of": 2})
        assert len(up.bodies) == 3 and len(out.choices) == 3 and out.cappy_best_of == 3  # best_of raised to n
        up.bodies.clear()
        client.chat.completions.create(model="m", messages=CHAT)
        assert len(up.bodies) == 4  # the server's default best_of
        assert all(set(b) == {"model", "messages", "n", "seed"} for b in up.bodies)  # nothing the request did not set
        assert len({b["seed"] for b in up.bodies}) == 4  # no seed: a random one, still distinct per candidate


def test_max_completion_tokens_goes_upstream_by_its_name(tiny_scorer, fake):
    up = fake()
    with proxy(tiny_scorer, up.url) as (base, _):
        sdk(base).chat.completions.create(
            model="m", messages=CHAT, max_completion_tokens=7, presence_penalty=0.5, extra_body={"best_of": 2}
        )
    assert all(b["max_completion_tokens"] == 7 and "max_tokens" not in b for b in up.bodies)
    assert all(b["presence_penalty"] == 0.5 for b in up.bodies)


def test_completions_with_the_sdks_own_best_of(tiny_scorer, fake):
    up = fake()
    prompt = "Question: What is two plus two?\nAnswer:"
    with proxy(tiny_scorer, up.url) as (base, _):
        out = sdk(base).completions.create(
            model="fake-7b",
            prompt=prompt,
            best_of=3,
            n=2,
            seed=1,
            max_tokens=8,
            extra_body={"return_candidates": True},
        )
        listed = sdk(base).completions.create(model="fake-7b", prompt=[prompt], best_of=3, seed=1)
    assert set(up.paths) == {"/v1/completions"} and all(b["prompt"] == prompt for b in up.bodies)
    texts = [c["text"] for c in out.cappy_candidates]
    assert texts == [ANSWERS[s] for s in (1, 2, 3)]  # in sampling order
    offline = tiny_scorer.score([prompt] * 3, texts)
    assert out.choices[0].text == texts[int(np.argmax(offline))] and len(out.choices) == 2
    assert out.object == "text_completion" and out.choices[0].finish_reason == "length"
    assert listed.choices[0].text == out.choices[0].text  # a prompt list holding one prompt is the same request
    CompletionResponse.model_validate(out.model_dump())


def test_streaming_sends_the_chosen_answer_as_chunks(tiny_scorer, fake):
    up = fake()
    with proxy(tiny_scorer, up.url) as (base, _):
        client = sdk(base)
        whole = client.chat.completions.create(model="m", messages=CHAT, seed=3, n=2, extra_body={"best_of": 4})
        chunks = list(
            client.chat.completions.create(
                model="m",
                messages=CHAT,
                seed=3,
                n=2,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"best_of": 4, "return_candidates": True},
            )
        )
        comp = list(client.completions.create(model="m", prompt="2+2=", seed=3, best_of=4, stream=True))
        comp_whole = client.completions.create(model="m", prompt="2+2=", seed=3, best_of=4)
        with httpx.stream("POST", f"{base}/v1/chat/completions", json={"messages": CHAT, "stream": True}) as r:
            raw = "".join(r.iter_text())
            assert r.headers["content-type"].startswith("text/event-stream")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    for k in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == k]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == whole.choices[k].message.content
        assert [c.finish_reason for c in mine][-1] == "stop" and all(c.finish_reason is None for c in mine[:-1])
        assert mine[-1].cappy_score == pytest.approx(whole.choices[k].cappy_score, abs=1e-6)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len(chunks[-2].cappy_candidates) == 4 and chunks[-2].cappy_candidates_received == 4
    assert "".join(c.choices[0].text for c in comp if c.choices) == comp_whole.choices[0].text
    assert comp[-1].choices[0].finish_reason == "length"
    assert raw.rstrip().endswith("data: [DONE]") and raw.count("data: ") == 4  # role, content, final, [DONE]


def test_async_sdk_requests_in_parallel(tiny_scorer, fake):
    up = fake(delay=0.3)
    with proxy(tiny_scorer, up.url, concurrency=16) as (base, _):

        async def main():
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            t0 = time.perf_counter()
            outs = await asyncio.gather(
                *(
                    client.chat.completions.create(model="m", messages=CHAT, seed=8 * k, extra_body={"best_of": 4})
                    for k in range(4)
                )
            )
            await client.close()
            return outs, time.perf_counter() - t0

        outs, elapsed = asyncio.run(main())
    assert len(up.bodies) == 16 and all(o.cappy_candidates_received == 4 for o in outs)
    # 16 calls of 0.3 s each: one after another 4.8 s; in parallel about 0.3 s plus scoring
    assert elapsed < 16 * 0.3 / 2, elapsed


def test_upstream_concurrency_is_bounded(tiny_scorer, fake):
    up = fake(delay=0.2)
    with proxy(tiny_scorer, up.url, concurrency=2) as (base, _):
        t0 = time.perf_counter()
        sdk(base).chat.completions.create(model="m", messages=CHAT, extra_body={"best_of": 6})
        elapsed = time.perf_counter() - t0
    assert elapsed >= 3 * 0.2 * 0.9, elapsed  # 6 calls, 2 at a time: at least three rounds of 0.2 s


# ---------------------------------------------------------------------- upstream failures
def test_partial_failures_choose_among_the_candidates_that_came(tiny_scorer, fake):
    up = fake(fail_seeds={11, 13})
    with proxy(tiny_scorer, up.url) as (base, _):
        out = sdk(base).chat.completions.create(
            model="m", messages=CHAT, seed=10, extra_body={"best_of": 4, "return_candidates": True}
        )
    assert out.cappy_best_of == 4 and out.cappy_candidates_received == 2
    assert sorted(c["text"] for c in out.cappy_candidates) == sorted([ANSWERS[10 % 8], ANSWERS[12 % 8]])
    assert out.choices[0].message.content in {ANSWERS[2], ANSWERS[4]}
    assert len(out.cappy_errors) == 2 and all("HTTP 500: scripted 500 for seed 1" in e for e in out.cappy_errors)
    assert out.usage.prompt_tokens == 20  # only the calls that answered


@pytest.mark.parametrize(
    ("kind", "status", "code", "message"),
    [
        ("error", 502, "upstream_error", r"answered HTTP 400: scripted 400 for seed"),
        ("overloaded", 503, "upstream_overloaded", r"answered HTTP 429: scripted 429"),
        ("down", 503, "upstream_unavailable", r"cannot reach the upstream http://127\.0\.0\.1:\d+/v1"),
        ("slow", 504, "upstream_timeout", r"did not answer within 0\.3 s"),
    ],
)
def test_upstream_failures_map_to_openai_errors_and_scoring_goes_on(tiny_scorer, fake, kind, status, code, message):
    if kind == "down":
        url, extra = f"http://127.0.0.1:{free_port()}/v1", {}
    else:
        script = {"error": [400] * 4, "overloaded": [429] * 8, "slow": []}[kind]
        up = fake(script=script, delay=1.0 if kind == "slow" else 0.0)
        url, extra = up.url, ({"timeout": 0.3} if kind == "slow" else {})
    with proxy(tiny_scorer, url, **extra) as (base, _):
        with pytest.raises(openai.APIStatusError) as info:
            sdk(base).chat.completions.create(model="m", messages=CHAT, extra_body={"best_of": 2})
        err = info.value
        assert err.status_code == status, err
        assert err.body["code"] == code and err.body["type"] == "server_error"
        assert __import__("re").search(message, err.body["message"]), err.body["message"]
        assert "(2 of 2 calls failed)" in err.body["message"]
        r = httpx.post(f"{base}/score", json={"pairs": [{"instruction": "2+2?", "response": "4"}]})
        assert r.status_code == 200 and len(r.json()["scores"]) == 1  # the scorer keeps serving


def test_retries_are_bounded(tiny_scorer, fake):
    up = fake(script=[503, 500])
    with proxy(tiny_scorer, up.url, max_retries=2) as (base, _):
        out = sdk(base).chat.completions.create(model="m", messages=CHAT, seed=1, extra_body={"best_of": 1})
    assert out.choices[0].message.content == ANSWERS[1] and len(up.bodies) == 3  # two failures retried, then 200
    up = fake(script=[503] * 10)
    with proxy(tiny_scorer, up.url, max_retries=1) as (base, _):
        with pytest.raises(openai.InternalServerError, match="after 2 attempt"):
            sdk(base).chat.completions.create(model="m", messages=CHAT, extra_body={"best_of": 1})
    assert len(up.bodies) == 2


def test_models_are_the_upstreams_and_the_key_goes_upstream_only(tiny_scorer, fake, monkeypatch):
    monkeypatch.setenv("CAPPY_UPSTREAM_API_KEY", "sk-upstream")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-sent")
    monkeypatch.delenv("CAPPY_API_KEY", raising=False)
    up = fake()
    with proxy(tiny_scorer, up.url, config=ServeConfig(api_key="s3cret")) as (base, _):
        client = sdk(base, api_key="s3cret")
        listed = client.models.list()
        assert [m.id for m in listed.data] == ["fake-7b", "fake-70b"]
        assert client.models.retrieve("fake-70b").owned_by == "fake"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("nope")
        client.chat.completions.create(model="fake-7b", messages=CHAT, extra_body={"best_of": 1})
        # no model named: the first the upstream lists
        r = httpx.post(
            f"{base}/v1/chat/completions",
            json={"messages": CHAT, "best_of": 1},
            headers={"Authorization": "Bearer s3cret"},
        )
        assert r.json()["model"] == "fake-7b" and up.bodies[-1]["model"] == "fake-7b"
        with pytest.raises(openai.AuthenticationError) as info:
            sdk(base, api_key="wrong").chat.completions.create(model="m", messages=CHAT)
        assert info.value.body["type"] == "authentication_error" and info.value.body["code"] == "unauthorized"
        info_page = httpx.get(f"{base}/info", headers={"Authorization": "Bearer s3cret"}).text
    assert set(up.auth) == {"Bearer sk-upstream"}  # the upstream's key, never the client's or OPENAI_API_KEY
    assert "sk-upstream" not in info_page and up.url in info_page
    ModelList.model_validate(listed.model_dump())


def test_no_upstream_key_sends_no_authorization(tiny_scorer, fake, monkeypatch):
    monkeypatch.delenv("CAPPY_UPSTREAM_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-sent")
    up = fake()
    with proxy(tiny_scorer, up.url) as (base, _):
        sdk(base).chat.completions.create(model="m", messages=CHAT, extra_body={"best_of": 2})
    assert up.auth == [None, None]


def test_recipe_names_the_candidates_decodings(tiny_scorer, fake):
    up = fake()
    with proxy(tiny_scorer, up.url) as (base, _):
        out = sdk(base).chat.completions.create(model="m", messages=CHAT, seed=0, extra_body={"recipe": "cpu8_stop"})
        schema = httpx.get(f"{base}/openapi.json").json()
        with pytest.raises(openai.BadRequestError, match="unknown recipe"):
            sdk(base).chat.completions.create(model="m", messages=CHAT, extra_body={"recipe": "/etc/passwd"})
    assert out.cappy_best_of == 8 and len(up.bodies) == 8
    by_seed = sorted(up.bodies, key=lambda b: b["seed"])
    # cpu8_stop: beam4 (temperature 0 upstream), sample x2, temp0.9 x2, topk40 x2, topp0.95; 32 tokens, 4 stops
    assert [b["temperature"] for b in by_seed] == [0.0, 1.0, 1.0, 0.9, 0.9, 1.0, 1.0, 1.0]
    assert [b.get("top_k") for b in by_seed] == [None] * 5 + [40, 40, None]
    assert [b.get("top_p") for b in by_seed] == [None] * 7 + [0.95]
    assert all(
        b["max_tokens"] == 32 and b["stop"] == ["\n\n", "\nQ:", "\nQuestion:", "<end_of_turn>"] for b in up.bodies
    )
    recipe = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]["recipe"]
    assert "cpu8_stop" in next(b for b in recipe["anyOf"] if "enum" in b)["enum"]


# ---------------------------------------------------------------------- without an upstream
def test_a_local_generator_serves_the_endpoints(tiny_scorer):
    gen = TinyGenerator()
    app = create_app(
        tiny_scorer, ServeConfig(max_items_per_request=8, best_of=3), generator=gen, generator_name="tiny"
    )
    with running(app) as (base, _):
        client = sdk(base)
        out = client.chat.completions.create(
            model="whatever", messages=CHAT, seed=4, max_tokens=9, extra_body={"return_candidates": True}
        )
        prompt, recipe_name, count, seed = gen.calls[-1]
        assert (prompt, recipe_name, count, seed) == (f"{flatten_prompt(CHAT)}\nassistant:", "request", 3, 4)
        texts = [c["text"] for c in out.cappy_candidates]
        offline = tiny_scorer.score([flatten_prompt(CHAT)] * 3, texts)
        assert out.choices[0].message.content == texts[int(np.argmax(offline))] and out.model == "tiny"
        comp = client.completions.create(model="x", prompt="What is two plus two?", best_of=2, temperature=0)
        assert gen.calls[-1][1:3] == ("request", 1) and comp.cappy_best_of == 2  # greedy once, for both
        named = client.completions.create(model="x", prompt="Sky?", extra_body={"recipe": "quick"})
        assert gen.calls[-1][1:3] == ("quick", 5) and named.cappy_candidates_received == 5
        assert [m.id for m in client.models.list().data] == ["tiny"]
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "please crash"}])
        assert info.value.status_code == 502 and info.value.body["code"] == "generator_failed"


def test_without_upstream_or_generator_the_endpoints_say_so(tiny_scorer):
    with running(create_app(tiny_scorer, ServeConfig(max_items_per_request=8))) as (base, _):
        client = sdk(base)
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="m", messages=CHAT)
        assert info.value.status_code == 503 and info.value.body["code"] == "no_generator"
        assert "--upstream" in info.value.body["message"]
        assert client.models.list().data == []
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "x", "recipe": "quick"})
        assert r.status_code == 503
        schema = httpx.get(f"{base}/openapi.json").json()
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/models"):
            assert path in schema["paths"], path
        body = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
        assert next(b for b in body["best_of"]["anyOf"] if b.get("type") == "integer")["maximum"] == 8
        for payload, status, code, param in [
            ({"messages": []}, 422, "validation", "messages"),
            ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, 422, "validation", "temperature"),
            ({"messages": [{"role": "wizard", "content": "x"}]}, 422, "validation", "messages.0.role"),
            ({"messages": [{"role": "user", "content": "x"}], "n": 9}, 413, "too_many_items", None),
            ({"messages": [{"role": "user", "content": "x"}], "best_of": 9}, 413, "too_many_items", None),
        ]:
            r = httpx.post(f"{base}/v1/chat/completions", json=payload)
            err = r.json()["error"]
            assert (r.status_code, err["code"], err["param"]) == (status, code, param), r.text
            assert err["type"] == "invalid_request_error" and err["message"]
        r = httpx.post(f"{base}/v1/chat/completions", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation"
        assert httpx.post(f"{base}/score", json={"pairs": []}).json()["error_type"] == "empty_input"  # as before


# ---------------------------------------------------------------------- truncation direction
# A long few-shot prompt whose question is at its end: cut from the right the question is lost, from the left kept.
LONG = " ".join(f"Example {i}: the sky is blue and grass is green." for i in range(40)) + " Question: is fire cold?"


def test_truncation_direction_left_keeps_the_end_of_a_long_instruction(tiny_scorer):
    responses = ["No, fire is hot.", "Yes.", "The sky is blue."]
    right = tiny_scorer.score([LONG] * 3, responses)
    before = tiny_scorer.instruction_truncation
    from cappy.serve.scoring import truncating

    left = truncating(tiny_scorer, "left").score([LONG] * 3, responses)
    assert tiny_scorer.instruction_truncation == before == "right"
    assert np.abs(left - right).max() > 1e-3  # another part of the instruction is scored
    app = create_app(tiny_scorer, ServeConfig(max_items_per_request=8))
    with running(app) as (base, _), httpx.Client(base_url=base, timeout=30) as c:
        pairs = [{"instruction": LONG, "response": r} for r in responses]
        got_left = c.post("/score", json={"pairs": pairs, "truncation_direction": "left"}).json()["scores"]
        got_right = c.post("/score", json={"pairs": pairs, "truncation_direction": "Right"}).json()["scores"]
        got_default = c.post("/score", json={"pairs": pairs}).json()["scores"]
        assert_scores_close(got_left, left)  # micro-batched: float32 rounding
        assert_scores_close(got_right, right)
        assert_scores_close(got_default, right)  # the checkpoint's own side
        tei = c.post("/rerank", json={"query": LONG, "texts": responses, "truncation_direction": "Left"}).json()
        assert_scores_close([x["score"] for x in sorted(tei, key=lambda x: x["index"])], left)
        r = c.post("/rerank", json={"query": LONG, "texts": responses, "truncation_direction": "middle"})
        assert r.status_code == 422 and "truncation_direction" in r.json()["error"]


def test_truncation_direction_on_the_openai_endpoints(tiny_scorer, fake):
    up = fake()
    messages = [{"role": "user", "content": LONG}]
    with proxy(tiny_scorer, up.url) as (base, _):
        client = sdk(base)
        outs = {
            d: client.chat.completions.create(
                model="m",
                messages=messages,
                seed=0,
                extra_body={"best_of": 3, "return_candidates": True, "truncation_direction": d},
            )
            for d in ("left", "right")
        }
    texts = [c["text"] for c in outs["left"].cappy_candidates]
    for d, out in outs.items():
        assert [c["text"] for c in out.cappy_candidates] == texts
        from cappy.serve.scoring import truncating

        expected = truncating(tiny_scorer, d).score([LONG] * 3, texts)
        assert_scores_close([c["score"] for c in out.cappy_candidates], expected)  # micro-batched: float32 rounding


def test_batcher_keeps_keys_apart_and_in_order():
    calls: list[tuple[str | None, list[str]]] = []

    def score_fn(instructions, responses, key=None):
        calls.append((key, list(responses)))
        return np.arange(len(responses), dtype=np.float32)

    async def main():
        b = MicroBatcher(score_fn, max_batch_pairs=8, max_wait_ms=50)
        await b.start()
        jobs = [(["q"], [f"r{k}"], key) for k, key in enumerate([None, "left", None, "left", "right", None])]
        await asyncio.gather(*(b.score(i, r, key) for i, r, key in jobs))
        await b.close()

    asyncio.run(main())
    # one call per key, each with its jobs in arrival order; the first key's jobs first
    assert calls == [(None, ["r0", "r2", "r5"]), ("left", ["r1", "r3"]), ("right", ["r4"])]


def test_cli_score_and_rank_take_a_truncation_direction(tiny_model_dir, tiny_scorer, tmp_path):
    from cappy.cli import main
    from cappy.serve.scoring import truncating

    responses = ["No, fire is hot.", "Yes."]
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"instruction": LONG, "response": responses[0], "candidates": responses}) + "\n")
    got = {}
    for d in ("left", "right"):
        for cmd in ("score", "rank"):
            out = tmp_path / f"{cmd}-{d}.jsonl"
            args = [cmd, "--model", str(tiny_model_dir("bert")), "--device", "cpu", "--dtype", "float32"]
            assert main([*args, "--input", str(inp), "--output", str(out), "--truncation-direction", d]) == 0
            got[cmd, d] = json.loads(out.read_text())
    for d in ("left", "right"):
        expected = truncating(tiny_scorer, d).score([LONG] * 2, responses)
        assert_scores_close([got["score", d]["score"]], expected[:1])  # another batch width: float32 rounding
        assert_scores_close(got["rank", d]["scores"], expected)
    assert abs(got["score", "left"]["score"] - got["score", "right"]["score"]) > 1e-3


# ---------------------------------------------------------------------- a real llama.cpp server upstream
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """The real upstream: ``python -m cappy.generate.llama_server`` serving Gemma 3 270M on 127.0.0.1."""
    with llama_server(tmp_path_factory.mktemp("gemma")) as (url, _):
        yield url


@pytest.fixture(scope="module")
def gemma_proxy(gemma, tiny_scorer):
    with proxy(tiny_scorer, gemma, timeout=120) as (base, _):
        yield base


def _assert_pick_is_cappys_choice(scorer, instruction, out, texts):
    """The chosen text is what ``Cappy.choose`` picks offline, unless two scores are closer than float32 rounding
    between the micro-batched and the offline pass (then either may win)."""
    offline = scorer.score([instruction] * len(texts), texts)
    assert_scores_close([c["score"] for c in out.cappy_candidates], offline)  # micro-batched: float32 rounding
    choice = out.choices[0]
    chosen = choice.message.content if hasattr(choice, "message") else choice.text
    assert chosen == texts[choice.cappy_candidate]
    ranked = np.sort(offline)[::-1]
    if len(ranked) == 1 or ranked[0] - ranked[1] > 1e-3:  # 1e-3: far above the 1e-4 of assert_scores_close
        assert chosen == texts[scorer.choose(instruction, texts)]


def test_real_upstream_chat_n2_and_usage(gemma, gemma_proxy, tiny_scorer):
    direct = openai.OpenAI(base_url=gemma, api_key="unused", max_retries=0)
    one = direct.chat.completions.create(model="gemma", messages=QUESTION, max_tokens=1, temperature=0)
    out = sdk(gemma_proxy).chat.completions.create(
        model="gemma",
        messages=QUESTION,
        max_tokens=8,
        temperature=0.9,
        seed=1,
        n=2,
        extra_body={"best_of": 3, "return_candidates": True},
    )
    texts = [c["text"] for c in out.cappy_candidates]
    assert len(texts) == out.cappy_candidates_received == 3
    _assert_pick_is_cappys_choice(tiny_scorer, flatten_prompt(QUESTION), out, texts)
    assert [c.cappy_score for c in out.choices] == sorted((c["score"] for c in out.cappy_candidates), reverse=True)[:2]
    assert out.choices[1].message.content == texts[out.choices[1].cappy_candidate]
    # usage: the same prompt three times, and each candidate's tokens (8 for those cut by max_tokens)
    assert out.usage.prompt_tokens == 3 * one.usage.prompt_tokens
    cut = sum(c["finish_reason"] == "length" for c in out.cappy_candidates)
    assert 8 * cut + (3 - cut) <= out.usage.completion_tokens <= 24
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.model == "gemma" and [m.id for m in sdk(gemma_proxy).models.list().data] == ["gemma"]


def test_real_upstream_completions_and_streaming(gemma_proxy, tiny_scorer):
    client = sdk(gemma_proxy)
    prompt = "Question: What is the capital of France?\nAnswer:"
    out = client.completions.create(
        model="gemma", prompt=prompt, max_tokens=8, best_of=2, seed=4, extra_body={"return_candidates": True}
    )
    texts = [c["text"] for c in out.cappy_candidates]
    _assert_pick_is_cappys_choice(tiny_scorer, prompt, out, texts)
    chunks = list(
        client.chat.completions.create(
            model="gemma",
            messages=QUESTION,
            max_tokens=8,
            seed=9,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"best_of": 2, "return_candidates": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = chunks[-2]
    scores = [c["score"] for c in final.cappy_candidates]
    assert text == final.cappy_candidates[int(np.argmax(scores))]["text"]
    assert final.choices[0].finish_reason in ("stop", "length") and final.choices[0].cappy_score == max(scores)
    assert chunks[-1].usage.completion_tokens >= 2 and chunks[-1].choices == []


def test_real_upstream_killed_mid_test(tiny_scorer, tmp_path):
    with llama_server(tmp_path) as (url, proc), proxy(tiny_scorer, url, timeout=60) as (base, _):
        client = sdk(base)
        assert client.chat.completions.create(
            model="gemma", messages=QUESTION, max_tokens=4, extra_body={"best_of": 1}
        )
        answers: list = []

        def ask():
            try:
                answers.append(
                    client.chat.completions.create(
                        model="gemma", messages=QUESTION, max_tokens=200, extra_body={"best_of": 2}
                    )
                )
            except openai.APIStatusError as err:
                answers.append(err)

        asking = threading.Thread(target=ask)
        asking.start()
        time.sleep(1.5)  # the upstream is generating the first candidate
        proc.kill()
        asking.join(60)
        err = answers[0]
        assert isinstance(err, openai.APIStatusError) and err.status_code in (502, 503), err
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="gemma", messages=QUESTION, max_tokens=4)
        assert info.value.status_code == 503 and info.value.body["code"] == "upstream_unavailable"
        assert "cannot reach the upstream" in info.value.body["message"]
        with pytest.raises(openai.APIStatusError, match="cannot reach"):
            client.models.list()
        r = httpx.post(f"{base}/score", json={"pairs": [{"instruction": "2+2?", "response": "4"}]})
        assert r.status_code == 200  # the scorer keeps serving
        assert httpx.get(f"{base}/health").json() == {"status": "ok"}


def test_cli_serve_upstream(gemma, tiny_model_dir, tiny_scorer):
    port = free_port()
    cmd = [sys.executable, "-m", "cappy", "serve", "--model", str(tiny_model_dir("bert")), "--device", "cpu"]
    cmd += ["--port", str(port), "--num-threads", "1", "--log-level", "warning", "--upstream", gemma, "--best-of", "2"]
    cmd += ["--upstream-retries", "0", "--truncation-direction", "left"]
    env = {k: v for k, v in os.environ.items() if k not in ("CAPPY_API_KEY", "CAPPY_UPSTREAM_API_KEY")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                return httpx.get(f"{base}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=120, what="cappy serve --upstream to start")
        out = sdk(base).chat.completions.create(model="gemma", messages=QUESTION, max_tokens=4, seed=2)
        assert out.cappy_best_of == 2 == out.cappy_candidates_received and out.choices[0].message.content is not None
        info = httpx.get(f"{base}/info").json()
        assert info["upstream"] == gemma and info["limits"]["best_of"] == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0


def test_upstream_without_the_sdk_is_a_clear_error(tiny_scorer, monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # what `import openai` sees when it is not installed
    with pytest.raises(ImportError, match=r"pip install 'cappy\[serve\]'"):
        create_app(tiny_scorer, upstream=UpstreamConfig("http://127.0.0.1:1/v1"))
    with pytest.raises(ValueError, match="http://"):
        UpstreamConfig("127.0.0.1:8000/v1")
