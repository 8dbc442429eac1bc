"""PromptSource templates: read ``templates.yaml`` files and render them with Jinja2 (promptsource is not imported).

A template is Jinja text whose output ``instruction ||| target`` is split on ``|||``; ``answer_choices`` is itself
a Jinja template whose output is split on ``|||``. Rendering follows PromptSource's rules: ``|||`` inside the
example's own strings is protected before rendering, every part is stripped, and the filters ``choice``,
``most_frequent`` and ``highlight`` and the global ``zip`` are available. ``choice`` draws from the ``rng``
passed to :meth:`Template.apply`, so a seeded rng gives the same prompt every time.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from cappy.errors import InputError

SEPARATOR = "|||"
# Stands in for "|||" inside example strings while rendering, so data can never split a prompt.
_PIPE_GUARD = "\x00cappy-pipe\x00"
_RNG_VAR = "_cappy_rng"
_CHOICES_VAR = "_cappy_choice_calls"

# Dataset names whose PromptSource templates live under another key (same schema).
TEMPLATE_ALIASES = {
    "tau/commonsense_qa": "commonsense_qa",
    "trivia_qa/rc": "trivia_qa/unfiltered",
    "trivia_qa/rc.nocontext": "trivia_qa/unfiltered",
    "trivia_qa/rc.wikipedia": "trivia_qa/unfiltered",
    "trivia_qa/rc.wikipedia.nocontext": "trivia_qa/unfiltered",
    "trivia_qa/rc.web": "trivia_qa/unfiltered",
    "trivia_qa/rc.web.nocontext": "trivia_qa/unfiltered",
    "trivia_qa/unfiltered.nocontext": "trivia_qa/unfiltered",
    "nq_open/nq_open": "nq_open",
    "piqa/plain_text": "piqa",
    "sciq/default": "sciq",
    "social_i_qa/default": "social_i_qa",
    "allenai/openbookqa/main": "openbookqa/main",
    "allenai/ai2_arc/ARC-Easy": "ai2_arc/ARC-Easy",
    "allenai/ai2_arc/ARC-Challenge": "ai2_arc/ARC-Challenge",
    "allenai/sciq": "sciq",
    "google/boolq": "super_glue/boolq",
    "aps/super_glue/boolq": "super_glue/boolq",
    "nyu-mll/glue/mrpc": "glue/mrpc",
    "nyu-mll/glue/sst2": "glue/sst2",
    "stanfordnlp/sst2": "glue/sst2",
}


class TemplateError(InputError):
    """A template file or template that cannot be loaded, chosen or rendered; the message says which."""


def promptsource_root() -> Path:
    """The ``templates`` folder of the installed ``promptsource`` package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("promptsource")
    if spec is None or not spec.submodule_search_locations:
        raise TemplateError(
            "PromptSource templates not found: pip install --no-deps --ignore-requires-python promptsource==0.2.3, "
            "or pass a templates folder"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "templates"


class _TemplateLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader plus PromptSource's two tags, read as plain mappings."""


def _mapping(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    return loader.construct_mapping(node, deep=True)


_TemplateLoader.add_constructor("!Template", _mapping)
_TemplateLoader.add_constructor("!TemplateMetadata", _mapping)


@dataclass(frozen=True)
class Prompt:
    """A rendered example: ``instruction``, ``target``, ``answer_choices`` (list or None), ``references``.

    ``references`` is ``[target]``, or every option when the target is one random ``choice`` among several
    (e.g. the aliases of a TriviaQA answer), so that metrics can take the max over them.
    """

    instruction: str
    target: str
    answer_choices: list[str] | None
    references: list[str]


def _choice(ctx: Any, items: Sequence[Any]) -> Any:
    items = list(items)
    if not items:
        raise TemplateError("filter 'choice' got an empty list")
    rng = ctx.get(_RNG_VAR) or random
    picked = items[rng.randrange(len(items))]
    calls = ctx.get(_CHOICES_VAR)
    if calls is not None:
        calls.append((items, picked))
    return picked


def _most_frequent(items: Sequence[Any]) -> Any:
    counts = Counter(items)
    return max(counts, key=lambda k: (counts[k], -list(items).index(k))) if counts else None


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["choice"] = jinja2.pass_context(_choice)
    env.filters["most_frequent"] = _most_frequent
    env.filters["highlight"] = lambda x: x
    env.globals["zip"] = zip
    return env


@lru_cache(maxsize=4096)
def _compile(source: str) -> jinja2.Template:
    return _env().from_string(source)


def _guard(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(SEPARATOR, _PIPE_GUARD)
    if isinstance(value, dict):
        return {k: _guard(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_guard(v) for v in value]
    return value


def _unguard(text: str) -> str:
    return text.replace(_PIPE_GUARD, SEPARATOR)


@dataclass(frozen=True)
class Template:
    """One PromptSource template. ``key`` is the dataset/config folder it came from, e.g. ``"super_glue/boolq"``."""

    id: str
    name: str
    jinja: str
    answer_choices: str | None
    original_task: bool | None
    choices_in_prompt: bool | None
    metrics: tuple[str, ...]
    reference: str
    key: str
    file: str

    def choices_for(self, example: dict[str, Any]) -> list[str] | None:
        """The rendered answer choices for ``example`` (None when the template has none)."""
        if self.answer_choices is None:
            return None
        try:
            text = _compile(self.answer_choices).render(**_guard(example))
        except (jinja2.TemplateError, TypeError, IndexError, KeyError, ValueError, AttributeError) as err:
            raise TemplateError(f"template {self.key}:{self.name!r}: answer_choices: {_describe(err)}") from None
        return [_unguard(c.strip()) for c in text.split(SEPARATOR)]

    def apply(self, example: dict[str, Any], rng: random.Random | None = None) -> Prompt | None:
        """Render ``example``; None when the instruction or the target renders empty (the caller counts these).

        Raises :class:`TemplateError` (naming the template and the cause, e.g. a missing field) when rendering
        fails. Example: ``boolq = load_templates("super_glue/boolq"); boolq[0].apply(row, random.Random(0))``
        """
        if "answer_choices" in example:
            raise TemplateError(f"template {self.key}:{self.name!r}: example has the reserved field 'answer_choices'")
        choices = self.choices_for(example)
        calls: list[tuple[list[Any], Any]] = []
        context = {**_guard(example), "answer_choices": _guard(choices), _RNG_VAR: rng, _CHOICES_VAR: calls}
        try:
            text = _compile(self.jinja).render(**context)
        except (jinja2.TemplateError, TypeError, IndexError, KeyError, ValueError, AttributeError) as err:
            raise TemplateError(f"template {self.key}:{self.name!r}: {_describe(err)}") from None
        parts = [_unguard(p.strip()) for p in text.split(SEPARATOR)]
        if len(parts) > 2:
            raise TemplateError(f"template {self.key}:{self.name!r}: rendered {len(parts) - 1} '|||' separators")
        instruction, target = parts[0], (parts[1] if len(parts) == 2 else "")
        if not instruction or not target:
            return None
        references = [target]
        for items, picked in calls:
            if isinstance(picked, str) and picked.strip() == target and all(isinstance(i, str) for i in items):
                references = [target] + [s for s in dict.fromkeys(i.strip() for i in items) if s and s != target]
                break
        return Prompt(instruction=instruction, target=target, answer_choices=choices, references=references)


def _describe(err: Exception) -> str:
    if isinstance(err, jinja2.UndefinedError):
        return f"missing field ({err.message})"
    return f"{type(err).__name__}: {err}"


def template_key(dataset: str) -> str:
    """The PromptSource folder key for a dataset name, through :data:`TEMPLATE_ALIASES`.

    Example: ``template_key("tau/commonsense_qa")`` -> ``"commonsense_qa"``
    """
    return TEMPLATE_ALIASES.get(dataset, dataset)


def template_file(key: str, root: str | os.PathLike | None = None) -> Path:
    """The ``templates.yaml`` for ``key`` (e.g. ``"glue/sst2"``) under ``root`` (default: PromptSource's)."""
    base = Path(root) if root is not None else promptsource_root()
    return base / key / "templates.yaml"


def load_templates(key: str, root: str | os.PathLike | None = None) -> list[Template]:
    """All templates of one dataset/config folder, in file order.

    Example: ``[t.name for t in load_templates("glue/sst2")]``
    """
    path = template_file(key, root)
    if not path.exists():
        raise TemplateError(f"no templates for {key!r}: {path} does not exist")
    return load_template_file(path, key)


def load_template_file(path: str | os.PathLike, key: str | None = None) -> list[Template]:
    """Read one PromptSource ``templates.yaml``. Example: ``load_template_file("my/templates.yaml")``"""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_TemplateLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise TemplateError(f"{path}: malformed YAML ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("templates"), dict):
        raise TemplateError(f"{path}: expected a mapping with a 'templates' mapping")
    if key is None:
        key = "/".join(x for x in (data.get("dataset"), data.get("subset")) if x)
    out = []
    for tid, t in data["templates"].items():
        if not isinstance(t, dict) or not isinstance(t.get("jinja"), str) or not t.get("name"):
            raise TemplateError(f"{path}: template {tid}: needs 'name' and 'jinja'")
        meta = t.get("metadata") or {}
        out.append(
            Template(
                id=str(t.get("id", tid)),
                name=str(t["name"]),
                jinja=t["jinja"],
                answer_choices=t.get("answer_choices"),
                original_task=meta.get("original_task"),
                choices_in_prompt=meta.get("choices_in_prompt"),
                metrics=tuple(meta.get("metrics") or ()),
                reference=str(t.get("reference") or ""),
                key=key,
                file=str(path),
            )
        )
    return out


def select_templates(templates: list[Template], which: str | Sequence[str] = "all") -> list[Template]:
    """Choose templates: ``"all"``, ``"original"`` (PromptSource's original-task flag) or a list of names.

    Example: ``select_templates(load_templates("super_glue/boolq"), ["GPT-3 Style"])``
    """
    if isinstance(which, str):
        if which == "all":
            return list(templates)
        if which in ("original", "original_task"):
            return [t for t in templates if t.original_task]
        which = [which]
    by_name = {t.name: t for t in templates}
    missing = [n for n in which if n not in by_name]
    if missing:
        key = templates[0].key if templates else "?"
        raise TemplateError(f"{key}: no template named {missing}; available: {sorted(by_name)}")
    return [by_name[n] for n in which]


def list_template_keys(root: str | os.PathLike | None = None) -> list[str]:
    """Every dataset/config key with a ``templates.yaml`` under ``root``.

    Example: ``"glue/sst2" in list_template_keys()`` -> True
    """
    base = Path(root) if root is not None else promptsource_root()
    return sorted(str(p.parent.relative_to(base)) for p in base.rglob("templates.yaml"))
