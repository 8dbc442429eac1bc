"""The HTTP service on a real uvicorn server on 127.0.0.1, serving the tiny BERT scorer.

Tests that need requests to pile up hold the scorer's next call at a gate (the real scorer runs once released),
so queueing, batching, cancellation and shutdown are checked deterministically rather than by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn

from cappy import Cappy
from cappy.generate import Candidate, Generator
from cappy.serve import MicroBatcher, Overloaded, ServeConfig, ShuttingDown, create_app
from tolerances import assert_scores_close

pytestmark = pytest.mark.timeout(120)

INSTR = [
    "Is the sky blue on a clear day? Answer yes or no.",
    "What is two plus two?",
    "Premise: a man plays a guitar. Hypothesis: a person makes music. Entailment?",
]
RESP = ["yes", "four", "no", "The answer is 4.", "entailment", "Bonjour"]


@contextlib.contextmanager
def running(app, graceful_s: float = 10.0):
    """Serve ``app`` with uvicorn in a thread on a free 127.0.0.1 port; yields (base_url, server)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=graceful_s)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


class Gate:
    """Replaces ``scorer.score`` on one instance: each call is recorded, and held until ``release`` is set."""

    def __init__(self, scorer: Cappy) -> None:
        self.real = scorer.score
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[int] = []
        scorer.score = self

    def __call__(self, instructions, responses, **kwargs):
        self.calls.append(len(instructions))
        self.entered.set()
        assert self.release.wait(60), "the test never released the gate"
        return self.real(instructions, responses, **kwargs)


def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def stats(base: str, headers: dict | None = None) -> dict:
    return httpx.get(f"{base}/info", headers=headers).json()["stats"]


def pairs_body(instr: list[str], resp: list[str]) -> dict:
    return {"pairs": [{"instruction": i, "response": r} for i, r in zip(instr, resp)]}


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    return Cappy.from_pretrained(tiny_model_dir("bert"), device="cpu")


@pytest.fixture
def fresh_scorer(tiny_model_dir):
    """A scorer of its own, so a test may put a Gate on it."""
    return Cappy.from_pretrained(tiny_model_dir("bert"), device="cpu")


@pytest.fixture(scope="module")
def server(scorer):
    config = ServeConfig(max_items_per_request=8, max_body_bytes=64 * 1024, model_name="tiny-bert")
    with running(create_app(scorer, config)) as (base, _):
        with httpx.Client(base_url=base, timeout=30) as client:
            yield client


# ---------------------------------------------------------------------- the endpoints
def test_score_matches_offline(server, scorer):
    instr = [INSTR[i % 3] for i in range(6)]
    r = server.post("/score", json=pairs_body(instr, RESP))
    assert r.status_code == 200, r.text
    assert_scores_close(r.json()["scores"], scorer.score(instr, RESP))  # micro-batched: float32 rounding


def test_tei_rerank_shape_order_and_scores(server, scorer):
    r = server.post("/rerank", json={"query": INSTR[0], "texts": RESP, "return_text": True, "raw_scores": True})
    assert r.status_code == 200, r.text
    got = r.json()
    expected = scorer.rank(INSTR[0], RESP)
    assert [g["index"] for g in got] == [e["index"] for e in expected]
    assert [g["text"] for g in got] == [RESP[e["index"]] for e in expected]
    assert_scores_close([g["score"] for g in got], [e["score"] for e in expected])  # micro-batched: float32 rounding
    assert [g["score"] for g in got] == sorted((g["score"] for g in got), reverse=True)
    plain = server.post("/rerank", json={"query": INSTR[0], "texts": RESP}).json()
    assert all(set(x) == {"index", "score"} for x in plain)


def test_tei_truncate_false_rejects_too_long_input(server, scorer):
    long_text = " ".join(["guitar music"] * 200)  # well past the tiny model's 128 positions
    r = server.post("/rerank", json={"query": "q", "texts": ["short", long_text], "truncate": False})
    assert r.status_code == 413 and r.json()["error_type"] == "input_too_long"
    assert "texts[1]" in r.json()["error"]
    r = server.post("/rerank", json={"query": "q", "texts": ["short", long_text], "truncate": True})
    assert r.status_code == 200
    assert {x["index"] for x in r.json()} == {0, 1}
    assert server.post("/rerank", json={"query": "q", "texts": ["short"], "truncate": False}).status_code == 200


def test_v1_rerank_cohere_jina_shape(server, scorer):
    docs = ["yes", {"text": "no"}, "four", {"text": "entailment"}]
    texts = ["yes", "no", "four", "entailment"]
    r = server.post(
        "/v1/rerank",
        json={"model": "whatever", "query": INSTR[2], "documents": docs, "top_n": 2, "return_documents": True},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    expected = scorer.rank(INSTR[2], texts, top_k=2)
    assert [x["index"] for x in body["results"]] == [e["index"] for e in expected]
    assert [x["document"] for x in body["results"]] == [{"text": e["text"]} for e in expected]
    assert_scores_close(  # micro-batched: float32 rounding
        [x["relevance_score"] for x in body["results"]], [e["score"] for e in expected]
    )
    assert body["model"] == "tiny-bert"
    tokens = sum(len(x) for x in scorer.encode([INSTR[2]] * 4, texts)["input_ids"])
    assert body["usage"] == {"total_tokens": tokens}
    bare = server.post("/v1/rerank", json={"query": INSTR[2], "documents": texts}).json()["results"]
    assert len(bare) == 4 and all("document" not in x for x in bare)


def test_v2_rerank_cohere_v2_shape(server, scorer):
    texts = ["yes", "no", "four", "entailment"]
    r = server.post("/v2/rerank", json={"model": "rerank-v3.5", "query": INSTR[2], "documents": texts, "top_n": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = scorer.rank(INSTR[2], texts, top_k=3)
    assert [x["index"] for x in body["results"]] == [e["index"] for e in expected]
    assert_scores_close([x["relevance_score"] for x in body["results"]], [e["score"] for e in expected])  # batched
    assert (
        set(body) == {"id", "results", "meta"}
        and body["id"]
        and set(body["results"][0]) == {"index", "relevance_score"}
    )
    # max_tokens_per_doc cuts each document to its first tokens before scoring
    long = ["the cat sat on the mat and then it slept all day long", "a dog"]
    cut = server.post("/v2/rerank", json={"query": "q", "documents": long, "max_tokens_per_doc": 3}).json()["results"]
    want = scorer.score(["q", "q"], ["the cat sat", "a dog"])
    assert_scores_close([x["relevance_score"] for x in sorted(cut, key=lambda x: x["index"])], want)  # batched
    bad = server.post("/v2/rerank", json={"query": "q", "documents": [{"text": "a"}]})
    assert bad.status_code == 422 and bad.json()["error_type"] == "validation"
    assert server.post("/v2/rerank", json={"query": "q", "documents": []}).json()["error_type"] == "empty_input"


def test_official_cohere_sdk_clients_v1_and_v2(server, scorer):
    cohere = pytest.importorskip("cohere", reason="the cohere SDK is in the dev extras")
    base = str(server.base_url).rstrip("/")
    texts = ["yes", "no", "four", "entailment"]
    expected = scorer.rank(INSTR[2], texts, top_k=2)
    v2 = cohere.ClientV2(api_key="unused", base_url=base).rerank(
        model="rerank-v3.5", query=INSTR[2], documents=texts, top_n=2
    )
    assert [x.index for x in v2.results] == [e["index"] for e in expected]
    assert_scores_close([x.relevance_score for x in v2.results], [e["score"] for e in expected])  # batched
    v1 = cohere.Client(api_key="unused", base_url=base).rerank(query=INSTR[2], documents=texts, top_n=2)
    assert [x.index for x in v1.results] == [e["index"] for e in expected]
    assert_scores_close([x.relevance_score for x in v1.results], [e["score"] for e in expected])  # batched


def test_info_health_openapi_and_page(server, scorer):
    info = server.get("/info").json()
    assert info["model"] == "tiny-bert" and info["model_type"] == "bert"
    assert info["max_input_length"] == scorer.max_length == 128
    assert info["max_batch"] == 256 and info["limits"]["max_items_per_request"] == 8
    assert info["generator"] is None and info["auth"] is False
    assert info["precision"] == scorer.precision and info["dtype"] == "float32"
    assert info["backend"] == scorer.backend == "torch"
    assert server.get("/health").json() == {"status": "ok"}
    schema = server.get("/openapi.json").json()
    for path in ("/score", "/rerank", "/v1/rerank", "/v2/rerank", "/info", "/health"):
        assert path in schema["paths"], path
    assert "/best-of-n" not in schema["paths"]  # no generator here: not offered (a call still gets 501)
    assert "413" in schema["paths"]["/score"]["post"]["responses"]
    page = server.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="instruction"' in page.text and "/rerank" in page.text


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("path", "body", "status", "kind"),
    [
        ("/score", {"pairs": []}, 400, "empty_input"),
        ("/rerank", {"query": "q", "texts": []}, 400, "empty_input"),
        ("/rerank", {"query": "  ", "texts": ["a"]}, 400, "empty_input"),
        ("/v1/rerank", {"query": "q", "documents": []}, 400, "empty_input"),
        ("/score", pairs_body(["i"] * 9, ["r"] * 9), 413, "too_many_items"),
        ("/rerank", {"query": "q", "texts": ["a"] * 9}, 413, "too_many_items"),
        ("/v1/rerank", {"query": "q", "documents": ["a"] * 9}, 413, "too_many_items"),
        ("/score", {}, 422, "validation"),
        ("/score", {"pairs": [{"instruction": "a"}]}, 422, "validation"),
        ("/score", {"pairs": [{"instruction": 3, "response": "a"}]}, 422, "validation"),
        ("/score", {"pairs": "not a list"}, 422, "validation"),
        ("/rerank", {"query": "q", "texts": [None]}, 422, "validation"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 422, "validation"),
        ("/v1/rerank", {"query": "q", "documents": [{"txt": "a"}]}, 422, "validation"),
        ("/best-of-n", {"prompt": "hi"}, 501, "no_generator"),
    ],
)
def test_error_codes(server, path, body, status, kind):
    r = server.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.json()["error_type"] == kind
    assert r.json()["error"]


def test_missing_field_error_names_the_field(server):
    r = server.post("/score", json={"pairs": [{"instruction": "a"}]})
    assert "pairs.0.response" in r.json()["error"]


@pytest.mark.parametrize(
    "raw",
    [b"{", b"null", b"[]", b'"pairs"', b"\xff\xfe", b'{"pairs": [[1, 2]]}', b'{"pairs": {"instruction": "a"}}', b""],
)
def test_malformed_bodies_are_422_never_500(server, raw):
    for path in ("/score", "/rerank", "/v1/rerank", "/best-of-n"):
        r = server.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, (path, raw, r.text)
        assert r.json()["error_type"] == "validation"


def test_odd_but_valid_text_is_scored(server, scorer):
    odd = ["", "\x00\x01 nul", "🙂 émoji ✓ 中文", "a" * 5000, "<script>alert(1)</script>"]
    r = server.post("/score", json=pairs_body(["q"] * len(odd), odd))
    assert r.status_code == 200, r.text
    assert_scores_close(r.json()["scores"], scorer.score(["q"] * len(odd), odd))  # micro-batched: float32 rounding


def test_too_large_body_is_413(server):
    big = {"pairs": [{"instruction": "x" * 70_000, "response": "y"}]}
    r = server.post("/score", json=big)
    assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"pairs": [{"instruction": "'
        for _ in range(20):
            yield b"z" * 4096
        yield b'", "response": "y"}]}'

    r = server.post("/score", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"
    assert server.get("/health").status_code == 200


def test_unknown_path_and_method_are_json(server):
    r = server.get("/nope")
    assert r.status_code == 404 and r.json()["error_type"] == "not_found"
    r = server.get("/score")
    assert r.status_code == 405 and r.json()["error_type"] == "method_not_allowed"


def test_config_rejects_impossible_limits():
    with pytest.raises(ValueError, match="max_queue_pairs"):
        ServeConfig(max_items_per_request=100, max_queue_pairs=10)
    with pytest.raises(ValueError, match="max_wait_ms"):
        ServeConfig(max_wait_ms=-1)
    with pytest.raises(ValueError, match="api_key"):
        ServeConfig(api_key="  ")


# ---------------------------------------------------------------------- API key
def test_api_key_guards_every_endpoint_but_health(scorer, monkeypatch):
    monkeypatch.delenv("CAPPY_API_KEY", raising=False)
    app = create_app(scorer, ServeConfig(api_key="s3cret"))
    good = {"Authorization": "Bearer s3cret"}
    with running(app) as (base, _), httpx.Client(base_url=base, timeout=30) as c:
        body = pairs_body(INSTR[:1], RESP[:1])
        assert c.get("/health").status_code == 200
        assert c.get("/").status_code == 200  # the page shell; its calls need the key
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "s3cret"},
            {"Authorization": "Basic s3cret"},
        ):
            for method, path in [("GET", "/info"), ("GET", "/openapi.json"), ("GET", "/docs"), ("POST", "/score")]:
                r = c.request(method, path, headers=headers, json=body if method == "POST" else None)
                assert r.status_code == 401, (path, headers)
                assert r.json()["error_type"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/score", json=body, headers=good).status_code == 200
        assert c.post(
            "/rerank", json={"query": "q", "texts": ["a"]}, headers={"authorization": "bearer s3cret"}
        ).json()
        assert c.get("/info", headers=good).json()["auth"] is True


def test_api_key_from_environment(scorer, monkeypatch):
    monkeypatch.setenv("CAPPY_API_KEY", "from-env")
    with running(create_app(scorer)) as (base, _):
        assert httpx.get(f"{base}/info").status_code == 401
        assert httpx.get(f"{base}/info", headers={"Authorization": "Bearer from-env"}).status_code == 200


# ---------------------------------------------------------------------- batching, overload, cancellation, shutdown
def test_concurrent_requests_share_one_model_call(fresh_scorer, scorer):
    gate = Gate(fresh_scorer)
    app = create_app(fresh_scorer, ServeConfig(max_batch_pairs=256, max_wait_ms=0))
    with running(app) as (base, _), ThreadPoolExecutor(13) as pool:
        first = pool.submit(httpx.post, f"{base}/score", json=pairs_body(INSTR[:1], RESP[:1]), timeout=60)
        assert gate.entered.wait(20)
        bodies = [pairs_body([INSTR[k % 3], INSTR[(k + 1) % 3]], [RESP[k % 6], RESP[(k + 2) % 6]]) for k in range(12)]
        futs = [pool.submit(httpx.post, f"{base}/score", json=b, timeout=60) for b in bodies]
        wait_for(lambda: stats(base)["requests"] == 13, what="12 queued requests")
        gate.release.set()
        assert first.result().status_code == 200
        for body, fut in zip(bodies, futs):
            r = fut.result()
            assert r.status_code == 200
            instr = [p["instruction"] for p in body["pairs"]]
            resp = [p["response"] for p in body["pairs"]]
            assert_scores_close(r.json()["scores"], scorer.score(instr, resp))  # micro-batched: float32 rounding
        assert gate.calls == [1, 24]  # the 12 queued requests went through the model together
        s = stats(base)
        assert s["batches"] == 2 and s["largest_batch"] == 24 and s["pairs"] == 25


def test_full_queue_is_429_and_recovers(fresh_scorer):
    gate = Gate(fresh_scorer)
    app = create_app(fresh_scorer, ServeConfig(max_items_per_request=4, max_queue_pairs=4, max_wait_ms=0))
    with running(app) as (base, _), ThreadPoolExecutor(2) as pool:
        held = pool.submit(httpx.post, f"{base}/score", json=pairs_body(INSTR[:1] * 4, RESP[:4]), timeout=60)
        assert gate.entered.wait(20)
        r = httpx.post(f"{base}/score", json=pairs_body(INSTR[:1], RESP[:1]))
        assert r.status_code == 429 and r.json()["error_type"] == "overloaded"
        assert r.headers["retry-after"] == "1"
        assert stats(base)["rejected"] == 1
        gate.release.set()
        assert held.result().status_code == 200
        assert httpx.post(f"{base}/score", json=pairs_body(INSTR[:1], RESP[:1])).status_code == 200


def _raw_post(base: str, path: str, body: dict) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    sock.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_cancelled_request_is_withdrawn_without_disturbing_others(fresh_scorer, scorer):
    gate = Gate(fresh_scorer)
    app = create_app(fresh_scorer, ServeConfig(max_wait_ms=0))
    b_body = pairs_body(INSTR[:2], RESP[:2])
    c_body = pairs_body(INSTR, RESP[3:6])
    with running(app) as (base, _), ThreadPoolExecutor(3) as pool:
        w = pool.submit(httpx.post, f"{base}/score", json=pairs_body(INSTR[:1], RESP[:1]), timeout=60)
        assert gate.entered.wait(20)
        doomed = _raw_post(base, "/score", pairs_body(INSTR[:1] * 5, RESP[:5]))
        b = pool.submit(httpx.post, f"{base}/score", json=b_body, timeout=60)
        c = pool.submit(httpx.post, f"{base}/rerank", json={"query": INSTR[1], "texts": RESP}, timeout=60)
        wait_for(lambda: stats(base)["requests"] == 4, what="4 queued requests")
        doomed.close()  # the client goes away mid-flight
        wait_for(lambda: stats(base)["disconnected"] == 1, what="the server to notice the disconnect")
        gate.release.set()
        assert w.result().status_code == 200
        assert_scores_close(b.result().json()["scores"], scorer.score(INSTR[:2], RESP[:2]))  # micro-batched
        ranked = c.result().json()
        assert [x["index"] for x in ranked] == [x["index"] for x in scorer.rank(INSTR[1], RESP)]
        s = stats(base)
        assert s["cancelled"] == 1  # withdrawn before its batch: its 5 pairs never reached the model
        assert gate.calls == [1, 2 + 6] and s["pairs"] == 9 and s["queued_pairs"] == 0
        assert httpx.post(f"{base}/score", json=c_body).status_code == 200


def test_graceful_shutdown_finishes_accepted_requests(fresh_scorer, scorer):
    gate = Gate(fresh_scorer)
    app = create_app(fresh_scorer, ServeConfig(max_wait_ms=0))
    bodies = [pairs_body([INSTR[k]], [RESP[k]]) for k in range(3)]
    with running(app) as (base, server), ThreadPoolExecutor(3) as pool:
        first = pool.submit(httpx.post, f"{base}/score", json=bodies[0], timeout=60)
        assert gate.entered.wait(20)
        rest = [pool.submit(httpx.post, f"{base}/score", json=b, timeout=60) for b in bodies[1:]]
        wait_for(lambda: stats(base)["requests"] == 3, what="3 accepted requests")
        server.should_exit = True

        def refused() -> bool:
            try:
                httpx.get(f"{base}/health", timeout=1)
            except httpx.TransportError:
                return True
            return False

        wait_for(refused, what="the server to stop accepting connections")
        gate.release.set()
        for k, fut in enumerate([first, *rest]):
            r = fut.result()
            assert r.status_code == 200
            assert_scores_close(r.json()["scores"], [scorer.score(INSTR[k], RESP[k])])  # micro-batched
    assert app.state.batcher.stats["pairs"] == 3


# ---------------------------------------------------------------------- best-of-n
class TinyGenerator(Generator):
    """Deterministic candidates made from the prompt's words, one per planned (decoding, sample); records every
    prompt with its recipe. A prompt containing "crash" fails like a backend that went away. Not a language model."""

    model_id = "tiny"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, int]] = []

    def _generate_prompt(self, prompt, prompt_id, recipe, plan, seed):
        self.calls.append((prompt, recipe.name, recipe.num_candidates, seed))
        if "crash" in prompt:
            raise RuntimeError("backend went away")
        words = prompt.split()
        texts = [" ".join(words[i:]) for i in range(len(words))] + ["four", "yes", "no", "maybe"] * 4
        slots = [(d.name, i) for d in plan for i in range(d.n)]
        return [
            Candidate(texts[k % len(texts)], name, i, float("nan") if k == 2 else -0.5 * k, -0.5, 1)
            for k, (name, i) in enumerate(slots)
        ]


def test_best_of_n_scores_every_candidate_and_picks_the_best(scorer):
    gen = TinyGenerator()
    app = create_app(
        scorer, ServeConfig(max_items_per_request=8), generator=gen, generator_name="tiny", recipe="quick", seed=7
    )
    prompt = "What is two plus two?"
    with running(app) as (base, _), httpx.Client(base_url=base, timeout=30) as c:
        r = c.post("/best-of-n", json={"prompt": prompt, "n": 5, "recipe": "paper17"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert gen.calls == [(prompt, "paper17", 5, 7)]  # the shipped recipe cut to n, the server's seed
        assert "/best-of-n" in c.get("/openapi.json").json()["paths"]
        texts = [x["text"] for x in body["candidates"]]
        assert len(texts) == 5
        assert [x["index"] for x in body["candidates"]] == list(range(5))
        # paper17's first five: beam4 (greedy here: TinyGenerator has no beam search), then four plain samples
        assert [x["decoding"] for x in body["candidates"]] == ["greedy"] + ["sample"] * 4
        assert [x.get("logprob_sum") for x in body["candidates"]] == [-0.0, -0.5, None, -1.5, -2.0]  # NaN dropped
        offline = scorer.score([prompt] * 5, texts)
        assert_scores_close([x["score"] for x in body["candidates"]], offline)  # micro-batched: float32 rounding
        assert body["chosen"] == body["candidates"][int(np.argmax(offline))]
        assert body["generator"] == "tiny" and c.get("/info").json()["generator"] == "tiny"

        assert len(c.post("/best-of-n", json={"prompt": prompt}).json()["candidates"]) == 5  # quick makes 5
        assert gen.calls[-1] == (prompt, "quick", 5, 7)
        assert len(c.post("/best-of-n", json={"prompt": prompt, "n": 7}).json()["candidates"]) == 7  # 2 more samples
        schema = c.get("/openapi.json").json()["components"]["schemas"]["BestOfNRequest"]["properties"]["recipe"]
        assert {"cpu8_stop", "paper17", "quick"} <= set(next(b for b in schema["anyOf"] if "enum" in b)["enum"])
        for payload, status, kind in [
            ({"prompt": prompt, "recipe": "unknown"}, 400, "bad_recipe"),
            ({"prompt": "please crash", "n": 2}, 502, "generator_failed"),
            ({"prompt": "", "n": 2}, 400, "empty_input"),
            ({"prompt": prompt, "n": 9}, 413, "too_many_items"),
            ({"prompt": prompt, "n": 0}, 422, "validation"),
        ]:
            r = c.post("/best-of-n", json=payload)
            assert (r.status_code, r.json()["error_type"]) == (status, kind), payload
        assert c.get("/health").status_code == 200


# ---------------------------------------------------------------------- the batcher on its own
def test_batcher_respects_max_batch_and_order(scorer):
    calls: list[int] = []

    def score_fn(i, r):
        calls.append(len(i))
        return scorer.score(i, r)

    async def main():
        b = MicroBatcher(score_fn, max_batch_pairs=5, max_wait_ms=50, max_queue_pairs=100)
        await b.start()
        jobs = [([INSTR[k % 3]] * 2, [RESP[k % 6], RESP[(k + 1) % 6]]) for k in range(6)] + [
            ([INSTR[0]] * 7, RESP + ["x"])
        ]
        results = await asyncio.gather(*(b.score(i, r) for i, r in jobs))
        await b.close()
        return jobs, results

    jobs, results = asyncio.run(main())
    for (i, r), got in zip(jobs, results):
        assert_scores_close(got, scorer.score(i, r))  # micro-batched: float32 rounding
    assert sum(calls) == 19
    # two-pair jobs pack two to a call (5 would overflow); the 7-pair job goes alone, not split
    assert calls == [4, 4, 4, 7]


def test_batcher_error_reaches_only_its_batch_and_work_continues(scorer):
    def score_fn(i, r):
        if "boom" in r:
            raise RuntimeError("model failed")
        return scorer.score(i, r)

    async def main():
        b = MicroBatcher(score_fn, max_batch_pairs=1, max_wait_ms=0)
        await b.start()
        bad, good = await asyncio.gather(b.score(["q"], ["boom"]), b.score(["q"], ["fine"]), return_exceptions=True)
        after = await b.score(["q"], ["fine again"])
        await b.close()
        with pytest.raises(ShuttingDown):
            await b.score(["q"], ["late"])
        return bad, good, after

    bad, good, after = asyncio.run(main())
    assert isinstance(bad, RuntimeError) and str(bad) == "model failed"
    assert_scores_close(good, scorer.score(["q"], ["fine"]))  # micro-batched: float32 rounding
    assert_scores_close(after, scorer.score(["q"], ["fine again"]))  # micro-batched: float32 rounding


def test_batcher_close_drains_queue_and_bounds_it(scorer):
    async def main():
        b = MicroBatcher(lambda i, r: scorer.score(i, r), max_batch_pairs=2, max_wait_ms=0, max_queue_pairs=6)
        await b.start()
        tasks = [asyncio.ensure_future(b.score([INSTR[k]], [RESP[k]])) for k in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue is full"):
            await b.score(["q"] * 4, ["a"] * 4)
        await b.close()  # everything accepted before close is still answered
        assert all(t.done() for t in tasks)
        return [t.result() for t in tasks], b.stats

    results, s = asyncio.run(main())
    for k, got in enumerate(results):
        assert_scores_close(got, [scorer.score(INSTR[k], RESP[k])])  # micro-batched: float32 rounding
    assert s["rejected"] == 1 and s["pairs"] == 3


def test_batcher_waits_briefly_for_company_when_idle(scorer):
    calls: list[int] = []

    async def main():
        b = MicroBatcher(lambda i, r: (calls.append(len(i)), scorer.score(i, r))[1], max_wait_ms=500)
        await b.start()
        first = asyncio.ensure_future(b.score(["q"], ["a"]))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(b.score(["q"], ["b"]))
        await asyncio.gather(first, second)
        await b.close()

    asyncio.run(main())
    assert calls == [2]


# ---------------------------------------------------------------------- the command line
def test_cli_serve_end_to_end(tiny_model_dir, scorer):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CAPPY_API_KEY": "k3y", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "cappy", "serve", "--model", str(tiny_model_dir("bert")), "--device", "cpu"]
    cmd += ["--port", str(port), "--max-items", "4", "--num-threads", "1", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                return httpx.get(f"{base}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=90, what="cappy serve to start")
        key = {"Authorization": "Bearer k3y"}
        assert httpx.post(f"{base}/score", json=pairs_body(INSTR[:1], RESP[:1])).status_code == 401
        r = httpx.post(f"{base}/score", json=pairs_body(INSTR, RESP[:3]), headers=key)
        assert_scores_close(r.json()["scores"], scorer.score(INSTR, RESP[:3]))  # micro-batched: float32 rounding
        assert httpx.post(f"{base}/score", json=pairs_body(INSTR * 2, RESP), headers=key).status_code == 413
        info = httpx.get(f"{base}/info", headers=key).json()
        assert info["model"] == str(tiny_model_dir("bert"))
        assert info["forward_batch"] == {"max_pairs": 64, "max_tokens": 2048}  # the CPU token budget
        assert info["torch_threads"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err
    assert "cappy serve: stopped after finishing accepted requests" in err


# ---------------------------------------------------------------------- wiring to cappy.generate
def test_recipe_factory_cuts_shipped_recipes_and_refuses_other_names(tmp_path):
    from cappy.generate import load_recipe
    from cappy.serve.generation import recipe_factory

    make = recipe_factory("paper17")
    assert make(None, None) == load_recipe("paper17") == make("paper17", 17)
    six = make(None, 6)
    assert [(d.name, d.n) for d in six.decodings] == [("beam4", 1), ("sample", 4), ("temp0.9", 1)]
    assert six.num_candidates == 6 and six.max_new_tokens == 64
    assert [(d.name, d.n) for d in make("quick", 2).decodings] == [("greedy", 1), ("temp0.9", 1)]
    seven = make("quick", 7)  # more than quick makes: more samples of its last sampling decoding
    assert [(d.name, d.n) for d in seven.decodings] == [("greedy", 1), ("temp0.9", 6)]
    greedy_only = tmp_path / "g.yaml"
    greedy_only.write_text("name: g\ndecodings:\n  - {method: greedy}\n")
    with pytest.raises(ValueError, match="no sampling decoding"):
        recipe_factory(str(greedy_only))(None, 2)
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("name: mine\ndecodings:\n  - {method: greedy}\n")
    with pytest.raises(ValueError, match="unknown recipe"):  # a request may not name a file on the server
        make(str(yaml_file), None)
    mine = recipe_factory(str(yaml_file))
    assert mine(None, None).name == "mine" == mine("mine", None).name  # ... but the operator may, and it has a name
    assert "mine" in mine.names and str(yaml_file) not in mine.names  # the schema shows names, never server paths
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_factory("no-such-recipe")


@pytest.mark.slow
def test_cli_serve_best_of_n_with_llamacpp_gemma(tiny_model_dir, scorer):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "cappy", "serve", "--model", str(tiny_model_dir("bert")), "--device", "cpu"]
    cmd += ["--port", str(port), "--generator", "llamacpp", "--recipe", "quick", "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if k != "CAPPY_API_KEY"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                return httpx.get(f"{base}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=240, what="cappy serve with llama.cpp to start")
        prompt = "Question: What is the capital of France?\nAnswer:"
        r = httpx.post(f"{base}/best-of-n", json={"prompt": prompt, "n": 3}, timeout=240)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [c["decoding"] for c in body["candidates"]] == ["greedy", "temp0.9", "temp0.9"]
        texts = [c["text"] for c in body["candidates"]]
        assert_scores_close(  # micro-batched: float32 rounding
            [c["score"] for c in body["candidates"]], scorer.score([prompt] * 3, texts)
        )
        assert body["chosen"] == max(body["candidates"], key=lambda c: c["score"])
        assert body["generator"].startswith("llamacpp:")
        r = httpx.post(f"{base}/best-of-n", json={"prompt": prompt, "recipe": "/etc/passwd"}, timeout=60)
        assert r.status_code == 400 and r.json()["error_type"] == "bad_recipe"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0
