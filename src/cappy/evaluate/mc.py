"""Zero-shot multiple-choice evaluation: score every answer choice of every (example, template), take the argmax.

Accuracy is pooled over templates and examples per task; the headline is the mean over tasks (the paper's
protocol). Every method sees exactly the same prompts, so differences between methods are paired.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cappy.data.readers import HUB_PREFIX, read_examples
from cappy.data.templates import Template, load_template_file, load_templates, select_templates
from cappy.errors import InputError
from cappy.evaluate.config import DEFAULT_SUITE as DEFAULT_SUITE  # defined with the settings; also here
from cappy.evaluate.config import METHODS, MCConfig
from cappy.evaluate.config import SHARED as SHARED
from cappy.evaluate.config import MCEvalConfig as MCEvalConfig
from cappy.evaluate.config import MCTask as MCTask
from cappy.evaluate.suites import ROW_ADAPTERS, resolve_local
from cappy.io import sha256_file

logger = logging.getLogger(__name__)


@dataclass
class MCPrompt:
    task: str
    template: str
    example_index: int
    instruction: str
    choices: list[str]
    gold: int


def pick_templates(templates: list[Template], max_templates: int | None) -> list[Template]:
    """Templates with answer choices, original-task ones first (file order otherwise), capped."""
    usable = [t for t in templates if t.answer_choices]
    usable.sort(key=lambda t: 0 if t.original_task else 1)
    return usable[:max_templates] if max_templates else usable


def sample_examples(
    path: str, max_examples: int | None, seed: int, split: str | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """A seeded sample (without replacement, kept in file order) of at most ``max_examples`` examples.

    ``split`` is read from hub ids (``hub:ID[:CONFIG]``) and saved DatasetDict folders; a file is one split.
    """
    is_dict = Path(path).is_dir() and (Path(path) / "dataset_dict.json").exists()
    use_split = split if str(path).startswith(HUB_PREFIX) or is_dict else None
    rows = list(read_examples(path, split=use_split) if use_split else read_examples(path))
    idx = list(range(len(rows)))
    if max_examples is not None and len(rows) > max_examples:
        idx = sorted(random.Random(seed).sample(idx, max_examples))
    return [(i, rows[i]) for i in idx]


def load_task_examples(task: MCTask, cfg: MCConfig) -> tuple[str, list[tuple[int, dict[str, Any]]]]:
    """``(where the rows came from, the seeded sample)`` of a task, each row in the dataset's hub schema (the
    original StoryCloze and CrowS-Pairs files are converted: :data:`cappy.evaluate.suites.ROW_ADAPTERS`)."""
    path = resolve_local(task.key, task.path)
    try:
        examples = sample_examples(path, cfg.max_examples, cfg.seed, task.split)
    except InputError:
        raise
    except Exception as err:  # the hub library's own errors: offline, no such dataset or config, a loading script
        if not path.startswith(HUB_PREFIX):
            raise
        raise InputError(
            f"task {task.name}: reading {path} (split {task.split}) failed: {type(err).__name__}: {err}; "
            f"give its data as a local file instead: --task {task.name}:{task.key}=PATH"
        ) from err
    adapt = ROW_ADAPTERS.get(task.key)
    if adapt is not None:
        converted = []
        for i, row in examples:
            try:
                converted.append((i, adapt(row)))
            except InputError as err:
                raise InputError(f"task {task.name}: {path} row {i + 1}: {err}") from None
        examples = converted
    return path, examples


def build_prompts(task: MCTask, cfg: MCConfig) -> tuple[list[MCPrompt], dict[str, Any]]:
    """Render every (example, template) of a task; returns the prompts and a description of what was used."""
    if task.template_root:
        templates = load_template_file(Path(task.template_root) / task.key / "templates.yaml", task.key)
    else:
        templates = load_templates(task.key)
    if task.templates != "all":
        templates = select_templates(templates, task.templates)
    templates = pick_templates(templates, cfg.max_templates)
    if not templates:
        raise InputError(f"task {task.name}: no template of {task.key!r} has answer choices")
    path, examples = load_task_examples(task, cfg)
    skipped: Counter = Counter()
    prompts: list[MCPrompt] = []
    for t in templates:
        rng = random.Random(f"{cfg.seed}:{task.name}:{t.name}")
        for i, ex in examples:
            p = t.apply(ex, rng)
            if p is None:
                skipped["empty_render"] += 1
                continue
            if not p.answer_choices:
                skipped["no_choices"] += 1
                continue
            if p.target not in p.answer_choices:
                skipped["target_not_in_choices"] += 1
                continue
            prompts.append(
                MCPrompt(task.name, t.name, i, p.instruction, list(p.answer_choices), p.answer_choices.index(p.target))
            )
    if not prompts:
        raise InputError(f"task {task.name}: no prompt rendered from {path} (skipped: {dict(skipped)})")
    info = {
        "key": task.key,
        "path": str(path),
        **({"split": task.split} if path.startswith(HUB_PREFIX) and task.split else {}),
        "sha256": file_sha256(path),
        "n_examples": len(examples),
        "templates": [t.name for t in templates],
        "n_prompts": len(prompts),
        "skipped": dict(skipped),
    }
    return prompts, info


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 of a data file; None for folders and hub ids."""
    return sha256_file(path) if Path(path).is_file() else None


# --------------------------------------------------------------------------- methods
def cappy_predictions(scorer: Any, prompts: Sequence[MCPrompt]) -> tuple[np.ndarray, list[list[float]]]:
    """One batched ``score_groups`` call over every (instruction, choice) pair; argmax per prompt (ties to the
    first). Example: ``preds, scores = cappy_predictions(scorer, prompts)``"""
    groups = scorer.score_groups(
        [p.instruction for p in prompts], [p.choices for p in prompts], show_progress_bar=False
    )
    preds = np.array([int(np.argmax(s)) for s in groups], dtype=np.int64)
    return preds, [[float(x) for x in s] for s in groups]


def llm_predictions(
    loglik: Any, prompts: Sequence[MCPrompt], progress: Callable[[int], None] | None = None
) -> dict[str, np.ndarray]:
    """Rank classification by summed and by per-token mean log-likelihood (both from one pass)."""
    sums, means = [], []
    for p in prompts:
        values = loglik.loglik(p.instruction, p.choices)
        s = np.array([v[0] for v in values])
        m = np.array([v[0] / max(v[1], 1) for v in values])
        sums.append(int(np.argmax(s)))
        means.append(int(np.argmax(m)))
        if progress:
            progress(1)
    return {"llm_sum": np.array(sums), "llm_mean": np.array(means)}


def accuracy_tables(prompts: Sequence[MCPrompt], correct: np.ndarray) -> tuple[dict[str, float], dict[str, dict]]:
    """Per-task accuracy pooled over templates and examples, and per-(task, template) accuracy."""
    per_task: dict[str, list[float]] = defaultdict(list)
    per_tpl: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p, c in zip(prompts, correct):
        per_task[p.task].append(float(c))
        per_tpl[p.task][p.template].append(float(c))
    tasks = {t: float(np.mean(v)) for t, v in per_task.items()}
    tpls = {t: {k: float(np.mean(v)) for k, v in d.items()} for t, d in per_tpl.items()}
    return tasks, tpls


def paired_bootstrap(
    prompts: Sequence[MCPrompt], a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0
) -> dict[str, float]:
    """95% interval of mean-over-tasks accuracy(a) - accuracy(b), resampling examples within each task.

    All templates of one example move together (they are not independent). ``a``, ``b``: per-prompt 0/1 (or
    expected accuracy for chance). Example: ``paired_bootstrap(prompts, cappy_correct, llm_correct)``
    """
    rng = np.random.default_rng(seed)
    groups: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, p in enumerate(prompts):
        groups[p.task][p.example_index].append(i)
    diffs = np.zeros(n)
    point = []
    for by_ex in groups.values():
        ex_ids = list(by_ex)
        da = np.array([a[by_ex[e]].sum() for e in ex_ids], dtype=float)
        db = np.array([b[by_ex[e]].sum() for e in ex_ids], dtype=float)
        cnt = np.array([len(by_ex[e]) for e in ex_ids], dtype=float)
        point.append((da.sum() - db.sum()) / cnt.sum())
        draws = rng.integers(0, len(ex_ids), size=(n, len(ex_ids)))
        diffs += (da[draws].sum(1) - db[draws].sum(1)) / cnt[draws].sum(1)
    diffs /= len(groups)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": float(np.mean(point)), "ci_low": float(lo), "ci_high": float(hi), "resamples": n}


# --------------------------------------------------------------------------- the whole run
def evaluate_mc(
    tasks: Sequence[MCTask],
    methods: Sequence[str],
    cfg: MCConfig,
    scorer: Any = None,
    loglik: Any = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``methods`` on ``tasks``; returns the results dict (see :func:`cappy.evaluate.report.write_run`).

    Example: ``evaluate_mc([MCTask.parse("super_glue/rte=rte.jsonl")], ["cappy"], MCConfig(), scorer=scorer)``
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    if "cappy" in methods and scorer is None:
        raise InputError("method 'cappy' needs a scorer (--model)")
    if any(m.startswith("llm_") for m in methods) and loglik is None:
        raise InputError("methods llm_sum/llm_mean need an LLM (--llm)")
    names = [t.name for t in tasks]
    dupes = [n for n, c in Counter(names).items() if c > 1]
    if dupes:
        raise InputError(f"task names must be unique, repeated: {dupes} (name them NAME:DATASET=PATH)")
    from tqdm.auto import tqdm

    all_prompts: list[MCPrompt] = []
    task_info: dict[str, Any] = {}
    for t in tasks:
        prompts, info = build_prompts(t, cfg)
        all_prompts += prompts
        task_info[t.name] = info
        logger.info(
            "%s: %d prompts from %d examples x %d templates",
            t.name,
            len(prompts),
            info["n_examples"],
            len(info["templates"]),
        )
    gold = np.array([p.gold for p in all_prompts])
    preds: dict[str, np.ndarray] = {}
    correct: dict[str, np.ndarray] = {}
    extra: dict[str, Any] = {}
    if "cappy" in methods:
        preds["cappy"], extra["cappy_scores"] = cappy_predictions(scorer, all_prompts)
    if any(m.startswith("llm_") for m in methods):
        with tqdm(total=len(all_prompts), desc="LLM log-likelihood", unit="prompt", disable=not show_progress) as bar:
            llm = llm_predictions(loglik, all_prompts, bar.update)
        for m in ("llm_sum", "llm_mean"):
            if m in methods:
                preds[m] = llm[m]
    for m, p in preds.items():
        correct[m] = (p == gold).astype(float)
    if "chance" in methods:
        correct["chance"] = np.array([1.0 / len(p.choices) for p in all_prompts])
    results: dict[str, Any] = {"metric": "accuracy", "suite": "mc", "methods": {}, "tasks": task_info}
    for m in methods:
        per_task, per_tpl = accuracy_tables(all_prompts, correct[m])
        results["methods"][m] = {
            "mean": float(np.mean([per_task[n] for n in names])),
            "per_task": {n: per_task[n] for n in names},
            "per_template": per_tpl,
        }
    results["comparisons"] = {}
    for a in methods:
        for b in methods:
            if a != b and a == "cappy":
                results["comparisons"][f"{a} - {b}"] = paired_bootstrap(
                    all_prompts, correct[a], correct[b], seed=cfg.seed
                )
    if "llm_sum" in methods and "llm_mean" in methods and "cappy" in methods:
        best = max(("llm_sum", "llm_mean"), key=lambda m: results["methods"][m]["mean"])
        results["comparisons"]["cappy - best_llm"] = {"against": best, **results["comparisons"][f"cappy - {best}"]}
    results["predictions"] = [
        {
            "task": p.task,
            "template": p.template,
            "example_index": p.example_index,
            "gold": p.gold,
            "n_choices": len(p.choices),
            **{m: int(preds[m][i]) for m in preds},
        }
        for i, p in enumerate(all_prompts)
    ]
    results["sample"] = {
        "max_examples": cfg.max_examples,
        "max_templates": cfg.max_templates,
        "seed": cfg.seed,
        "n_prompts": len(all_prompts),
    }
    return results
