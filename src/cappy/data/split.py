"""Split built pairs into train and dev by instruction, cap big tasks, and shuffle whole instruction groups.

All responses of one instruction stay together (on the same side of the split, and next to each other in the
output) so ranking losses and pairwise dev metrics see complete groups. Deterministic for a seed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cappy.errors import InputError
from cappy.io import atomic_write, dumps


@dataclass
class SplitConfig:
    """``dev_fraction`` of instructions go to dev (at most ``max_dev_rows`` rows); ``caps`` bounds a task's rows."""

    dev_fraction: float = 0.02
    max_dev_rows: int = 3000
    caps: dict[str, int] = field(default_factory=dict)
    seed: int = 0


def _hash(text: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}\x00{text}".encode()).digest()[:8], "big")


def split_pairs(source: str | Path, out: str | Path, cfg: SplitConfig) -> dict[str, Any]:
    """Read the shards of ``cappy data build`` (a folder) or one Parquet file; write ``out/train.parquet`` and
    ``out/dev.jsonl``. Example: ``split_pairs("runs/data/offline", "runs/mini", SplitConfig(caps={"nq_open": 25000}))``
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not 0 <= cfg.dev_fraction < 1:
        raise InputError(f"dev_fraction must be in [0, 1), got {cfg.dev_fraction}")
    src = Path(source)
    files = sorted(src.glob("shard-*.parquet")) if src.is_dir() else [src]
    if not files:
        raise FileNotFoundError(f"{src}: no shard-*.parquet files (is it a `cappy data build` folder?)")
    table = pa.concat_tables([pq.read_table(f) for f in files])
    for col in ("instruction", "response", "label", "task"):
        if col not in table.column_names:
            raise InputError(f"{src}: pairs have no column {col!r}")
    unknown = set(cfg.caps) - set(table.column("task").to_pylist())
    if unknown:
        raise InputError(f"caps name tasks that are not in the data: {sorted(unknown)}")
    h = np.array([_hash(s, cfg.seed) for s in table.column("instruction").to_pylist()], dtype=np.uint64)
    unit = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform in [0, 1) per instruction
    task = np.array(table.column("task").to_pylist(), dtype=object)
    dev = unit < cfg.dev_fraction
    train = ~dev
    for name, cap in cfg.caps.items():
        rows = train & (task == name)
        if rows.sum() > cap:
            # keep instructions in seeded hash order until the cap (only the last group may be cut)
            second = (h * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(1)
            order = np.argsort(second[rows], kind="stable")
            keep_idx = np.flatnonzero(rows)[order[:cap]]
            cut = np.zeros_like(train)
            cut[keep_idx] = True
            train &= ~rows | cut
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tr_idx = np.flatnonzero(train)
    tr_idx = tr_idx[np.argsort(h[tr_idx], kind="stable")]  # groups contiguous, tasks interleaved
    with atomic_write(out / "train.parquet", "wb") as f:
        pq.write_table(table.take(pa.array(tr_idx)), f, row_group_size=20000)
    dev_idx = np.flatnonzero(dev)
    dev_idx = dev_idx[np.argsort(h[dev_idx], kind="stable")]
    dev_rows = 0
    with atomic_write(out / "dev.jsonl") as f:
        rows = table.take(pa.array(dev_idx)).to_pylist()
        last = None
        for r in rows:
            if dev_rows >= cfg.max_dev_rows and r["instruction"] != last:
                break  # stop only between groups
            f.write(dumps(r) + "\n")
            dev_rows += 1
            last = r["instruction"]
    summary = {
        "source_rows": table.num_rows,
        "train_rows": int(len(tr_idx)),
        "dev_rows": dev_rows,
        "dropped_by_caps": int(table.num_rows - len(tr_idx) - dev.sum()),
        "train_tasks": dict(Counter(task[tr_idx].tolist())),
        "seed": cfg.seed,
    }
    return summary
