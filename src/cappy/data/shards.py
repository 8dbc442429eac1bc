"""A pair build's output folder: Parquet shards of ``COLUMNS``, ``manifest.json`` listing them with their checksums,
and the resume state under ``.build/`` while the build runs.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cappy.data.readers import iter_examples
from cappy.io import atomic_write, sha256_file

COLUMNS = ("instruction", "response", "label", "task", "template", "source")
MANIFEST = "manifest.json"
STATE_DIR = ".build"


def shard_name(index: int) -> str:
    """The file name of the ``index``-th shard. Example: ``shard_name(3)`` -> "shard-00003.parquet\""""
    return f"shard-{index:05d}.parquet"


def write_shard(path: Path, batches: Iterable[list[tuple[Any, ...]]]) -> dict[str, Any]:
    """Write rows (tuples in ``COLUMNS`` order, given in batches) as one zstd Parquet file, atomically.

    Returns its manifest entry ``{"path", "rows", "sha256"}``. Example: ``write_shard(out / shard_name(0), [rows])``
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = (pa.string(), pa.string(), pa.float32(), pa.string(), pa.string(), pa.string())
    schema = pa.schema(list(zip(COLUMNS, types)))
    n = 0
    with atomic_write(path, "wb") as f:
        writer = pq.ParquetWriter(f, schema, compression="zstd")
        for batch in batches:
            cols = list(zip(*batch))
            writer.write_table(pa.table([pa.array(c, type=t.type) for c, t in zip(cols, schema)], schema=schema))
            n += len(batch)
        writer.close()
    return {"path": path.name, "rows": n, "sha256": sha256_file(path)}


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of a finished build in ``out``, or None when there is none."""
    path = out / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    with atomic_write(out / MANIFEST) as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def shards_intact(out: Path, manifest: dict[str, Any]) -> bool:
    """Whether every shard the manifest lists is there with its checksum."""
    for s in manifest.get("shards", []):
        p = out / s["path"]
        if not p.exists() or sha256_file(p) != s["sha256"]:
            return False
    return True


def clear_build(out: Path) -> None:
    """Remove a build's shards, manifest and resume state from ``out`` (other files stay)."""
    if not out.exists():
        return
    for p in out.glob("shard-*.parquet"):
        p.unlink()
    (out / MANIFEST).unlink(missing_ok=True)
    remove_state(out)


def remove_state(out: Path) -> None:
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)


def remove_stray_shards(out: Path, manifest: dict[str, Any]) -> None:
    """Delete shards the manifest does not list: left by an older, longer build in the same folder."""
    listed = {s["path"] for s in manifest["shards"]}
    for stray in out.glob("shard-*.parquet"):
        if stray.name not in listed:
            stray.unlink()


def iter_pairs(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Stream pair rows from a build folder (its shards in manifest order), a Parquet file or a JSONL file.

    Example: ``next(iter_pairs("runs/data/offline"))["label"]``
    """
    p = Path(path)
    if p.is_dir():
        manifest = json.loads((p / MANIFEST).read_text(encoding="utf-8"))
        files = [p / s["path"] for s in manifest["shards"]]
    else:
        files = [p]
    for f in files:
        for _, row in iter_examples(f):
            yield row
