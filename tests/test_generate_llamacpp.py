"""The llama.cpp backend on the packaged Gemma 3 270M GGUF (few, short candidates: ~90 tokens/s on this CPU)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

from cappy.generate import Decoding, Recipe  # noqa: E402
from cappy.generate.llamacpp import LlamaCppGenerator, gemma_gguf_path  # noqa: E402

PROMPT = "Question: What is the capital of France?\nAnswer:"
RECIPE = Recipe(
    "t",
    (Decoding("beam", num_beams=4), Decoding("sample", temperature=0.9, n=2), Decoding("sample", top_p=0.95, n=1)),
    min_new_tokens=3,
    max_new_tokens=6,
)


@pytest.fixture(scope="module")
def gemma():
    """One sample at a time (the KV-cache rollback path, with prefix reuse across prompts)."""
    gen = LlamaCppGenerator(n_threads=1, n_ctx=256, n_parallel=1)
    yield gen
    gen.close()


@pytest.fixture(scope="module")
def gemma_parallel():
    """Samples decoded together: 3 slots, so the 4 samples of a prompt must wait for and reuse slots."""
    gen = LlamaCppGenerator(n_threads=1, n_ctx=256, n_parallel=3)
    gen._parallel_context(3)  # made now with 3 slots: on first use it would take one per sample of the prompt
    assert gen.slots == 3
    yield gen
    gen.close()


def test_extra_buffer_types_follow_the_amx_detection_and_the_override(monkeypatch):
    """Where llama.cpp's AMX backend is active its repacked matmul can segfault, so weights stay in plain buffers;
    the environment variable forces either way and a bad value is an error naming it."""
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    from cappy.generate.llamacpp import EXTRA_BUFTS_ENV, apply_llama_cpp_workarounds, llama_extra_buffers_safe

    monkeypatch.delenv(EXTRA_BUFTS_ENV, raising=False)
    amx = "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode()
    assert llama_extra_buffers_safe() is not amx
    monkeypatch.setenv(EXTRA_BUFTS_ENV, "1")
    assert llama_extra_buffers_safe() is True
    monkeypatch.setenv(EXTRA_BUFTS_ENV, "yes")
    with pytest.raises(ValueError, match=EXTRA_BUFTS_ENV):
        llama_extra_buffers_safe()
    monkeypatch.setattr(lib, "llama_model_default_params", lib.llama_model_default_params)  # restored afterwards
    monkeypatch.setenv(EXTRA_BUFTS_ENV, "0")
    assert apply_llama_cpp_workarounds() is False and apply_llama_cpp_workarounds() is False
    params = lib.llama_model_default_params()
    assert (
        params.use_extra_bufts is False and params.n_gpu_layers == llama_cpp.llama_model_default_params().n_gpu_layers
    )


def test_gguf_is_assembled_once_and_cached():
    first = gemma_gguf_path()
    assert first.stat().st_size > 200_000_000 and first.name.endswith(".gguf")
    assert gemma_gguf_path() == first  # cached, not assembled again


def test_candidates_logprobs_and_beam_fallback(gemma):
    cands = gemma.generate([PROMPT], RECIPE, seed=0)[0]
    # No beam search in llama.cpp: it runs greedy and says so in the decoding name.
    assert [(c.decoding, c.sample_index) for c in cands] == [
        ("greedy", 0),
        ("temp0.9", 0),
        ("temp0.9", 1),
        ("topp0.95", 0),
    ]
    for c in cands:
        assert 3 <= c.num_tokens <= 6
        assert c.logprob_sum < 0 and c.logprob_mean == pytest.approx(c.logprob_sum / c.num_tokens)  # one division
    assert "paris" in cands[0].text.lower()


def test_greedy_matches_llama_cpp_own_completion(gemma):
    """Our decode loop against llama-cpp-python's own greedy completion and its log-probabilities."""
    from llama_cpp import Llama

    from cappy.generate.llamacpp import apply_llama_cpp_workarounds

    apply_llama_cpp_workarounds()
    ref = Llama(model_path=str(gemma_gguf_path()), n_ctx=128, n_threads=1, logits_all=True, verbose=False)
    try:
        out = ref.create_completion(PROMPT, max_tokens=5, temperature=0.0, logprobs=1)
    finally:
        ref.close()
    recipe = Recipe("g", (Decoding("greedy"),), min_new_tokens=0, max_new_tokens=5)
    cand = gemma.generate([PROMPT], recipe)[0][0]
    assert cand.text == out["choices"][0]["text"].strip()
    ref_lp = [x for x in out["choices"][0]["logprobs"]["token_logprobs"] if x is not None]
    assert cand.num_tokens == len(ref_lp)
    # llama-cpp-python evaluates with logits_all and we decode one token at a time: other quantised kernels
    # round differently; 0.05 nats over 5 tokens allows 1e-2 per token, far below a wrong token's gap
    assert cand.logprob_sum == pytest.approx(sum(ref_lp), abs=0.05)


def test_shared_prompt_equals_cold_calls_and_evaluates_the_prompt_once(gemma):
    cold = LlamaCppGenerator(n_threads=1, n_ctx=256, share_prompt=False)
    try:
        before = gemma.prompt_evals
        gemma.llm.reset()
        shared = gemma.generate([PROMPT], RECIPE, seed=5)[0]
        shared_evals = gemma.prompt_evals - before
        reference = cold.generate([PROMPT], RECIPE, seed=5)[0]
        n_prompt = len(gemma._prompt_tokens(PROMPT, RECIPE))
        assert shared_evals == n_prompt
        assert cold.prompt_evals == 4 * n_prompt  # greedy + 2 + 1 samples, each from scratch
    finally:
        cold.close()
    assert [c.text for c in shared] == [c.text for c in reference]
    # the same tokens, the prompt evaluated once or per sample: the KV cache rows are the same computation, and
    # 1e-3 nats covers the rounding of a batched vs a single-token decode step
    np.testing.assert_allclose([c.logprob_sum for c in shared], [c.logprob_sum for c in reference], atol=1e-3)
    # A second prompt reuses the common prefix already in the KV cache.
    before = gemma.prompt_evals
    gemma.generate([PROMPT + " Paris.\nQuestion: And of Spain?\nAnswer:"], RECIPE, seed=5)
    assert gemma.prompt_evals - before < n_prompt


def test_stop_strings_and_prompt_truncation(gemma):
    recipe = Recipe("s", (Decoding("greedy"),), min_new_tokens=1, max_new_tokens=12, stop=("\n",))
    c = gemma.generate(["Q: Name a colour.\nA: Red\nQ: Name a fruit.\nA:"], recipe)[0][0]
    assert "\n" not in c.text and c.num_tokens >= 1
    long_recipe = Recipe("l", (Decoding("greedy"),), 1, 4, max_prompt_tokens=32)
    long = gemma.generate(["word " * 600 + "\nQ: What is 2+2?\nA:"], long_recipe)[0][0]
    assert 1 <= long.num_tokens <= 4
    assert len(gemma._prompt_tokens("word " * 600, long_recipe)) == 32


def _greedy_pieces(gen, prompt, n):
    """The text piece of each of the first ``n`` greedy tokens after ``prompt`` (no stop strings)."""
    recipe = Recipe("g", (Decoding("greedy"),), min_new_tokens=n, max_new_tokens=n)
    gen.llm.reset()
    logits = gen._eval_prompt(gen._prompt_tokens(prompt, recipe))
    toks = []
    for _ in range(n):
        toks.append(int(np.argmax(logits)))
        gen.llm.eval([toks[-1]])
        logits = gen._logits()
    gen.llm.reset()
    text = [gen.llm.detokenize(toks[: i + 1]).decode("utf-8", errors="ignore") for i in range(n)]
    return [t[len(text[i - 1]) if i else 0 :] for i, t in enumerate(text)]


@pytest.mark.parametrize("which", ["gemma", "gemma_parallel"])
def test_a_stop_string_that_starts_inside_the_minimum_length_cuts(which, request):
    gen = request.getfixturevalue(which)
    prompt = "Q: Name three planets of the solar system.\nA:"
    pieces = _greedy_pieces(gen, prompt, 6)
    assert all(pieces[:5]), pieces  # every token adds text (else the spans below would be empty)
    # A stop string from the start of token 1 to the end of token 3: it starts inside a 3-token minimum and ends
    # after it, so it cuts at its end (the old rule looked only after the minimum and never found it).
    stop = "".join(pieces[1:4])
    recipe = Recipe("s", (Decoding("greedy"),), min_new_tokens=3, max_new_tokens=6, stop=(stop,))
    # Each call starts from an empty KV cache, as _greedy_pieces did: a prompt whose last token is re-evaluated
    # alone over a reused prefix rounds differently in the quantised kernels (up to 0.6 nats seen on an AMD EPYC
    # with avx512_bf16), enough to flip this prompt's near-tie first token.
    gen.llm.reset()
    c = gen.generate([prompt], recipe)[0][0]
    assert (c.text, c.num_tokens) == ("".join(pieces[:4]).strip(), 4)
    # With a 1-token minimum the same stop string cuts at its start.
    recipe = Recipe("s", (Decoding("greedy"),), min_new_tokens=1, max_new_tokens=6, stop=(stop,))
    gen.llm.reset()
    c = gen.generate([prompt], recipe)[0][0]
    assert (c.text, c.num_tokens) == (pieces[0].strip(), 1)


PROMPTS = [PROMPT, "Q: Name a colour.\nA:", "Q: Write one word about the sea.\nA:"]


def _replay(gen, prompt, recipe, tokens):
    """The log-probability of ``tokens`` after ``prompt``, decoding them alone one at a time."""
    from cappy.generate.llamacpp import _log_softmax

    gen.llm.reset()
    logits = gen._eval_prompt(gen._prompt_tokens(prompt, recipe))
    out = []
    for tok in tokens:
        out.append(float(_log_softmax(logits)[tok]))
        gen.llm.eval([tok])
        logits = gen._logits()
    return out


def test_parallel_decoding_scores_each_sequence_as_decoded_alone(gemma, gemma_parallel, monkeypatch):
    from cappy.generate import llamacpp

    seen = []
    real = llamacpp._Sequence.candidate

    def spy(self, index):
        seen.append((list(self.toks), list(self.lps)))
        return real(self, index)

    monkeypatch.setattr(llamacpp._Sequence, "candidate", spy)
    before = gemma_parallel.prompt_evals
    out = gemma_parallel.generate(PROMPTS, RECIPE, seed=3)
    # every prompt evaluated once, even with 4 samples per prompt and only 3 slots
    assert gemma_parallel.prompt_evals - before == sum(len(gemma._prompt_tokens(p, RECIPE)) for p in PROMPTS)
    assert [len(c) for c in out] == [4, 4, 4] and len(seen) == 12
    diffs = []
    k = 0
    for prompt, cands in zip(PROMPTS, out):
        for c in cands:
            toks, lps = seen[k]
            k += 1
            assert c.num_tokens == len(toks) and c.logprob_sum == pytest.approx(sum(lps))  # one float sum
            diffs += list(np.abs(np.array(lps) - np.array(_replay(gemma, prompt, RECIPE, toks))))
    # llama.cpp's kernels for a batch of 4+ tokens differ from the one-token ones, and on Gemma that moves the
    # log-prob of an improbable token by up to ~0.5 nats (measured on one CPU); most tokens move by far less. A
    # sequence attending to another's tokens would be off by nats on most tokens, which these bounds exclude.
    assert max(diffs) < 1.0 and float(np.median(diffs)) < 0.05, (max(diffs), float(np.median(diffs)))


def test_parallel_sequences_do_not_see_each_other(gemma_parallel):
    # Exact: with the batch sizes held equal (every sample runs its full 6 tokens, all 8 start at once), a prompt's
    # candidates do not depend on what the other sequences in its batches are decoding.
    fixed = Recipe("fixed", (Decoding("greedy"), Decoding("sample", temperature=0.9, n=3)), 6, 6)
    big = LlamaCppGenerator(n_threads=1, n_ctx=256, n_parallel=8)
    try:
        with_x = big.generate([PROMPT, "Q: Name a colour.\nA:"], fixed, seed=6)
        with_y = big.generate([PROMPT, "Q: Name a fruit!\nA:"], fixed, seed=6)
    finally:
        big.close()
    assert all(c.num_tokens == 6 for x in with_x + with_y for c in x)
    assert [(c.text, c.logprob_sum) for c in with_x[0]] == [(c.text, c.logprob_sum) for c in with_y[0]]
    assert [c.text for c in with_x[1]] != [c.text for c in with_y[1]]
    assert len(gemma_parallel.generate(PROMPTS, RECIPE, seed=6)[0]) == 4


def test_parallel_reruns_give_the_same_candidates(gemma_parallel):
    a = gemma_parallel.generate(PROMPTS, RECIPE, seed=4)
    b = gemma_parallel.generate(PROMPTS, RECIPE, seed=4)
    # same prompts, same batches, same seeds: the same arithmetic, so exactly the same candidates
    assert [[(c.text, c.logprob_sum) for c in x] for x in a] == [[(c.text, c.logprob_sum) for c in x] for x in b]
    other = gemma_parallel.generate(PROMPTS, RECIPE, seed=5)
    assert [c.text for x in other for c in x] != [c.text for x in a for c in x]


def test_parallel_stop_strings_and_bad_settings(gemma_parallel):
    recipe = Recipe(
        "s", (Decoding("greedy"), Decoding("sample", n=3)), min_new_tokens=1, max_new_tokens=12, stop=("\n",)
    )
    for c in gemma_parallel.generate(["Q: Name a colour.\nA: Red\nQ: Name a fruit.\nA:"], recipe)[0]:
        assert "\n" not in c.text and 1 <= c.num_tokens <= 12
    with pytest.raises(ValueError, match="n_parallel"):
        LlamaCppGenerator(n_parallel=0)
