"""The settings of every evaluation: one config per suite, its Python API, its YAML file and its command line.

:class:`MCEvalConfig` (`cappy eval mc`, :func:`cappy.evaluate.runs.run_mc`), :class:`BigBenchEvalConfig`
(`cappy eval bigbench`, :func:`cappy.evaluate.runs.run_bigbench`) and :class:`PairsEvalConfig` (`cappy eval pairs`,
:func:`cappy.evaluate.runs.run_pairs`), with the sampling configs the evaluation functions take (:class:`MCConfig`,
:class:`BBConfig`). Light on purpose (no numpy, no data readers): the command line reads these fields to build its
options. Names and types are checked by :mod:`cappy.config`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from cappy.config import ConfigError, JobConfig, setting
from cappy.evaluate.suites import DEFAULT_SUITE as DEFAULT_SUITE  # defined with the other suites; also here
from cappy.evaluate.suites import DEFAULT_SUITE_NAME, SUITES, get_suite
from cappy.generate.base import DEFAULT_RECIPE
from cappy.generate.source import BACKENDS
from cappy.paths import shared_data_dir
from cappy.train.config import TrainConfig  # the settings only: cappy.train.config needs no torch

SHARED = shared_data_dir()

METHODS = {
    "cappy": "the Cappy scorer (--model): argmax of score(instruction, choice)",
    "llm_sum": "LLM rank classification: argmax of the summed log-likelihood of the choice given the prompt",
    "llm_mean": "LLM rank classification: argmax of the per-token mean log-likelihood",
    "chance": "expected accuracy of a uniform random pick (1 / number of choices)",
}


@dataclass
class MCTask:
    """One task: a name, a PromptSource template key, a data source (a local file or folder, or
    ``hub:ID[:CONFIG]``), the template choice, and the split to read (hub ids and saved DatasetDicts only)."""

    name: str
    key: str
    path: str
    templates: str | Sequence[str] = "all"
    template_root: str | None = None
    split: str | None = None

    @classmethod
    def parse(cls, spec: str) -> MCTask:
        """``DATASET[/CONFIG]=PATH`` (or ``NAME:DATASET[/CONFIG]=PATH``) -> MCTask.

        Example: ``MCTask.parse("super_glue/rte=../shared/data/heldout/super_glue_rte_val.jsonl")``
        """
        if "=" not in spec:
            raise ConfigError(f"task {spec!r}: expected DATASET[/CONFIG]=PATH, e.g. super_glue/rte=rte_val.jsonl")
        left, path = spec.split("=", 1)
        name, _, key = left.rpartition(":") if ":" in left else ("", "", left)
        if not key or not path:
            raise ConfigError(f"task {spec!r}: empty dataset key or path")
        from cappy.data.templates import template_key  # loads the template library: only to run

        return cls(name=name or key, key=template_key(key), path=path)


@dataclass
class MCConfig:
    """What to evaluate: caps and the seed for the example sample."""

    max_examples: int | None = setting(
        100, "seeded sample of examples per task (0 or null: all)", flags=("--max-examples",)
    )
    max_templates: int | None = setting(
        5, "templates per task, original-task ones first (0 or null: all)", flags=("--max-templates",)
    )
    seed: int = setting(0, "seed of the example sample and of the template rendering", flags=("--seed",))


@dataclass
class MCEvalConfig(MCConfig, JobConfig):
    """Every setting of a zero-shot multiple-choice run (:func:`cappy.evaluate.runs.run_mc`, `cappy eval mc`): its
    Python API, its YAML file and its command line. ``tasks`` are ``DATASET[/CONFIG]=PATH`` specs (or mappings of
    :class:`MCTask` fields); none means the held-out suite. ``suite`` names a suite of
    :mod:`cappy.evaluate.suites` (``paper``: the paper's 11 tasks); ``tasks`` then replace the data of the suite's
    tasks they name (``story_cloze/2016=PATH``), and the paper's protocol (every template, every example) is
    ``max_examples=0, max_templates=0`` (`cappy eval mc --suite paper` sets both unless given).

    Example:
        >>> cfg = MCEvalConfig(methods=["cappy", "chance"], max_examples=20, out="runs/eval/mc")
        >>> MCEvalConfig.from_yaml("mc.yaml", {"max_examples": 10})  # `cappy eval mc --config mc.yaml --set ...`
    """

    job: ClassVar[str] = "cappy eval mc"

    tasks: list[str | dict[str, Any]] = setting(
        [], "DATASET[/CONFIG]=PATH, repeatable (default: the held-out suite)", flags=("--task",)
    )
    suite: str | None = setting(
        None, "a named suite: " + ", ".join(SUITES) + "; --task then replaces a suite task's data (--suite)"
    )
    methods: list[str] = setting(
        list(METHODS), "methods to compare: " + ", ".join(METHODS) + " (comma-separated)", flags=("--methods",)
    )
    model: str = setting("cappy-mini", "Cappy checkpoint for the 'cappy' method", flags=("--model",))
    llm: str = setting("llamacpp", "llamacpp[:GGUF] or hf:PATH for the llm_* methods", flags=("--llm",))
    llm_cache: str | None = setting(
        None, "log-likelihood cache (default: OUT/loglik_cache.jsonl)", flags=("--llm-cache",)
    )
    threads: int | None = setting(None, "llama.cpp threads", flags=("--threads",))
    device: str = setting("auto", "where the scorer runs: cpu, cuda or auto", flags=("--device",))
    dtype: str = setting("auto", "the scorer's precision (cappy.model.resolve_precision)", flags=("--dtype",))
    out: str = setting("", "output folder: results.json, report.md, plots", flags=("--out",))
    allow_contaminated: bool = setting(False, "skip the contamination guard", flags=("--allow-contaminated",))
    plots: bool = setting(True, "draw the plots", flags=("--no-plots",))
    show_progress: bool = setting(True, "progress bars", flags=("--no-progress",))
    command: str | None = setting(None, "the command line recorded in results.json")

    def __post_init__(self) -> None:
        # 0 means all, as it always did on the command line
        self.max_examples = self.max_examples or None
        self.max_templates = self.max_templates or None
        self.methods = [m.strip() for item in self.methods for m in str(item).split(",") if m.strip()]
        self.tasks = [asdict(t) if isinstance(t, MCTask) else t for t in self.tasks]

    def validate(self) -> None:
        if not self.out:
            raise ConfigError("out is required (the output folder; --out on the command line)")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            close = {m: difflib.get_close_matches(m, list(METHODS), n=1) for m in unknown}
            hint = "; ".join(f"{m}: did you mean {c[0]}?" for m, c in close.items() if c)
            raise ConfigError(
                f"unknown method(s) {unknown}; choose from {sorted(METHODS)}" + (f" ({hint})" if hint else "")
            )
        if not self.methods:
            raise ConfigError("methods is empty: give at least one of " + ", ".join(METHODS))
        if self.suite is not None and self.suite not in SUITES:
            close = difflib.get_close_matches(self.suite, list(SUITES), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown suite {self.suite!r}; suites: {', '.join(SUITES)}{hint}")

    def mc_tasks(self) -> list[MCTask]:
        """The tasks as :class:`MCTask`: those given, or the suite's (the held-out suite when neither is given) with
        the given ones replacing the data of the suite tasks they name. A suite task without data (StoryCloze of
        the paper suite) is an error that says what is missing and how to get it."""
        given = [self._task(t) for t in self.tasks]
        if self.suite is None and given:
            return given
        suite = get_suite(self.suite or DEFAULT_SUITE_NAME)
        by_name = {t.name: t for t in given}
        for t in given:
            if t.name not in {s.name for s in suite.tasks}:
                same_key = [s.name for s in suite.tasks if s.key == t.key]
                if len(same_key) != 1:
                    names = ", ".join(f"{s.name} ({s.key})" for s in suite.tasks)
                    hint = f"; name it, e.g. {same_key[0]}:{t.key}=PATH" if same_key else ""
                    raise ConfigError(f"task {t.name}: not a task of suite {suite.name} ({names}){hint}")
                by_name[same_key[0]] = MCTask(same_key[0], t.key, t.path, t.templates, t.template_root, t.split)
        out, missing = [], []
        for s in suite.tasks:
            if s.name in by_name:
                out.append(by_name[s.name])
            elif s.source is None:
                missing.append(f"{s.name}: {s.missing or f'give --task {s.key}=PATH'}")
            else:
                out.append(MCTask(s.name, s.key, s.source, split=s.split))
        if missing:
            raise ConfigError(f"suite {suite.name} is missing data; " + "; ".join(missing))
        return out

    @staticmethod
    def _task(t: str | dict[str, Any]) -> MCTask:
        if isinstance(t, str):
            return MCTask.parse(t)
        known = {f.name for f in fields(MCTask)}
        if set(t) - known or not {"name", "key", "path"} <= set(t):
            raise ConfigError(f"task {t}: a task mapping has name, key and path (and templates, template_root, split)")
        return MCTask(**t)


@dataclass
class BBConfig:
    """Caps and seed: validation prompts per task (seeded sample), train prompts per task for adaptation."""

    max_examples: int | None = setting(100, "validation prompts per task (seeded sample)", flags=("--max-examples",))
    max_train: int | None = setting(200, "train prompts per task for adaptation", flags=("--max-train",))
    seed: int = setting(0, "seed of the samples, of the generator and of the random strategy")


_SET_BY_EVAL = {
    "model": "set per task (the checkpoint of model=)",
    "train": "set per task (the pairs of its train prompts)",
    "output_dir": "set per task (OUT/adapt/<task>/run)",
}


@dataclass
class BigBenchEvalConfig(BBConfig, JobConfig):
    """Every setting of a BIG-Bench boosting run (:func:`cappy.evaluate.runs.run_bigbench`, `cappy eval bigbench`):
    its Python API, its YAML file and its command line. ``adapt_training`` holds the
    :class:`cappy.train.TrainConfig` settings of the per-task adaptation (on top of ``adapt_preset``); an override
    may name them alone (``max_length=256`` is ``adapt_training.max_length=256``), and a ``device`` there is where
    the adaptation trains. ``generator`` (a backend name, with ``gen_model`` and ``generator_options``) generates
    the candidates the cache ``gens`` lacks.

    Example:
        >>> cfg = BigBenchEvalConfig(model="cappy-mini", adapt=True, generator="llamacpp", max_tasks=8, out="bb")
        >>> cfg.to_yaml("bb.yaml")  # then: cappy eval bigbench --config bb.yaml --set max_examples=10
    """

    job: ClassVar[str] = "cappy eval bigbench"

    tasks: list[str] = setting(
        [],
        "BIG-Bench task folder or task.json, repeatable (default: every task of the shared data)",
        flags=("--task",),
    )
    max_tasks: int | None = setting(None, "only the first N tasks of the default suite", flags=("--max-tasks",))
    out: str = setting("", "output folder: results.json, report.md, plots, adapt/<task>/", flags=("--out",))
    model: str | None = setting(None, "Cappy checkpoint for zero-shot selection (method 'cappy')", flags=("--model",))
    gens: str | None = setting(None, "generation cache JSONL (default: OUT/generations.jsonl)", flags=("--gens",))
    generator: str | None = setting(None, "backend that generates missing candidates: llamacpp, hf or openai")
    gen_model: str | None = setting(None, "the generator's model (GGUF path, model dir or hub id, served name)")
    generator_options: dict[str, Any] = setting({}, "options of the generator (cappy.generate.load_generator)")
    recipe: str = setting(DEFAULT_RECIPE, "recipe of the candidates: a shipped name or a YAML file")
    adapt: bool = setting(False, "also adapt model per task (method 'cappy_adapted')", flags=("--adapt",))
    adapt_preset: str | None = setting(
        None,
        "training preset or YAML for adapt (default: adapt_cpu on CPU)",
        flags=("--adapt-preset", "--adapt-config"),
    )
    adapt_scale: float | None = setting(None, "multiply the preset's num_pairs", flags=("--adapt-scale",))
    adapt_recipe: str | None = setting(
        None,
        "recipe of the train prompts' candidates for adapt (default: recipe); same cache and generator",
        flags=("--adapt-recipe",),
    )
    adapt_training: dict[str, Any] = setting(
        {}, "TrainConfig settings of the adaptation", section=TrainConfig, exclude=_SET_BY_EVAL
    )
    device: str = setting("auto", "where the scorer runs (and trains, unless adapt_training.device)")
    dtype: str = setting("auto", "the scorer's precision (cappy.model.resolve_precision)", flags=("--scorer-dtype",))
    allow_contaminated: bool = setting(False, "skip the contamination guard", flags=("--allow-contaminated",))
    plots: bool = setting(True, "draw the plots", flags=("--no-plots",))
    show_progress: bool = setting(True, "progress bars", flags=("--no-progress",))
    command: str | None = setting(None, "the command line recorded in results.json")

    def __post_init__(self) -> None:
        # 0 means all, as it always did on the command line (BBConfig itself takes 0 as zero prompts)
        self.max_examples = self.max_examples or None
        self.max_train = self.max_train or None

    def validate(self) -> None:
        if not self.out:
            raise ConfigError("out is required (the output folder; --out on the command line)")
        if self.adapt_recipe is not None and not self.adapt:
            raise ConfigError("adapt_recipe needs adapt (it names the recipe of the adaptation candidates)")
        if self.adapt and not self.model:
            raise ConfigError("adapt needs a model (the pretrained Cappy to adapt)")
        if self.generator is not None and self.generator not in BACKENDS:
            raise ConfigError(f"generator must be one of {', '.join(BACKENDS)}, got {self.generator!r}")
        if self.adapt_scale is not None and not self.adapt_scale > 0:
            raise ConfigError(f"adapt_scale must be > 0, got {self.adapt_scale}")


@dataclass
class PairsEvalConfig(JobConfig):
    """The settings of a dev-pairs evaluation (:func:`cappy.evaluate.runs.run_pairs`, `cappy eval pairs`): its
    Python API, its YAML file and its command line. Example: ``PairsEvalConfig(dev="dev.jsonl", models=["a", "b"])``
    """

    job: ClassVar[str] = "cappy eval pairs"

    dev: str = setting("", "pair file or folder with source (and task) columns", flags=("--dev",))
    models: list[str] = setting([], "Cappy checkpoint, repeatable (compared on the same file)", flags=("--model",))
    out: str | None = setting(None, "write the metrics as JSON here", flags=("--out",))
    batch_size: int = setting(64, "pairs per forward pass")
    device: str = setting("auto", "where the scorer runs: cpu, cuda or auto", flags=("--device",))
    dtype: str = setting("auto", "the scorer's precision (cappy.model.resolve_precision)", flags=("--dtype",))
    show_progress: bool = setting(True, "progress bars", flags=("--no-progress",))

    def validate(self) -> None:
        if not self.dev:
            raise ConfigError("dev is required (the pair file; --dev on the command line)")
        if not self.models:
            raise ConfigError("models is empty: give at least one checkpoint (--model on the command line)")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
