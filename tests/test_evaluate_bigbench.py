"""BIG-Bench boosting evaluation on real task files, with candidates in a real generation-cache file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cappy.cli import main
from cappy.evaluate.bigbench import BBConfig, default_tasks, evaluate_bigbench, task_prompts
from cappy.generate.base import prompt_id_of
from cappy.generate.cache import read_generations
from cappy.metrics import rouge_l
from cappy.train import TrainConfig
from cappy.train.config import adaptation_settings
from conftest import SHARED_DATA

BB = SHARED_DATA / "bigbench"
TASKS = [BB / "repeat_copy_logic", BB / "physics_questions"]


def write_cache(path, examples, recipe="quick", model="fake-llm", seed=0):
    """Candidates per prompt: a wrong greedy answer, the gold answer as the 2nd sample, and noise."""
    seen = set()
    with open(path, "a") as f:
        for ex in examples:
            if ex.input in seen:  # one input can come with several reference sets
                continue
            seen.add(ex.input)
            texts = [
                ("greedy", 0, "I do not know", -9.0),
                ("temp0.9", 0, "banana " * 3, -2.0),
                ("temp0.9", 1, ex.references[0], -5.0),
                ("temp0.9", 2, ex.input[:20], -1.0),
            ]
            for dec, i, text, lp in texts:
                f.write(
                    json.dumps(
                        {
                            "prompt_id": prompt_id_of(ex.input),
                            "prompt": ex.input,
                            "text": text,
                            "decoding": dec,
                            "sample_index": i,
                            "logprob_sum": lp,
                            "logprob_mean": lp / 3,
                            "num_tokens": 3,
                            "model": model,
                            "recipe": recipe,
                            "seed": seed,
                        }
                    )
                    + "\n"
                )


def test_default_suite_lists_real_tasks():
    tasks = default_tasks(BB)
    names = {t.name for t in tasks}
    assert {"repeat_copy_logic", "modified_arithmetic", "word_unscrambling"} <= names
    assert "simple_arithmetic_json_subtasks" not in names


def test_task_prompts_official_split_and_caps():
    name, train, val = task_prompts(BB / "repeat_copy_logic", BBConfig(max_examples=5, max_train=3))
    assert name == "repeat_copy_logic" and len(val) == 5 and len(train) == 3
    assert not {ex.input for ex in train} & {ex.input for ex in val}
    _, _, val_all = task_prompts(BB / "repeat_copy_logic", BBConfig(max_examples=None, max_train=None))
    assert len(val_all) == 16  # 32 examples: max(int(0.2 * 32), 16)


def test_evaluate_bigbench_strategies(tiny_scorer, tmp_path):
    cfg = BBConfig(max_examples=6, max_train=4)
    cache = tmp_path / "gens.jsonl"
    for t in TASKS:
        write_cache(cache, task_prompts(t, cfg)[2])

    def get(task, prompts):
        return read_generations(cache)

    res = evaluate_bigbench(TASKS, cfg, get, {"cappy": tiny_scorer}, show_progress=False)
    assert res["metric"] == "rouge_l"
    m = res["methods"]
    assert {
        "first:greedy",
        "first:temp0.9",
        "self_score_sum",
        "self_score_mean",
        "random",
        "oracle:rouge_l",
        "cappy",
    } <= set(m)
    assert m["oracle:rouge_l"]["mean"] == pytest.approx(1.0)  # gold among the candidates; a mean of 1.0s: ulps
    for t in ("repeat_copy_logic", "physics_questions"):
        val = task_prompts(BB / t, cfg)[2]
        greedy = np.mean([rouge_l("I do not know", ex.references) for ex in val])
        assert m["first:greedy"]["per_task"][t] == pytest.approx(greedy)  # the same Rouge-L values: ulps only
        # self_score_sum picks the highest summed log-prob (-1.0): the prompt's first 20 characters
        ss = np.mean([rouge_l(ex.input[:20], ex.references) for ex in val])
        assert m["self_score_sum"]["per_task"][t] == pytest.approx(ss)  # the same Rouge-L values: ulps only
        cands = read_generations(cache)
        cap = np.mean(
            [
                rouge_l(
                    cands[ex.input][
                        int(np.argmax(tiny_scorer.score(ex.input, [c.text for c in cands[ex.input]])))
                    ].text,
                    ex.references,
                )
                for ex in val
            ]
        )
        assert m["cappy"]["per_task"][t] == pytest.approx(cap)  # the same picks, the same Rouge-L values
    # the same floats summed in another order
    assert m["first:greedy"]["mean"] == pytest.approx(np.mean(list(m["first:greedy"]["per_task"].values())))


def test_missing_candidates_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no candidates"):
        evaluate_bigbench(TASKS[:1], BBConfig(max_examples=3), lambda t, p: {}, show_progress=False)


def test_cli_bigbench_from_cache(tiny_model_dir, tmp_path):
    cfg = BBConfig(max_examples=4, max_train=4)
    cache = tmp_path / "gens.jsonl"
    for t in TASKS:
        write_cache(cache, task_prompts(t, cfg)[2])
    out = tmp_path / "bb"
    args = [
        "eval",
        "bigbench",
        *sum((["--task", str(t)] for t in TASKS), []),
        "--max-examples",
        "4",
        "--gens",
        str(cache),
        "--recipe",
        "quick",
        "--model",
        str(tiny_model_dir("bert")),
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["models"]["llm"] == "fake-llm" and res["recipe"]["name"] == "quick"
    assert set(res["methods"]["cappy"]["per_task"]) == {"repeat_copy_logic", "physics_questions"}
    assert "| **Mean** |" in (out / "report.md").read_text()
    # no backend and a prompt missing from the cache: a clear error, not a silent skip
    args2 = [
        "eval",
        "bigbench",
        "--task",
        str(TASKS[0]),
        "--max-examples",
        "5",
        "--gens",
        str(cache),
        "--recipe",
        "quick",
        "--model",
        str(tiny_model_dir("bert")),
        "--out",
        str(tmp_path / "bb2"),
        "--no-progress",
    ]
    rc = main(args2)
    assert rc == 2


def test_cli_bigbench_adapts_per_task_on_train_candidates(tiny_model_dir, tmp_path):
    cfg = BBConfig(max_examples=4, max_train=6)
    cache = tmp_path / "gens.jsonl"
    task = BB / "repeat_copy_logic"
    _, train, val = task_prompts(task, cfg)
    write_cache(cache, train + val)
    out = tmp_path / "bb"
    args = [
        "eval",
        "bigbench",
        "--task",
        str(task),
        "--max-examples",
        "4",
        "--max-train",
        "6",
        "--gens",
        str(cache),
        "--recipe",
        "quick",
        "--model",
        str(tiny_model_dir("bert")),
        "--adapt",
        "--adapt-scale",
        "0.01",
        "--set",
        "adapt_training.batch_size=8",
        "--set",
        "per_device_batch_size=8",
        "--set",
        "max_length=64",
        "--set",
        "lr=1e-3",
        "--set",
        "adapt_training.device=cpu",
        "--out",
        str(out),
        "--no-progress",
        "--no-plots",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert {"cappy", "cappy_adapted"} <= set(res["methods"])
    pairs = [json.loads(x) for x in open(out / "adapt" / "repeat_copy_logic" / "pairs.jsonl")]
    refs = sum(len(set(ex.references)) for ex in train)
    # every train prompt's 4 candidates labelled by Rouge-L against its references, each reference itself, and
    # (adapt_cpu's adaptation section) up to 8 other train prompts' references, labelled against its own
    assert sum(p["source"] == "llm" for p in pairs) == 6 * 4
    mismatched = [p for p in pairs if p["source"] == "mismatched"]
    assert len(pairs) == 6 * 4 + refs + len(mismatched) and mismatched
    own = {ex.input: set(ex.references) for ex in train}
    said = {q: own[q] | {p["response"] for p in pairs if p["instruction"] == q and p["source"] == "llm"} for q in own}
    others = {q: {r for o in train if o.input != q for r in o.references} - said[q] for q in own}
    assert all(p["response"] in others[p["instruction"]] for p in mismatched)
    assert all(sum(p["instruction"] == q for p in mismatched) == min(8, len(others[q])) for q in own)
    gold = [p for p in pairs if p["source"] == "gold"]
    assert len(gold) == refs and all(p["label"] == 1.0 for p in gold)
    assert {p["response"] for p in gold} == {r for ex in train for r in ex.references}
    assert all(0.0 <= p["label"] <= 1.0 for p in pairs)
    settings = json.loads((out / "adapt" / "repeat_copy_logic" / "adapt.json").read_text())
    # adapt_cpu (the CPU default) scaled by 0.01, the overrides on top
    preset = TrainConfig.from_yaml("adapt_cpu", {"model": "m", "train": "t", "output_dir": "o"})
    assert settings["preset"] == "adapt_cpu" and settings["config"]["num_pairs"] == round(preset.num_pairs * 0.01)
    assert settings["mismatched"] == adaptation_settings("adapt_cpu")["mismatched"] == 8
    assert settings["config"]["lr"] == 1e-3 and settings["config"]["max_length"] == 64
    assert not {p["instruction"] for p in pairs} & {ex.input for ex in val}  # never the validation prompts
    adapted = out / "adapt" / "repeat_copy_logic" / "model"
    assert json.loads((adapted / "training_data.json").read_text())["tasks"] == ["repeat_copy_logic"]
    from cappy import Cappy

    base = Cappy.from_pretrained(tiny_model_dir("bert"), device="cpu").score(val[0].input, "x")
    # rounding moves a score by ~1e-6; training moves it by far more than approx's rel 1e-6
    assert Cappy.from_pretrained(adapted, device="cpu").score(val[0].input, "x") != pytest.approx(base)


def test_cli_bigbench_adapts_on_candidates_of_another_recipe(tiny_model_dir, tmp_path):
    # validation candidates under "quick", train candidates only under a second recipe: --adapt-recipe must take the
    # train prompts' candidates from that recipe (with --recipe alone, adaptation would find none and fail)
    cfg = BBConfig(max_examples=3, max_train=5)
    cache = tmp_path / "gens.jsonl"
    task = BB / "repeat_copy_logic"
    _, train, val = task_prompts(task, cfg)
    write_cache(cache, val)
    write_cache(cache, train, recipe="train4")
    recipe = tmp_path / "train4.yaml"
    recipe.write_text(
        "name: train4\nmax_new_tokens: 16\ndecodings:\n  - {name: greedy, method: greedy, n: 1}\n"
        "  - {name: temp0.9, method: sample, temperature: 0.9, n: 3}\n"
    )
    out = tmp_path / "bb"
    common = [
        "eval", "bigbench", "--task", str(task), "--max-examples", "3", "--max-train", "5", "--gens", str(cache),
        "--recipe", "quick", "--model", str(tiny_model_dir("bert")), "--out", str(out), "--no-progress",
        "--no-plots", "--device", "cpu",
    ]  # fmt: skip
    assert main([*common, "--adapt-recipe", str(recipe)]) == 2  # without --adapt it has nothing to do
    adapt = ["--adapt", "--adapt-scale", "0.005", "--set", "max_length=64", "--set", "per_device_batch_size=8"]
    assert main([*common, *adapt]) == 2  # the train prompts have no "quick" candidates and there is no backend
    assert main([*common, *adapt, "--adapt-recipe", str(recipe)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["recipe"]["name"] == "quick" and res["adaptation"]["recipe"]["name"] == "train4"
    pairs = [json.loads(x) for x in open(out / "adapt" / "repeat_copy_logic" / "pairs.jsonl")]
    assert sum(p["source"] == "llm" for p in pairs) == 5 * 4
    assert {p["instruction"] for p in pairs} == {ex.input for ex in train}


def test_task_without_train_examples_keeps_the_unadapted_scorer_as_adapted(tiny_scorer, tmp_path):
    cfg = BBConfig(max_examples=3, max_train=4)
    task = BB / "conlang_translation"  # its official split leaves no train examples
    _, train, val = task_prompts(task, cfg)
    assert not train and val
    cache = tmp_path / "gens.jsonl"
    write_cache(cache, val)
    adapted_for = []

    def adapt(name, examples):
        adapted_for.append(name)
        return tiny_scorer

    res = evaluate_bigbench([task], cfg, lambda t, p: read_generations(cache), {"cappy": tiny_scorer}, adapt, False)
    assert adapted_for == []
    m = res["methods"]
    assert m["cappy_adapted"]["per_task"] == m["cappy"]["per_task"]
    assert "unadapted" in res["tasks"]["conlang_translation"]["cappy_adapted"]


def test_paired_bootstrap_over_tasks_and_the_best_baseline():
    from cappy.evaluate.bigbench import compare_to_best_baseline, paired_bootstrap_tasks

    a = {"t1": [1.0, 0.5, 0.0, 1.0], "t2": [0.2, 0.2]}
    b = {"t1": [0.0, 0.5, 0.0, 1.0], "t2": [0.1, 0.3]}
    boot = paired_bootstrap_tasks(a, b, seed=1)
    assert boot["diff"] == pytest.approx((0.25 + 0.0) / 2)  # mean over tasks of per-task mean differences
    assert boot["ci_low"] <= boot["diff"] <= boot["ci_high"] and boot["ci_high"] > boot["ci_low"]
    same = paired_bootstrap_tasks(a, a)
    assert (same["diff"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)

    per_prompt = {"t1": {"first:greedy": b["t1"], "self_score_sum": [0.0] * 4, "random": [1.0] * 4, "cappy": a["t1"]}}
    methods = {m: {"mean": float(np.mean(v))} for m, v in per_prompt["t1"].items()}
    comps = compare_to_best_baseline(per_prompt, methods)
    # random scores highest here but is no baseline of the LLM's own; greedy is the best one
    assert list(comps) == ["cappy - best_baseline"] and comps["cappy - best_baseline"]["against"] == "first:greedy"
    assert comps["cappy - best_baseline"]["diff"] == pytest.approx(0.25)
    # a consensus column is compared on its own, and never becomes "the best baseline" even when it is the highest
    per_prompt["t1"]["consensus:rouge_l"] = [1.0, 1.0, 0.0, 1.0]
    methods["consensus:rouge_l"] = {"mean": 0.75}
    comps = compare_to_best_baseline(per_prompt, methods)
    assert list(comps) == ["cappy - best_baseline", "cappy - consensus"]
    assert comps["cappy - best_baseline"]["against"] == "first:greedy"
    assert comps["cappy - consensus"]["against"] == "consensus:rouge_l"
    assert comps["cappy - consensus"]["diff"] == pytest.approx((0 - 0.5 + 0 + 0) / 4)
