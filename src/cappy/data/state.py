"""What a pair build keeps while it runs: the SQLite resume state, the counts its manifest reports, the bounded
reservoir of mismatched responses, and the keys rows and prompts are found by.

The state file (``OUT/.build/state.sqlite``) holds the seen-pair set, the rows waiting for the next shard, the
indexed LLM candidates and the progress; the builder commits it once per finished (dataset, template) unit, so a
killed build resumes from the last finished unit.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def pair_key(instruction: str, response: str) -> int:
    """The seen-set key of an (instruction, response) pair: 8 bytes of BLAKE2b, a signed SQLite integer."""
    digest = hashlib.blake2b(f"{len(instruction)}:{instruction}{response}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def prompt_key(prompt: str) -> int:
    """The key LLM candidates are indexed by: 8 bytes of BLAKE2b of the rendered instruction."""
    return int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "big", signed=True)


def label_bin(label: float) -> str:
    """The manifest's label histogram bin: "0.0", "1.0" or a tenth such as "0.3-0.4"."""
    if label <= 0.0:
        return "0.0"
    if label >= 1.0:
        return "1.0"
    lo = min(int(label * 10), 9) / 10
    return f"{lo:.1f}-{lo + 0.1:.1f}"


class Reservoir:
    """A bounded uniform sample of the distinct responses seen so far (reservoir sampling, O(1) per item)."""

    def __init__(self, capacity: int, rng: random.Random) -> None:
        self.capacity, self.rng = capacity, rng
        self.items: list[str] = []
        self.members: set[str] = set()
        self.seen = 0

    def add(self, item: str) -> None:
        if item in self.members:
            return
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
            self.members.add(item)
            return
        j = self.rng.randrange(self.seen)
        if j < self.capacity:
            self.members.discard(self.items[j])
            self.items[j] = item
            self.members.add(item)

    def sample(self, k: int, exclude: set[str]) -> list[str]:
        """Up to ``k`` distinct items not in ``exclude``; a bounded number of draws, so O(k) per call."""
        out: list[str] = []
        if not self.items or k <= 0:
            return out
        for _ in range(4 * k + 4):
            cand = self.items[self.rng.randrange(len(self.items))]
            if cand not in exclude and cand not in out:
                out.append(cand)
                if len(out) == k:
                    break
        return out


class Counters:
    """Every count the manifest reports; serialisable so that a resumed build continues them."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        s = state or {}
        self.tasks: dict[str, int] = defaultdict(int, s.get("tasks", {}))
        self.sources: dict[str, int] = defaultdict(int, s.get("sources", {}))
        self.hist: dict[str, int] = defaultdict(int, s.get("label_histogram", {}))
        self.nested: dict[str, dict[str, dict[str, int]]] = {
            k: defaultdict(lambda: defaultdict(int), {a: defaultdict(int, b) for a, b in s.get(k, {}).items()})
            for k in (
                "templates",
                "task_sources",
                "prompts",
                "skipped_empty",
                "render_errors",
                "mismatched_shortfall",
                "template_capped",
            )
        }
        self.flat: dict[str, dict[str, int]] = {
            k: defaultdict(int, s.get(k, {}))
            for k in ("examples", "bad_lines", "duplicates", "duplicates_by_source", "generations")
        }

    def add_row(self, task: str, template: str, source: str, label: float) -> None:
        self.tasks[task] += 1
        self.sources[source] += 1
        self.hist[label_bin(label)] += 1
        self.nested["templates"][task][template] += 1
        self.nested["task_sources"][task][source] += 1

    def to_dict(self) -> dict[str, Any]:
        """Every count, keys sorted, so a resumed build reports them in the same order as an uninterrupted one."""
        out: dict[str, Any] = {
            "tasks": dict(sorted(self.tasks.items())),
            "sources": dict(sorted(self.sources.items())),
            "label_histogram": dict(sorted(self.hist.items())),
        }
        for k, v in self.nested.items():
            out[k] = {a: dict(sorted(b.items())) for a, b in sorted(v.items())}
        for k, v in self.flat.items():
            out[k] = dict(sorted(v.items()))
        return out


class BuildState:
    """The SQLite file that makes a build resumable; every change between two commits is one unit's work."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level="DEFERRED")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS seen (h INTEGER PRIMARY KEY, label REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY, instruction TEXT, response TEXT,
                label REAL, task TEXT, template TEXT, source TEXT);
            CREATE TABLE IF NOT EXISTS gen (id INTEGER PRIMARY KEY, h INTEGER NOT NULL, prompt TEXT NOT NULL,
                text TEXT NOT NULL, matched INTEGER NOT NULL DEFAULT 0);
            CREATE INDEX IF NOT EXISTS gen_h ON gen (h);
            """
        )
        self.db.commit()

    def get(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def put(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True)))

    def commit(self) -> None:
        """Make everything since the last commit durable: one finished unit's work (or the build's setup)."""
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    # ---- LLM candidates (the generation caches, indexed once per build)
    def add_generations(self, rows: list[tuple[int, str, str]]) -> None:
        """Index ``(prompt_key, prompt, text)`` rows of the mixture's generation caches."""
        self.db.executemany("INSERT INTO gen (h, prompt, text) VALUES (?, ?, ?)", rows)

    def generation_keys(self) -> set[int]:
        """The prompt keys that have LLM candidates."""
        return {h for (h,) in self.db.execute("SELECT DISTINCT h FROM gen")}

    def candidates(self, instructions: list[str]) -> dict[str, list[str]]:
        """Each instruction's LLM candidates in cache order; their prompts are marked as matched."""
        keys = sorted({prompt_key(s) for s in instructions})
        wanted = set(instructions)
        out: dict[str, list[str]] = defaultdict(list)
        for chunk in _chunks(keys, 500):
            marks = ",".join("?" * len(chunk))
            for _, prompt, text in self.db.execute(
                f"SELECT h, prompt, text FROM gen WHERE h IN ({marks}) ORDER BY id", chunk
            ):
                if prompt in wanted:
                    out[prompt].append(text)
            self.db.execute(f"UPDATE gen SET matched=1 WHERE h IN ({marks})", chunk)
        return out

    def generation_counts(self) -> tuple[int, int]:
        """(distinct prompts with candidates, those of them some unit rendered)."""
        (prompts,) = self.db.execute("SELECT COUNT(DISTINCT h) FROM gen").fetchone()
        (matched,) = self.db.execute("SELECT COUNT(DISTINCT h) FROM gen WHERE matched=1").fetchone()
        return prompts, matched

    # ---- rows: the seen-pair set and the rows waiting for the next shard
    def seen_labels(self, keys: list[int]) -> dict[int, float]:
        """The label each already-kept pair key was kept with."""
        known: dict[int, float] = {}
        for chunk in _chunks(sorted(set(keys)), 900):
            marks = ",".join("?" * len(chunk))
            known.update(self.db.execute(f"SELECT h, label FROM seen WHERE h IN ({marks})", chunk).fetchall())
        return known

    def add_seen(self, rows: list[tuple[int, float]]) -> None:
        self.db.executemany("INSERT INTO seen VALUES (?, ?)", rows)

    def pending_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]

    def add_pending(self, rows: list[tuple[Any, ...]]) -> None:
        """Queue ``(seq, instruction, response, label, task, template, source)`` rows for the next shard."""
        self.db.executemany("INSERT INTO pending VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def pending_rows(self, size: int = 10_000) -> Iterator[list[tuple[Any, ...]]]:
        """The queued rows in queue order, ``size`` at a time, without their sequence numbers."""
        cursor = self.db.execute(
            "SELECT instruction, response, label, task, template, source FROM pending ORDER BY seq"
        )
        while batch := cursor.fetchmany(size):
            yield batch

    def clear_pending(self) -> None:
        self.db.execute("DELETE FROM pending")


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
