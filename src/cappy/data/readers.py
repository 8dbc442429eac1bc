"""Dataset readers: one interface over local files, `save_to_disk` folders, BIG-Bench tasks and hub ids.

Every reader yields ``(where, example)`` where ``example`` is a plain dict in the dataset's own (Hugging Face)
schema and ``where`` names the file and line (or row) so that any later error can point at its source.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cappy.data.bigbench import load_bigbench_task
from cappy.errors import InputError
from cappy.io import iter_jsonl

HUB_PREFIX = "hub:"
_JSONL_SUFFIXES = {".jsonl", ".ndjson"}
_CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}


class ReaderError(InputError):
    """A source that cannot be read; the message names the file (and line or row) and the problem."""


def iter_examples(
    source: str | os.PathLike,
    *,
    split: str | None = None,
    config: str | None = None,
    skip_bad_lines: bool = False,
    stats: dict[str, int] | None = None,
    shuffle_seed: int | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, example)`` from a local file or folder, a BIG-Bench task, or ``hub:NAME[:CONFIG]``.

    Local: ``.jsonl``/``.ndjson``, ``.json`` (JSON lines, a JSON list, or a BIG-Bench ``task.json``), ``.csv``,
    ``.tsv``, ``.parquet``; folders written by ``datasets.save_to_disk`` (``split`` picks a split of a
    DatasetDict), BIG-Bench task folders (``split`` = "train"/"validation" applies the official rule), and
    folders of ``.parquet``/``.jsonl`` shards (read in name order). ``hub:`` ids go through
    ``datasets.load_dataset(name, config, split=...)`` (needs the hub; downloaded once into the datasets cache,
    since a build reads a dataset once per template). A malformed line raises :class:`ReaderError` naming
    file and line unless ``skip_bad_lines``, which counts it in ``stats["bad_lines"]``. ``shuffle_seed`` yields
    the examples in a seeded random order (a hub split through ``Dataset.shuffle``; a local source is read
    into memory first).
    Example: ``for where, ex in iter_examples("data/boolq.jsonl"): print(where, ex["question"])``
    """
    stats = stats if stats is not None else {}
    stats.setdefault("bad_lines", 0)
    text = str(source)
    if text.startswith(HUB_PREFIX):
        name, _, cfg = text[len(HUB_PREFIX) :].partition(":")
        yield from _iter_hub(name, config or cfg or None, split, shuffle_seed)
        return
    if shuffle_seed is not None:
        rows = list(iter_examples(source, split=split, config=config, skip_bad_lines=skip_bad_lines, stats=stats))
        random.Random(shuffle_seed).shuffle(rows)
        yield from rows
        return
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (for a Hugging Face id write {HUB_PREFIX}NAME)")
    if path.is_dir():
        yield from _iter_dir(path, split, skip_bad_lines, stats)
        return
    if split is not None and not _is_bigbench_file(path):
        raise ReaderError(f"{path}: a single file has no splits (got split={split!r})")
    yield from _iter_file(path, split, skip_bad_lines, stats)


def read_examples(source: str | os.PathLike, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Like :func:`iter_examples` without the locations. Example: ``rows = list(read_examples("x.csv"))``."""
    for _, example in iter_examples(source, **kwargs):
        yield example


def _iter_file(path: Path, split: str | None, skip_bad_lines: bool, stats: dict[str, int]):
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        yield from _iter_jsonl(path, skip_bad_lines, stats)
    elif suffix == ".json":
        yield from _iter_json(path, split, skip_bad_lines, stats)
    elif suffix in _CSV_DELIMITERS:
        yield from _iter_csv(path, _CSV_DELIMITERS[suffix], skip_bad_lines, stats)
    elif suffix == ".parquet":
        yield from _iter_parquet(path)
    elif suffix == ".arrow":
        yield from _iter_arrow_stream(path)
    else:
        raise ReaderError(f"{path}: unknown file type {suffix!r} (expected .jsonl, .json, .csv, .tsv, .parquet)")


def _iter_jsonl(path: Path, skip_bad_lines: bool, stats: dict[str, int]):
    try:
        for lineno, row in iter_jsonl(path, skip_bad_lines=skip_bad_lines, stats=stats):
            yield f"{path}:{lineno}", row
    except UnicodeDecodeError as err:
        raise ReaderError(f"{path}: not UTF-8 text ({err})") from None


def _is_bigbench_file(path: Path) -> bool:
    return path.name == "task.json"


def _iter_json(path: Path, split: str | None, skip_bad_lines: bool, stats: dict[str, int]):
    if _is_bigbench_file(path):
        yield from _iter_bigbench(path, split)
        return
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if not head.startswith("["):
        if head.startswith("{") and '"examples"' in head:
            yield from _iter_bigbench(path, split)
            return
        yield from _iter_jsonl(path, skip_bad_lines, stats)
        return
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except ValueError as err:
        raise ReaderError(f"{path}: malformed JSON ({err})") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            if skip_bad_lines:
                stats["bad_lines"] += 1
                continue
            raise ReaderError(f"{path}[{i}]: expected a JSON object, got {type(row).__name__}")
        yield f"{path}[{i}]", row


def _iter_csv(path: Path, delimiter: str, skip_bad_lines: bool, stats: dict[str, int]):
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if reader.fieldnames is None:
            return
        width = len(reader.fieldnames)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            extra, missing = row.get(None) or [], sum(v is None for k, v in row.items() if k is not None)
            if extra or missing:
                if skip_bad_lines:
                    stats["bad_lines"] += 1
                    continue
                raise ReaderError(f"{where}: row has {width + len(extra) - missing} fields, the header has {width}")
            yield where, row


def _iter_parquet(path: Path):
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield f"{path}:row {n}", row
            n += 1


def _iter_arrow_stream(path: Path):
    import pyarrow as pa

    n = 0
    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(reader)
        for batch in batches:
            for row in batch.to_pylist():
                yield f"{path}:row {n}", row
                n += 1


def _iter_dir(path: Path, split: str | None, skip_bad_lines: bool, stats: dict[str, int]):
    if (path / "dataset_dict.json").exists():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        if split is None:
            if len(splits) != 1:
                raise ReaderError(f"{path}: a DatasetDict with splits {splits}; choose one with split=...")
            split = splits[0]
        if split not in splits:
            raise ReaderError(f"{path}: no split {split!r} (splits: {splits})")
        yield from _iter_dir(path / split, None, skip_bad_lines, stats)
        return
    if (path / "state.json").exists():
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        if split is not None:
            raise ReaderError(f"{path}: a single saved Dataset has no splits (got split={split!r})")
        for entry in state.get("_data_files", []):
            yield from _iter_arrow_stream(path / entry["filename"])
        return
    if (path / "task.json").exists() or any(path.glob("*/task.json")):
        yield from _iter_bigbench(path, split)
        return
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in {".parquet", *_JSONL_SUFFIXES})
    if not files:
        raise ReaderError(f"{path}: no dataset here (no save_to_disk files, task.json, .parquet or .jsonl)")
    if split is not None:
        raise ReaderError(f"{path}: a folder of shards has no splits (got split={split!r})")
    for file in files:
        yield from _iter_file(file, None, skip_bad_lines, stats)


def _iter_bigbench(path: Path, split: str | None):
    task = load_bigbench_task(path)
    if split is None:
        examples = task.examples
    else:
        train, validation = task.split()
        if split not in ("train", "validation"):
            raise ReaderError(f"{path}: BIG-Bench splits are 'train' and 'validation', got {split!r}")
        examples = train if split == "train" else validation
    for ex in examples:
        yield ex.where, ex.to_dict()


def _iter_hub(name: str, config: str | None, split: str | None, shuffle_seed: int | None = None):
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ReaderError("reading hub datasets needs the 'datasets' package (pip install 'cappy[hub]')") from err
    if not name:
        raise ReaderError("empty hub dataset id")
    # Not streamed: a build reads each dataset once per template, and the cached Arrow files make every read
    # after the first local (and make a seeded shuffle of the whole split possible).
    ds = datasets.load_dataset(name, config, split=split or "train")
    where = f"{HUB_PREFIX}{name}{':' + config if config else ''}[{split or 'train'}]"
    if shuffle_seed is not None:
        ds = ds.shuffle(seed=shuffle_seed)
        where += f"(shuffled, seed {shuffle_seed})"
    for i, row in enumerate(ds):
        yield f"{where}#{i}", dict(row)
