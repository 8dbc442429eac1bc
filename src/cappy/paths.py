"""Where things live: the project's shared real data (``../shared/data`` beside the repository by default) and the
user's cache of long runs (``~/.cache/cappy``)."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "CAPPY_SHARED_DATA"


def shared_data_dir() -> Path:
    """``$CAPPY_SHARED_DATA`` if set, else ``../shared/data`` beside the source checkout.

    Example: ``shared_data_dir() / "heldout" / "super_glue_rte_val.jsonl"``
    """
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


CACHE_ENV = "CAPPY_CACHE"


def cache_dir() -> Path:
    """Where commands keep what costs time to make (generation caches): ``$CAPPY_CACHE`` if set, else
    ``~/.cache/cappy`` (outside the checkout, so a new clone keeps it). Example: ``cache_dir() / "generations"``
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "cappy"
