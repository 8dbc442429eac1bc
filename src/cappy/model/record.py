"""What a checkpoint was trained on: the record written beside its weights as ``training_data.json``.

``{"tasks": [...], "inputs": [{"path", "sha256"}, ...]}``. `cappy train` writes it (see
:func:`cappy.train.record.build_record`), export and merge carry it along, and the evaluation's contamination guard
reads it to refuse evaluating a checkpoint on a task it was trained on. Standard library only, so that the guard
can read it without importing torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cappy.errors import InputError
from cappy.io import atomic_write

RECORD_FILE = "training_data.json"


def read_record(directory: str | Path) -> dict[str, Any] | None:
    """The record of a checkpoint folder, or None when it has none (a hub id, an untrained encoder).

    Example: ``read_record("src/cappy/models/cappy-mini")["tasks"][:2]``
    """
    path = Path(directory) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise InputError(f"{path}: unreadable training record ({err})") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}: a training record is a JSON object, got {type(record).__name__}")
    return record


def unite_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One record covering several: every task of any, every input file once (by path and checksum), in order.

    Example: ``unite_records([{"tasks": ["sciq"], "inputs": []}, {"tasks": ["piqa"]}])["tasks"]`` -> ["piqa", "sciq"]
    """
    inputs: list[dict[str, Any]] = []
    seen: set[tuple[Any, Any]] = set()
    for r in records:
        for i in r.get("inputs", []):
            key = (i.get("path"), i.get("sha256")) if isinstance(i, dict) else None
            if key is not None and key not in seen:
                seen.add(key)
                inputs.append(i)
    return {"tasks": sorted({t for r in records for t in r.get("tasks", [])}), "inputs": inputs}


def write_record(directory: str | Path, record: dict[str, Any]) -> None:
    """Write ``record`` as the checkpoint folder's ``training_data.json`` (atomically).

    Example: ``write_record("runs/mini/best", {"tasks": ["sciq"], "inputs": []})``
    """
    with atomic_write(Path(directory) / RECORD_FILE) as f:
        json.dump(record, f, indent=2)
        f.write("\n")
