"""The OpenAI-compatible backend against HTTP servers on 127.0.0.1: a scripted one for retries, fallbacks and
errors, and a real ``python -m llama_cpp.server`` serving the Gemma GGUF."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cappy.generate import Decoding, GenerationError, Recipe
from cappy.generate.openai import OpenAIGenerator
from llama_server import free_port
from llama_server import llama_server as start_llama_server

RECIPE = Recipe("t", (Decoding("beam", num_beams=4), Decoding("sample", temperature=0.9, n=3)), 1, 8)


class Scripted:
    """A local server: answers from ``script`` (status codes, consumed in order; 200 afterwards) and records bodies.

    A 200 answer has ``min(n, max_choices)`` choices whose text names the request's seed and choice index, or is
    ``raw`` (content type, bytes) as it is.
    """

    def __init__(self, script=(), max_choices=99, delay=0.0, chat=False, raw=None):
        self.script = list(script)
        self.max_choices = max_choices
        self.delay = delay
        self.raw = raw
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []  # lower-cased names
        self.active = self.peak = 0  # requests being answered now, and the most at once
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                outer.paths.append(self.path)
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                status = outer.script.pop(0) if outer.script else 200
                with outer._lock:
                    outer.active += 1
                    outer.peak = max(outer.peak, outer.active)
                if outer.delay:
                    time.sleep(outer.delay)
                with outer._lock:
                    outer.active -= 1
                content_type = "application/json"
                if status != 200:
                    payload = json.dumps({"error": {"message": f"scripted {status}"}}).encode()
                    self.send_response(status)
                    if status == 429:
                        self.send_header("Retry-After", "0")
                elif outer.raw is not None:
                    content_type, payload = outer.raw
                    self.send_response(200)
                else:
                    n = min(body.get("n", 1), outer.max_choices)
                    choices = []
                    for i in range(n):
                        text = f" s{body['seed']}-c{i}"
                        if "messages" in body:
                            lp = {"content": [{"token": "x", "logprob": -0.5}, {"token": "y", "logprob": -1.5}]}
                            choices.append(
                                {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": lp}
                            )
                        else:
                            lp = {"tokens": ["x", "y"], "token_logprobs": [-0.5, -1.5]}
                            choices.append({"index": i, "text": text, "logprobs": lp})
                    payload = json.dumps({"choices": choices, "usage": {"completion_tokens": 2 * n}}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except BrokenPipeError:  # the client timed out and left, as the timeout test intends
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    servers = []

    def make(**kw):
        s = Scripted(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def _gen(url, **kw):
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5)
    return OpenAIGenerator(url, "m", **kw)


def test_completions_request_and_parsing(scripted):
    srv = scripted()
    gen = _gen(srv.url)
    cands = gen.generate(["Q: 2+2?\nA:"], RECIPE, seed=1)[0]
    assert [(c.decoding, c.sample_index) for c in cands] == [
        ("greedy", 0),
        ("temp0.9", 0),
        ("temp0.9", 1),
        ("temp0.9", 2),
    ]
    assert all(c.logprob_sum == -2.0 and c.logprob_mean == -1.0 and c.num_tokens == 2 for c in cands)
    assert len(srv.bodies) == 2 and gen.n_supported is True
    greedy, sample = sorted(srv.bodies, key=lambda b: b["n"])
    assert srv.paths[0] == "/v1/completions"
    assert (greedy["temperature"], greedy["n"], greedy["top_k"], greedy["max_tokens"]) == (0.0, 1, 0, 8)
    assert (sample["temperature"], sample["n"], sample["prompt"], sample["logprobs"]) == (0.9, 3, "Q: 2+2?\nA:", 1)
    assert sample["min_tokens"] == 1 and sample["truncate_prompt_tokens"] == 512
    assert cands[1].text == f"s{sample['seed']}-c0"
    gen.close()


def test_chat_endpoint_and_strict_openai_fields(scripted):
    srv = scripted()
    gen = _gen(srv.url, endpoint="chat", server_extensions=False)
    cands = gen.generate(["hello"], RECIPE)[0]
    assert len(cands) == 4 and cands[0].logprob_sum == -2.0
    assert set(srv.paths) == {"/v1/chat/completions"}
    assert all(b["messages"] == [{"role": "user", "content": "hello"}] for b in srv.bodies)
    assert not any("top_k" in b or "min_tokens" in b for b in srv.bodies)
    gen.close()


def test_fewer_choices_fall_back_to_parallel_requests_with_distinct_seeds(scripted):
    srv = scripted(max_choices=1)  # like servers that ignore n
    gen = _gen(srv.url)
    cands = gen.generate(["p"], RECIPE)[0]
    assert len(cands) == 4 and gen.n_supported is False
    sample_seeds = [b["seed"] for b in srv.bodies if b["temperature"] == 0.9]
    assert len(sample_seeds) == 3  # one n=3 request answered with 1 choice, then 2 more with n=1
    assert len(set(sample_seeds)) == 3
    assert len({c.text for c in cands[1:]}) == 3
    # The next prompt goes straight to one request per sample.
    srv.bodies.clear()
    assert len(gen.generate(["q"], RECIPE)[0]) == 4
    assert sorted(b["n"] for b in srv.bodies) == [1, 1, 1, 1]
    gen.close()


def test_parallel_keeps_k_requests_in_flight_across_prompts(scripted):
    server = scripted(delay=0.3)
    gen = _gen(server.url, concurrency=4)
    prompts = [f"prompt {i}" for i in range(6)]  # 2 requests each (one per decoding): 12 in all
    t0 = time.monotonic()
    out = gen.generate(prompts, RECIPE, seed=1)
    elapsed = time.monotonic() - t0
    gen.close()
    assert [len(c) for c in out] == [4] * 6 and len(server.bodies) == 12
    # never more than 4 at once, and 4 reached: requests of different prompts overlap
    assert server.peak == 4, server.peak
    assert elapsed < 12 * 0.3 / 2  # one prompt at a time (2 in flight) would take 6 x 0.3 s at best
    # each prompt's candidates are its own (the server names the request's seed in the text), in recipe order
    seeds = {b["prompt"]: b["seed"] for b in server.bodies if b["temperature"] == 0.0}
    for prompt, cands in zip(prompts, out):
        assert [c.decoding for c in cands] == ["greedy", "temp0.9", "temp0.9", "temp0.9"]
        assert cands[0].text == f"s{seeds[prompt]}-c0"


def test_retries_429_and_5xx_then_succeeds(scripted):
    srv = scripted(script=[429, 503, 500])
    gen = _gen(srv.url, max_retries=3)
    one = Recipe("g", (Decoding("greedy"),), 1, 4)
    assert gen.generate(["p"], one)[0][0].text.startswith("s")
    assert len(srv.bodies) == 4 and gen.requests_sent == 4
    gen.close()


def test_gives_up_after_bounded_retries(scripted):
    srv = scripted(script=[500] * 10)
    gen = _gen(srv.url, max_retries=2)
    with pytest.raises(GenerationError, match=r"HTTP 500 after 3 attempt\(s\): .*scripted 500"):
        gen.generate(["p"], Recipe("g", (Decoding("greedy"),), 1, 4))
    assert len(srv.bodies) == 3
    gen.close()


def test_client_errors_are_not_retried(scripted):
    srv = scripted(script=[400])
    gen = _gen(srv.url, max_retries=3)
    with pytest.raises(GenerationError, match="HTTP 400 after 1 attempt"):
        gen.generate(["p"], Recipe("g", (Decoding("greedy"),), 1, 4))
    assert len(srv.bodies) == 1
    gen.close()


def test_timeout_is_retried_then_reported(scripted):
    srv = scripted(delay=1.0)
    gen = _gen(srv.url, timeout=0.2, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(GenerationError, match="cannot reach .* after 2 attempt"):
        gen.generate(["p"], Recipe("g", (Decoding("greedy"),), 1, 4))
    assert time.monotonic() - t0 < 3
    gen.close()


def test_unreachable_server_is_a_clear_error():
    gen = _gen(f"http://127.0.0.1:{free_port()}/v1", max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(
        GenerationError, match=r"cannot reach http://127.0.0.1:\d+/v1/completions .*is the server running"
    ):
        gen.generate(["p"], Recipe("g", (Decoding("greedy"),), 1, 4))
    assert time.monotonic() - t0 < 3
    gen.close()


def test_bad_configuration():
    with pytest.raises(ValueError, match="endpoint"):
        OpenAIGenerator("http://127.0.0.1:1/v1", "m", endpoint="embeddings")
    with pytest.raises(ValueError, match="http://"):
        OpenAIGenerator("127.0.0.1:1/v1", "m")


# ---------------------------------------------------------------------- the openai SDK underneath

GREEDY = Recipe("g", (Decoding("greedy"),), 1, 4)


def test_a_500_then_200_is_retried_through_the_sdk(scripted):
    srv = scripted(script=[500])
    gen = _gen(srv.url, max_retries=1)
    assert gen.generate(["p"], GREEDY)[0][0].text == f"s{srv.bodies[-1]['seed']}-c0"
    assert len(srv.bodies) == 2 and gen.requests_sent == 2
    # the same request both times, and the SDK's own retries stay off (they would send more than 2)
    assert srv.bodies[0] == srv.bodies[1]
    gen.close()


def test_sdk_errors_map_to_generation_errors_naming_what_failed(scripted):
    import openai

    srv = scripted(script=[503] * 3)
    gen = _gen(srv.url, max_retries=2)
    with pytest.raises(GenerationError, match=r"/v1/completions: HTTP 503 after 3 attempt\(s\)") as info:
        gen.generate(["p"], GREEDY)
    assert isinstance(info.value.__cause__, openai.InternalServerError) and info.value.__cause__.status_code == 503
    gen.close()

    gen = _gen(f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
    with pytest.raises(GenerationError, match=r"cannot reach .*\(.*(refused|connect).*\) after 1 attempt") as info:
        gen.generate(["p"], GREEDY)
    assert type(info.value.__cause__) is openai.APIConnectionError
    gen.close()

    srv = scripted(delay=1.0)
    gen = _gen(srv.url, timeout=0.2, max_retries=0)
    with pytest.raises(GenerationError, match=r"no answer within 0.2s\) after 1 attempt") as info:
        gen.generate(["p"], GREEDY)
    assert isinstance(info.value.__cause__, openai.APITimeoutError)
    gen.close()


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (("text/html", b"<html>busy</html>"), "the answer is not JSON: '<html>busy</html>'"),
        (("application/json", b"{not json"), "the answer is not JSON"),
        (("application/json", b'{"result": 1}'), "no 'choices' list"),
        (("application/json", b'{"choices": [7]}'), "a choice is not an object"),
        (("application/json", b'{"choices": [{"index": 0}]}'), "a choice has no text"),
    ],
)
def test_malformed_answers_are_not_retried_and_say_what_is_wrong(scripted, raw, match):
    srv = scripted(raw=raw)
    gen = _gen(srv.url, max_retries=3)
    with pytest.raises(GenerationError, match=match):
        gen.generate(["p"], GREEDY)
    assert len(srv.bodies) == 1
    gen.close()


def test_api_key_header_only_when_given(scripted, monkeypatch):
    # a key in the environment must not leak to a server the caller gave no key for
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    srv = scripted()
    for key in (None, "", "sk-test"):
        gen = _gen(srv.url, api_key=key)
        gen.generate(["p"], GREEDY)
        gen.close()
    assert [h.get("authorization") for h in srv.headers] == [None, None, "Bearer sk-test"]


def test_extra_body_is_merged_last(scripted):
    srv = scripted()
    gen = _gen(srv.url, extra_body={"temperature": 0.3, "repetition_penalty": 1.1, "top_k": 5})
    gen.generate(["p"], GREEDY)
    body = srv.bodies[0]
    assert (body["temperature"], body["repetition_penalty"], body["top_k"], body["min_tokens"]) == (0.3, 1.1, 5, 1)
    gen.close()


def test_missing_sdk_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # what `import openai` sees when it is not installed
    with pytest.raises(ImportError, match=r"pip install 'cappy\[openai\]'"):
        OpenAIGenerator("http://127.0.0.1:1/v1", "m")


# ---------------------------------------------------------------------- a real llama.cpp server


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """cappy's wrapper of `python -m llama_cpp.server`; log-probabilities of every token for /v1/completions."""
    with start_llama_server(tmp_path_factory.mktemp("llama-server"), ["--logits_all", "true"]) as (url, _):
        yield url


@pytest.mark.slow  # about a minute: the server computes log-probabilities over Gemma's 262k vocabulary
@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_real_llama_cpp_server(llama_server, endpoint):
    gen = OpenAIGenerator(llama_server, "gemma", endpoint=endpoint, timeout=120, max_retries=0)
    recipe = Recipe("r", (Decoding("greedy"), Decoding("sample", temperature=0.9, n=2)), 1, 6)
    cands = gen.generate(["The capital of France is"], recipe, seed=3)[0]
    assert [(c.decoding, c.sample_index) for c in cands] == [("greedy", 0), ("temp0.9", 0), ("temp0.9", 1)]
    for c in cands:
        assert 1 <= c.num_tokens <= 6 and isinstance(c.text, str)
        if endpoint == "completions":
            assert c.logprob_sum is not None and c.logprob_sum <= 0
    again = gen.generate(["The capital of France is"], recipe, seed=3)[0]
    assert [(c.decoding, c.sample_index) for c in again] == [(c.decoding, c.sample_index) for c in cands]
    if endpoint == "completions":
        assert again[0].text == cands[0].text  # greedy is deterministic
    # Not asserted for chat: the server reuses its prompt cache on the second request and evaluates fewer tokens,
    # with other llama.cpp kernels that round differently; the chat template leaves a near-tie at Gemma's first
    # token there ("" vs "Paris." were seen, with the code before and after batched sampling alike).
    gen.close()


# ---------------------------------------------------------------------- chat with the packaged Gemma 3 GGUF


def test_gemma3_chat_template_renders_gemma_turns():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from llama_cpp import llama_chat_format as fmt

    from cappy.generate.llama_server import GEMMA3_TEMPLATE

    f = fmt.Jinja2ChatFormatter(GEMMA3_TEMPLATE, eos_token="<end_of_turn>", bos_token="<bos>")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
    ]
    assert f(messages=messages).prompt == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\n"
    )
    assert f(messages=[{"role": "user", "content": "Hi"}]).prompt.startswith("<bos><start_of_turn>user\nHi<end")


def test_server_args_add_the_gemma3_chat_format_only_where_needed():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from cappy.generate.llama_server import server_args
    from cappy.generate.llamacpp import gemma_gguf_path

    gguf = str(gemma_gguf_path())
    # the packaged GGUF has no tokenizer.chat_template: llama-cpp-python would fall back to llama-2's format
    assert server_args(["--model", gguf, "--port", "1"]) == ["--model", gguf, "--port", "1", "--chat_format", "gemma3"]
    assert server_args([f"--model={gguf}"])[-2:] == ["--chat_format", "gemma3"]
    assert server_args(["--model", gguf, "--chat_format", "chatml"]) == ["--model", gguf, "--chat_format", "chatml"]


@pytest.mark.slow  # shares the real server above
def test_real_llama_cpp_server_chat_answers_with_text(llama_server):
    from openai import OpenAI

    client = OpenAI(base_url=llama_server, api_key="none", max_retries=0, timeout=120)
    out = client.chat.completions.create(
        model="gemma",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8,
        temperature=0,
    )
    # with llama-cpp-python's fallback format every chat answer was empty (0 completion tokens, finish "stop")
    assert out.usage.completion_tokens >= 1 and out.choices[0].message.content.strip()
