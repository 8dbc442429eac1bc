"""BIG-Bench boosting: pick one LLM candidate per validation prompt with each strategy, score it by Rouge-L.

Protocol of the paper: official split per task, candidates from one recipe, every selection strategy on the same
candidate set, Rouge-L F (stemmed, max over references), mean per task, then mean over tasks.

Every Rouge-L value here, and in results.json, is a fraction in [0, 1] (as accuracy is in the MC results); only
:mod:`cappy.evaluate.report` shows them x100. results.json always stored fractions (the x100 per-task values of
:func:`evaluate_task` were divided back before writing), so recorded runs read and render as before.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cappy.boost import boost_candidates
from cappy.data.bigbench import BigBenchExample, load_bigbench_task
from cappy.errors import InputError
from cappy.evaluate.config import SHARED, BBConfig
from cappy.evaluate.config import BigBenchEvalConfig as BigBenchEvalConfig  # defined with the settings; also here

logger = logging.getLogger(__name__)

DEFAULT_ROOT = SHARED / "bigbench"
#: BIG-Bench JSON tasks left out of the paper's 45 (its arithmetic subtasks duplicate other tasks).
EXCLUDED = ("simple_arithmetic_json_subtasks",)


def default_tasks(root: str | Path = DEFAULT_ROOT) -> list[Path]:
    """Every task folder under ``root`` with at least one example, excluding :data:`EXCLUDED`."""
    out = []
    for d in sorted(Path(root).iterdir()):
        if not d.is_dir() or d.name in EXCLUDED:
            continue
        if (d / "task.json").exists() or any(d.glob("*/task.json")):
            out.append(d)
    return out


def _sample(examples: list[BigBenchExample], cap: int | None, seed: int, what: str) -> list[BigBenchExample]:
    usable = [ex for ex in examples if ex.references and any(r.strip() for r in ex.references)]
    if cap is not None and len(usable) > cap:
        keep = sorted(random.Random(f"{seed}:{what}").sample(range(len(usable)), cap))
        usable = [usable[i] for i in keep]
    return usable


def task_prompts(path: str | Path, cfg: BBConfig) -> tuple[str, list[BigBenchExample], list[BigBenchExample]]:
    """``(task name, train sample, validation sample)`` under the official split.

    Tasks whose examples have no generative target (multiple-choice only) give empty lists.
    """
    task = load_bigbench_task(path)
    train, val = task.split()
    return (
        task.name,
        _sample(train, cfg.max_train, cfg.seed, f"{task.name}:train"),
        _sample(val, cfg.max_examples, cfg.seed, f"{task.name}:validation"),
    )


def strategies_for(candidates: Sequence[Sequence[Any]], with_cappy: bool) -> list[str]:
    """``first:<decoding>`` for every decoding present, the self-scores when log-probs exist, random, oracle."""
    decodings: list[str] = []
    for cs in candidates:
        for c in cs:
            if c.decoding not in decodings:
                decodings.append(c.decoding)
    out = [f"first:{d}" for d in decodings]
    if all(c.logprob_sum is not None for cs in candidates for c in cs):
        out += ["self_score_sum", "self_score_mean"]
    out += ["random", "consensus:rouge_l", "oracle:rouge_l"]
    if with_cappy:
        out.insert(0, "cappy")
    return out


def evaluate_task(
    name: str,
    examples: Sequence[BigBenchExample],
    candidates: dict[str, list[Any]],
    scorers: dict[str, Any],
    seed: int = 0,
) -> dict[str, Any]:
    """Mean Rouge-L (a fraction) per method for one task; ``scorers`` maps a method name (e.g. "cappy") to a Cappy.

    Example: ``evaluate_task("codenames", val, cands, {"cappy": scorer})["scores"]`` -> ``{"cappy": 0.047, ...}``
    """
    prompts = [ex.input for ex in examples]
    missing = [p for p in prompts if not candidates.get(p)]
    if missing:
        raise InputError(
            f"task {name}: {len(missing)} validation prompts have no candidates (first: {missing[0][:80]!r})"
        )
    cands = [candidates[p] for p in prompts]
    refs = [list(ex.references) for ex in examples]
    base = strategies_for(cands, with_cappy=False)
    res = boost_candidates(prompts, cands, None, base, refs, seed=seed)
    per_prompt = {s: [float(r.metric[s]) for r in res] for s in base}
    picks: dict[str, list[int]] = {s: [r.chosen[s] for r in res] for s in base}
    for method, scorer in scorers.items():
        r2 = boost_candidates(prompts, cands, scorer, ["cappy"], refs, seed=seed)
        per_prompt[method] = [float(r.metric["cappy"]) for r in r2]
        picks[method] = [r.chosen["cappy"] for r in r2]
    return {
        "scores": {m: float(np.mean(v)) for m, v in per_prompt.items()},
        "per_prompt": per_prompt,
        "n_examples": len(examples),
        "n_candidates": int(np.mean([len(c) for c in cands])),
        "picks": picks,
    }


#: what Cappy is measured against: the LLM's own ways of choosing (its decodings, its self-scores), not random/oracle
BASELINE_PREFIXES = ("first:", "self_score_")


def paired_bootstrap_tasks(
    a: dict[str, Sequence[float]], b: dict[str, Sequence[float]], n: int = 2000, seed: int = 0
) -> dict[str, float]:
    """95% interval of mean-over-tasks of (mean a - mean b), resampling prompts within each task, paired.

    Example: ``paired_bootstrap_tasks({"t": [0.5, 1.0]}, {"t": [0.0, 1.0]})["diff"]`` -> 0.25
    """
    rng = np.random.default_rng(seed)
    diffs = np.zeros(n)
    point = []
    for task in a:
        d = np.asarray(a[task], dtype=float) - np.asarray(b[task], dtype=float)
        point.append(d.mean())
        diffs += d[rng.integers(0, len(d), size=(n, len(d)))].mean(1)
    diffs /= len(a)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": float(np.mean(point)), "ci_low": float(lo), "ci_high": float(hi), "resamples": n}


def compare_to_best_baseline(
    per_prompt: dict[str, dict[str, list[float]]], methods: dict[str, Any], seed: int = 0
) -> dict[str, dict[str, Any]]:
    """``cappy`` and ``cappy_adapted`` minus the baseline with the highest mean (every first:<decoding> and
    self-score), paired over prompts on the tasks where both exist; then, where a ``consensus:<metric>`` column
    exists, each minus it (``... - consensus``: kept apart from the best baseline, which stays the LLM's own ways
    of choosing). {} when there is nothing to compare."""
    baselines = [m for m in methods if m.startswith(BASELINE_PREFIXES)]
    against = {}
    if baselines:
        against["best_baseline"] = max(baselines, key=lambda m: methods[m]["mean"])
    consensus = [m for m in methods if m.startswith("consensus:")]
    if consensus:
        against["consensus"] = consensus[0]
    out = {}
    for label, other in against.items():
        for m in ("cappy", "cappy_adapted"):
            tasks = [t for t, v in per_prompt.items() if m in v and other in v]
            if m in methods and tasks:
                boot = paired_bootstrap_tasks(
                    {t: per_prompt[t][m] for t in tasks}, {t: per_prompt[t][other] for t in tasks}, seed=seed
                )
                out[f"{m} - {label}"] = {"against": other, **boot}
    return out


def evaluate_bigbench(
    task_paths: Sequence[str | Path],
    cfg: BBConfig,
    get_candidates: Callable[[str, list[str]], dict[str, list[Any]]],
    scorers: dict[str, Any] | None = None,
    adapt: Callable[[str, list[BigBenchExample]], Any] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every task; ``get_candidates(task, prompts)`` returns candidates per prompt (from the cache or by
    generating), ``adapt(task, train_examples)`` returns a Cappy adapted to the task (method "cappy_adapted").

    Example: ``evaluate_bigbench(default_tasks()[:3], BBConfig(max_examples=20), cached, {"cappy": scorer})``
    """
    from tqdm.auto import tqdm

    scorers = dict(scorers or {})
    per_task: dict[str, dict[str, float]] = {}
    per_prompt: dict[str, dict[str, list[float]]] = {}
    info: dict[str, Any] = {}
    for path in tqdm(list(task_paths), desc="BIG-Bench tasks", unit="task", disable=not show_progress):
        name, train, val = task_prompts(path, cfg)
        if not val:
            logger.warning("%s: no generative validation examples; skipped", name)
            info[name] = {"skipped": "no generative examples"}
            continue
        task_scorers = dict(scorers)
        adapted_from_nothing = False
        if adapt is not None:
            if train:
                task_scorers["cappy_adapted"] = adapt(name, train)
            elif "cappy" in scorers:
                # nothing to adapt on: the adapted scorer is the pretrained one, so every task keeps every method
                # and the means compare the same tasks
                logger.warning("%s: no train examples; cappy_adapted is the unadapted scorer", name)
                task_scorers["cappy_adapted"] = scorers["cappy"]
                adapted_from_nothing = True
            else:
                logger.warning("%s: no train examples; no adapted scorer", name)
        cands = get_candidates(name, [ex.input for ex in val])
        out = evaluate_task(name, val, cands, task_scorers, seed=cfg.seed)
        per_task[name] = out["scores"]
        per_prompt[name] = out["per_prompt"]
        info[name] = {
            "path": str(path),
            "n_validation": out["n_examples"],
            "n_train": len(train),
            "candidates_per_prompt": out["n_candidates"],
        }
        if adapted_from_nothing:
            info[name]["cappy_adapted"] = "no train examples: the unadapted scorer"
    methods: list[str] = []
    for scores in per_task.values():
        methods += [m for m in scores if m not in methods]
    # a method missing on a task (e.g. no log-probs there) is left out of that task's mean
    results: dict[str, Any] = {"metric": "rouge_l", "suite": "bigbench", "tasks": info, "methods": {}}
    for m in methods:
        vals = {t: s[m] for t, s in per_task.items() if m in s}
        results["methods"][m] = {"mean": float(np.mean(list(vals.values()))), "per_task": vals}
    results["comparisons"] = compare_to_best_baseline(per_prompt, results["methods"], seed=cfg.seed)
    results["per_prompt"] = per_prompt
    results["sample"] = {
        "max_examples": cfg.max_examples,
        "max_train": cfg.max_train,
        "seed": cfg.seed,
        "tasks": len(per_task),
    }
    return results
