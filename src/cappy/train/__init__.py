"""Training a Cappy scorer: pretraining from an encoder on built pairs, or adapting a scorer to one task.

Example:
    >>> from cappy.train import TrainConfig, train
    >>> train(TrainConfig.from_yaml("adapt_paper", {"model": "cappy-mini", "train": ["pairs/"],
    ...       "output_dir": "out/task"}))
"""

from cappy.metrics import pairwise_accuracy
from cappy.train.config import TrainConfig
from cappy.train.data import PairSource, Plan
from cappy.train.loop import Trainer, TrainingError, lr_factor, train

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
