"""The T0 training mixture (configs/mixtures/t0.yaml), offline: every template it names resolves in PromptSource
0.2.3, nothing in it is held out (and the guard refuses a held-out dataset added to it), a build over stand-in
files in each dataset's hub schema gives the pair counts worked out here from the rows and the templates, and
`cappy data build --dry-run` reports what the build would read without reading it."""

from __future__ import annotations

import dataclasses
import json
import random
from importlib.metadata import version

import pytest

from cappy.cli import main
from cappy.data.builder import PairBuilder, build_pairs, export_prompts
from cappy.data.mixture import DEFAULT_HELDOUT, HeldOutError, Mixture, MixtureError, heldout_hits, mixture_recipe
from cappy.data.readers import HUB_PREFIX, iter_examples
from cappy.data.templates import load_templates, select_templates, template_key
from conftest import REPO, SHARED_DATA

T0 = REPO / "configs" / "mixtures" / "t0.yaml"
STANDINS = REPO / "tests" / "data" / "t0"

# The T0 paper's training datasets (Figure 2) under the names of T0's experiment_D4.csv (CommonsenseQA is
# cos_e/v1.11, Hotpot QA the closed-book kilt_tasks/hotpotqa), in the paper's order.
T0_TRAIN = [
    "cos_e/v1.11", "dream", "quail", "quartz", "social_i_qa", "wiqa", "cosmos_qa", "qasc", "quarel", "sciq",
    "wiki_hop/original",
    "adversarial_qa/dbidaf", "adversarial_qa/dbert", "adversarial_qa/droberta", "quoref", "ropes", "duorc/SelfRC",
    "duorc/ParaphraseRC",
    "kilt_tasks/hotpotqa", "wiki_qa",
    "common_gen", "wiki_bio",
    "amazon_polarity", "app_reviews", "imdb", "rotten_tomatoes", "yelp_review_full",
    "cnn_dailymail/3.0.0", "gigaword", "multi_news", "samsum", "xsum",
    "ag_news", "dbpedia_14", "trec",
    "glue/mrpc", "glue/qqp", "paws/labeled_final",
]  # fmt: skip
T0_CAP = 500_000  # T0's MAX_EXAMPLES_PER_DATASET


@pytest.fixture(scope="module")
def t0() -> Mixture:
    return Mixture.from_yaml(T0)


def test_promptsource_is_0_2_3():
    assert version("promptsource") == "0.2.3"


def test_t0_lists_the_papers_training_datasets_by_hub_id(t0):
    assert [d.name for d in t0.datasets] == T0_TRAIN
    for d in t0.datasets:
        assert d.split == "train" and isinstance(d.path, str) and d.path.startswith(HUB_PREFIX), d.name
        # hub id and subset together name the PromptSource folder the templates come from
        hub_id = d.path[len(HUB_PREFIX) :]
        assert "/".join(x for x in (hub_id, d.config) if x) == template_key(d.name), d.name
        # T0's cap: a dataset over 500,000 examples gives 500,000 prompted examples (one template each),
        # sampled by a seeded shuffle; the rest are used whole, with every template
        over = d.rows > T0_CAP
        assert (d.max_examples, d.templates_per_example, d.shuffle) == (
            (T0_CAP, 1, True) if over else (None, None, False)
        ), d.name
    assert t0.llm_candidates == "free_text" and t0.mismatched == 1


def test_every_named_template_resolves_in_promptsource(t0):
    for d in t0.datasets:
        available = load_templates(template_key(d.name))  # PromptSource's own templates.yaml
        chosen = select_templates(available, d.templates)
        if d.templates == "all":
            assert len(chosen) == len(available) > 0, d.name
        else:
            assert set(d.templates) <= {t.name for t in available}, d.name
            assert len(chosen) == len(d.templates) == len(available) - 1  # trec without fine_grained_ENTY
    # and the builder's own planning (templates, held-out guard) accepts the whole mixture without data
    builder = PairBuilder(t0, "unused")
    assert sum(len(builder.spec_templates(d)) for d in t0.datasets) > 300


def test_nothing_in_t0_is_held_out(t0):
    names = [d.name for d in t0.datasets] + [template_key(d.name) for d in t0.datasets]
    names += [d.path[len(HUB_PREFIX) :] for d in t0.datasets]
    names += [f"{d.path[len(HUB_PREFIX) :]}/{d.config}" for d in t0.datasets if d.config]
    assert heldout_hits(names, DEFAULT_HELDOUT) == []


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "super_glue/rte", "path": "hub:super_glue", "config": "rte"},
        {"name": "anli", "path": "hub:facebook/anli", "templates_root": "."},
        {"name": "winogrande/winogrande_xl", "path": "hub:allenai/winogrande", "config": "winogrande_xl"},
        {"name": "hellaswag", "path": "hub:Rowan/hellaswag"},
        {"name": "story_cloze/2016", "path": "hub:story_cloze", "config": "2016"},
        {"name": "glue/mnli", "path": "hub:nyu-mll/glue", "config": "mnli"},
        # disguised: an innocent name and template folder, held out only by hub id and subset
        {"name": "my_pairs", "path": "hub:aps/super_glue", "config": "wic", "template_key": "glue/mrpc"},
        {"name": "crows", "path": "hub:nyu-mll/crows_pairs", "template_key": "glue/mrpc"},
    ],
)
def test_the_guard_refuses_a_held_out_dataset_added_to_t0(t0, tmp_path, entry):
    mix = dataclasses.replace(t0, datasets=[*t0.datasets, dataclasses.replace(t0.datasets[0], **entry)])
    with pytest.raises(HeldOutError, match="held out for evaluation"):
        PairBuilder(mix, tmp_path / "out").plan()


# ---- a build over stand-in files --------------------------------------------------------------------------------

STANDIN_FILES = {
    "ag_news": "ag_news_train.jsonl",
    "cos_e/v1.11": "cos_e_v1.11_train.jsonl",
    "paws/labeled_final": "paws_labeled_final_train.jsonl",
    "samsum": "samsum_train.jsonl",
    "ropes": "ropes_train.jsonl",
    "amazon_polarity": "amazon_polarity_train.jsonl",
}
AMAZON_CAP = 4  # stands in for 500,000: fewer than the file's 6 rows, so the seeded shuffle decides which


def _standin_mixture(t0: Mixture) -> Mixture:
    """t0.yaml's own entries for the stand-in datasets, each reading its local file instead of the hub."""
    specs = []
    for d in t0.datasets:
        if d.name in STANDIN_FILES:
            cap = AMAZON_CAP if d.max_examples else None
            specs.append(dataclasses.replace(d, path=STANDIN_FILES[d.name], split=None, max_examples=cap))
    return dataclasses.replace(t0, datasets=specs, data_root=str(STANDINS))


def _rows(name: str) -> list[dict]:
    lines = (STANDINS / STANDIN_FILES[name]).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _expected_sources(name: str, spec_templates, k: int) -> dict[str, int]:
    """Gold, wrong-choice and mismatched rows of one uncapped dataset, worked out from its rows and templates:
    per template and row, the gold; every distinct answer choice that is not a reference; and one answer of
    another row of the same template (k=1) when one exists that is not among this prompt's answers."""
    rows = _rows(name)
    counts = {"gold": 0, "wrong_choice": 0, "mismatched": 0}
    for t in load_templates(template_key(name)):
        if spec_templates != "all" and t.name not in spec_templates:
            continue
        prompts = [p for p in (t.apply(r, random.Random(0)) for r in rows) if p is not None]
        assert len({p.instruction for p in prompts}) == len(prompts)  # no duplicates to remove
        answers = {p.target for p in prompts}
        for p in prompts:
            taken = {p.target, *p.references, *(p.answer_choices or [])}
            counts["gold"] += 1
            counts["wrong_choice"] += len(
                {c for c in p.answer_choices or [] if c and c not in {p.target, *p.references}}
            )
            # The reservoir draws 4k+4 = 8 times; where half the answers are free (the worst case here: paws'
            # free-text template renders for 2 rows) all 8 miss with probability 1/256. The draws are seeded, so
            # the outcome is fixed, and it is this one.
            counts["mismatched"] += min(k, len(answers - taken))
    return {s: n for s, n in counts.items() if n}


def test_build_over_standins_gives_the_expected_pairs(t0, tmp_path):
    mix = _standin_mixture(t0)
    assert [d.name for d in mix.datasets] == [n for n in T0_TRAIN if n in STANDIN_FILES]
    m = build_pairs(mix, tmp_path / "out", progress=False)
    for d in mix.datasets:
        if d.name == "amazon_polarity":
            continue
        assert m["task_sources"][d.name] == _expected_sources(d.name, d.templates, mix.mismatched), d.name
    # samsum and ropes are free text: the gold and one mismatched answer per prompt, no wrong choices
    assert m["task_sources"]["samsum"] == {"gold": 7 * 4, "mismatched": 7 * 4}
    # amazon_polarity (capped): AMAZON_CAP distinct examples of the shuffled file, one template each, two
    # fixed choices (Negative/Positive-like) each: gold + the other choice; no mismatched answer is left
    amazon = m["task_sources"]["amazon_polarity"]
    assert amazon == {"gold": AMAZON_CAP, "wrong_choice": AMAZON_CAP}
    assert sum(m["prompts"]["amazon_polarity"].values()) == AMAZON_CAP
    assert m["examples"]["amazon_polarity"] == AMAZON_CAP
    assert sum(m["template_capped"]["amazon_polarity"].values()) == AMAZON_CAP * (9 - 1)
    # the same seed picks the same examples; the rows are those of the file
    again = build_pairs(mix, tmp_path / "again", progress=False)
    assert again["fingerprint"] == m["fingerprint"] and again["shards"][0]["sha256"] == m["shards"][0]["sha256"]


def test_capped_dataset_takes_a_seeded_sample_of_distinct_examples(t0, tmp_path):
    mix = _standin_mixture(t0)
    mix.datasets = [d for d in mix.datasets if d.name == "amazon_polarity"]
    import pyarrow.parquet as pq

    def titles(seed: int) -> list[str]:
        mix.seed = seed
        out = tmp_path / f"s{seed}"
        build_pairs(mix, out, progress=False)
        table = pq.read_table(sorted(out.glob("*.parquet"))[0]).to_pylist()
        gold = [r["instruction"] for r in table if r["source"] == "gold"]
        return [next(r["title"] for r in _rows("amazon_polarity") if r["title"] in g) for g in gold]

    first = titles(0)
    assert len(first) == len(set(first)) == AMAZON_CAP
    assert any(titles(s) != first for s in (1, 2, 3))  # another seed, another sample or order


def test_shuffled_reading_is_a_seeded_permutation(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(40)), encoding="utf-8")
    plain = list(iter_examples(src))
    a = list(iter_examples(src, shuffle_seed=5))
    assert a == list(iter_examples(src, shuffle_seed=5)) and a != plain
    assert sorted(a, key=lambda x: x[1]["i"]) == plain  # same rows, same locations, another order


def test_free_text_prompts_are_the_ones_exported_for_candidates(t0, tmp_path):
    mix = _standin_mixture(t0)
    counts = export_prompts(mix, tmp_path / "prompts.jsonl", progress=False)  # llm_candidates: free_text
    rows = [json.loads(x) for x in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    free = {
        (d.name, t.name)
        for d in mix.datasets
        for t in load_templates(template_key(d.name))
        if t.answer_choices is None
    }
    assert counts["prompts"] == len(rows) > 0
    assert {(r["task"], r["template"]) for r in rows} <= free
    assert {r["task"] for r in rows} >= {"samsum", "ropes", "cos_e/v1.11"}


def test_hints_do_not_change_a_build(t0):
    a = mixture_recipe(t0)
    b = mixture_recipe(dataclasses.replace(t0, llm_candidates="all", datasets=[
        dataclasses.replace(d, rows=None) for d in t0.datasets
    ]))  # fmt: skip
    assert a == b and "rows" not in a["datasets"][0] and "llm_candidates" not in a
    with pytest.raises(MixtureError, match="llm_candidates must be one of"):
        Mixture.from_dict({"llm_candidates": "some", "datasets": [{"name": "x", "path": "x.jsonl"}]})
    with pytest.raises(MixtureError, match="shuffle must be true or false"):
        Mixture.from_dict({"datasets": [{"name": "x", "path": "x.jsonl", "shuffle": "yes"}]})


# ---- the dry run -----------------------------------------------------------------------------------------------


def _block(out: str, name: str) -> str:
    """The dry run's lines about one dataset."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split(". ", 1)[-1].startswith(f"{name}  <- "))
    return "\n".join(lines[start : start + 3])


def _fixed_choices(name: str) -> list[int]:
    return [len(t.answer_choices.split("|||")) for t in load_templates(name)]


def test_dry_run_of_t0_reads_nothing_and_predicts_counts(monkeypatch, capsys):
    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError("the dry run fetched a dataset")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    assert main(["data", "build", str(T0), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mixture t0: 38 datasets")
    # every dataset, in build order, with what it would read
    positions = [out.index(f". {name}  <- ") for name in T0_TRAIN]
    assert positions == sorted(positions)
    assert "cos_e/v1.11  <- hub:cos_e subset v1.11 split train" in out
    # ag_news: 120,000 rows (the card's train size), every template with 4 fixed choices: gold + 3 wrong
    ag = _fixed_choices("ag_news")
    assert set(ag) == {4}
    assert f"prompts {120_000 * len(ag):,}; pairs {120_000 * sum(ag):,}" in _block(out, "ag_news")
    assert "LLM candidates needed: no" in _block(out, "ag_news")
    # dbpedia_14: capped at 500,000 examples of 560,000, one template each, 14 fixed choices
    db = _block(out, "dbpedia_14")
    assert set(_fixed_choices("dbpedia_14")) == {14}
    assert "rows 560,000" in db and "cap 500,000 examples of a seeded shuffle, 1 template(s) per example" in db
    assert f"prompts 500,000; pairs {500_000 * 14:,}" in db
    # samsum: free text, gold + 1 mismatched per prompt, and all of its prompts want LLM candidates
    n = len(load_templates("samsum"))
    sam = _block(out, "samsum")
    assert f"prompts {14_732 * n:,}; pairs {14_732 * n * 2:,}" in sam
    assert f"LLM candidates needed: yes, {n} of {n} templates, {14_732 * n:,} prompts" in sam
    assert "cappy data prompts" in out and "order of pairs:" in out


@pytest.mark.skipif(not (SHARED_DATA / "pretrain").exists(), reason="shared data not present")
def test_dry_run_of_offline_counts_local_rows(capsys):
    assert main(["data", "build", str(REPO / "configs/mixtures/offline.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    path = SHARED_DATA / "pretrain" / "glue_sst2_val.jsonl"
    rows = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    sst2 = _fixed_choices("glue/sst2")
    block = _block(out, "glue/sst2")
    assert f"rows {rows:,} (lines counted)" in block
    assert f"prompts {rows * len(sst2):,}; pairs {rows * sum(sst2):,}" in block
    assert out.startswith("mixture offline: 13 datasets") and "LLM candidates wanted for every template" in out


def test_build_without_out_or_dry_run_is_an_error(capsys):
    assert main(["data", "build", str(T0)]) == 2
    assert "--out is required" in capsys.readouterr().err
