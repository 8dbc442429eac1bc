"""Training a Cappy scorer: pretraining from an encoder on built pairs, or adapting a scorer to one task.

Example:
    >>> from cappy.train import TrainConfig, train
    >>> train(TrainConfig.from_yaml("adapt_paper", {"model": "cappy-mini", "train": ["pairs/"],
    ...       "output_dir": "out/task"}))
"""

from __future__ import annotations

from typing import Any

from cappy.train.config import TrainConfig  # light (no torch): the command line reads its fields to build options

__all__ = [
    "PairSource",
    "Plan",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "lr_factor",
    "pairwise_accuracy",
    "train",
]

# The rest needs torch: imported on first use, so that `cappy --help` and reading a config stay fast.
_WHERE = {
    "PairSource": "cappy.train.data",
    "Plan": "cappy.train.data",
    "Trainer": "cappy.train.loop",
    "TrainingError": "cappy.train.loop",
    "lr_factor": "cappy.train.loop",
    "train": "cappy.train.loop",
    "pairwise_accuracy": "cappy.metrics",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'cappy.train' has no attribute {name!r}")
