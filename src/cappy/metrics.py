"""Metrics: Rouge-L (the paper's `rouge_score` recipe) and accuracy. The one place these are defined."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from cappy.errors import InputError, InputTypeError


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """Rouge-L F-measure in [0, 1], stemmed, max over references (as the paper and BIG-Bench score it).

    `rouge_score`'s default tokenizer keeps only ASCII letters and digits, so text in other scripts scores 0,
    exactly as in the published numbers. Example: ``rouge_l("the cat sat", ["a cat sat"])`` -> 0.666...
    """
    if not isinstance(prediction, str):
        raise InputTypeError(f"prediction must be a str, got {type(prediction).__name__}")
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise InputError("rouge_l needs at least one reference")
    for i, r in enumerate(refs):
        if not isinstance(r, str):
            raise InputTypeError(f"references[{i}] must be a str, got {type(r).__name__}")
    scorer = _scorer()
    return max(scorer.score(r, prediction)["rougeL"].fmeasure for r in refs)


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of equal items. Example: ``accuracy([0, 1, 1], [0, 1, 0])`` -> 0.666..."""
    if len(predictions) != len(labels):
        raise InputError(f"predictions and labels differ in length: {len(predictions)} vs {len(labels)}")
    if len(labels) == 0:
        raise InputError("accuracy of an empty list is undefined")
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


# Pair sources whose negatives are the same kind of answer as the gold one (the promotion metric of a pretrained
# scorer counts only these: random mismatched answers are off-topic, easy to reject, and saturate the metric).
HARD_SOURCES = ("wrong_choice", "hard_mismatched", "llm")


def pairwise_accuracy(
    instructions: Sequence[str], labels: np.ndarray, scores: np.ndarray, negatives: np.ndarray | None = None
) -> tuple[float, int]:
    """Over pairs of responses to the same instruction with different labels: how often the higher-labelled one
    scores higher (a score tie counts half). With ``negatives`` (a boolean per row), only pairs whose
    lower-labelled row is marked count. Returns (accuracy, number of compared pairs; nan if none).

    Example: ``pairwise_accuracy(["q", "q"], np.array([1., 0.]), np.array([.9, .1]))`` -> (1.0, 1)
    """
    labels, scores = np.asarray(labels), np.asarray(scores)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(instructions):
        groups.setdefault(s, []).append(i)
    good = 0.0
    count = 0
    for idx in groups.values():
        if len(idx) < 2:
            continue
        y = labels[idx][:, None] - labels[idx][None, :]
        s = scores[idx][:, None] - scores[idx][None, :]
        mask = y > 0
        if negatives is not None:
            mask &= np.asarray(negatives)[idx][None, :]
        count += int(mask.sum())
        good += float((s[mask] > 0).sum() + 0.5 * (s[mask] == 0).sum())
    return (good / count if count else float("nan")), count
