"""Metrics: Rouge-L (the paper's `rouge_score` recipe) and accuracy. The one place these are defined."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np


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
        raise TypeError(f"prediction must be a str, got {type(prediction).__name__}")
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("rouge_l needs at least one reference")
    for i, r in enumerate(refs):
        if not isinstance(r, str):
            raise TypeError(f"references[{i}] must be a str, got {type(r).__name__}")
    scorer = _scorer()
    return max(scorer.score(r, prediction)["rougeL"].fmeasure for r in refs)


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of equal items. Example: ``accuracy([0, 1, 1], [0, 1, 0])`` -> 0.666..."""
    if len(predictions) != len(labels):
        raise ValueError(f"predictions and labels differ in length: {len(predictions)} vs {len(labels)}")
    if len(labels) == 0:
        raise ValueError("accuracy of an empty list is undefined")
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))
