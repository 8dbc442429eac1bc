"""Evaluation: zero-shot multiple choice (`mc`), BIG-Bench boosting (`bigbench`), reports and plots."""

from cappy.evaluate.guard import ContaminationError, check_contamination
from cappy.evaluate.mc import DEFAULT_SUITE, METHODS, MCConfig, MCTask, evaluate_mc, paired_bootstrap
from cappy.evaluate.report import merge_reports, write_run

__all__ = [
    "DEFAULT_SUITE",
    "METHODS",
    "ContaminationError",
    "MCConfig",
    "MCTask",
    "check_contamination",
    "evaluate_mc",
    "merge_reports",
    "paired_bootstrap",
    "write_run",
]
