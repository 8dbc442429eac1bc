"""The demo's pieces: its fixed prompt files, the statistics it prints, each job on a tiny scorer (a stand-in LM
for generation, the real committed candidates for adaptation), and one real Gemma 3 270M generation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cappy.demo import (
    ADAPT_TASK,
    COMMITTED_TRAIN_GENS,
    PROMPTS,
    Interval,
    adaptation_split,
    baseline_strategies,
    best_of_n_candidates,
    bootstrap_mean,
    choose_demo,
    generation_cache,
    load_best_of_n_prompts,
    load_jsonl,
    paired_difference,
    score_demo,
    verdict,
)
from cappy.generate import DEFAULT_RECIPE, Candidate, Generator, load_recipe
from cappy.paths import shared_data_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TASK_DIR = shared_data_dir() / "bigbench" / ADAPT_TASK


# --------------------------------------------------------------------------- the fixed files
def test_best_of_n_prompts_are_at_least_20_few_shot_questions_with_references():
    raw = (PROMPTS / "best_of_n.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in raw]  # every line is valid JSON on its own
    assert load_best_of_n_prompts() == rows
    assert len(rows) >= 20
    assert len({r["id"] for r in rows}) == len(rows)
    prefix = rows[0]["prompt"][: rows[0]["prompt"].index(f"Q: {rows[0]['question']}")]
    assert prefix.count("Q: ") == prefix.count("\nA: ") >= 2  # a few-shot "Q: ... A:" prefix
    for r in rows:
        # every prompt is the same prefix, then its own question, then "A:" for the LM to continue
        assert r["prompt"] == f"{prefix}Q: {r['question']}\nA:"
        assert r["references"] and all(isinstance(x, str) and x.strip() for x in r["references"])
        # no question of the prefix is asked again (its answer would be there to copy)
        assert f"Q: {r['question']}\n" not in prefix
    kinds = {r["id"].rsplit("-", 1)[0] for r in rows}
    assert kinds == {"fact", "arithmetic", "list"}


def test_scoring_and_choosing_files_have_a_right_and_a_wrong_answer_each():
    pairs = load_jsonl(PROMPTS / "score.jsonl", ["instruction", "response", "correct"])
    by_instr: dict[str, set[bool]] = {}
    for p in pairs:
        by_instr.setdefault(p["instruction"], set()).add(p["correct"])
    assert by_instr and all(v == {True, False} for v in by_instr.values())
    for q in load_jsonl(PROMPTS / "choose.jsonl", ["instruction", "candidates", "answer"]):
        assert q["answer"] in q["candidates"] and len(q["candidates"]) >= 2


def test_the_readme_names_the_task_and_the_train_sample_the_code_uses():
    text = (PROMPTS / "README.md").read_text(encoding="utf-8")
    assert f"`{ADAPT_TASK}`" in text and "max_train=200" in text and "held_aside" in text


def test_bad_prompt_files_are_errors_naming_file_and_line(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "a", "question": "q", "prompt": "Q: q\\nA:", "references": ["x"]}\n{oops\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2: not valid JSON"):
        load_best_of_n_prompts(bad)
    bad.write_text('{"id": "a", "question": "q", "prompt": "Q: q\\nA:"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:1: missing field\(s\) \['references'\]"):
        load_best_of_n_prompts(bad)
    bad.write_text('{"id": "a", "question": "q", "prompt": "Q: q\\nA:", "references": [" "]}\n')
    with pytest.raises(ValueError, match=r"row 1 \(a\): references must be a non-empty list"):
        load_best_of_n_prompts(bad)
    bad.write_text("")
    with pytest.raises(ValueError, match="no rows"):
        load_best_of_n_prompts(bad)


# --------------------------------------------------------------------------- statistics and words
def test_bootstrap_mean_is_seeded_and_brackets_the_mean():
    values = [0.0, 0.25, 1.0, 0.5, 0.0, 1.0, 0.75, 0.1]
    a, b = bootstrap_mean(values), bootstrap_mean(values)
    assert a == b  # seeded: a rerun prints the same interval
    assert a.value == pytest.approx(np.mean(values), abs=1e-12)  # the mean itself, not a resampled one
    assert a.low < a.value < a.high and 0.0 <= a.low and a.high <= 1.0
    assert bootstrap_mean(values, seed=1) != a
    assert bootstrap_mean([0.4] * 5) == Interval(0.4, 0.4, 0.4)  # no spread, no interval
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_mean([])


def test_paired_difference_resamples_prompts_together():
    a = [0.5, 0.6, 0.9, 0.2, 0.4]
    same = paired_difference(a, a)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    shifted = paired_difference([x + 0.1 for x in a], a)
    # every prompt gains exactly 0.1, so paired resampling has no spread (unpaired intervals would be wide)
    assert (
        shifted.value == pytest.approx(0.1)
        and shifted.low == pytest.approx(0.1)
        and shifted.high == pytest.approx(0.1)
    )
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([0.1], [0.1, 0.2])


def test_verdict_and_interval_words():
    assert verdict(Interval(0.05, 0.01, 0.09)) == "better"
    assert verdict(Interval(-0.05, -0.09, -0.01), worse="worse here") == "worse here"
    assert verdict(Interval(0.02, -0.01, 0.05)).startswith("no clear difference")
    assert Interval(0.213, 0.15, 0.279).show() == "21.3 [15.0, 27.9]"
    assert Interval(-0.027, -0.08, 0.026).show(signed=True) == "-2.7 [-8.0, +2.6]"


def _cand(text: str, decoding: str, i: int = 0, lp: float | None = -1.0) -> Candidate:
    return Candidate(text, decoding, i, lp, lp, 1)


def test_baseline_strategies_compare_with_greedy_else_the_first_decoding():
    with_greedy = [[_cand("a", "sample"), _cand("b", "greedy")], [_cand("c", "greedy")]]
    assert baseline_strategies(with_greedy) == [
        "first:greedy",
        "self_score_mean",
        "self_score_sum",
        "random",
        "oracle:rouge_l",
    ]
    no_logprobs = [[_cand("a", "beam4", lp=None), _cand("b", "sample", lp=None)]]
    assert baseline_strategies(no_logprobs) == ["first:beam4", "random", "oracle:rouge_l"]
    one_without_greedy = [[_cand("a", "sample"), _cand("b", "greedy")], [_cand("c", "sample")]]
    assert baseline_strategies(one_without_greedy)[0] == "first:sample"


# --------------------------------------------------------------------------- job 1
def test_score_and_choose_demo_count_what_the_scorer_did(tiny_scorer):
    rows, right, n = score_demo(tiny_scorer)
    direct = tiny_scorer.score([r["instruction"] for r in rows], [r["response"] for r in rows])
    np.testing.assert_allclose([r["score"] for r in rows], direct, rtol=0, atol=1e-6)  # same call, same batch
    expected = 0
    for instr in dict.fromkeys(r["instruction"] for r in rows):
        good = [r["score"] for r in rows if r["instruction"] == instr and r["correct"]]
        bad = [r["score"] for r in rows if r["instruction"] == instr and not r["correct"]]
        expected += min(good) > max(bad)
    assert (right, n) == (expected, 3)
    questions, chosen_right = choose_demo(tiny_scorer)
    for q in questions:
        assert q["chosen"] == q["candidates"][tiny_scorer.choose(q["instruction"], q["candidates"])]
    assert chosen_right == sum(q["chosen"] == q["answer"] for q in questions)


def test_choose_demo_rejects_an_answer_outside_the_candidates(tiny_scorer, tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"instruction": "2+2?", "candidates": ["3", "5"], "answer": "4"}) + "\n")
    with pytest.raises(ValueError, match=r"c\.jsonl: row 1: the answer '4' is not among the candidates"):
        choose_demo(tiny_scorer, f)


# --------------------------------------------------------------------------- job 2
class _Echo(Generator):
    """Not a language model: candidate k of a prompt is its k-th reference-like word, so the oracle is known."""

    model_id = "echo"

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls = 0

    def _generate_prompt(self, prompt, prompt_id, recipe, plan, seed):
        self.calls += 1
        slots = [(d.name, i) for d in plan for i in range(d.n)]
        words = self.answers[prompt]
        return [
            Candidate(words[k % len(words)], name, i, -1.0 - k, -1.0 - k / 2, 1) for k, (name, i) in enumerate(slots)
        ]


def test_generation_cache_is_named_by_the_recipe_contents(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPPY_CACHE", str(tmp_path))
    recipe = load_recipe(DEFAULT_RECIPE)
    path = generation_cache(recipe)
    assert path.parent == tmp_path / "demo" and path.name.startswith(f"best_of_n-{recipe.name}-")
    import dataclasses

    other = dataclasses.replace(recipe, max_new_tokens=recipe.max_new_tokens + 1)
    assert generation_cache(other) != path and generation_cache(load_recipe(DEFAULT_RECIPE)) == path


def test_best_of_n_candidates_generate_once_then_read_the_cache(tmp_path):
    rows = load_best_of_n_prompts()[:3]
    prompts = [r["prompt"] for r in rows]
    gen = _Echo({r["prompt"]: ["nonsense", *r["references"]] for r in rows})
    recipe = load_recipe(DEFAULT_RECIPE)
    cache = tmp_path / "gens.jsonl"
    first = best_of_n_candidates(prompts, recipe, cache, lambda: gen, show_progress=False)
    assert gen.calls == 3 and all(len(cs) == recipe.num_candidates for cs in first)

    def no_lm():
        raise AssertionError("a complete cache must not build the LM")

    again = best_of_n_candidates(prompts, recipe, cache, no_lm, show_progress=False)
    assert [[c.text for c in cs] for cs in again] == [[c.text for c in cs] for cs in first]


def test_job_best_of_n_prints_every_strategy_with_intervals_and_a_summary(tiny_scorer, monkeypatch, tmp_path, capsys):
    from cappy.demo import run

    monkeypatch.setenv("CAPPY_CACHE", str(tmp_path))
    rows = load_best_of_n_prompts()
    gen = _Echo({r["prompt"]: ["nonsense words", r["references"][0]] for r in rows})
    monkeypatch.setattr(run, "_llamacpp_factory", lambda: gen)
    line = run.job_best_of_n(tiny_scorer, fresh=False)
    out = capsys.readouterr().out
    for s in ("cappy", "first:greedy", "self_score_mean", "self_score_sum", "random", "oracle:rouge_l"):
        assert re.search(rf"^    {re.escape(s)}\s+\d+\.\d \[\d+\.\d, \d+\.\d\]", out, re.M), s
    # the oracle always finds the reference among the candidates here: 100 with no spread
    assert re.search(r"oracle:rouge_l\s+100\.0 \[100\.0, 100\.0\]", out)
    assert out.count(" | greedy ") == len(rows)
    assert line.startswith(f"zero-shot best-of-N ({len(rows)} questions")
    assert "oracle 100.0 [100.0, 100.0] is the ceiling" in line
    # greedy here is candidate 0 ("nonsense words", Rouge-L 0 on every prompt): the line says how cappy compares
    m = re.search(
        r"vs first:greedy 0\.0 \[0\.0, 0\.0\]: difference ([+-]\d+\.\d) \[([+-]\d+\.\d), ([+-]\d+\.\d)\]", line
    )
    assert m, line
    low = float(m.group(2))
    assert ("better on these prompts" in line) == (low > 0)


def test_job_best_of_n_without_llama_cpp_says_so(tiny_scorer, monkeypatch, tmp_path, capsys):
    from cappy.demo import run

    monkeypatch.setenv("CAPPY_CACHE", str(tmp_path))

    def missing():
        raise ImportError("the llama.cpp backend needs llama-cpp-python: pip install 'cappy[llamacpp]'")

    monkeypatch.setattr(run, "_llamacpp_factory", missing)
    line = run.job_best_of_n(tiny_scorer, fresh=False)
    assert "skipped: the llama.cpp backend needs llama-cpp-python" in capsys.readouterr().out
    assert line.startswith("zero-shot best-of-N: not run here (the llama.cpp backend needs llama-cpp-python")


def test_quick_main_skips_adaptation_and_summarises_each_job(tiny_scorer, monkeypatch, tmp_path, capsys):
    from cappy.demo import run

    monkeypatch.setenv("CAPPY_CACHE", str(tmp_path))
    rows = load_best_of_n_prompts()
    monkeypatch.setattr(run, "_llamacpp_factory", lambda: _Echo({r["prompt"]: ["x", "y"] for r in rows}))
    monkeypatch.setattr(run, "load_demo_scorer", lambda: (tiny_scorer, "STAND-IN: tiny"))
    summary = run.main(["--quick"])
    out = capsys.readouterr().out
    assert summary[0].startswith("NOTE: the scorer is an untrained stand-in")
    assert summary[1].startswith("scoring and choosing:") and summary[2].startswith("zero-shot best-of-N (24")
    assert summary[3] == "adaptation: skipped (--quick)"
    assert "== Where each job stands" in out and re.search(r"^wall time: \d+ min \d+ s$", out, re.M)


def test_parse_args_rejects_a_nonpositive_pair_count(capsys):
    from cappy.demo import run

    with pytest.raises(SystemExit):
        run.parse_args(["--adapt-pairs", "0"])
    assert "--adapt-pairs must be >= 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- job 3
needs_task = pytest.mark.skipif(
    not (TASK_DIR.exists() and COMMITTED_TRAIN_GENS.exists()), reason="needs the shared BIG-Bench data and the cache"
)


@needs_task
def test_adaptation_split_holds_a_quarter_aside_and_the_cache_covers_every_prompt():
    from cappy.data.bigbench import held_aside
    from cappy.generate import read_generations

    name, fit, held = adaptation_split(TASK_DIR)
    assert name == ADAPT_TASK
    assert (len(fit), len(held)) == (146, 54)  # the sample of 200 and the hash rule; docs/RESULTS.md has 146 / 54
    assert all(held_aside(ex.input) for ex in held) and not any(held_aside(ex.input) for ex in fit)
    assert not {ex.input for ex in fit} & {ex.input for ex in held}
    from cappy.data.bigbench import load_bigbench_task

    _, validation = load_bigbench_task(TASK_DIR).split()
    assert not {ex.input for ex in fit + held} & {ex.input for ex in validation}  # never a validation prompt
    cached = read_generations(COMMITTED_TRAIN_GENS)
    assert all(cached.get(ex.input) for ex in fit + held)


@needs_task
def test_job_adaptation_on_a_tiny_scorer_with_the_committed_candidates(tiny_scorer, monkeypatch, tmp_path, capsys):
    from cappy.demo import run

    monkeypatch.setenv("CAPPY_CACHE", str(tmp_path))
    overrides = {"num_pairs": 64, "max_length": 128}
    line = run.job_adaptation(tiny_scorer, "STAND-IN: tiny", fresh=False, overrides=overrides)
    out = capsys.readouterr().out
    model = tmp_path / "demo" / "adapt" / ADAPT_TASK / "model"
    assert (model / "config.json").is_file()
    assert "REDUCED from the preset: {'num_pairs': 64, 'max_length': 128}" in out
    assert re.search(
        r"adapted in \d+ s: 64 pairs drawn from \d+ \(\d+ candidates, \d+ references, \d+ mismatched", out
    )
    for s in ("cappy adapted", "cappy zero-shot", "first:greedy", "self_score_mean", "oracle:rouge_l"):
        assert re.search(rf"^    {re.escape(s)}\s+\d+\.\d \[\d+\.\d, \d+\.\d\]", out, re.M), s
    assert line.startswith(f"adaptation ({ADAPT_TASK}, 54 held-aside train prompts, ")

    # the printed adapted mean is what the saved model picks on the held-aside prompts
    from cappy import Cappy
    from cappy.boost import boost_candidates
    from cappy.generate import CandidateSource

    _, _, held = adaptation_split(TASK_DIR)
    prompts = [ex.input for ex in held]
    cands = CandidateSource(None, cache=COMMITTED_TRAIN_GENS).get(prompts)
    tuned = Cappy.from_pretrained(model, device="cpu", dtype="float32")
    res = boost_candidates(prompts, cands, tuned, ["cappy"], [list(ex.references) for ex in held])
    mean = 100 * np.mean([r.metric["cappy"] for r in res])
    printed = float(re.search(r"^    cappy adapted\s+(\d+\.\d)", out, re.M).group(1))
    assert printed == pytest.approx(mean, abs=0.051)  # printed to one decimal

    # a rerun with the same settings reuses the model instead of training again
    again = run.job_adaptation(tiny_scorer, "STAND-IN: tiny", fresh=False, overrides=overrides)
    assert "reused from an earlier run" in capsys.readouterr().out and "reused" in again


def test_job_adaptation_without_the_data_says_so(tiny_scorer, monkeypatch, tmp_path, capsys):
    from cappy.demo import run

    monkeypatch.setattr(run, "COMMITTED_TRAIN_GENS", tmp_path / "no" / "gens.jsonl")
    line = run.job_adaptation(tiny_scorer, "STAND-IN: tiny", fresh=False, overrides={})
    assert "skipped: needs the committed candidate cache" in capsys.readouterr().out
    assert line.startswith("adaptation: not run here (needs the committed candidate cache")


# --------------------------------------------------------------------------- the real LM
def test_real_gemma_candidates_for_two_fixed_prompts_are_cut_answers(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from cappy.generate.llamacpp import LlamaCppGenerator

    rows = load_best_of_n_prompts()[:2]
    recipe = load_recipe(DEFAULT_RECIPE)
    built = []

    def factory():
        built.append(LlamaCppGenerator(n_threads=1, n_ctx=256))
        return built[-1]

    cands = best_of_n_candidates([r["prompt"] for r in rows], recipe, tmp_path / "g.jsonl", factory, False)
    assert len(built) == 1
    for cs in cands:
        assert len(cs) == recipe.num_candidates and sum(c.decoding == "greedy" for c in cs) == 1
        # cut at the recipe's stop strings: no candidate runs on past one into the next few-shot question (an
        # answer shorter than min_new_tokens keeps the stop string it ends with, as the cutting rule says)
        for c in cs:
            for stop in recipe.stop:
                at = c.text.find(stop)
                assert at < 0 or c.text[at + len(stop) :] == "", (stop, c.text)
        assert all(c.logprob_sum is not None for c in cs)
