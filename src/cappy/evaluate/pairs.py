"""Scorer quality on labelled pairs: the dev metrics that choose and promote pretrained checkpoints.

On a pair file (a ``cappy data split`` dev file, or any pairs with ``source`` and ``task`` columns):

- ``pairwise_accuracy``: all pairs of one instruction with different labels;
- ``hard_pairwise_accuracy``: only pairs whose negative is a wrong choice, a hard mismatched answer or an LLM
  candidate (the promotion metric: random mismatched answers are easy and saturate the plain one);
- ``by_source``: the same per negative source;
- ``choice_accuracy``: over instructions with wrong choices, how often the gold scores above all of them (the
  multiple-choice accuracy of a task, e.g. on the transfer dev set of tasks a model never trained on), per task.

Example: ``evaluate_pairs(Cappy.from_pretrained("cappy-mini"), "results/cappy-mini/dev/hard_dev.jsonl")``
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cappy.errors import InputError
from cappy.io import sha256_file
from cappy.metrics import HARD_SOURCES, pairwise_accuracy
from cappy.train.data import read_column, read_dev


def choice_accuracy(
    instructions: list[str], sources: list[str], scores: np.ndarray, tasks: list[str] | None = None
) -> dict[str, Any]:
    """Per instruction with a gold row and >= 1 wrong-choice row: is the gold strictly the highest?

    Example: ``choice_accuracy(["q", "q"], ["gold", "wrong_choice"], np.array([.9, .1]))["mean"]`` -> 1.0
    """
    groups: dict[str, dict[str, Any]] = {}
    for i, (s, src) in enumerate(zip(instructions, sources)):
        g = groups.setdefault(s, {"gold": [], "wrong": [], "task": tasks[i] if tasks else ""})
        if src == "gold":
            g["gold"].append(scores[i])
        elif src == "wrong_choice":
            g["wrong"].append(scores[i])
    per_task: dict[str, list[int]] = defaultdict(list)
    for g in groups.values():
        if g["gold"] and g["wrong"]:
            per_task[g["task"]].append(int(max(g["gold"]) > max(g["wrong"])))
    by_task = {t: {"accuracy": float(np.mean(v)), "questions": len(v)} for t, v in sorted(per_task.items())}
    return {
        "mean": float(np.mean([v["accuracy"] for v in by_task.values()])) if by_task else float("nan"),
        "questions": sum(v["questions"] for v in by_task.values()),
        "by_task": by_task,
    }


def evaluate_pairs(scorer: Any, path: str | Path, batch_size: int = 64, show_progress: bool = False) -> dict[str, Any]:
    """Every metric above for ``scorer`` (a :class:`cappy.Cappy`) on the pairs at ``path``; the file's sha256 is
    recorded so that two models are known to be compared on the same split."""
    pairs = read_dev(str(path))
    sources = read_column(str(path), "source")
    if sources is None:
        raise InputError(f"{path}: pairs need a 'source' column (gold, wrong_choice, ...) for these metrics")
    tasks = read_column(str(path), "task")
    scores = np.asarray(
        scorer.score(pairs.instructions, pairs.responses, batch_size=batch_size, show_progress_bar=show_progress)
    )
    src = np.array(sources)
    acc, n = pairwise_accuracy(pairs.instructions, pairs.labels, scores)
    hard, n_hard = pairwise_accuracy(pairs.instructions, pairs.labels, scores, np.isin(src, HARD_SOURCES))
    by_source = {}
    for name in sorted(set(sources) - {"gold"}):
        a, k = pairwise_accuracy(pairs.instructions, pairs.labels, scores, src == name)
        by_source[name] = {"accuracy": a, "pairs": k}
    return {
        "file": str(path),
        "sha256": sha256_file(Path(path)) if Path(path).is_file() else None,
        "rows": len(pairs),
        "instructions": len(set(pairs.instructions)),
        "pairwise_accuracy": acc,
        "pairs": n,
        "hard_pairwise_accuracy": hard,
        "hard_pairs": n_hard,
        "by_source": by_source,
        "choice_accuracy": choice_accuracy(pairs.instructions, sources, scores, tasks),
        "mse": float(np.mean((scores.astype(np.float64) - pairs.labels) ** 2)),
    }
