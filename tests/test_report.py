"""Metric values are fractions everywhere in the library and in results.json; only the reports show them x100."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cappy.evaluate.bigbench import BBConfig, evaluate_task, task_prompts
from cappy.evaluate.report import markdown_report, merge_reports, x100
from cappy.generate.cache import read_generations
from cappy.metrics import rouge_l
from conftest import REPO
from test_evaluate_bigbench import BB, write_cache

RECORDED = sorted(p.parent for p in (REPO / "results").rglob("results.json") if (p.parent / "report.md").is_file())


def test_recorded_runs_exist():
    suites = {json.loads((d / "results.json").read_text())["suite"] for d in RECORDED}
    assert suites == {"mc", "bigbench"}


@pytest.mark.parametrize("run_dir", RECORDED, ids=lambda d: d.relative_to(REPO / "results").as_posix())
def test_recorded_results_render_as_recorded(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    title = f"cappy eval {results.get('suite', '')}".strip()  # what write_run titles report.md
    assert markdown_report([results], title=title) == (run_dir / "report.md").read_text()
    # `cappy report` labels the run by its folder; its tables and intervals are the recorded ones
    numbers = [x for x in (run_dir / "report.md").read_text().splitlines() if x.startswith(("|", "- "))]
    assert numbers and [x for x in merge_reports([run_dir]).splitlines() if x.startswith(("|", "- "))] == numbers


def test_evaluate_task_gives_fractions(tmp_path):
    cfg = BBConfig(max_examples=6, max_train=0)
    task = BB / "repeat_copy_logic"
    _, _, val = task_prompts(task, cfg)
    write_cache(tmp_path / "gens.jsonl", val)
    cands = read_generations(tmp_path / "gens.jsonl")
    out = evaluate_task("repeat_copy_logic", val, {ex.input: cands[ex.input] for ex in val}, {})
    greedy = float(np.mean([rouge_l("I do not know", ex.references) for ex in val]))
    assert out["scores"]["first:greedy"] == greedy  # the mean of the same values, unscaled: exact
    assert out["scores"]["oracle:rouge_l"] == 1.0  # gold among the candidates
    assert all(0.0 <= v <= 1.0 for v in out["scores"].values())


def test_reports_scale_fractions_in_one_place():
    run = {
        "metric": "rouge_l",
        "suite": "bigbench",
        "methods": {
            "cappy": {"mean": 0.236, "per_task": {"a": 0.236, "b": None}},
            "random": {"mean": 0.12, "per_task": {"a": 0.12}},
        },
        "comparisons": {
            "cappy - random": {"diff": 0.116, "ci_low": -0.004, "ci_high": 0.25},
            "cappy - best_baseline": {"against": "first:greedy", "diff": 0.1, "ci_low": 0.0, "ci_high": 0.2},
            "cappy - consensus": {"against": "consensus:rouge_l", "diff": -0.1, "ci_low": -0.2, "ci_high": 0.0},
        },
    }
    text = markdown_report([run])
    assert "- cappy - best_baseline (best LLM = first:greedy): +10.0 [+0.0, +20.0]" in text
    assert "- cappy - consensus (consensus:rouge_l): -10.0 [-20.0, +0.0]" in text
    assert "| a | 23.6 | 12.0 |" in text and "| b | – | – |" in text
    assert "| **Mean** | **23.6** | **12.0** |" in text
    assert "- cappy - random: +11.6 [-0.4, +25.0]" in text
    assert x100(0.236) == pytest.approx(23.6)  # one float multiplication: ulps
