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

import hashlib
import json
import logging
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any

from cappy.data.mixture import (
    DEFAULT_HELDOUT,
    DatasetSpec,
    Mixture,
    MixtureError,
    check_heldout,
    mixture_recipe,
    normalise_name,
)
from cappy.data.nearest import NearestAnswers
from cappy.data.readers import HUB_PREFIX, iter_examples
from cappy.data.shards import (
    COLUMNS,
    STATE_DIR,
    clear_build,
    read_manifest,
    remove_state,
    remove_stray_shards,
    shard_name,
    shards_intact,
    write_manifest,
    write_shard,
)
from cappy.data.state import BuildState, Counters, Reservoir, pair_key, prompt_key
from cappy.data.templates import Prompt, Template, TemplateError, load_templates, select_templates, template_key
from cappy.errors import InputError
from cappy.io import atomic_write, dumps, iter_jsonl, sha256_file
from cappy.metrics import rouge_l

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SOURCES = ("gold", "wrong_choice", "llm", "mismatched", "hard_mismatched")


class BuildError(InputError):
    """Bad input met while building (a malformed line, a template that fails); names the file and line."""


@dataclass
class BuildOptions:
    """Command-line choices for one build: everything that is not the recipe itself."""

    allow_heldout: bool = False
    skip_bad: bool = False
    progress: bool = True
    overwrite: bool = False
    keep_state: bool = False


def _answer_key(text: str) -> str:
    """Answers that differ only in case, spacing or punctuation are the same answer."""
    return " ".join("".join(ch for ch in text.casefold() if ch.isalnum() or ch.isspace()).split())


def _source_checksums(dataset: str, source: str) -> dict[str, str]:
    """``{file: sha256}`` of a dataset source, every file of a folder in sorted order (a hub id: an empty sum)."""
    if source.startswith(HUB_PREFIX):
        return {source: ""}
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"dataset {dataset!r}: {source} does not exist")
    return {str(f): sha256_file(f) for f in sorted([p] if p.is_file() else (q for q in p.rglob("*") if q.is_file()))}


@dataclass
class Unit:
    """One (dataset, template) pair of a build: the unit of work and of resuming."""

    spec: DatasetSpec
    template: Template
    sources: list[str]
    slot: int = 0  # this template's place among the dataset's selected templates
    n_slots: int = 1


class PairBuilder:
    """Builds one mixture into ``out_dir``. Example: ``PairBuilder(Mixture.from_yaml("mix.yaml"), "out").build()``"""

    def __init__(self, mixture: Mixture, out_dir: str | os.PathLike, options: BuildOptions | None = None):
        self.mix = mixture
        self.out = Path(out_dir)
        self.opt = options or BuildOptions()
        self.units: list[Unit] = []
        self.inputs: list[dict[str, str]] = []
        self.heldout_checked: list[str] = []
        self._gen_keys: set[int] | None = None  # prompts with LLM candidates, read once per build
        self._nearest = NearestAnswers(mixture.embedding_model)

    # ---- planning -------------------------------------------------------------------------------------
    def plan(self) -> list[Unit]:
        """Resolve datasets and templates, refuse held-out data, checksum every input."""
        mix = self.mix
        heldout = list(DEFAULT_HELDOUT) + list(mix.heldout)
        self.heldout_checked = sorted(set(normalise_name(h) for h in heldout))
        units: list[Unit] = []
        inputs: dict[str, str] = {}  # in this order, which the fingerprint depends on
        for spec in mix.datasets:
            sources = [mix.resolve(path, mix.data_root) for path in spec.paths]
            key = spec.template_key or template_key(spec.name)
            for source in sources:
                if not self.opt.allow_heldout:
                    check_heldout(spec.name, key, source, heldout, spec.config)
                inputs.update(_source_checksums(spec.name, source))
            templates = self._templates(spec, key)
            for slot, t in enumerate(templates):
                inputs.setdefault(t.file, sha256_file(Path(t.file)))
                units.append(Unit(spec, t, sources, slot, len(templates)))
        for g in mix.generations:
            gp = Path(mix.resolve(g))
            if not gp.exists():
                raise FileNotFoundError(f"generations file {gp} does not exist")
            inputs[str(gp)] = sha256_file(gp)
        self.inputs = [{"path": k, "sha256": v} for k, v in inputs.items()]
        self.units = units
        return units

    def spec_templates(self, spec: DatasetSpec) -> list[Template]:
        """The templates one dataset of the mixture selects, loaded but not rendered (no data is read)."""
        return self._templates(spec, spec.template_key or template_key(spec.name))

    def _templates(self, spec: DatasetSpec, key: str) -> list[Template]:
        root = spec.templates_root or self.mix.templates_root
        root = self.mix.resolve(root) if root else None
        try:
            templates = select_templates(load_templates(key, root), spec.templates)
        except TemplateError as err:
            raise MixtureError(f"dataset {spec.name!r}: {err}") from None
        if not templates:
            raise MixtureError(f"dataset {spec.name!r}: no template selected by {spec.templates!r}")
        return templates

    def fingerprint(self) -> str:
        recipe = mixture_recipe(self.mix)
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
        old = None if self.opt.overwrite else read_manifest(self.out)
        if old is not None:
            if old.get("fingerprint") == fp and shards_intact(self.out, old):
                logger.info("%s: already built", self.out)
                if not self.opt.keep_state:
                    remove_state(self.out)
                return old
            raise BuildError(
                f"{self.out} already holds a different build (or damaged shards); use another --out or --overwrite"
            )
        if self.opt.overwrite:
            clear_build(self.out)
        state = BuildState(self.out / STATE_DIR / "state.sqlite")
        try:
            prev = state.get("fingerprint")
            if prev is not None and prev != fp:
                raise BuildError(
                    f"{self.out} holds an unfinished build of a different recipe or different inputs; "
                    "use another --out or --overwrite"
                )
            if prev is None:
                state.put("fingerprint", fp)
                state.commit()
            self._index_generations(state)
            manifest = self._run(state, fp)
        finally:
            state.close()
        remove_stray_shards(self.out, manifest)
        if not self.opt.keep_state:
            remove_state(self.out)
        return manifest

    def _index_generations(self, state: BuildState) -> None:
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
                batch.append((prompt_key(prompt), prompt, text.strip()))
                if len(batch) >= 10_000:
                    state.add_generations(batch)
                    batch.clear()
        if batch:
            state.add_generations(batch)
        counts["bad_lines"] = stats["bad_lines"]
        state.put("generations_indexed", counts)
        state.commit()

    def _run(self, state: BuildState, fp: str) -> dict[str, Any]:
        from tqdm.auto import tqdm

        done = state.get("units_done", 0)
        shards: list[dict[str, Any]] = state.get("shards", [])
        counters = Counters(state.get("counters"))
        self._pending = state.pending_count()
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
            state.commit()
            bar.update(1)
        bar.close()
        if self._pending:
            self._flush(state, shards)
            state.put("shards", shards)
            state.commit()
        return self._write_manifest(state, fp, shards, counters)

    def unit_prompts(
        self, unit: Unit, counters: Counters | None = None, keep: Callable[[str], bool] | None = None
    ) -> Iterator[Prompt]:
        """Render one (dataset, template) unit, example by example; empty renderings and errors are counted.

        The ``choice`` filter draws from an rng seeded by (seed, task, template id, example index), so the same
        mixture always renders the same instructions, here and in ``cappy data prompts``. An example that
        ``templates_per_example`` leaves out of this template is still kept when ``keep(instruction)`` is true
        (the build keeps instructions that have LLM candidates).
        """
        counters = counters if counters is not None else Counters()
        spec, tpl = unit.spec, unit.template
        task, tname, seed = spec.name, tpl.name, self.mix.seed
        read_stats = {"bad_lines": 0}
        examples = chain.from_iterable(
            iter_examples(
                src,
                split=spec.split,
                config=spec.config,
                skip_bad_lines=self.opt.skip_bad,
                stats=read_stats,
                shuffle_seed=self.mix.seed if spec.shuffle else None,
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

    def _run_unit(self, unit: Unit, state: BuildState, counters: Counters, shards: list[dict[str, Any]]) -> None:
        spec, tpl = unit.spec, unit.template
        pool = Reservoir(self.mix.pool_size, random.Random(f"{self.mix.seed}:{spec.name}:{tpl.id}:unit"))
        k_hard = self._mismatched_counts(spec)[1]
        prompts: Iterator[Prompt] | list[Prompt] = self.unit_prompts(unit, counters, self._has_candidates(state))
        near: dict[str, list[str]] = {}
        if k_hard:
            prompts = list(prompts)  # the nearest answers come from the whole unit, so it is rendered first
            near = self._nearest.nearest([p.target for p in prompts], k_hard)
        for block in _blocks(iter(prompts), self.mix.block_size):
            for p in block:
                pool.add(p.target)
            llm = self._candidates(state, [p.instruction for p in block])
            rows: list[tuple[str, str, float, str]] = []
            for p in block:
                rows += self._prompt_rows(p, unit, llm.get(p.instruction, ()), near.get(p.target, ()), pool, counters)
            self._emit(rows, spec.name, tpl.name, state, counters, shards)

    def _mismatched_counts(self, spec: DatasetSpec) -> tuple[int, int]:
        """(mismatched, hard_mismatched) per prompted example: the dataset's own, else the mixture's."""
        k = self.mix.mismatched if spec.mismatched is None else spec.mismatched
        k_hard = self.mix.hard_mismatched if spec.hard_mismatched is None else spec.hard_mismatched
        return k, k_hard

    def _has_candidates(self, state: BuildState) -> Callable[[str], bool] | None:
        """Whether an instruction has LLM candidates (None when the mixture has no generation caches)."""
        if not self.mix.generations:
            return None
        if self._gen_keys is None:
            self._gen_keys = state.generation_keys()
        gen_keys = self._gen_keys
        return lambda instruction: prompt_key(instruction) in gen_keys

    def _prompt_rows(
        self,
        p: Prompt,
        unit: Unit,
        llm: Iterator[str] | tuple[str, ...] | list[str],
        near: Iterator[str] | tuple[str, ...] | list[str],
        pool: Reservoir,
        counters: Counters,
    ) -> list[tuple[str, str, float, str]]:
        """One prompted example's rows, in source order: gold, wrong choices, LLM candidates, hard and plain
        mismatched responses (each response once per instruction)."""
        spec, task, tname = unit.spec, unit.spec.name, unit.template.name
        k, k_hard = self._mismatched_counts(spec)
        refs = p.references
        rows = [(p.instruction, p.target, 1.0, "gold")]
        taken = {p.target, *refs}
        if spec.wrong_choices and p.answer_choices:
            for c in dict.fromkeys(p.answer_choices):
                if c and c not in taken:
                    rows.append((p.instruction, c, 0.0, "wrong_choice"))
            taken.update(p.answer_choices)
        for text in llm:
            rows.append((p.instruction, text, rouge_l(text, refs), "llm"))
            taken.add(text)
        if k_hard:
            same = {_answer_key(r) for r in (p.target, *refs)}
            near_other = (r for r in near if r not in taken and _answer_key(r) not in same)
            hard = list(islice(near_other, k_hard))
            if len(hard) < k_hard:
                counters.nested["mismatched_shortfall"][task][f"{tname} (hard)"] += k_hard - len(hard)
            rows.extend((p.instruction, r, 0.0, "hard_mismatched") for r in hard)
            taken.update(hard)
        picked = pool.sample(k, taken)
        if len(picked) < k:
            counters.nested["mismatched_shortfall"][task][tname] += k - len(picked)
        rows.extend((p.instruction, r, 0.0, "mismatched") for r in picked)
        return rows

    def _candidates(self, state: BuildState, instructions: list[str]) -> dict[str, list[str]]:
        if not self.mix.generations or not instructions:
            return {}
        return state.candidates(instructions)

    def _emit(
        self,
        rows: list[tuple[str, str, float, str]],
        task: str,
        tname: str,
        state: BuildState,
        counters: Counters,
        shards: list[dict[str, Any]],
    ) -> None:
        """Drop exact duplicates (first kept; differing labels counted) and queue the rest for the shards."""
        if not rows:
            return
        keys = [pair_key(r[0], r[1]) for r in rows]
        known = state.seen_labels(keys)
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
        state.add_seen(fresh)
        room = self.mix.shard_rows - self._pending
        while queued:
            head, queued = queued[:room], queued[room:]
            state.add_pending(head)
            self._pending += len(head)
            if self._pending >= self.mix.shard_rows:
                self._flush(state, shards)
            room = self.mix.shard_rows - self._pending

    def _flush(self, state: BuildState, shards: list[dict[str, Any]]) -> None:
        """Write the queued rows as the next shard and empty the queue (committed with the unit)."""
        shards.append(write_shard(self.out / shard_name(len(shards)), state.pending_rows()))
        state.clear_pending()
        self._pending = 0

    def _write_manifest(
        self, state: BuildState, fp: str, shards: list[dict[str, Any]], counters: Counters
    ) -> dict[str, Any]:
        c = counters.to_dict()
        gen = state.get("generations_indexed") or {}
        if self.mix.generations:
            prompts, matched = state.generation_counts()
            gen = {**gen, "prompts": prompts, "matched_prompts": matched, "unmatched_prompts": prompts - matched}
        recipe = mixture_recipe(self.mix)
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
        write_manifest(self.out, manifest)
        return manifest


def export_prompts(
    mixture: Mixture | str | os.PathLike,
    out: str | os.PathLike,
    *,
    free_text_only: bool | None = None,
    max_examples: int | None = None,
    sample: int | None = None,
    **options: Any,
) -> dict[str, int]:
    """Write the mixture's distinct rendered instructions as JSONL for ``cappy generate``; returns counts.

    Each row: ``{"prompt", "references", "task", "template"}``. The instructions are exactly those that
    ``build_pairs`` renders for the same mixture and seed, so the generation cache matches them by text.
    ``free_text_only`` keeps templates without answer choices (None: as the mixture's ``llm_candidates`` says,
    so a mixture marked ``llm_candidates: free_text`` exports its free-text prompts); ``max_examples`` caps every
    dataset; ``sample``
    keeps a random ``sample`` of the prompts (shuffled with the mixture's seed, so the LLM share of a build is
    spread over tasks and templates and reproducible).
    Example: ``export_prompts("configs/mixtures/offline.yaml", "runs/prompts.jsonl", free_text_only=True)``
    """
    if sample is not None and sample < 1:
        raise InputError(f"sample must be a positive number of prompts, got {sample}")
    from tqdm.auto import tqdm

    mix = mixture if isinstance(mixture, Mixture) else Mixture.from_yaml(mixture)
    if free_text_only is None:
        free_text_only = mix.llm_candidates == "free_text"
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
            key = prompt_key(p.instruction)
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


def build_pairs(mixture: Mixture | str | os.PathLike, out_dir: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Build a mixture (object or YAML path) into ``out_dir``; returns the manifest.

    Options are those of :class:`BuildOptions` (``allow_heldout``, ``skip_bad``, ``progress``, ``overwrite``).
    Example: ``build_pairs("configs/mixtures/offline.yaml", "runs/data/offline")["rows"]``
    """
    mix = mixture if isinstance(mixture, Mixture) else Mixture.from_yaml(mixture)
    return PairBuilder(mix, out_dir, BuildOptions(**options)).build()
