"""Whole evaluation runs, as `cappy eval` performs them: load and guard the scorer, evaluate, write the folder.

Example:
    >>> run_mc(MCEvalConfig(methods=["cappy", "chance"], max_examples=20, out="runs/eval/mc"))["methods"]["cappy"]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cappy.adaptation import adapt as adapt_scorer
from cappy.adaptation import generator_factory
from cappy.data.readers import HUB_PREFIX
from cappy.errors import InputError
from cappy.evaluate.bigbench import default_tasks, evaluate_bigbench
from cappy.evaluate.config import BigBenchEvalConfig, MCEvalConfig, PairsEvalConfig
from cappy.evaluate.guard import check_contamination
from cappy.evaluate.loglik import CachedLogLik, HFLogLik, LlamaCppLogLik
from cappy.evaluate.mc import MCTask, evaluate_mc, file_sha256
from cappy.evaluate.pairs import evaluate_pairs
from cappy.evaluate.report import write_run
from cappy.evaluate.suites import DEFAULT_SUITE_NAME, get_suite, published_columns
from cappy.generate import CandidateSource


def weights_sha256(path: str | Path) -> str | None:
    """The checksum of a local checkpoint's weights (None for hub ids)."""
    p = Path(path) / "model.safetensors"
    return file_sha256(p) if p.is_file() else None


def load_eval_scorer(
    model: str,
    tasks: Sequence[tuple[str, str, str | None]],
    device: str = "auto",
    dtype: str = "auto",
    allow_contaminated: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """``(Cappy, record)`` for an evaluation: the contamination guard over ``(task, dataset key, file sha256)``
    first (unless allowed), then the model, and the record results.json keeps (name, path, weights sha, precision).
    """
    from cappy.model import Cappy, resolve_model_path  # deferred: imports torch

    path = resolve_model_path(model)
    if not allow_contaminated:
        check_contamination(path if Path(path).is_dir() else None, tasks)
    scorer = Cappy.from_pretrained(path, device=device, dtype=dtype)
    record = {
        "name": model,
        "path": path,
        "sha256": weights_sha256(path),
        "precision": scorer.precision,
        "backend": scorer.backend,
    }
    return scorer, record


def make_loglik(spec: str, cache: str | Path, threads: int | None = None) -> Any:
    """``llamacpp``, ``llamacpp:/path/model.gguf`` or ``hf:/path/or/id`` -> a cached log-likelihood backend."""
    kind, _, arg = spec.partition(":")
    if kind == "llamacpp":
        inner = LlamaCppLogLik(arg or None, n_threads=threads)
    elif kind == "hf":
        if not arg:
            raise InputError("llm hf:PATH needs a model path or id")
        inner = HFLogLik(arg)
    else:
        raise InputError(f"llm {spec!r}: expected llamacpp[:GGUF] or hf:PATH")
    return CachedLogLik(inner, Path(cache))


def run_mc(config: MCEvalConfig | None = None, *positional: Any, **settings: Any) -> dict[str, Any]:
    """Zero-shot multiple choice (default: the held-out suite); writes results.json and report.md in ``out``.

    ``config`` is an :class:`MCEvalConfig`; ``settings`` are its fields, applied on top. The former form
    ``run_mc(tasks, methods, MCConfig(...), out, model=..., ...)`` (MCTask objects, a sampling config) still works.
    Example: ``run_mc(MCEvalConfig(methods=["cappy", "chance"], max_examples=20, out="runs/eval/mc"))``
    """
    if positional or (config is not None and not isinstance(config, MCEvalConfig)):
        settings = {**dict(zip(("tasks", "methods", "cfg", "out"), (config, *positional))), **settings}
        config = None
    settings = _sampling(settings, ("max_examples", "max_templates", "seed"))
    if settings.get("tasks") is not None:
        settings["tasks"] = [asdict(t) if isinstance(t, MCTask) else t for t in settings["tasks"]]
    cfg = MCEvalConfig.build(config, {k: v for k, v in settings.items() if v is not None or k != "tasks"}, "run_mc()")
    tasks = cfg.mc_tasks()
    for t in tasks:
        if not t.path.startswith(HUB_PREFIX) and not Path(t.path).exists():
            raise FileNotFoundError(f"task {t.name}: {t.path} does not exist")
    out = Path(cfg.out)
    meta: dict[str, Any] = {"models": {}, "command": cfg.command}
    if cfg.suite is not None or not cfg.tasks:
        suite = get_suite(cfg.suite or DEFAULT_SUITE_NAME)
        meta["task_suite"] = suite.name
        published = published_columns(suite, [t.name for t in tasks])
        if published is not None:
            meta["published"] = published
    scorer = loglik = None
    methods = cfg.methods
    if "cappy" in methods:
        guard = [(t.name, t.key, file_sha256(t.path)) for t in tasks]
        scorer, meta["models"]["cappy"] = load_eval_scorer(
            cfg.model, guard, cfg.device, cfg.dtype, cfg.allow_contaminated
        )
    if any(m.startswith("llm_") for m in methods):
        loglik = make_loglik(cfg.llm, cfg.llm_cache or out / "loglik_cache.jsonl", cfg.threads)
        meta["models"]["llm"] = {"spec": cfg.llm, "model_id": loglik.model_id}
    results = evaluate_mc(tasks, methods, cfg, scorer=scorer, loglik=loglik, show_progress=cfg.show_progress)
    write_run(results, out, meta, plots=cfg.plots)
    return results


def _sampling(settings: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The former ``cfg=`` sampling config (an MCConfig or BBConfig) spread into its settings."""
    settings = dict(settings)
    sample = settings.pop("cfg", None)
    if sample is not None:
        settings = {**{n: getattr(sample, n) for n in names}, **settings}
    return settings


def run_bigbench(
    config: BigBenchEvalConfig | None = None,
    *positional: Any,
    candidates: Any = None,
    adapt_candidates: Any = None,
    **settings: Any,
) -> dict[str, Any]:
    """BIG-Bench boosting over the official split; writes results.json and report.md in ``out``.

    ``config`` is a :class:`BigBenchEvalConfig`; ``settings`` are its fields, applied on top. Candidates come from
    the cache ``gens`` (default ``out/generations.jsonl``), the missing ones generated with ``generator``; or from
    ``candidates``, a :class:`cappy.generate.CandidateSource` of the caller's. With ``adapt`` the scorer ``model`` is
    also adapted per task on that task's train prompts (:func:`cappy.adapt`, preset ``adapt_preset`` or the device's
    default, ``adapt_training`` on top) as method ``cappy_adapted``; its train candidates come from
    ``adapt_candidates`` (another source) or, with ``adapt_recipe``, from that recipe in the same cache and
    generator, else from the validation candidates' source. The former form ``run_bigbench(tasks, BBConfig(...),
    out, candidates, adapt_config=..., adapt_overrides=..., ...)`` still works.
    Example: ``run_bigbench(BigBenchEvalConfig(model="cappy-mini", generator="llamacpp", max_tasks=3, out="bb"))``
    """
    if positional or (config is not None and not isinstance(config, BigBenchEvalConfig)):
        named = dict(zip(("tasks", "cfg", "out", "candidates"), (config, *positional)))
        candidates = named.pop("candidates", candidates)
        settings = {**named, **settings}
        config = None
    settings = _sampling(settings, ("max_examples", "max_train", "seed"))
    for old, new in (("adapt_config", "adapt_preset"), ("adapt_overrides", "adapt_training")):
        if old in settings:
            settings[new] = settings.pop(old)
    if settings.get("tasks") is None:
        settings.pop("tasks", None)
    cfg = BigBenchEvalConfig.build(config, settings, "run_bigbench()")
    own = candidates is None
    if own:
        gens = cfg.gens or str(Path(cfg.out) / "generations.jsonl")
        candidates = _source(cfg, cfg.recipe, gens)
    if adapt_candidates is None and cfg.adapt_recipe is not None:
        if not own:
            raise InputError("adapt_recipe with a caller's candidates: give adapt_candidates (a CandidateSource)")
        adapt_candidates = _source(cfg, cfg.adapt_recipe, candidates.cache)
    try:
        return _run_bigbench(cfg, candidates, adapt_candidates)
    finally:
        candidates.close()
        if adapt_candidates is not None and adapt_candidates is not candidates:
            adapt_candidates.close()


def _source(cfg: BigBenchEvalConfig, recipe: str, cache: Any) -> Any:
    generator = generator_factory(cfg.generator, cfg.gen_model, cfg.generator_options)
    return CandidateSource(recipe, cache=cache, generator=generator, seed=cfg.seed, show_progress=cfg.show_progress)


def _run_bigbench(cfg: BigBenchEvalConfig, candidates: Any, adapt_candidates: Any) -> dict[str, Any]:
    paths = [Path(t) for t in cfg.tasks] if cfg.tasks else default_tasks()[: cfg.max_tasks]
    for t in paths:
        if not t.exists():
            raise FileNotFoundError(f"BIG-Bench task {t} does not exist")
    out = Path(cfg.out)
    recipe = candidates.recipe
    meta: dict[str, Any] = {
        "models": {},
        "command": cfg.command,
        "recipe": recipe.to_dict() if recipe is not None else None,
        "generations": str(candidates.cache) if candidates.cache is not None else None,
    }

    def get_candidates(task: str, prompts: list[str]) -> dict[str, list[Any]]:
        got = candidates.get(prompts)
        models = {c.extra.get("model") for cs in got for c in cs}
        if len(models) > 1:
            raise InputError(
                f"{candidates.cache} mixes candidates of several models for task {task}: {sorted(models)}"
            )
        meta["models"].setdefault("llm", next(iter(models), None) or candidates.model_id)
        return dict(zip(prompts, got))

    scorers: dict[str, Any] = {}
    adapt_fn = None
    if cfg.model:
        guard = [(t.name, f"bigbench/{t.name}", None) for t in paths]
        scorers["cappy"], meta["models"]["cappy"] = load_eval_scorer(
            cfg.model, guard, cfg.device, cfg.dtype, cfg.allow_contaminated
        )
        if cfg.adapt:
            adapt_fn = _adapter(cfg, meta["models"]["cappy"]["path"], adapt_candidates or candidates, out)
            overrides = dict(cfg.adapt_training)
            overrides.pop("device", None)
            meta["adaptation"] = {"config": cfg.adapt_preset, "scale": cfg.adapt_scale, "overrides": overrides}
            train_source = adapt_candidates or candidates
            if train_source.recipe is not None:
                meta["adaptation"]["recipe"] = train_source.recipe.to_dict()
    results = evaluate_bigbench(paths, cfg, get_candidates, scorers, adapt_fn, show_progress=cfg.show_progress)
    write_run(results, out, meta, plots=cfg.plots)
    return results


def _adapter(cfg: BigBenchEvalConfig, base: str, source: Any, out: Path) -> Callable[[str, list[Any]], Any]:
    """``adapt(task, train_examples)`` -> the scorer adapted to that task (under ``out/adapt/<task>``)."""
    training = dict(cfg.adapt_training)
    device = training.pop("device", cfg.device)  # a training device is where adaptation trains

    def adapt_fn(task: str, train: list[Any]) -> Any:
        return adapt_scorer(
            base,
            train,
            candidates=source,
            output_dir=str(out / "adapt" / task),
            preset=cfg.adapt_preset,
            scale=cfg.adapt_scale,
            task=task,
            device=device,
            dtype=cfg.dtype,
            show_progress=cfg.show_progress,
            training=training,
        )

    return adapt_fn


def run_pairs(config: PairsEvalConfig | None = None, **settings: Any) -> dict[str, dict[str, Any]]:
    """Dev metrics of every model on one pair file (:func:`cappy.evaluate.pairs.evaluate_pairs`), by model name;
    written as JSON to ``out`` when given. Example: ``run_pairs(dev="dev.jsonl", models=["cappy-mini", "run/best"])``
    """
    from cappy.model import Cappy  # deferred: imports torch

    cfg = PairsEvalConfig.build(config, settings, "run_pairs()")
    results = {}
    for name in cfg.models:
        scorer = Cappy.from_pretrained(name, device=cfg.device, dtype=cfg.dtype)
        results[name] = evaluate_pairs(scorer, cfg.dev, batch_size=cfg.batch_size, show_progress=cfg.show_progress)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(results, indent=2) + "\n")
    return results
