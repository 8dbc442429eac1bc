"""The embedded cappy-mini: what ships in the package, how other tools read it, and that it ranks answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from cappy import Cappy
from cappy.model import resolve_model_path
from conftest import REPO
from tolerances import FP16_SCORE_RTOL, assert_scores_close

HELDOUT_FAMILIES = ("anli", "super_glue/cb", "super_glue/copa", "super_glue/rte", "hellaswag", "winogrande")


@pytest.fixture(scope="module")
def mini_dir() -> Path:
    return Path(resolve_model_path("cappy-mini"))


def test_embedded_in_the_package_small_half_precision_regression(mini_dir):
    import cappy

    assert mini_dir.parent.parent == Path(cappy.__file__).parent
    weights = mini_dir / "model.safetensors"
    assert weights.stat().st_size < 50 * 2**20
    with safe_open(weights, framework="pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert dtypes == {"F16"}
    cfg = json.loads((mini_dir / "config.json").read_text())
    assert cfg["problem_type"] == "regression" and cfg.get("num_labels", len(cfg.get("id2label", {}))) == 1
    st = json.loads((mini_dir / "config.json").read_text()).get("sentence_transformers", {})
    assert st.get("activation_fn", "").endswith("Identity")
    assert (mini_dir / "README.md").read_text().startswith("---")


def test_packaged_card_is_the_documented_one(mini_dir):
    # `cappy export --card docs/cappy-mini.md` wrote the packaged README; an edit to one must reach the other
    assert (mini_dir / "README.md").read_text() == (REPO / "docs" / "cappy-mini.md").read_text()


def test_trained_without_any_held_out_task(mini_dir):
    record = json.loads((mini_dir / "training_data.json").read_text())
    tasks = [t.lower() for t in record["tasks"]]
    assert tasks and not [t for t in tasks if t.startswith(HELDOUT_FAMILIES)]


def test_loads_offline_in_float32_and_matches_sentence_transformers(mini_dir):
    import torch
    from sentence_transformers import CrossEncoder

    scorer = Cappy.from_pretrained("cappy-mini", device="cpu")
    assert next(scorer.model.parameters()).dtype == torch.float32
    pairs = [("What is the capital of France?", "Paris"), ("What is the capital of France?", "Berlin")]
    ours = scorer.score([p[0] for p in pairs], [p[1] for p in pairs])
    theirs = CrossEncoder(str(mini_dir), device="cpu").predict(pairs)
    # sentence-transformers computes in the checkpoint's float16, we in float32 (FP16_SCORE_RTOL says why)
    assert_scores_close(ours, theirs, rtol=FP16_SCORE_RTOL)


DATA = Path(__file__).parent / "data"
# 8 easy questions asked as they are (no "Question:" framing): {"question", "choices", "answer" (index)}
EASY = [
    (r["question"], r["choices"], r["answer"])
    for r in map(json.loads, (DATA / "easy_questions.jsonl").read_text().splitlines())
]


def test_ranks_the_right_answer_first_on_easy_questions():
    # chance expects 2.5 of 8 here. The shipped cappy-mini gets 5 (it misses the Red Planet, water's boiling point
    # and the largest mammal: a third of one pass over its data); a replacement must not do worse.
    scorer = Cappy.from_pretrained("cappy-mini", device="cpu")
    right = sum(scorer.choose(q, choices) == gold for q, choices, gold in EASY)
    assert right >= 5, f"cappy-mini chose the right answer for only {right} of {len(EASY)} easy questions"


OBVIOUS = DATA / "obvious_questions.jsonl"


@pytest.mark.xfail(
    strict=True, reason="v1 gets 10 of 20 (the 2026-12-02 v2 candidate: 11); drop when a shipped one passes"
)
def test_obvious_questions_bar():
    """20 obvious factual questions written for this project (none is in a training or held-out file), 4 short
    choices each, the right one in each position 5 times. The bar, 18 of 20, was fixed before any model trained
    for it was seen; strict: when the shipped model passes, this marker must go."""
    rows = [json.loads(x) for x in OBVIOUS.read_text().splitlines()]
    assert len(rows) == 20
    scorer = Cappy.from_pretrained("cappy-mini", device="cpu")
    right = sum(scorer.choose(f"Question: {r['question']}\nAnswer:", r["choices"]) == r["answer"] for r in rows)
    assert right >= 18, f"{right} of 20 right"
