"""The third job: adapt a Cappy to a task by finetuning only the scorer, never the LLM.

For each training example (an instruction and its gold references) the LLM's candidates are read from a cache or
generated, each labelled by a metric against the references (the references themselves get 1.0), and a copy of
the scorer is trained on those pairs with an adaptation preset (``adapt_cpu`` on CPU, ``adapt_paper`` on GPU:
the paper's MSE schedule). Example:
    >>> from cappy import adapt
    >>> examples = [{"instruction": "Q: 2+2?\\nA:", "references": ["4"]}, ...]
    >>> tuned = adapt("cappy-mini", examples, generator="llamacpp", candidates="gens.jsonl", output_dir="out/my-task")
    >>> tuned.score(["Q: 3+3?\\nA:"], ["6"])

Every setting of a run is an :class:`AdaptConfig` (also `cappy adapt`'s ``--config`` YAML and ``--set``):
    >>> adapt(config=AdaptConfig(model="cappy-mini", examples="task.jsonl", generator="llamacpp", output_dir="o"))
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cappy.config import ConfigError, JobConfig, setting
from cappy.errors import InputError, InputTypeError
from cappy.generate.base import DEFAULT_RECIPE, Candidate, Generator
from cappy.generate.source import BACKENDS, CandidateSource, load_generator
from cappy.io import atomic_write, dumps, sha256_file
from cappy.train.config import TrainConfig, adaptation_settings  # settings only: no torch

logger = logging.getLogger(__name__)

Metric = Callable[[str, Sequence[str]], float]
SETTINGS_FILE = "adapt.json"


@dataclass
class AdaptExample:
    """One training example of a task: the instruction (prompt) and its gold references."""

    instruction: str
    references: list[str]
    id: str | None = None
    where: str = ""

    def __post_init__(self) -> None:
        at = f"{self.where}: " if self.where else ""
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise InputError(f"{at}the instruction must be a non-empty string")
        refs = [self.references] if isinstance(self.references, str) else self.references
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise InputError(f"{at}references must be a string or a non-empty list of strings")
        if not any(r.strip() for r in refs):
            raise InputError(f"{at}every reference is empty")
        self.references = list(refs)


@dataclass
class AdaptResult:
    """What :func:`adapt` wrote: the model folder, the pair file and how many pairs of each kind it holds."""

    model_dir: Path
    pairs_file: Path
    counts: dict[str, int] = field(default_factory=dict)
    reused: bool = False
    resumed: str | None = None
    """The checkpoint of an interrupted run this call continued from (e.g. "step-00000300"), else None."""


@dataclass
class AdaptConfig(JobConfig):
    """Every setting of one adaptation (:func:`adapt`, `cappy adapt`): its Python API, its YAML file and its
    command line. ``training`` holds :class:`cappy.train.TrainConfig` settings on top of the preset; an override
    may name them alone (``lr=1e-4`` is ``training.lr=1e-4``; ``seed`` is the training seed, ``gen_seed`` the
    samples'). Fields that hold a name in YAML also take objects in Python (a :class:`Generator`, a
    :class:`CandidateSource`, a :class:`Recipe`, a metric function).

    Example:
        >>> cfg = AdaptConfig(examples="task.jsonl", generator="llamacpp", output_dir="my-scorer", mismatched=2)
        >>> cfg.with_overrides({"lr": 1e-4}).training
        {'lr': 0.0001}
        >>> cfg.to_yaml("adapt.yaml")  # `cappy adapt --config adapt.yaml` runs it
    """

    job: ClassVar[str] = "cappy adapt"

    model: str = setting(
        "cappy-mini", "the Cappy to adapt: checkpoint dir, shipped name or hub id", flags=("--model",)
    )
    examples: str | None = setting(
        None,
        "training examples: JSONL, CSV, Parquet, a BIG-Bench task, ... (one instruction with its gold "
        "answer(s) per row)",
        flags=("--train",),
    )
    split: str | None = setting(
        None, "split of a BIG-Bench task or save_to_disk folder (e.g. train)", flags=("--split",)
    )
    instruction_field: str = setting("instruction", "the examples' instruction field", flags=("--instruction-field",))
    references_field: str = setting(
        "references",
        "the examples' references field: a string or a list of strings per row",
        flags=("--references-field",),
    )
    id_field: str = setting("id", "the examples' id field", flags=("--id-field",))
    output_dir: str = setting("", "output folder: model/ (the adapted scorer), pairs, training log", flags=("--out",))
    candidates: Any = setting(None, "generation cache (JSONL) to read, and to append to when generating")
    generator: Any = setting(None, "backend that generates missing candidates: llamacpp, hf or openai")
    gen_model: str | None = setting(None, "the generator's model (GGUF path, model dir or hub id, served name)")
    generator_options: dict[str, Any] = setting({}, "options of the generator (cappy.generate.load_generator)")
    recipe: Any = setting(DEFAULT_RECIPE, "recipe of the candidates: a shipped name or a YAML file")
    gen_seed: int = setting(0, "base seed of every sample and of the mismatched answers' draw")
    metric: Any = setting("rouge_l", "how a candidate is labelled against the references")
    preset: str | None = setting(
        None,
        "training preset or YAML file of TrainConfig settings (default: adapt_cpu on CPU, adapt_paper on GPU)",
        flags=("--preset",),
    )
    scale: float | None = setting(None, "multiply the preset's num_pairs", flags=("--scale",))
    mismatched: int | None = setting(
        None,
        "per example, this many other examples' references as extra pairs labelled against its own "
        "(default: the preset's adaptation: mismatched)",
        flags=("--mismatched",),
    )
    training: dict[str, Any] = setting(
        {},
        "TrainConfig settings on top of the preset",
        section=TrainConfig,
        exclude={
            "model": "set by adapt (the scorer it adapts: use model=...)",
            "train": "set by adapt (the pairs it builds: the examples are examples=...)",
            "output_dir": "set by adapt (output_dir/run: use output_dir=...)",
        },
    )
    task: str = setting("adapt", "the task name recorded in the model's training data", flags=("--task-name",))
    device: str = setting("auto", "where the scorer trains and loads: cpu, cuda or auto")
    dtype: str = setting(
        "auto", "precision of the returned scorer (cappy.model.resolve_precision)", flags=("--scorer-dtype",)
    )
    show_progress: bool = setting(
        False, "progress bars (the command line shows them unless --no-progress)", flags=("--no-progress",)
    )
    keep_run: bool = setting(
        False, "keep the training run's folder (run/: checkpoint and optimizer state)", flags=("--keep-run",)
    )
    overwrite: bool = setting(
        False,
        "discard an interrupted adaptation in the output folder whose settings differ (else an error names them)",
        flags=("--overwrite",),
    )

    def validate(self) -> None:
        if not self.output_dir:
            raise ConfigError("output_dir is required (where the adapted model goes; --out on the command line)")
        if self.scale is not None and not self.scale > 0:
            raise ConfigError(f"scale must be > 0, got {self.scale}")
        if self.mismatched is not None and self.mismatched < 0:
            raise ConfigError(f"mismatched must be a whole number >= 0, got {self.mismatched}")
        if isinstance(self.generator, str) and self.generator not in BACKENDS:
            raise ConfigError(f"generator must be one of {', '.join(BACKENDS)}, got {self.generator!r}")


def as_examples(examples: Sequence[Any]) -> list[AdaptExample]:
    """Normalise examples: :class:`AdaptExample`, objects with ``.input``/``.references`` (BIG-Bench examples),
    mappings with "instruction" (or "prompt"/"input") and "references" (or "reference"/"target"/"targets"), or
    ``(instruction, references)`` tuples. Example: ``as_examples([("Q: 2+2?", "4")])[0].references`` -> ["4"]"""
    out = []
    for i, ex in enumerate(examples):
        where = f"example {i}"
        if isinstance(ex, AdaptExample):
            out.append(ex)
        elif isinstance(ex, tuple) and len(ex) == 2:
            out.append(AdaptExample(ex[0], ex[1], where=where))
        elif isinstance(ex, dict):
            instr = next((ex[k] for k in ("instruction", "prompt", "input") if k in ex), None)
            refs = next((ex[k] for k in ("references", "reference", "targets", "target") if k in ex), None)
            if instr is None or refs is None:
                raise InputError(
                    f"{where}: needs an 'instruction' (or 'prompt') and 'references' field, has {sorted(ex)}"
                )
            out.append(AdaptExample(instr, refs, id=ex.get("id"), where=where))
        elif hasattr(ex, "input") and hasattr(ex, "references"):
            out.append(AdaptExample(ex.input, list(ex.references), where=getattr(ex, "where", "") or where))
        else:
            raise InputTypeError(f"{where}: cannot read a training example from a {type(ex).__name__}")
    if not out:
        raise InputError("adaptation needs at least one training example")
    return out


def read_examples(
    source: str | Path,
    instruction_field: str = "instruction",
    references_field: str = "references",
    id_field: str = "id",
    split: str | None = None,
) -> list[AdaptExample]:
    """Training examples from any file the readers take (JSONL, CSV, Parquet, a BIG-Bench task, ...).

    A row without the fields, or with a bad value, is an error naming its file and line.
    Example: ``read_examples("task.jsonl", instruction_field="question", references_field="answers")``
    """
    from cappy.data.readers import iter_examples  # deferred: numpy and jinja2; `cappy --help` imports this module

    out = []
    for where, row in iter_examples(source, split=split):
        if "inputs" in row and "targets" in row and instruction_field not in row:  # a BIG-Bench task file
            row = {instruction_field: row["inputs"], references_field: row["targets"]}
        for name in (instruction_field, references_field):
            if name not in row:
                raise InputError(f"{where}: missing field {name!r} (has {sorted(row)})")
        pid = row.get(id_field)
        out.append(
            AdaptExample(row[instruction_field], row[references_field], str(pid) if pid is not None else None, where)
        )
    if not out:
        raise InputError(f"{source}: no training examples")
    return out


def _metric(metric: str | Metric) -> Metric:
    if callable(metric):
        return metric
    if metric == "rouge_l":
        from cappy.metrics import rouge_l  # deferred: numpy; `cappy --help` imports this module

        return rouge_l
    raise InputError(f"unknown metric {metric!r}; use 'rouge_l' or a callable (text, references) -> float")


def adaptation_pairs(
    examples: Sequence[AdaptExample],
    candidates: Sequence[Sequence[Candidate]],
    metric: str | Metric = "rouge_l",
    task: str = "adapt",
    include_references: bool = True,
    mismatched: int = 0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Training pairs: every candidate labelled by ``metric`` against the example's references, plus each
    reference itself with label 1.0 (the paper's recipe). ``mismatched=k`` adds, per example, k gold references
    of other examples (the pretraining recipe's mismatched answers), labelled by ``metric`` against this example's
    references, so an answer that happens to be right here is not called wrong; drawn with ``seed``, never one of
    the example's own responses. Example:
    ``adaptation_pairs([AdaptExample("Q: 2+2?", ["4"])], [[cand]])[0]["label"]``
    """
    if len(examples) != len(candidates):
        raise InputError(f"{len(examples)} examples but {len(candidates)} candidate lists")
    if isinstance(mismatched, bool) or not isinstance(mismatched, int) or mismatched < 0:
        raise InputError(f"mismatched must be a whole number >= 0, got {mismatched!r}")
    score = _metric(metric)
    rows = []
    pool = [(i, r) for i, ex in enumerate(examples) for r in dict.fromkeys(ex.references) if r.strip()]
    rng = random.Random(seed)
    for i, (ex, cands) in enumerate(zip(examples, candidates)):
        base = {"instruction": ex.instruction, "task": task, "template": "adapt"}
        if include_references:
            for ref in dict.fromkeys(r for r in ex.references if r.strip()):
                rows.append({**base, "response": ref, "label": 1.0, "source": "gold"})
        for c in cands:
            label = float(score(c.text, ex.references))
            if not 0.0 <= label <= 1.0:
                raise InputError(f"metric gave {label} for a candidate; labels must be in [0, 1]")
            rows.append({**base, "response": c.text, "label": label, "source": "llm"})
        if mismatched:
            own = set(ex.references) | {c.text for c in cands}
            for text in _draw_mismatched(pool, i, own, mismatched, rng):
                rows.append(
                    {**base, "response": text, "label": float(score(text, ex.references)), "source": "mismatched"}
                )
    return rows


def _draw_mismatched(pool: list[tuple[int, str]], i: int, own: set[str], k: int, rng: random.Random) -> list[str]:
    """Up to k distinct references of examples other than i, none in ``own``: rejection sampling (a bounded number
    of draws, so the cost is O(k) per example, not a scan of the pool), then a scan if the pool is nearly used up."""
    got: dict[str, None] = {}
    for _ in range(8 * k):
        j, text = pool[rng.randrange(len(pool))]
        if j != i and text not in own:
            got[text] = None
            if len(got) == k:
                return list(got)
    rest = [t for j, t in pool if j != i and t not in own and t not in got]
    rng.shuffle(rest)
    return [*got, *dict.fromkeys(rest)][:k]


def default_preset(device: str | None = "auto") -> str:
    """``adapt_cpu`` when training runs on the CPU, ``adapt_paper`` on a GPU."""
    from cappy.model import resolve_device  # deferred: imports torch

    return "adapt_cpu" if resolve_device(device).type == "cpu" else "adapt_paper"


def generator_factory(generator: Any, model: str | None = None, options: dict[str, Any] | None = None) -> Any:
    """A zero-argument builder of the generator a config names (a backend name with its model and options), so a
    model loads only when candidates are missing; a :class:`Generator` or a factory as it is; None for None."""
    if isinstance(generator, str):
        if generator not in BACKENDS:
            raise InputError(f"unknown generation backend {generator!r}; choose from {list(BACKENDS)}")
        return lambda: load_generator(generator, model, **(options or {}))
    if generator is not None and not (isinstance(generator, Generator) or callable(generator)):
        raise InputTypeError(
            f"generator must be a backend name, a Generator or a factory, got {type(generator).__name__}"
        )
    return generator


def _candidate_source(cfg: AdaptConfig) -> CandidateSource | list[list[Candidate]]:
    candidates = cfg.candidates
    if isinstance(candidates, CandidateSource):
        return candidates
    if isinstance(candidates, list | tuple):
        return list(candidates)
    gen = generator_factory(cfg.generator, cfg.gen_model, cfg.generator_options)
    if candidates is None and gen is None:
        raise InputError("adaptation needs candidates: a generation cache, a CandidateSource or a generator")
    return CandidateSource(
        cfg.recipe, cache=candidates, generator=gen, seed=cfg.gen_seed, show_progress=cfg.show_progress
    )


# Training settings that do not change the weights: a run that differs only in these is resumed or reused.
RESULT_NEUTRAL = ("save_every", "log_every", "resume")


def _read_settings(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    config = {k: v for k, v in (record.get("config") or {}).items() if k not in RESULT_NEUTRAL}
    return {**record, "config": config}


def _same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return _comparable(a) == _comparable(b)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two adaptations' settings, e.g. "lr 0.0001 -> 0.0005, pairs_sha256"."""
    a, b = _comparable(old), _comparable(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if key == "config":
            ca, cb = a.get(key) or {}, b.get(key) or {}
            out += [f"{k} {ca.get(k)!r} -> {cb.get(k)!r}" for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)]
        elif a.get(key) != b.get(key):
            out.append(key if key.endswith("sha256") else f"{key} {a.get(key)!r} -> {b.get(key)!r}")
    return ", ".join(out) or "none"


def _resume_run(run: Path, record: dict[str, Any], done: dict[str, Any] | None, resume: bool, overwrite: bool) -> bool:
    """Whether ``run`` holds an interrupted adaptation to continue: a checkpoint in ``run/training_state`` of a
    run that never finished (its settings are not those of the saved model). Its settings must be ``record``'s;
    other settings stop with an error unless ``overwrite`` (or ``resume`` is false), so hours of training are
    never thrown away unasked."""
    latest = run / "training_state" / "latest"
    if not latest.is_file():
        return None
    started = _read_settings(run / SETTINGS_FILE)
    if started is not None and done is not None and _same_run(started, done):
        return None  # a finished run kept with keep_run
    step = latest.read_text(encoding="utf-8").strip()
    if started is not None and _same_run(started, record):
        if resume:
            logger.info("resuming the interrupted adaptation in %s from its checkpoint %s", run, step)
            return step
        logger.info("starting over: resume is false; discarding the interrupted adaptation in %s", run)
        return None
    if overwrite or not resume:
        logger.info("discarding the interrupted adaptation in %s, which had other settings", run)
        return None
    what = _differences(started, record) if started is not None else f"unknown: no {SETTINGS_FILE}"
    raise InputError(
        f"{run} holds an interrupted adaptation (checkpoint {step}) with other settings ({what}); run it again with "
        "its settings to resume it, or pass --overwrite (overwrite=True) to discard it"
    )


def adapt(scorer: Any = None, examples: Sequence[Any] | None = None, config: Any = None, **settings: Any) -> Any:
    """Adapt ``scorer`` (a Cappy, or a checkpoint name/path; default ``config.model``) to ``examples`` (default: read
    from ``config.examples``); returns the adapted :class:`Cappy`. ``config`` is an :class:`AdaptConfig` (or, as
    before, a training preset's name or file); ``settings`` are :class:`AdaptConfig` fields or
    :class:`cappy.train.TrainConfig` settings, applied on top of it.

    ``candidates``: a generation-cache path (missing prompts are generated with ``generator`` and appended), a
    :class:`CandidateSource`, or one candidate list per example. ``generator``: a backend name ("llamacpp", ...; with
    ``gen_model`` and ``generator_options``), a :class:`Generator` or a factory; ``recipe``: what it generates (default
    :data:`cappy.generate.DEFAULT_RECIPE`, the recipe of the candidates ``best_of_n`` picks among by default).
    ``preset``: a training preset name or YAML file (default: ``adapt_cpu`` on CPU, ``adapt_paper`` on GPU); ``scale``
    multiplies its ``num_pairs``; TrainConfig settings (``lr=1e-4``, or ``training={...}``) replace the preset's
    (``seed`` is the training seed, ``gen_seed`` the samples'). The model is saved in ``output_dir/model`` with its
    pairs and settings; a second call with the same settings and data reuses it. ``mismatched``: other examples'
    references added per example as pairs labelled by the metric (:func:`adaptation_pairs`); None takes the preset's
    ``adaptation: mismatched``. The training run's folder (``output_dir/run``: two more copies of the weights and the
    optimizer state, about four times the model's size) is deleted once the model is saved, its log kept as
    ``output_dir/train_metrics.jsonl``; ``keep_run=True`` keeps it. A call that finds an interrupted run there
    (killed before the model was saved) resumes it from its last checkpoint in ``run/training_state`` (every
    ``save_every`` updates) to the weights an uninterrupted run gives, and logs that it does; if that run had other
    settings it stops with an error naming them, unless ``overwrite=True`` discards it. A finished model of other
    settings is replaced (logged). The returned scorer's ``adaptation`` attribute is an :class:`AdaptResult`
    (folders, pair counts, whether it was reused).
    Example:
        >>> tuned = adapt("cappy-mini", [("Q: 2+2?\\nA:", "4")], candidates="gens.jsonl", output_dir="out/t")
        >>> tuned = adapt(config=AdaptConfig.from_yaml("adapt.yaml", {"lr": 1e-4}))
    """
    if isinstance(config, str | os.PathLike):  # the former meaning of config=: the training preset
        settings = {"preset": os.fspath(config), **settings}
        config = None
    cfg = AdaptConfig.build(config, settings, "adapt()")
    if scorer is None:
        scorer = cfg.model
    if examples is None:
        if not cfg.examples:
            raise ConfigError("adapt(): give the training examples (examples=[...] or a file as examples=PATH)")
        examples = read_examples(cfg.examples, cfg.instruction_field, cfg.references_field, cfg.id_field, cfg.split)
    exs = as_examples(examples)
    source = _candidate_source(cfg)
    try:
        return _adapt(scorer, exs, cfg, source)
    finally:
        if isinstance(source, CandidateSource) and source is not cfg.candidates:
            source.close()  # the source this call opened; a caller's own it closes itself


def _adapt(scorer: Any, exs: list[AdaptExample], cfg: AdaptConfig, source: Any) -> Any:
    """The work of :func:`adapt` on checked settings: candidates, pairs, training, export, the record."""
    from cappy.model import Cappy, export_checkpoint, resolve_model_path  # deferred: imports torch
    from cappy.train import train  # deferred: imports torch

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(scorer, Cappy):  # its weights as they are in memory, which may differ from where it came from
        base = str(out / "base")
        scorer.save_pretrained(base)
    else:
        base = resolve_model_path(scorer)
    weights = Path(base) / "model.safetensors"

    if isinstance(source, CandidateSource):
        cands = source.get([e.instruction for e in exs], [e.id for e in exs])
    else:
        cands = source
    preset = cfg.preset if cfg.preset is not None else default_preset(cfg.device)
    mismatched = cfg.mismatched if cfg.mismatched is not None else adaptation_settings(preset)["mismatched"]
    metric, task = cfg.metric, cfg.task
    rows = adaptation_pairs(exs, cands, metric=metric, task=task, mismatched=mismatched, seed=cfg.gen_seed)
    pairs = out / "pairs.jsonl"
    with atomic_write(pairs) as f:
        for r in rows:
            f.write(dumps(r) + "\n")
    train_cfg = TrainConfig.from_yaml(preset, {"model": base, "train": [str(pairs)], "output_dir": str(out / "run")})
    settings: dict[str, Any] = {"num_pairs": train_cfg.num_pairs, "device": cfg.device, **cfg.training}
    settings["progress"] = cfg.show_progress
    if cfg.scale is not None:
        settings["num_pairs"] = max(1, round((train_cfg.num_pairs or len(rows)) * cfg.scale))
    train_cfg = train_cfg.with_overrides(settings, source=preset)
    record = {
        "base": base,
        "base_sha256": sha256_file(weights) if weights.is_file() else None,
        "preset": preset,
        "config": {k: v for k, v in train_cfg.to_dict().items() if k not in ("progress", "output_dir")},
        "pairs_sha256": sha256_file(pairs),
        "metric": metric if isinstance(metric, str) else getattr(metric, "__name__", "custom"),
        "mismatched": mismatched,
    }
    counts = {"pairs": len(rows), "examples": len(exs)}
    counts |= {k: sum(r["source"] == k for r in rows) for k in ("gold", "llm", "mismatched")}
    model_dir = out / "model"
    saved = out / SETTINGS_FILE
    run = out / "run"
    done = _read_settings(saved)
    reused = (model_dir / "config.json").is_file() and done is not None and _same_run(done, record)
    resumed = None
    if not reused:
        if counts["pairs"] == counts["gold"]:
            logger.warning("%s: no LLM candidates; adapting on the references alone", task)
        resumed = _resume_run(run, record, done, train_cfg.resume, cfg.overwrite)
        if resumed is None:
            if done is not None and (model_dir / "config.json").is_file():
                what = _differences(done, record)
                logger.info("%s: replacing the model adapted with other settings (%s)", out, what)
            shutil.rmtree(run, ignore_errors=True)
            (out / "train_metrics.jsonl").unlink(missing_ok=True)  # an earlier setting's log
            run.mkdir(parents=True)
            with atomic_write(run / SETTINGS_FILE) as f:  # what a rerun after a kill compares its settings with
                f.write(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(model_dir, ignore_errors=True)
        saved.unlink(missing_ok=True)
        train(train_cfg)
        export_checkpoint(run / "best" if (run / "best" / "config.json").exists() else run, model_dir)
        with atomic_write(saved) as f:
            f.write(json.dumps(record, indent=2) + "\n")
        if not cfg.keep_run:
            if (run / "metrics.jsonl").is_file():
                shutil.copyfile(run / "metrics.jsonl", out / "train_metrics.jsonl")
            shutil.rmtree(run, ignore_errors=True)
    tuned = Cappy.from_pretrained(model_dir, device=cfg.device, dtype=cfg.dtype)
    tuned.adaptation = AdaptResult(model_dir, pairs, counts, reused, resumed)
    return tuned
