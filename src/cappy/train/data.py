"""Training pairs, streamed: validated up front, read in blocks, shuffled and length-grouped per window.

A *block* is one Parquet row group or up to ``jsonl_block_rows`` lines of a JSONL file. Each epoch shuffles
the block order (seeded by ``(seed, epoch)``) and cuts it into *windows* of at least ``shuffle_window_rows``
pairs. A window is read into memory, its pairs are sorted by length (ties in random order) and cut into
update batches of ``batch_size`` pairs, whose order is shuffled again. Everything is a function of
``(seed, epoch, window)``, so a resumed run finds its place from the update count alone, and the batches
do not depend on the number of processes (each process takes a contiguous slice of every batch).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cappy.errors import InputError
from cappy.io import iter_jsonl

REQUIRED = ("instruction", "response", "label")


@dataclass(frozen=True)
class Block:
    path: str
    kind: str  # "parquet" | "jsonl"
    where: int  # row-group index (parquet) or byte offset (jsonl)
    rows: int
    start: int  # global id of the block's first row, over all inputs in order
    first_line: int = 0


@dataclass
class Pairs:
    """Pairs in memory: instruction and response texts, float32 labels, global row ids."""

    instructions: list[str]
    responses: list[str]
    labels: np.ndarray
    row_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> Pairs:
        return Pairs(
            [self.instructions[i] for i in idx], [self.responses[i] for i in idx], self.labels[idx], self.row_ids[idx]
        )


def _bad_label(where: str, value: Any) -> InputError:
    return InputError(f"{where}: label is {value!r}; labels must be finite numbers in [0, 1]")


def _input_files(path: str) -> list[tuple[str, int | None]]:
    """(file, rows declared by a manifest or None) for one input path."""
    p = Path(path)
    if p.is_dir():
        manifest = p / "manifest.json"
        if manifest.is_file():
            try:
                meta = json.loads(manifest.read_text(encoding="utf-8"))
                shards = meta["shards"]
                files = [(str(p / s["path"]), int(s["rows"])) for s in shards]
            except (ValueError, KeyError, TypeError) as err:
                raise InputError(f"{manifest}: not a pair manifest (needs shards: [{{path, rows}}]) ({err})") from None
            if not files:
                raise InputError(f"{manifest}: lists no shards")
            for f, _ in files:
                if not Path(f).is_file():
                    raise FileNotFoundError(f"{manifest}: shard {f} is missing")
            declared = meta.get("rows")
            if declared is not None and int(declared) != sum(r for _, r in files):
                raise InputError(f"{manifest}: rows={declared} but its shards add up to {sum(r for _, r in files)}")
            return files
        found = sorted(f for f in p.iterdir() if f.suffix in (".parquet", ".jsonl") and not f.name.startswith("."))
        if not found:
            raise FileNotFoundError(f"{path}: no manifest.json, .parquet or .jsonl files in this folder")
        return [(str(f), None) for f in found]
    if not p.exists():
        raise FileNotFoundError(f"training data not found: {path}")
    if p.suffix not in (".parquet", ".jsonl"):
        raise InputError(f"{path}: pair data must be .parquet, .jsonl or a `cappy data build` folder")
    return [(str(p), None)]


def _parquet_blocks(path: str, declared: int | None, start: int) -> list[Block]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: not a readable Parquet file ({err})") from None
    schema = pf.schema_arrow
    missing = [c for c in REQUIRED if c not in schema.names]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; pair rows need {', '.join(REQUIRED)}")
    for c in ("instruction", "response"):
        t = schema.field(c).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise InputError(f"{path}: column {c!r} must be string, got {t}")
    lt = schema.field("label").type
    if not (pa.types.is_floating(lt) or pa.types.is_integer(lt)):
        raise InputError(f"{path}: column 'label' must be a number, got {lt}")
    n = pf.metadata.num_rows
    if n == 0:
        raise InputError(f"{path}: empty shard (0 rows)")
    if declared is not None and declared != n:
        raise InputError(f"{path}: the manifest says {declared} rows, the file has {n}")
    blocks, offset = [], 0
    for rg in range(pf.num_row_groups):
        rows = pf.metadata.row_group(rg).num_rows
        if rows == 0:
            continue
        meta = pf.metadata.row_group(rg)
        for c in ("instruction", "response"):
            # Null counts come from the row-group statistics when the writer stored them (pyarrow does), so the
            # texts of 10^8 pairs are not read just to be checked; the column is read only when they are missing.
            stats = meta.column(schema.names.index(c)).statistics
            if stats is not None and stats.has_null_count and stats.null_count == 0:
                continue
            col = pf.read_row_group(rg, columns=[c]).column(c)
            if col.null_count:
                bad = offset + int(np.flatnonzero(np.asarray(col.is_null()))[0])
                raise InputError(f"{path}: row {bad}: {c} is null")
        labels = pf.read_row_group(rg, columns=["label"]).column("label")
        values = labels.to_numpy(zero_copy_only=False).astype(np.float64)
        if labels.null_count:
            bad = offset + int(np.flatnonzero(np.asarray(labels.is_null()))[0])
            raise _bad_label(f"{path}: row {bad}", None)
        bad_idx = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values > 1))
        if len(bad_idx):
            raise _bad_label(f"{path}: row {offset + int(bad_idx[0])}", float(values[bad_idx[0]]))
        blocks.append(Block(path, "parquet", rg, rows, start + offset))
        offset += rows
    return blocks


def _jsonl_blocks(path: str, block_rows: int, start: int) -> list[Block]:
    blocks: list[Block] = []
    offset = rows = 0
    block_at, block_line = 0, 1
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            here = offset
            offset += len(raw)
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except ValueError as err:
                raise InputError(f"{path}:{lineno}: malformed JSONL line ({err})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [c for c in REQUIRED if c not in row]
            if missing:
                raise InputError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
            for c in ("instruction", "response"):
                if not isinstance(row[c], str):
                    raise InputError(f"{path}:{lineno}: field {c!r} must be a string, got {type(row[c]).__name__}")
            label = row["label"]
            if isinstance(label, bool) or not isinstance(label, int | float) or not (0 <= label <= 1):
                raise _bad_label(f"{path}:{lineno}", label)
            if rows == 0:
                block_at, block_line = here, lineno
            rows += 1
            if rows == block_rows:
                blocks.append(Block(path, "jsonl", block_at, rows, start, block_line))
                start += rows
                rows = 0
    if rows:
        blocks.append(Block(path, "jsonl", block_at, rows, start, block_line))
    if not blocks:
        raise InputError(f"{path}: empty file (no pair rows)")
    return blocks


class PairSource:
    """Validated pair inputs, read block by block. Bad input stops here, before any training.

    Example:
        >>> src = PairSource(["pairs/"])  # a `cappy data build` folder, or .parquet / .jsonl files
        >>> src.rows, len(src.blocks)
        (102400, 13)
    """

    def __init__(self, paths: list[str], jsonl_block_rows: int = 4096) -> None:
        if isinstance(paths, str | os.PathLike):
            paths = [str(paths)]
        self.blocks: list[Block] = []
        start = 0
        for path in paths:
            for file, declared in _input_files(str(path)):
                if file.endswith(".parquet"):
                    blocks = _parquet_blocks(file, declared, start)
                else:
                    blocks = _jsonl_blocks(file, jsonl_block_rows, start)
                    if declared is not None and sum(b.rows for b in blocks) != declared:
                        raise InputError(
                            f"{file}: the manifest says {declared} rows, the file has {sum(b.rows for b in blocks)}"
                        )
                self.blocks.extend(blocks)
                start += sum(b.rows for b in blocks)
        self.rows = start

    def read(self, block_ids: list[int]) -> Pairs:
        """The pairs of these blocks, in this order."""
        import pyarrow.parquet as pq

        instr: list[str] = []
        resp: list[str] = []
        labels: list[np.ndarray] = []
        ids: list[np.ndarray] = []
        for b in (self.blocks[i] for i in block_ids):
            if b.kind == "parquet":
                t = pq.ParquetFile(b.path).read_row_group(b.where, columns=list(REQUIRED))
                instr.extend(t.column("instruction").to_pylist())
                resp.extend(t.column("response").to_pylist())
                labels.append(t.column("label").to_numpy(zero_copy_only=False).astype(np.float32))
            else:
                with open(b.path, encoding="utf-8") as f:
                    f.seek(b.where)
                    got = 0
                    block_labels = np.empty(b.rows, dtype=np.float32)
                    for _, row in iter_jsonl(f):
                        instr.append(row["instruction"])
                        resp.append(row["response"])
                        block_labels[got] = row["label"]
                        got += 1
                        if got == b.rows:
                            break
                if got != b.rows:
                    raise InputError(f"{b.path}: changed while training (block at line {b.first_line} is short)")
                labels.append(block_labels)
            ids.append(np.arange(b.start, b.start + b.rows, dtype=np.int64))
        return Pairs(instr, resp, np.concatenate(labels), np.concatenate(ids))

    def read_all(self) -> Pairs:
        return self.read(list(range(len(self.blocks))))


@dataclass(frozen=True)
class Window:
    epoch: int
    index: int
    blocks: tuple[int, ...]
    rows: int
    batches: int
    last_batch_rows: int  # rows of the final batch (== batch_size unless partial or truncated)


class Plan:
    """The order of all update batches of a run, computed from block sizes alone (no data is read).

    Example: ``Plan(source, batch_size=128, num_pairs=102400, ...).total_updates`` -> 800
    """

    def __init__(
        self,
        source: PairSource,
        batch_size: int,
        seed: int,
        window_rows: int,
        num_pairs: int | None = None,
        epochs: int = 1,
        shuffle: bool = True,
    ) -> None:
        self.source, self.batch_size, self.seed, self.window_rows, self.shuffle = (
            source,
            batch_size,
            seed,
            window_rows,
            shuffle,
        )
        self.num_pairs = num_pairs if num_pairs is not None else source.rows * epochs
        self.windows: list[Window] = list(self._windows())
        self.total_updates = sum(w.batches for w in self.windows)
        self._first_update = np.cumsum([0] + [w.batches for w in self.windows])

    def _epoch_windows(self, epoch: int) -> Iterator[tuple[tuple[int, ...], int]]:
        n = len(self.source.blocks)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        cur: list[int] = []
        rows = 0
        for b in order:
            cur.append(int(b))
            rows += self.source.blocks[b].rows
            if rows >= self.window_rows:
                yield tuple(cur), rows
                cur, rows = [], 0
        if cur:
            yield tuple(cur), rows

    def _windows(self) -> Iterator[Window]:
        left = self.num_pairs
        epoch = 0
        while left > 0:
            for index, (blocks, rows) in enumerate(self._epoch_windows(epoch)):
                take = min(rows, left)
                batches = math.ceil(take / self.batch_size)
                last = take - (batches - 1) * self.batch_size
                yield Window(epoch, index, blocks, rows, batches, last)
                left -= take
                if left == 0:
                    return
            epoch += 1

    def locate(self, update: int) -> tuple[int, int]:
        """(window number, batch within the window) of the 0-based ``update``."""
        w = int(np.searchsorted(self._first_update, update, side="right")) - 1
        return w, update - int(self._first_update[w])

    def batches(self, w: int, grouped: bool, length_cap: int) -> list[Pairs]:
        """The update batches of window ``w``, in training order."""
        win = self.windows[w]
        pairs = self.source.read(list(win.blocks))
        rng = np.random.default_rng([self.seed, win.epoch, win.index, 1])
        order = _length_order(pairs, rng if self.shuffle else None, grouped, length_cap)
        cuts = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.shuffle:  # full batches in random order; a partial one stays last so truncation stays exact
            full = len(order) // self.batch_size
            cuts = [cuts[i] for i in rng.permutation(full)] + cuts[full:]
        cuts = cuts[: win.batches]
        cuts[-1] = cuts[-1][: win.last_batch_rows]
        return [pairs.take(c) for c in cuts]


def _length_order(pairs: Pairs, rng: np.random.Generator | None, grouped: bool, cap: int) -> np.ndarray:
    """Row order sorted by a character-length key; with ``grouped``, rows of one instruction stay together."""
    n = len(pairs)
    keys = np.fromiter(
        (min(len(a) + len(b), cap) for a, b in zip(pairs.instructions, pairs.responses)), dtype=np.int64, count=n
    )
    if not grouped:
        perm = rng.permutation(n) if rng is not None else np.arange(n)
        return perm[np.argsort(keys[perm], kind="stable")]
    group_of: dict[str, int] = {}
    gid = np.fromiter((group_of.setdefault(s, len(group_of)) for s in pairs.instructions), dtype=np.int64, count=n)
    gkey = np.zeros(len(group_of), dtype=np.int64)
    np.maximum.at(gkey, gid, keys)
    gperm = rng.permutation(len(group_of)) if rng is not None else np.arange(len(group_of))
    rank = np.empty(len(group_of), dtype=np.int64)
    rank[gperm[np.argsort(gkey[gperm], kind="stable")]] = np.arange(len(group_of))
    return np.argsort(rank[gid], kind="stable")


def read_dev(path: str, jsonl_block_rows: int = 4096) -> Pairs:
    """All pairs of a dev file or folder (validated like training data)."""
    return PairSource([path], jsonl_block_rows).read_all()


def read_column(path: str, name: str = "source") -> list[str] | None:
    """Column ``name`` (e.g. ``source``: gold, wrong_choice, ...) of every row of a pair file or folder, in the order
    of :func:`read_dev`; None when the rows do not have it (pairs written by hand)."""
    import pyarrow.parquet as pq

    out: list[str] = []
    for file, _ in _input_files(str(path)):
        if file.endswith(".parquet"):
            pf = pq.ParquetFile(file)
            if name not in pf.schema_arrow.names:
                return None
            out.extend(str(v) for v in pf.read(columns=[name]).column(name).to_pylist())
        else:
            for _, row in iter_jsonl(file):
                if name not in row:
                    return None
                out.append(str(row[name]))
    return out
