"""The demo's boosting step on the real Gemma 3 270M GGUF with a tiny scorer (5 short candidates, ~2 s)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

from cappy.demo import EXAMPLES, _print_boost, boost_demo  # noqa: E402
from cappy.generate.llamacpp import LlamaCppGenerator  # noqa: E402
from tolerances import assert_scores_close  # noqa: E402


def test_boost_demo_picks_the_best_scored_candidate_and_prints_all(tiny_scorer, capsys):
    prompt = "Question: What is the largest planet in the solar system?\nAnswer:"
    rows = [{"prompt": prompt, "references": ["Jupiter"]}]
    gen = LlamaCppGenerator(n_threads=1, n_ctx=256)
    try:
        out = boost_demo(tiny_scorer, gen, rows)
    finally:
        gen.close()
    (r,) = out
    scores = [c["score"] for c in r["candidates"]]
    assert len(scores) == 5 and [c["decoding"] for c in r["candidates"]].count("greedy") == 1
    # the demo's recipe cuts candidates at stop strings: none runs on into a new question or paragraph
    assert all("\nQuestion:" not in c["text"] and "\n\n" not in c["text"] for c in r["candidates"])
    assert r["chosen"]["cappy"]["index"] == int(np.argmax(scores))
    again = tiny_scorer.score([rows[0]["prompt"]] * 5, [c["text"] for c in r["candidates"]])
    assert_scores_close(again, scores)  # the demo scores all candidates of a prompt in one call: rounding only
    assert 0.0 <= r["metric"]["cappy"] <= 1.0 and "first:greedy" in r["metric"]
    _print_boost(out)
    printed = capsys.readouterr().out
    assert printed.count("->") == 1 and printed.count("[greedy]") == 1 and "Rouge-L vs reference" in printed
    assert "pick beats greedy on" in printed


def test_demo_prompts_are_real_questions_with_references():
    import json

    rows = [json.loads(line) for line in open(EXAMPLES / "boost.jsonl")]
    assert len(rows) >= 3 and all(r["prompt"].strip() and r["references"] for r in rows)
