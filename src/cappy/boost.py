"""Best-of-N boosting: pick one of an LLM's candidates per prompt, with Cappy or a baseline strategy.

Every strategy selects from the same candidate set, so their results compare fairly:

- ``cappy``: the highest Cappy score (ties go to the first candidate);
- ``first:<decoding>``: the first output of one decoding, e.g. ``first:beam4`` or ``first:temp0.9``;
- ``self_score_sum`` / ``self_score_mean``: the highest LLM log-likelihood, summed or averaged per token;
- ``random``: a seeded uniform choice (the seed and the prompt fix it, so reruns agree);
- ``oracle:<metric>``: the candidate that scores best against the references (an upper bound), e.g.
  ``oracle:rouge_l``;
- ``consensus:<metric>``: the candidate with the highest mean metric against the other candidates (minimum Bayes
  risk selection with uniform weights): no references, no scorer, no log-probabilities, so it is the baseline any
  reranker of samples has to beat, e.g. ``consensus:rouge_l``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cappy.errors import InputError
from cappy.generate.base import DEFAULT_RECIPE, Candidate, Generator, Recipe, derive_seed, load_recipe, prompt_id_of
from cappy.metrics import rouge_l

METRICS = {"rouge_l": rouge_l, "rougeL": rouge_l, "rouge-l": rouge_l}
_PROMPTS_PER_SCORE_CALL = 256


@dataclass
class BoostResult:
    """The candidates of one prompt, their Cappy scores, and the index each strategy chose.

    ``metric`` holds, per strategy, the chosen candidate's metric against the references (when given).
    """

    prompt: str
    candidates: list[Candidate]
    scores: list[float] | None
    chosen: dict[str, int]
    metric: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> Candidate:
        """The candidate chosen by the first strategy."""
        return self.candidates[next(iter(self.chosen.values()))]

    def to_dict(self) -> dict[str, Any]:
        cands = []
        for i, c in enumerate(self.candidates):
            row = {
                "text": c.text,
                "decoding": c.decoding,
                "sample_index": c.sample_index,
                "logprob_sum": c.logprob_sum,
                "logprob_mean": c.logprob_mean,
                "num_tokens": c.num_tokens,
            }
            if self.scores is not None:
                row["score"] = self.scores[i]
            cands.append(row)
        chosen = {
            s: {"index": i, "text": self.candidates[i].text, "decoding": self.candidates[i].decoding}
            for s, i in self.chosen.items()
        }
        out: dict[str, Any] = {"prompt": self.prompt, "chosen": chosen, "candidates": cands}
        if self.metric:
            out["metric"] = self.metric
        return out


def check_strategy(strategy: str) -> str:
    """Validate a strategy name; returns it. Example: ``check_strategy("first:beam4")``"""
    if strategy in ("cappy", "self_score_sum", "self_score_mean", "random"):
        return strategy
    kind, _, arg = strategy.partition(":")
    if kind == "first" and arg:
        return strategy
    if kind in ("oracle", "consensus") and arg:
        if arg not in METRICS:
            raise InputError(f"unknown metric {arg!r} in {strategy!r}; known: {sorted(METRICS)}")
        return strategy
    raise InputError(
        f"unknown strategy {strategy!r}; use cappy, first:<decoding>, self_score_sum, self_score_mean, random "
        "oracle:<metric> or consensus:<metric>"
    )


def _argmax_first(values: Sequence[float]) -> int:
    return int(np.argmax(np.asarray(values, dtype=np.float64)))


def consensus_scores(texts: Sequence[str], metric: Any = rouge_l) -> list[float]:
    """Each text's mean ``metric`` against every other text (0.0 for a lone text): the agreement that
    ``consensus:<metric>`` maximises. Example: ``consensus_scores(["a b", "a b", "c"])`` -> ``[0.5, 0.5, 0.0]``
    """
    n = len(texts)
    if n < 2:
        return [0.0] * n
    sims = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            # Rouge-L F is symmetric (up to the last bit), so each pair is computed once
            sims[i, j] = sims[j, i] = metric(texts[i], [texts[j]])
    return (sims.sum(axis=1) / (n - 1)).tolist()


def select(
    strategy: str,
    candidates: Sequence[Candidate],
    scores: Sequence[float] | None = None,
    references: Sequence[str] | None = None,
    seed: int = 0,
    prompt: str = "",
) -> int:
    """Index of the candidate that ``strategy`` picks (ties go to the first).

    Example: ``select("first:greedy", cands)`` -> index of the first greedy candidate.
    """
    check_strategy(strategy)
    if not candidates:
        raise InputError(f"no candidates to select from for prompt {prompt[:60]!r}")
    if strategy == "cappy":
        if scores is None or len(scores) != len(candidates):
            raise InputError("strategy 'cappy' needs one score per candidate")
        return _argmax_first(scores)
    if strategy == "random":
        return random.Random(derive_seed(seed, "random", prompt)).randrange(len(candidates))
    if strategy.startswith("self_score_"):
        key = "logprob_sum" if strategy == "self_score_sum" else "logprob_mean"
        values = [getattr(c, key) for c in candidates]
        if any(v is None for v in values):
            raise InputError(f"strategy {strategy!r} needs log-probabilities; this backend's candidates have none")
        return _argmax_first(values)
    kind, _, arg = strategy.partition(":")
    if kind == "first":
        matches = [i for i, c in enumerate(candidates) if c.decoding == arg]
        if not matches:
            names = sorted({c.decoding for c in candidates})
            raise InputError(f"strategy {strategy!r}: no candidate from decoding {arg!r}; decodings here: {names}")
        return min(matches, key=lambda i: candidates[i].sample_index)
    metric = METRICS[arg]
    if kind == "consensus":
        return _argmax_first(consensus_scores([c.text for c in candidates], metric))
    if references is None:
        raise InputError(f"strategy {strategy!r} needs references")
    return _argmax_first([metric(c.text, references) for c in candidates])


def boost_candidates(
    prompts: Sequence[str],
    candidates: Sequence[Sequence[Candidate]],
    scorer: Any = None,
    strategies: Iterable[str] = ("cappy",),
    references: Sequence[str | Sequence[str]] | None = None,
    seed: int = 0,
    metric: str = "rouge_l",
    show_progress: bool = False,
) -> list[BoostResult]:
    """Apply each strategy to given candidates. ``scorer`` is a :class:`cappy.Cappy` (needed for "cappy").

    Example: ``boost_candidates(["Q"], [[Candidate("A", "greedy", 0, -1.0, -1.0, 1)]], scorer)[0].best.text``
    """
    strategies = [check_strategy(s) for s in strategies]
    if not strategies:
        raise InputError("give at least one strategy")
    if len(candidates) != len(prompts):
        raise InputError(f"got {len(prompts)} prompts but {len(candidates)} candidate lists")
    if references is not None and len(references) != len(prompts):
        raise InputError(f"got {len(prompts)} prompts but {len(references)} references")
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
    for i, cs in enumerate(candidates):
        if not cs:
            raise InputError(f"prompt {i} ({prompts[i][:60]!r}) has no candidates")
    need_scores = "cappy" in strategies
    if need_scores and scorer is None:
        raise InputError("strategy 'cappy' needs a scorer")
    pbar = None
    if show_progress:
        from tqdm.auto import tqdm

        pbar = tqdm(total=len(prompts), desc="boosting", unit="prompt")
    results = []
    try:
        for start in range(0, len(prompts), _PROMPTS_PER_SCORE_CALL):
            block = range(start, min(len(prompts), start + _PROMPTS_PER_SCORE_CALL))
            grouped = None
            if scorer is not None:
                grouped = scorer.score_groups(
                    [prompts[i] for i in block], [[c.text for c in candidates[i]] for i in block]
                )
            for k, i in enumerate(block):
                cs = list(candidates[i])
                scores = None if grouped is None else [float(x) for x in grouped[k]]
                refs = None
                if references is not None:
                    refs = [references[i]] if isinstance(references[i], str) else list(references[i])
                chosen = {s: select(s, cs, scores, refs, seed, prompts[i]) for s in strategies}
                measured = {}
                if refs is not None:
                    fn = METRICS[metric]
                    measured = {s: fn(cs[j].text, refs) for s, j in chosen.items()}
                results.append(BoostResult(prompts[i], cs, scores, chosen, measured))
                if pbar is not None:
                    pbar.update(1)
    finally:
        if pbar is not None:
            pbar.close()
    return results


def best_of_n(
    prompts: Sequence[str],
    generator: Generator,
    scorer: Any,
    recipe: Recipe | str = DEFAULT_RECIPE,
    strategies: Iterable[str] = ("cappy",),
    references: Sequence[str | Sequence[str]] | None = None,
    seed: int = 0,
    show_progress: bool = False,
) -> list[BoostResult]:
    """Generate ``recipe``'s candidates for each prompt and pick one per strategy; the first strategy is ``.best``.
    The default recipe is :data:`cappy.generate.DEFAULT_RECIPE` (candidates cut at stop strings; the kind
    :func:`cappy.adapt` trains on by default).

    Example:
        >>> res = best_of_n(["Q: Name a prime.\\nA:"], LlamaCppGenerator(), Cappy.from_pretrained("cappy-mini"))
        >>> res[0].best.text, res[0].scores
    """
    recipe = load_recipe(recipe)
    cands = generator.generate(
        list(prompts), recipe, seed=seed, prompt_ids=[prompt_id_of(p) for p in prompts], show_progress=show_progress
    )
    return boost_candidates(prompts, cands, scorer, strategies, references, seed=seed)


def summarize(results: Sequence[BoostResult]) -> dict[str, float]:
    """Mean metric per strategy over results that have one, as a fraction in [0, 1] like every metric value here
    (reports scale to x100 when they print). Example: ``summarize(res)`` -> ``{"cappy": 0.236, "random": 0.12}``
    """
    totals: dict[str, list[float]] = {}
    for r in results:
        for s, v in r.metric.items():
            totals.setdefault(s, []).append(v)
    return {s: float(np.mean(v)) for s, v in totals.items()}
