"""Recipes, the transformers backend (tiny random causal and seq2seq models) and the resumable generation cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cappy.generate import (
    Candidate,
    CandidateSource,
    Decoding,
    Generator,
    Recipe,
    available_recipes,
    load_recipe,
    prompt_id_of,
)
from cappy.generate.base import stop_cut
from cappy.generate.cache import generate_to_cache, iter_generations, read_generations, repair_torn_tail
from conftest import REPO, build_tiny_lm

SMALL = Recipe(
    "small",
    (Decoding("beam", num_beams=3), Decoding("sample", n=2), Decoding("sample", top_k=5, top_p=0.9, n=2)),
    min_new_tokens=2,
    max_new_tokens=5,
    max_prompt_tokens=24,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models on two shared cores


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """``tiny_lm_dir(kind)`` -> a saved checkpoint directory (model + tokenizer) of a tiny random LM."""
    cache: dict[str, Path] = {}

    def make(kind: str = "causal") -> Path:
        if kind not in cache:
            model, tok = build_tiny_lm(kind)
            out = tmp_path_factory.mktemp(f"tiny-lm-{kind}")
            model.save_pretrained(out)
            tok.save_pretrained(out)
            cache[kind] = out
        return cache[kind]

    return make


@pytest.fixture(scope="session")
def tiny_generator():
    """``tiny_generator(kind)`` -> an HFGenerator over a tiny random model, on CPU."""
    from cappy.generate.hf import HFGenerator

    cache = {}

    def make(kind: str = "causal"):
        if kind not in cache:
            model, tok = build_tiny_lm(kind)
            cache[kind] = HFGenerator(model, tok, device="cpu", model_id=f"tiny-{kind}")
        return cache[kind]

    return make


# ---------------------------------------------------------------------- recipes


def test_paper17_preset_matches_the_paper():
    r = load_recipe("paper17")
    assert "paper17" in available_recipes()
    assert r.num_candidates == 17
    assert [(d.name, d.method, d.n) for d in r.decodings] == [
        ("beam4", "beam", 1),
        ("sample", "sample", 4),
        ("temp0.9", "sample", 4),
        ("topk40", "sample", 4),
        ("topp0.95", "sample", 4),
    ]
    beam, plain, temp, topk, topp = r.decodings
    assert beam.num_beams == 4
    assert (plain.temperature, plain.top_k, plain.top_p) == (1.0, 0, 1.0)
    assert (temp.temperature, topk.top_k, topp.top_p) == (0.9, 40, 0.95)
    assert (r.min_new_tokens, r.max_new_tokens, r.max_prompt_tokens) == (3, 64, 512)


def test_user_recipe_file_and_errors(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        'name: mine\nmax_new_tokens: 8\nstop: ["\\n"]\ndecodings:\n  - {method: sample, top_p: 0.5, n: 3}\n'
    )
    r = load_recipe(path)
    assert (r.name, r.num_candidates, r.decodings[0].name, r.stop) == ("mine", 3, "topp0.5", ("\n",))
    assert Recipe.from_dict(r.to_dict()) == r

    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        load_recipe("nope")
    path.write_text("name: bad\ndecodings:\n  - {method: sample, n: 2}\n  - {method: sample, n: 1}\n")
    with pytest.raises(ValueError, match="repeats decoding names"):
        load_recipe(path)
    path.write_text("name: bad\ndecodings:\n  - {method: nucleus}\n")
    with pytest.raises(ValueError, match=r"mine.yaml: decodings\[0\]: decoding method"):
        load_recipe(path)
    path.write_text("name: bad\nmax_tokens: 3\ndecodings: []\n")
    with pytest.raises(ValueError, match="unknown recipe keys \\['max_tokens'\\]"):
        load_recipe(path)
    with pytest.raises(ValueError, match="top_p"):
        Decoding("sample", top_p=1.5)


def test_stop_cut_keeps_tokens_that_start_before_the_stop():
    assert stop_cut(["4", "\nQ", ":"], ["\n"]) == ("4", 1)
    assert stop_cut(["The", " end", ".", " Q"], [" Q", "."]) == ("The end", 2)
    assert stop_cut(["abc"], ["\n"]) is None
    assert stop_cut(["abc"], []) is None
    # a candidate that opens with a stop string: looked for only after the minimum length, so the later one ends it
    # (before, the hit at 0 kept 0 tokens, was refused for the minimum length and hid every later stop string)
    assert stop_cut(["\n\n", "* CO2", "\n\n", "Question"], ["\n\n"], min_tokens=1) == ("\n\n* CO2", 2)
    assert stop_cut(["\n\n", "* CO2"], ["\n\n"], min_tokens=1) is None


def test_stop_cut_finds_a_stop_string_that_starts_inside_the_minimum_and_ends_after_it():
    pieces = ["Jupiter", "\n", "Question", ":", " What"]
    # starts in token 2 of a 3-token minimum: cutting at its start would keep 1 token, so the cut is at its end
    assert stop_cut(pieces, ["\n\n", "\nQ:", "\nQuestion:"], 3) == ("Jupiter\nQuestion:", 4)
    # with a minimum of 1 the start keeps enough tokens
    assert stop_cut(pieces, ["\nQuestion:"], 1) == ("Jupiter", 1)
    # one that starts in the last token of the minimum keeps the minimum (that token is cut inside)
    assert stop_cut(["A", "B", "C\n", "\nD"], ["\n\n"], 3) == ("ABC", 3)
    # a stop string wholly inside the minimum does not cut; a later one still does
    assert stop_cut(["1", "\n\n", "x", "y", "\n\n", "z"], ["\n\n"], 3) == ("1\n\nxy", 4)
    # the earliest cut over all stop strings wins, whichever is listed first
    assert stop_cut(["a", "b", "c", "\nQ:", "\n\n"], ["\n\n", "\nQ:"], 2) == ("abc", 3)
    # overlapping repeats: the second occurrence may cut earlier than the first one's end
    assert stop_cut(["a", "\n", "\n", "\n", "b"], ["\n\n"], 2) == ("a\n", 2)
    # never shorter than the minimum, whatever the stop strings
    for k in range(6):
        cut = stop_cut(pieces, ["\n", "Q", ":", " W"], k)
        assert cut is None or cut[1] >= min(k, len(pieces))


# ---------------------------------------------------------------------- transformers backend


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_hf_generator_recipe_shape_lengths_and_seeds(tiny_generator, kind):
    gen = tiny_generator(kind)
    prompts = ["What is two plus two?", "Is the sky blue? " * 20]  # the second is longer than max_prompt_tokens
    out = gen.generate(prompts, SMALL, seed=3)
    assert len(out) == 2
    for cands in out:
        assert [(c.decoding, c.sample_index) for c in cands] == [
            ("beam3", 0),
            ("sample", 0),
            ("sample", 1),
            ("topk5-topp0.9", 0),
            ("topk5-topp0.9", 1),
        ]
        for c in cands:
            assert SMALL.min_new_tokens <= c.num_tokens <= SMALL.max_new_tokens
            assert c.logprob_sum <= 0 and c.logprob_mean == pytest.approx(c.logprob_sum / c.num_tokens)
    again = gen.generate(prompts, SMALL, seed=3)
    assert [[c.text for c in cs] for cs in again] == [[c.text for c in cs] for cs in out]
    other = gen.generate(prompts, SMALL, seed=4)
    assert [c.text for c in other[0][1:]] != [c.text for c in out[0][1:]]
    # A prompt's candidates do not depend on which other prompts share the call.
    alone = gen.generate(prompts[1:], SMALL, seed=3)
    assert [c.text for c in alone[0]] == [c.text for c in out[1]]


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_hf_greedy_logprobs_are_the_step_maxima(tiny_generator, kind):
    """Greedy picks the argmax, so each token's log-probability is the largest at its step: checked step by step."""
    gen = tiny_generator(kind)
    recipe = Recipe("g", (Decoding("greedy"),), min_new_tokens=0, max_new_tokens=4)
    cand = gen.generate(["Translate to French: good morning."], recipe)[0][0]
    ids = gen._prompt_ids("Translate to French: good morning.", recipe)
    model, toks, total = gen.model, [], 0.0
    with torch.no_grad():
        for _ in range(cand.num_tokens):
            if gen.is_seq2seq:
                dec = torch.tensor([[model.config.decoder_start_token_id] + toks])
                logits = model(input_ids=torch.tensor([ids]), decoder_input_ids=dec).logits[0, -1]
            else:
                logits = model(input_ids=torch.tensor([ids + toks])).logits[0, -1]
            logp = torch.log_softmax(logits.float(), -1)
            toks.append(int(logp.argmax()))
            total += float(logp.max())
    assert cand.num_tokens == 4
    assert cand.text == gen.tokenizer.decode(toks, skip_special_tokens=True).strip()
    # generate()'s log-probs come from its own decoding passes, the reference recomputes each step from scratch:
    # float32 rounding of ~1e-6 per token over 4 tokens
    assert cand.logprob_sum == pytest.approx(total, abs=1e-4)


def test_hf_stop_strings_cut_text_and_tokens(tiny_generator):
    gen = tiny_generator("causal")
    free = gen.generate(["a b c"], Recipe("f", (Decoding("greedy"),), min_new_tokens=0, max_new_tokens=6))[0][0]
    words = free.text.split()
    assert len(words) >= 3
    stop = " " + words[2]  # cut before the third word
    cut = gen.generate(["a b c"], Recipe("s", (Decoding("greedy"),), 0, 6, stop=(stop,)))[0][0]
    assert cut.text == free.text[: free.text.index(stop)].strip()
    assert 1 <= cut.num_tokens < free.num_tokens


def test_generate_rejects_bad_prompts(tiny_generator):
    gen = tiny_generator("causal")
    with pytest.raises(TypeError, match="single str"):
        gen.generate("hello", SMALL)
    with pytest.raises(TypeError, match=r"prompts\[1\]"):
        gen.generate(["a", None], SMALL)


# ---------------------------------------------------------------------- cache


def _keys(path):
    return [(r["prompt_id"], r["decoding"], r["sample_index"]) for _, r in iter_generations(path)]


def test_cache_resumes_after_torn_line_without_duplicates(tiny_generator, tmp_path):
    gen = tiny_generator("causal")
    prompts = [(f"question number {i}?", None) for i in range(4)] + [("with an id", "row-7")]
    ref = tmp_path / "ref.jsonl"
    stats = generate_to_cache(gen, prompts, SMALL, ref, seed=1, show_progress=False)
    assert (stats.prompts, stats.rows_written) == (5, 25)
    rows = [r for _, r in iter_generations(ref)]
    assert rows[0]["prompt_id"] == prompt_id_of("question number 0?") and rows[-1]["prompt_id"] == "row-7"
    assert {r["model"] for r in rows} == {"tiny-causal"} and {r["recipe"] for r in rows} == {"small"}
    assert list(rows[0]) == list(json.loads(ref.read_text().splitlines()[0]))  # the shared field order

    # Simulate a kill in the middle of prompt 3: two of its rows made it, then a torn third line.
    lines = ref.read_text().splitlines(keepends=True)
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(lines[:12]) + lines[12][:17])
    stats = generate_to_cache(gen, prompts, SMALL, partial, seed=1, show_progress=False)
    assert (stats.prompts_skipped, stats.rows_existing, stats.rows_written) == (2, 12, 13)
    assert partial.read_text().startswith("".join(lines[:12]))
    assert sorted(partial.read_text().splitlines()) == sorted(ref.read_text().splitlines())

    # Rerunning a finished cache generates nothing; another seed is a different run in the same file.
    assert generate_to_cache(gen, prompts, SMALL, partial, seed=1, show_progress=False).rows_written == 0
    assert generate_to_cache(gen, prompts[:1], SMALL, partial, seed=2, show_progress=False).rows_written == 5
    by_prompt = read_generations(partial, seed=1)
    assert len(by_prompt) == 5 and all(len(v) == 5 for v in by_prompt.values())
    assert len(read_generations(partial)["question number 0?"]) == 10


def test_cache_passes_prompts_in_chunks_of_the_backends_width(tiny_generator, tmp_path, monkeypatch):
    gen = tiny_generator("causal")
    prompts = [(f"question number {i}?", None) for i in range(4)] + [("question number 1?", None), ("last", None)]
    ref = tmp_path / "ref.jsonl"
    generate_to_cache(gen, prompts, SMALL, ref, seed=1, show_progress=False)
    calls = []
    real = gen.generate

    def spy(ps, *args, **kw):
        calls.append(len(ps))
        return real(ps, *args, **kw)

    monkeypatch.setattr(gen, "generate", spy)
    monkeypatch.setattr(gen, "prompts_in_flight", 3)
    out = tmp_path / "chunked.jsonl"
    stats = generate_to_cache(gen, prompts, SMALL, out, seed=1, show_progress=False)
    # 5 distinct prompts (the repeated one is generated once): a chunk of 3, then the last 2
    assert calls == [3, 2] and (stats.prompts, stats.prompts_skipped, stats.rows_written) == (6, 1, 25)
    assert out.read_text() == ref.read_text()  # each prompt's rows in input order, as one prompt at a time


def test_cache_errors_name_file_and_line(tiny_generator, tmp_path):
    gen = tiny_generator("causal")
    bad = tmp_path / "bad.jsonl"
    good = json.dumps(
        {
            "prompt_id": "x",
            "prompt": "p",
            "text": "t",
            "decoding": "greedy",
            "sample_index": 0,
            "logprob_sum": None,
            "logprob_mean": None,
            "num_tokens": 1,
            "model": "m",
            "recipe": "r",
            "seed": 0,
        }
    )
    bad.write_text(good + "\n{not json\n" + good + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:2: malformed"):
        generate_to_cache(gen, [("p", None)], SMALL, bad, show_progress=False)
    bad.write_text(good.replace('"num_tokens": 1', '"num_tokens": "1"') + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: field 'num_tokens'"):
        list(iter_generations(bad))
    bad.write_text(good + "\n" + good + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:2: duplicate candidate greedy#0"):
        read_generations(bad)
    assert repair_torn_tail(bad) == 0
    with pytest.raises(ValueError, match="used for two different prompts"):
        generate_to_cache(gen, [("one", "id1"), ("two", "id1")], SMALL, tmp_path / "ids.jsonl", show_progress=False)


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cappy", *args], env=env, **kw)


@pytest.mark.slow  # two `cappy generate` processes (torch imports) cost ~50 s here; the in-process test stays fast
def test_cli_generate_survives_sigkill(tiny_lm_dir, tmp_path):
    """SIGKILL a running `cappy generate`, rerun it: the result equals one uninterrupted run, row for row."""
    from cappy.generate.hf import HFGenerator

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: r\nmin_new_tokens: 1\nmax_new_tokens: 4\ndecodings:\n  - {method: greedy}\n  - {method: sample, n: 3}\n"
    )
    n_prompts = 40
    inp = tmp_path / "prompts.jsonl"
    inp.write_text("".join(json.dumps({"prompt": f"prompt {i} is here"}) + "\n" for i in range(n_prompts)))
    out = tmp_path / "gens.jsonl"
    args = ["generate", "--backend", "hf", "--model", str(tiny_lm_dir("causal")), "--device", "cpu"]
    args += ["--input", str(inp), "--out", str(out), "--recipe", str(recipe), "--seed", "5", "--no-progress"]
    proc = _cli(*args, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 8):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    before = out.read_text()
    assert 8 <= before.count("\n") < 4 * n_prompts
    with open(out, "a") as f:  # and a torn line, as a kill in the middle of a write leaves
        f.write('{"prompt_id": "abc", "prom')
    rerun = _cli(*args, stderr=subprocess.PIPE)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()
    after = out.read_text()
    assert after.startswith(before)
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 4 * n_prompts

    ref = tmp_path / "ref.jsonl"
    gen = HFGenerator(tiny_lm_dir("causal"), device="cpu")
    generate_to_cache(
        gen, [(f"prompt {i} is here", None) for i in range(n_prompts)], load_recipe(recipe), ref, 5, False
    )

    def rows(text):  # log-probabilities may differ in the last digits across thread counts
        out = {}
        for line in text.splitlines():
            r = json.loads(line)
            out[(r["prompt_id"], r["decoding"], r["sample_index"])] = (r["text"], round(r["logprob_sum"], 3))
        return out

    assert rows(after) == rows(ref.read_text())


def test_cli_generate_reports_bad_input(tiny_lm_dir, tmp_path):
    from cappy.cli import main

    inp = tmp_path / "p.jsonl"
    inp.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    out = tmp_path / "g.jsonl"
    argv = ["generate", "--backend", "hf", "--model", str(tiny_lm_dir("causal")), "--input", str(inp)]
    assert main([*argv, "--out", str(out)]) == 2
    assert not out.exists()
    inp.write_text('{"prompt": "ok"}\n')
    assert main([*argv, "--out", str(out), "--recipe", "nope"]) == 2
    assert main(["generate", "--backend", "openai", "--input", str(inp), "--out", str(out)]) == 2


def test_candidate_from_logprobs():
    c = Candidate.from_logprobs("x y", "greedy", 0, [-1.0, -2.0], 2)
    assert (c.logprob_sum, c.logprob_mean) == (-3.0, -1.5)
    assert Candidate.from_logprobs("x", "greedy", 0, None, 1).logprob_mean is None


# ---------------------------------------------------------------------- load_generator and CandidateSource
class _Words(Generator):
    """One candidate per planned slot, made from the prompt; counts prompts. Not a language model."""

    model_id = "words"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def _generate_prompt(self, prompt, prompt_id, recipe, plan, seed):
        self.prompts.append(prompt)
        slots = [(d.name, i) for d in plan for i in range(d.n)]
        return [Candidate(f"{prompt} #{k} s{seed}", n, i, -1.0, -1.0, 1) for k, (n, i) in enumerate(slots)]


def test_load_generator_checks_backend_and_options(monkeypatch):
    from cappy.generate import load_generator

    with pytest.raises(ValueError, match="unknown generation backend 'vllm'"):
        load_generator("vllm")
    with pytest.raises(TypeError, match="unknown generator option"):
        load_generator("llamacpp", n_thread=1)
    with pytest.raises(ValueError, match="'hf' needs a model"):
        load_generator("hf", device="cpu")
    with pytest.raises(ValueError, match="needs base_url"):
        load_generator("openai", "m", n_threads=2)  # another backend's option is ignored, base_url is not
    monkeypatch.setenv("MY_KEY", "s3cret")
    gen = load_generator("openai", "m", base_url="http://127.0.0.1:9/v1", api_key_env="MY_KEY", n_ctx=64)
    try:
        assert gen.api_key == "s3cret" and gen.model_id == "m"
    finally:
        gen.close()


def test_candidate_source_generates_only_what_the_cache_lacks(tmp_path):
    cache = tmp_path / "gens.jsonl"
    built = []

    def factory():
        built.append(_Words())
        return built[-1]

    src = CandidateSource("quick", cache=cache, generator=factory, seed=3)
    first = src.get(["a", "b", "a"])
    assert len(built) == 1 and built[0].prompts == ["a", "b"]  # a repeated prompt is generated once
    assert [len(c) for c in first] == [5, 5, 5] and first[0][0].text == "a #0 s3"
    again = CandidateSource("quick", cache=cache, generator=factory, seed=3).get(["b", "a"])
    assert len(built) == 1  # a complete cache never builds the generator
    assert [c.text for c in again[0]] == [c.text for c in first[1]]
    src2 = CandidateSource("quick", cache=cache, generator=factory, seed=3)
    src2.get(["a", "c"])
    assert built[-1].prompts == ["c"]
    with pytest.raises(ValueError, match=r"gens\.jsonl: no candidates for 1 prompt.*prompt 2.*no generator"):
        CandidateSource("quick", cache=cache, seed=3).get(["a", "d"])
    other_seed = CandidateSource("quick", cache=cache, generator=factory, seed=4).get(["a"])
    assert other_seed[0][0].text == "a #0 s4"  # another seed is another run
    with pytest.raises(ValueError, match="several runs"):
        CandidateSource(None, cache=cache).get(["a"])  # any recipe and seed: two runs for "a"
    assert [c.text for c in CandidateSource(None, cache=cache).get(["c"])[0]][0] == "c #0 s3"
    with pytest.raises(ValueError, match="a cache file, a generator, or both"):
        CandidateSource("quick")


def test_candidate_source_recipe_override_bypasses_the_cache(tmp_path):
    gen = _Words()
    src = CandidateSource("quick", cache=tmp_path / "g.jsonl", generator=gen)
    out = src.get(["x"], recipe="paper17")
    assert len(out[0]) == 17 and out[0][0].decoding == "greedy"  # paper17; beam4 x1 runs greedy here
    assert not (tmp_path / "g.jsonl").exists()


def test_hf_stop_strings_cut_where_they_start_inside_the_minimum(tiny_generator):
    gen = tiny_generator("causal")
    toks = gen.tokenizer.encode("jupiter question : what is it", add_special_tokens=False)
    pieces = [gen.tokenizer.decode(toks[: i + 1]) for i in range(len(toks))]
    assert pieces[:3] == ["jupiter", "jupiter question", "jupiter question :"]  # WordPiece joins with spaces
    stop = Recipe("s", (Decoding("greedy"),), min_new_tokens=2, max_new_tokens=8, stop=(" question :",))
    # starts in token 1 of a 2-token minimum, ends after it: cut at its end, 3 tokens kept
    assert gen._stop(toks, stop) == ("jupiter question :", 3)
    loose = Recipe("s", (Decoding("greedy"),), min_new_tokens=1, max_new_tokens=8, stop=(" question :",))
    assert gen._stop(toks, loose) == ("jupiter", 1)
