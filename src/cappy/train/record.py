"""What a checkpoint was trained on, written beside its weights as ``training_data.json``.

The evaluation harness reads it to refuse evaluating a checkpoint on a task it was trained on. A checkpoint
adapted from another inherits that one's record too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cappy.io import atomic_write, sha256_file

RECORD_FILE = "training_data.json"  # the name cappy.evaluate.guard reads


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
    base_dir = None
    if base_model:
        from cappy.model import resolve_model_path

        try:
            base_dir = Path(resolve_model_path(base_model))
        except (FileNotFoundError, ValueError):
            base_dir = None
    own = {"tasks": sorted(tasks), "inputs": inputs}
    if base_dir is not None and (base_dir / RECORD_FILE).is_file():
        return unite_records([own, json.loads((base_dir / RECORD_FILE).read_text())])
    return own


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
    with atomic_write(Path(directory) / RECORD_FILE) as f:
        json.dump(record, f, indent=2)
        f.write("\n")
