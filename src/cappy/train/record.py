"""The training-data record of a run: the tasks and input files it trained on, united with its base model's.

The record's file, reading and writing live in :mod:`cappy.model.record` (export, merge and the contamination guard
use them too); this module only builds a record from a run's inputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cappy.io import sha256_file
from cappy.model.checkpoint import resolve_model_path
from cappy.model.record import RECORD_FILE, read_record, unite_records, write_record

__all__ = ["RECORD_FILE", "build_record", "unite_records", "write_record"]


def _file_tasks(path: Path) -> set[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        if "task" not in pq.read_schema(path).names:
            return set()
        return {t for t in pq.read_table(path, columns=["task"]).column("task").unique().to_pylist() if t}
    tasks = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                t = json.loads(line).get("task")
            except (ValueError, AttributeError):
                continue
            if isinstance(t, str) and t:
                tasks.add(t)
    return tasks


def build_record(train_paths: list[str], base_model: str | None = None) -> dict[str, Any]:
    """Tasks and input files (with checksums) of a training run, merged with the base checkpoint's record.

    Example: ``build_record(["runs/data/offline"], "cappy-mini")["tasks"]``
    """
    tasks: set[str] = set()
    inputs: list[dict[str, Any]] = []
    for p in map(Path, train_paths):
        manifest = p / "manifest.json" if p.is_dir() else None
        if manifest is not None and manifest.is_file():
            m = json.loads(manifest.read_text())
            tasks |= set(m.get("tasks", {}))
            inputs += [i for i in m.get("inputs", []) if isinstance(i, dict)]
            inputs.append({"path": str(manifest), "sha256": sha256_file(manifest)})
        elif p.is_dir():
            for f in sorted(list(p.glob("*.parquet")) + list(p.glob("*.jsonl"))):
                tasks |= _file_tasks(f)
                inputs.append({"path": str(f), "sha256": sha256_file(f)})
        elif p.is_file():
            tasks |= _file_tasks(p)
            inputs.append({"path": str(p), "sha256": sha256_file(p)})
    own = {"tasks": sorted(tasks), "inputs": inputs}
    base = _base_record(base_model) if base_model else None
    return unite_records([own, base]) if base is not None else own


def _base_record(base_model: str) -> dict[str, Any] | None:
    try:
        base_dir = resolve_model_path(base_model)
    except (FileNotFoundError, ValueError):  # the training run itself reports a base model it cannot load
        return None
    return read_record(base_dir)
