"""Contamination guard: never evaluate a checkpoint on a task its training data listed."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from cappy.errors import InputError
from cappy.model.record import RECORD_FILE  # written next to a checkpoint by `cappy train`


class ContaminationError(InputError):
    """The checkpoint was trained on data of a task it is about to be evaluated on."""


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def training_record(model_dir: str | Path | None) -> dict:
    """The training-data record of a local checkpoint ({} when it has none, e.g. a hub id)."""
    if model_dir is None:
        return {}
    p = Path(model_dir) / RECORD_FILE
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except ValueError as err:
        raise InputError(f"{p}: unreadable training record ({err})") from None


def check_contamination(model_dir: str | Path | None, tasks: Iterable[tuple[str, str, str | None]]) -> None:
    """Raise :class:`ContaminationError` if any ``(task name, dataset key, file sha256)`` was trained on.

    A dataset key matches a trained task equal to it or nested under it (``super_glue`` covers
    ``super_glue/rte``); a file matches by checksum.
    Example: ``check_contamination("ckpt", [("rte", "super_glue/rte", None)])``
    """
    record = training_record(model_dir)
    trained = {_norm(t) for t in record.get("tasks", [])}
    sums = {i.get("sha256") for i in record.get("inputs", []) if i.get("sha256")}
    hits = []
    for name, key, sha in tasks:
        k = _norm(key)
        if k in trained or _norm(name) in trained or any(k.startswith(t + "/") for t in trained):
            hits.append(f"{name} (dataset {key})")
        elif sha and sha in sums:
            hits.append(f"{name} (same file, sha256 {sha[:12]})")
    if hits:
        raise ContaminationError(
            f"refusing to evaluate {model_dir}: its training data lists {', '.join(hits)}; "
            "pass --allow-contaminated to override"
        )
