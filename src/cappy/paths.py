"""Where the project's shared real data lives (``../shared/data`` beside the repository by default)."""

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
