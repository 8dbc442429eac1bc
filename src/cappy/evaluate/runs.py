"""Whole evaluation runs, as `cappy eval` performs them: load and guard the scorer, evaluate, write the folder.

Example:
    >>> run_mc(None, ["cappy", "chance"], MCConfig(max_examples=20), out="runs/eval/mc")["methods"]["cappy"]["mean"]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cappy.evaluate.bigbench import BBConfig, default_tasks, evaluate_bigbench
from cappy.evaluate.guard import check_contamination
from cappy.evaluate.mc import DEFAULT_SUITE, SHARED, MCConfig, MCTask, evaluate_mc, file_sha256
from cappy.evaluate.report import write_run


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
    from cappy.model import Cappy, resolve_model_path

    path = resolve_model_path(model)
    if not allow_contaminated:
        check_contamination(path if Path(path).is_dir() else None, tasks)
    scorer = Cappy.from_pretrained(path, device=device, dtype=dtype)
    record = {"name": model, "path": path, "sha256": weights_sha256(path), "precision": scorer.precision}
    return scorer, record


def make_loglik(spec: str, cache: str | Path, threads: int | None = None) -> Any:
    """``llamacpp``, ``llamacpp:/path/model.gguf`` or ``hf:/path/or/id`` -> a cached log-likelihood backend."""
    from cappy.evaluate.loglik import CachedLogLik, HFLogLik, LlamaCppLogLik

    kind, _, arg = spec.partition(":")
    if kind == "llamacpp":
        inner = LlamaCppLogLik(arg or None, n_threads=threads)
    elif kind == "hf":
        if not arg:
            raise ValueError("llm hf:PATH needs a model path or id")
        inner = HFLogLik(arg)
    else:
        raise ValueError(f"llm {spec!r}: expected llamacpp[:GGUF] or hf:PATH")
    return CachedLogLik(inner, Path(cache))


def run_mc(
    tasks: Sequence[MCTask] | None,
    methods: Sequence[str],
    cfg: MCConfig,
    out: str | Path,
    model: str = "cappy-mini",
    llm: str = "llamacpp",
    llm_cache: str | Path | None = None,
    threads: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    allow_contaminated: bool = False,
    plots: bool = True,
    show_progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Zero-shot multiple choice on ``tasks`` (default: the held-out suite); writes results.json and report.md."""
    if tasks is None:
        tasks = [MCTask(name, key, str(SHARED / "heldout" / f)) for name, key, f in DEFAULT_SUITE]
    for t in tasks:
        if not Path(t.path).exists():
            raise FileNotFoundError(f"task {t.name}: {t.path} does not exist")
    out = Path(out)
    meta: dict[str, Any] = {"models": {}, "command": command}
    scorer = loglik = None
    if "cappy" in methods:
        guard = [(t.name, t.key, file_sha256(t.path)) for t in tasks]
        scorer, meta["models"]["cappy"] = load_eval_scorer(model, guard, device, dtype, allow_contaminated)
    if any(m.startswith("llm_") for m in methods):
        loglik = make_loglik(llm, llm_cache or out / "loglik_cache.jsonl", threads)
        meta["models"]["llm"] = {"spec": llm, "model_id": loglik.model_id}
    results = evaluate_mc(tasks, methods, cfg, scorer=scorer, loglik=loglik, show_progress=show_progress)
    write_run(results, out, meta, plots=plots)
    return results


def run_bigbench(
    tasks: Sequence[str | Path] | None,
    cfg: BBConfig,
    out: str | Path,
    candidates: Any,
    model: str | None = None,
    adapt: bool = False,
    adapt_config: str | None = None,
    adapt_scale: float | None = None,
    adapt_overrides: dict[str, Any] | None = None,
    adapt_candidates: Any = None,
    max_tasks: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    allow_contaminated: bool = False,
    plots: bool = True,
    show_progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """BIG-Bench boosting over the official split; ``candidates`` is a :class:`cappy.generate.CandidateSource`.

    With ``adapt`` the scorer ``model`` is also adapted per task on that task's train prompts
    (:func:`cappy.adapt`, preset ``adapt_config`` or the device's default), as method ``cappy_adapted``; its
    train candidates come from ``adapt_candidates`` (another :class:`CandidateSource`, e.g. a cheaper recipe) when
    given, else from ``candidates``.
    """
    from cappy.adaptation import adapt as adapt_scorer

    paths = [Path(t) for t in tasks] if tasks else default_tasks()[:max_tasks]
    for t in paths:
        if not t.exists():
            raise FileNotFoundError(f"BIG-Bench task {t} does not exist")
    if adapt and not model:
        raise ValueError("adaptation needs a model (the pretrained Cappy to adapt)")
    out = Path(out)
    recipe = candidates.recipe
    meta: dict[str, Any] = {
        "models": {},
        "command": command,
        "recipe": recipe.to_dict() if recipe is not None else None,
        "generations": str(candidates.cache) if candidates.cache is not None else None,
    }

    def get_candidates(task: str, prompts: list[str]) -> dict[str, list[Any]]:
        got = candidates.get(prompts)
        models = {c.extra.get("model") for cs in got for c in cs}
        if len(models) > 1:
            raise ValueError(
                f"{candidates.cache} mixes candidates of several models for task {task}: {sorted(models)}"
            )
        meta["models"].setdefault("llm", next(iter(models), None) or candidates.model_id)
        return dict(zip(prompts, got))

    scorers: dict[str, Any] = {}
    adapt_fn = None
    if model:
        guard = [(t.name, f"bigbench/{t.name}", None) for t in paths]
        scorers["cappy"], meta["models"]["cappy"] = load_eval_scorer(model, guard, device, dtype, allow_contaminated)
        if adapt:
            base = meta["models"]["cappy"]["path"]
            overrides = dict(adapt_overrides or {})
            train_device = overrides.pop("device", device)  # a "device" override is where adaptation trains
            train_source = adapt_candidates if adapt_candidates is not None else candidates

            def adapt_fn(task: str, train: list[Any]) -> Any:
                return adapt_scorer(
                    base,
                    train,
                    candidates=train_source,
                    output_dir=out / "adapt" / task,
                    config=adapt_config,
                    scale=adapt_scale,
                    task=task,
                    device=train_device,
                    dtype=dtype,
                    show_progress=show_progress,
                    **overrides,
                )

            meta["adaptation"] = {"config": adapt_config, "scale": adapt_scale, "overrides": overrides}
            if train_source.recipe is not None:
                meta["adaptation"]["recipe"] = train_source.recipe.to_dict()
    try:
        results = evaluate_bigbench(paths, cfg, get_candidates, scorers, adapt_fn, show_progress=show_progress)
    finally:
        candidates.close()
        if adapt_candidates is not None and adapt_candidates is not candidates:
            adapt_candidates.close()
    write_run(results, out, meta, plots=plots)
    return results
