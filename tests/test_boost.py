"""Best-of-N selection: every strategy on one candidate set, with the tiny scorer and a tiny random LM."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cappy.boost import best_of_n, boost_candidates, check_strategy, select, summarize
from cappy.generate import Candidate, Decoding, Recipe
from cappy.generate.cache import generate_to_cache
from cappy.metrics import rouge_l
from conftest import build_tiny_lm
from tolerances import assert_scores_close

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models on two shared cores

RECIPE = Recipe("b", (Decoding("greedy"), Decoding("sample", n=3), Decoding("sample", top_k=5, n=2)), 1, 5)


@pytest.fixture(scope="module")
def tiny_lm():
    from cappy.generate.hf import HFGenerator

    model, tok = build_tiny_lm("causal")
    return HFGenerator(model, tok, device="cpu", model_id="tiny-causal")


def _cands():
    return [
        Candidate("the cat sat", "beam4", 0, -3.0, -1.0, 3),
        Candidate("a dog", "sample", 0, -1.0, -0.5, 2),
        Candidate("the cat sat on the mat", "sample", 1, -4.5, -0.75, 6),
        Candidate("cat", "topk40", 0, -0.9, -0.9, 1),
        Candidate("mat", "sample", 2, -2.0, -2.0, 1),
    ]


def test_each_strategy_picks_what_it_promises():
    cands = _cands()
    assert select("cappy", cands, scores=[0.1, 0.7, 0.2, 0.7, 0.0]) == 1  # a tie goes to the first
    assert select("first:sample", cands) == 1
    assert select("first:topk40", cands) == 3
    assert select("self_score_sum", cands) == 3
    assert select("self_score_mean", cands) == 1
    assert select("oracle:rouge_l", cands, references=["the cat sat on the mat"]) == 2
    assert select("oracle:rouge_l", cands, references=["a dog ran", "cat"]) == 3  # max over references
    picks = {select("random", cands, seed=s, prompt="p") for s in range(40)}
    assert picks == set(range(5))  # seeded, and it reaches every candidate
    assert select("random", cands, seed=7, prompt="p") == select("random", cands, seed=7, prompt="p")


def test_consensus_picks_the_candidate_that_agrees_most_with_the_others():
    from cappy.boost import consensus_scores

    # no log-probabilities, no scorer, no references: consensus needs none of them
    texts = ["red", "blue apple", "red", "red apple", "green"]
    cands = [Candidate(t, "sample", i, None, None, 1) for i, t in enumerate(texts)]
    # "red" is the most frequent text, but "red apple" overlaps "red" twice (F 2/3 each) and "blue apple" (F 1/2):
    # mean agreement 1.83 / 4 against 1.67 / 4 for either "red"; the mean, not the mode, decides
    assert select("consensus:rouge_l", cands) == 3
    scores = consensus_scores(texts)
    assert scores[3] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3 + 0) / 4)
    assert scores[0] == scores[2] == pytest.approx((0 + 1 + 2 / 3 + 0) / 4) and scores[4] == 0.0
    assert consensus_scores(["a b", "a b", "c"]) == [0.5, 0.5, 0.0]
    assert consensus_scores(["only"]) == [0.0]
    assert select("consensus:rouge_l", cands[:1]) == 0
    res = boost_candidates(["p"], [cands], None, ["consensus:rouge_l", "oracle:rouge_l"], [["green"]])
    assert res[0].chosen == {"consensus:rouge_l": 3, "oracle:rouge_l": 4} and res[0].metric["consensus:rouge_l"] == 0.0


def test_strategy_errors_are_clear():
    cands = _cands()
    with pytest.raises(ValueError, match="unknown strategy 'best'"):
        check_strategy("best")
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        check_strategy("oracle:bleu")
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        check_strategy("consensus:bleu")
    with pytest.raises(ValueError, match="no candidate from decoding 'greedy'; decodings here: \\['beam4'"):
        select("first:greedy", cands)
    with pytest.raises(ValueError, match="needs references"):
        select("oracle:rouge_l", cands)
    no_lp = [Candidate("x", "sample", 0, None, None, 1)]
    with pytest.raises(ValueError, match="needs log-probabilities"):
        select("self_score_mean", no_lp)
    with pytest.raises(ValueError, match="has no candidates"):
        boost_candidates(["p"], [[]], None, ["random"])
    with pytest.raises(ValueError, match="needs a scorer"):
        boost_candidates(["p"], [cands], None, ["cappy"])


def test_best_of_n_scores_with_cappy_and_compares_fairly(tiny_lm, tiny_scorer):
    prompts = ["What is two plus two?", "Is the sky blue? Yes or no.", "Name a prime number."]
    refs = [["four"], ["yes"], ["seven", "two"]]
    strategies = ["cappy", "first:greedy", "self_score_sum", "self_score_mean", "random", "oracle:rouge_l"]
    res = best_of_n(prompts, tiny_lm, tiny_scorer, RECIPE, strategies=strategies, references=refs, seed=1)
    assert len(res) == 3
    for prompt, ref, r in zip(prompts, refs, res):
        assert len(r.candidates) == RECIPE.num_candidates
        direct = tiny_scorer.score(prompt, [c.text for c in r.candidates])
        assert_scores_close(r.scores, direct)  # best_of_n batches all prompts together: float32 rounding only
        assert r.chosen["cappy"] == int(np.argmax(direct))
        assert r.best is r.candidates[r.chosen["cappy"]]
        assert r.chosen["first:greedy"] == 0
        metric = {s: rouge_l(r.candidates[i].text, ref) for s, i in r.chosen.items()}
        assert r.metric == pytest.approx(metric)  # the same rouge_score call: approx's 1e-6 only absorbs float repr
        assert all(metric["oracle:rouge_l"] >= v for v in metric.values())
    # Same candidates (same seed) whatever the strategies asked: selection never changes the candidate set.
    again = best_of_n(prompts, tiny_lm, tiny_scorer, RECIPE, strategies=["random"], seed=1)
    assert [[c.text for c in r.candidates] for r in again] == [[c.text for c in r.candidates] for r in res]
    # With a reference equal to one candidate's text, the oracle reaches Rouge-L 1 and `random` mostly does not.
    exact = [[r.candidates[3].text] for r in res]
    cands = [r.candidates for r in res]
    oracle = boost_candidates(prompts, cands, None, ["oracle:rouge_l", "first:greedy"], exact)
    assert [o.metric["oracle:rouge_l"] for o in oracle] == [1.0, 1.0, 1.0]
    summary = summarize(res)
    # a fraction like every metric value (reports scale x100); a mean of the same float64 values: exact
    assert summary["oracle:rouge_l"] == float(np.mean([r.metric["oracle:rouge_l"] for r in res]))
    assert all(0.0 <= v <= 1.0 for v in summary.values()) and set(summary) == set(strategies)


def test_boost_scores_through_score_groups_with_unequal_candidate_counts(tiny_scorer, monkeypatch):
    prompts = ["What is two plus two?", "Name a prime.", "Is the sky blue?"]
    cands = [_cands()[:1], _cands(), _cands()[1:3]]
    calls = []
    real = tiny_scorer.score_groups
    monkeypatch.setattr(
        tiny_scorer, "score_groups", lambda i, g, **k: (calls.append([len(x) for x in g]), real(i, g))[1]
    )
    res = boost_candidates(prompts, cands, tiny_scorer, ["cappy"])
    assert calls == [[1, 5, 2]]  # one call for the block, one group per prompt
    for p, cs, r in zip(prompts, cands, res):
        # the same pairs in another batch: float32 rounding only
        assert_scores_close(r.scores, tiny_scorer.score(p, [c.text for c in cs]))
        assert len(r.scores) == len(cs) and r.chosen["cappy"] == int(np.argmax(r.scores))


def test_cli_boost_from_a_generation_cache(tiny_lm, tiny_model_dir, tmp_path):
    from cappy.cli import main

    prompts = ["What is two plus two?", "Name a colour."]
    gens = tmp_path / "gens.jsonl"
    generate_to_cache(tiny_lm, [(p, None) for p in prompts], RECIPE, gens, seed=0, show_progress=False)
    cached_texts = [json.loads(x)["text"] for x in gens.read_text().splitlines()]
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        json.dumps({"prompt": prompts[0], "id": "a", "references": ["four"]})
        + "\n"
        + json.dumps({"prompt": prompts[1], "references": "red"})
        + "\n"
    )
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    base = ["boost", "--input", str(inp), "--gens", str(gens), "--model", str(tiny_model_dir("bert"))]
    base += ["--scorer-device", "cpu", "--no-progress"]
    argv = [*base, "--output", str(out), "--summary", str(summary)]
    argv += ["--strategy", "cappy", "--strategy", "first:sample"]
    argv += ["--strategy", "oracle:rouge_l"]
    assert main(argv) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt_id"] for r in rows][0] == "a" and len(rows) == 2
    assert [c["text"] for r in rows for c in r["candidates"]] == cached_texts
    for r in rows:
        scores = [c["score"] for c in r["candidates"]]
        assert r["chosen"]["cappy"]["index"] == int(np.argmax(scores))
        assert r["chosen"]["first:sample"]["decoding"] == "sample"
        assert r["metric"]["oracle:rouge_l"] >= r["metric"]["cappy"]
    report = json.loads(summary.read_text())
    assert report["prompts"] == 2 and set(report["rouge_l_x100"]) == {"cappy", "first:sample", "oracle:rouge_l"}
    for s, v in report["rouge_l_x100"].items():
        # what the key says: points x100 of the rows' Rouge-L fractions (approx: float32-free, float64 rounding only)
        assert v == pytest.approx(100 * np.mean([r["metric"][s] for r in rows]))

    # Errors: a prompt with no cached candidates, and a decoding the candidates do not have.
    inp.write_text(json.dumps({"prompt": "never generated"}) + "\n")
    assert main([*base, "--output", str(tmp_path / "x.jsonl")]) == 2
    inp.write_text(json.dumps({"prompt": prompts[0]}) + "\n")
    assert main([*base, "--output", str(tmp_path / "x.jsonl"), "--strategy", "first:beam4"]) == 2
    assert not (tmp_path / "x.jsonl").exists()


def test_boost_summary_reports_points_as_its_key_says(tmp_path):
    """summary.json's ``rouge_l_x100`` holds points (0-100), the rows' ``metric`` fractions (0-1)."""
    from cappy.batch import boost_jsonl

    class Fixed:  # a candidate source with known candidates
        def get(self, prompts, ids):
            return [_cands() for _ in prompts]

        def close(self):
            pass

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"prompt": "p", "references": ["the cat sat on the mat"]}) + "\n")
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    report = boost_jsonl(inp, out, Fixed(), None, ["oracle:rouge_l", "first:sample"], summary=summary)
    row = json.loads(out.read_text())
    assert row["metric"] == {"oracle:rouge_l": 1.0, "first:sample": 0.0}  # "a dog": nothing in common
    assert json.loads(summary.read_text())["rouge_l_x100"] == {"oracle:rouge_l": 100.0, "first:sample": 0.0}
    assert report["rouge_l_x100"]["oracle:rouge_l"] == 100.0
