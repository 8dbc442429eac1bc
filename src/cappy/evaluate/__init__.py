"""Evaluation: zero-shot multiple choice (`mc`), BIG-Bench boosting (`bigbench`), dev pairs, reports and plots.

Named task suites (``heldout``, the paper's ``paper``) are :data:`SUITES` (:mod:`cappy.evaluate.suites`). Each
run's settings are one config: :class:`MCEvalConfig` (`cappy eval mc`), :class:`BigBenchEvalConfig`
(`cappy eval bigbench`) and :class:`PairsEvalConfig` (`cappy eval pairs`), run by the functions of
:mod:`cappy.evaluate.runs` (``run_mc``, ``run_bigbench``, ``run_pairs``).
"""

from __future__ import annotations

from typing import Any

from cappy.evaluate.config import (  # light: the command line reads these
    DEFAULT_SUITE,
    METHODS,
    BBConfig,
    BigBenchEvalConfig,
    MCConfig,
    MCEvalConfig,
    PairsEvalConfig,
)
from cappy.evaluate.suites import SUITES, get_suite  # light: names and published numbers only

__all__ = [
    "DEFAULT_SUITE",
    "METHODS",
    "BBConfig",
    "BigBenchEvalConfig",
    "ContaminationError",
    "MCConfig",
    "MCEvalConfig",
    "MCTask",
    "PairsEvalConfig",
    "SUITES",
    "check_contamination",
    "evaluate_mc",
    "get_suite",
    "merge_reports",
    "paired_bootstrap",
    "write_run",
]

# The rest needs numpy and the data readers: imported on first use, so that `cappy --help` stays fast.
_WHERE = {
    "ContaminationError": "cappy.evaluate.guard",
    "check_contamination": "cappy.evaluate.guard",
    "MCTask": "cappy.evaluate.mc",
    "evaluate_mc": "cappy.evaluate.mc",
    "paired_bootstrap": "cappy.evaluate.mc",
    "merge_reports": "cappy.evaluate.report",
    "write_run": "cappy.evaluate.report",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'cappy.evaluate' has no attribute {name!r}")
