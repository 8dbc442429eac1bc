"""What a build would read and write, without reading any data: ``cappy data build MIXTURE --dry-run``.

For each dataset of a mixture, in build order: its source (hub id or file), subset, split, selected templates
(how many are free text), cap, the split's size when known and the prompts and pairs to expect. A split's size
comes from the dataset's ``rows:`` hint in the mixture, or from counting the lines of a local JSONL file; a hub
split without a hint is "unknown until read". Nothing is fetched.

Pairs per prompted example follow the builder's rules: a template with fixed answer choices gives the gold and
every other choice (its mismatched responses would all be choices, so none is added); one whose choices come from
the example gives the gold, the other choices and ``mismatched + hard_mismatched`` responses of other examples;
a free-text template gives the gold and ``mismatched + hard_mismatched``, plus the LLM candidates of the caches
given to the build (not counted here). The counts are upper bounds: exact duplicates, empty renderings and
mismatched shortfalls remove some rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cappy.data.builder import BuildOptions, PairBuilder
from cappy.data.mixture import DEFAULT_HELDOUT, DatasetSpec, Mixture, check_heldout
from cappy.data.readers import HUB_PREFIX
from cappy.data.templates import Template, template_key

UNKNOWN = "unknown until read"
_EXPRESSION = re.compile(r"\{\{.*?\}\}", re.S)


def choice_count(template: Template) -> int | None:
    """How many answer choices a template renders, when its ``answer_choices`` says so without data: 0 for a
    free-text template, the number of ``|||``-separated parts when no part is computed by a loop or filter over
    the example (``{{ choices | join("|||") }}``), else None.

    Example: ``choice_count(select_templates(load_templates("super_glue/boolq"), ["GPT-3 Style"])[0])`` -> 2
    """
    if template.answer_choices is None:
        return 0
    text = template.answer_choices
    if "{%" in text:
        return None
    outside = _EXPRESSION.sub("", text)
    if any("|||" in e for e in _EXPRESSION.findall(text)):
        return None
    return outside.count("|||") + 1


def fixed_choices(template: Template) -> bool:
    """Whether a template's answer choices are the same for every example (no Jinja in them)."""
    return (
        template.answer_choices is not None
        and "{{" not in template.answer_choices
        and "{%" not in (template.answer_choices)
    )


@dataclass
class DatasetPlan:
    """One dataset of a build as :func:`plan_build` sees it. ``pairs`` is None when ``examples`` is unknown;
    ``pairs_open`` counts templates whose wrong choices are only known once the data is read (not in ``pairs``)."""

    index: int
    name: str
    source: str
    config: str | None
    split: str | None
    templates: list[str]
    free_text: int
    rows: int | None
    rows_from: str
    cap: int | None
    per_example: int | None
    shuffle: bool
    examples: int | None
    prompts: int | None
    pairs: int | None
    pairs_open: int
    llm_prompts: int | None
    llm_templates: int


def _local_rows(paths: list[str]) -> int | None:
    """Lines of local JSONL files (each line one example); None for any other kind of source."""
    total = 0
    for p in paths:
        path = Path(p)
        if p.startswith(HUB_PREFIX) or not path.is_file() or path.suffix.lower() not in (".jsonl", ".ndjson"):
            return None
        with open(path, "rb") as f:
            total += sum(1 for line in f if line.strip())
    return total


def _dataset_plan(index: int, mix: Mixture, spec: DatasetSpec, templates: list[Template]) -> DatasetPlan:
    sources = [mix.resolve(p, mix.data_root) for p in spec.paths]
    if spec.rows is not None:
        rows, rows_from = spec.rows, "rows: in the mixture"
    else:
        rows = _local_rows(sources)
        rows_from = "lines counted" if rows is not None else UNKNOWN
    cap = spec.max_examples
    examples = None if rows is None else (rows if cap is None else min(rows, cap))
    n = len(templates)
    per_example = spec.templates_per_example or mix.templates_per_example
    share = 1.0 if per_example is None or per_example >= n else per_example / n  # each template's share of examples
    k = mix.mismatched if spec.mismatched is None else spec.mismatched
    k_hard = mix.hard_mismatched if spec.hard_mismatched is None else spec.hard_mismatched
    per_prompt = 0.0
    open_templates = 0
    llm_templates = 0
    for t in templates:
        c = choice_count(t)
        if t.answer_choices is None:
            per_prompt += 1 + k + k_hard
        elif fixed_choices(t):
            per_prompt += c if c is not None and spec.wrong_choices else 1
        else:
            per_prompt += 1 + k + k_hard + ((c - 1) if c is not None and spec.wrong_choices else 0)
            open_templates += c is None and spec.wrong_choices
        llm_templates += mix.llm_candidates == "all" or t.answer_choices is None
    prompts = pairs = llm_prompts = None
    if examples is not None:
        prompts = round(examples * share * n)
        pairs = round(examples * share * per_prompt)
        llm_prompts = round(examples * share * llm_templates)
    return DatasetPlan(
        index=index,
        name=spec.name,
        source=spec.paths[0] if len(spec.paths) == 1 else ", ".join(spec.paths),
        config=spec.config,
        split=spec.split,
        templates=[t.name for t in templates],
        free_text=sum(t.answer_choices is None for t in templates),
        rows=rows,
        rows_from=rows_from,
        cap=cap,
        per_example=per_example if share < 1 else None,
        shuffle=spec.shuffle,
        examples=examples,
        prompts=prompts,
        pairs=pairs,
        pairs_open=open_templates,
        llm_prompts=llm_prompts,
        llm_templates=llm_templates,
    )


def plan_build(mix: Mixture, allow_heldout: bool = False) -> list[DatasetPlan]:
    """Every dataset of ``mix`` in build order with what the build would read and the prompts and pairs to
    expect; refuses held-out datasets as the build does; loads templates, reads no data (local JSONL files are
    only line-counted). Example: ``plan_build(Mixture.from_yaml("configs/mixtures/t0.yaml"))[0].name``
    """
    heldout = list(DEFAULT_HELDOUT) + list(mix.heldout)
    builder = PairBuilder(mix, ".", BuildOptions(allow_heldout=allow_heldout, progress=False))
    plans = []
    for i, spec in enumerate(mix.datasets, 1):
        key = spec.template_key or template_key(spec.name)
        if not allow_heldout:
            for path in spec.paths:
                check_heldout(spec.name, key, mix.resolve(path, mix.data_root), heldout, spec.config)
        plans.append(_dataset_plan(i, mix, spec, builder.spec_templates(spec)))
    return plans


def _num(n: int | None, unknown: str = "?") -> str:
    return unknown if n is None else f"{n:,}"


def format_plan(mix: Mixture, plans: list[DatasetPlan], generations: int = 0, path: str | None = None) -> str:
    """The dry run's report: one block per dataset in build order, then the totals and the order of pairs.
    ``path`` is the mixture file as the user named it (for the commands the report suggests).
    Example: ``print(format_plan(mix, plan_build(mix), path="configs/mixtures/t0.yaml"))``
    """
    k_text = f"mismatched {mix.mismatched}"
    if mix.hard_mismatched:
        k_text += f", hard_mismatched {mix.hard_mismatched}"
    which = "free-text templates" if mix.llm_candidates == "free_text" else "every template"
    lines = [
        f"mixture {mix.name}: {len(plans)} datasets, {sum(len(p.templates) for p in plans)} templates "
        f"({sum(p.free_text for p in plans)} free text), seed {mix.seed}, {k_text} per prompted example; "
        f"LLM candidates wanted for {which} (llm_candidates: {mix.llm_candidates}); "
        f"{generations} generation cache(s) given",
        "dry run: nothing fetched; rows come from the mixture's rows: hints or counted JSONL lines",
        "",
    ]
    cumulative = 0
    cumulative_known = True
    for p in plans:
        where = p.source + (f" subset {p.config}" if p.config else "") + (f" split {p.split}" if p.split else "")
        cap = "none" if p.cap is None else f"{p.cap:,} examples"
        if p.shuffle:
            cap += " of a seeded shuffle"
        if p.per_example:
            cap += f", {p.per_example} template(s) per example"
        rows = f"{p.rows:,} ({p.rows_from})" if p.rows is not None else UNKNOWN
        llm = "no"
        if p.llm_templates:
            llm = f"yes, {p.llm_templates} of {len(p.templates)} templates"
            if p.llm_prompts is not None:
                llm += f", {p.llm_prompts:,} prompts"
        if p.pairs is not None and cumulative_known:
            first = cumulative + 1
            cumulative += p.pairs
            span = f"pairs #{first:,}-#{cumulative:,}"
        else:
            cumulative_known = False
            span = "position unknown until read"
        pairs = _num(p.pairs, UNKNOWN)
        if p.pairs is not None and p.pairs_open:
            pairs += f" + the wrong choices of {p.pairs_open} template(s) with data-dependent choices"
        lines += [
            f"{p.index:>3}. {p.name}  <- {where}",
            f"     templates {len(p.templates)} ({p.free_text} free text); rows {rows}; cap {cap}",
            f"     examples {_num(p.examples, UNKNOWN)}; prompts {_num(p.prompts, UNKNOWN)}; pairs {pairs} ({span}); "
            f"LLM candidates needed: {llm}",
        ]
    known = [p for p in plans if p.pairs is not None]
    unknown = [p.name for p in plans if p.pairs is None]
    lines += [
        "",
        f"total: prompts {sum(p.prompts or 0 for p in known):,}, pairs {sum(p.pairs or 0 for p in known):,} "
        f"before LLM candidates, over {len(known)} of {len(plans)} datasets"
        + (f" (unknown until read: {', '.join(unknown)})" if unknown else ""),
        f"prompts wanting LLM candidates: {sum(p.llm_prompts or 0 for p in known):,} "
        f"(export them with: cappy data prompts {path or mix.name + '.yaml'} --out prompts.jsonl)",
        "pair counts are upper bounds: exact duplicates, empty renderings and mismatched shortfalls drop some rows",
        "order of pairs: the datasets above in this order, each one's templates in PromptSource file order, each "
        "prompted example's rows together (gold, wrong choices, LLM candidates, mismatched); the shards keep this "
        "order and cappy train shuffles it (blocks, then windows of shuffle_window_rows)",
    ]
    return "\n".join(lines) + "\n"
