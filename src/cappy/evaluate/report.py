"""Run outputs: results.json (every number and how it was made), predictions.jsonl, report.md and PNG plots.

Every metric value in results.json (accuracy, Rouge-L, bootstrap differences) is a fraction in [0, 1], in every
version of the file; the reports show them x100, through :func:`x100` only.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cappy.errors import InputError
from cappy.io import atomic_write, dumps


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("cappy", "torch", "transformers", "tokenizers", "numpy", "rouge_score", "llama_cpp"):
        try:
            mod = __import__(name)
            out[name] = str(getattr(mod, "__version__", "?"))
        except ImportError:
            continue
    return out


def write_run(
    results: dict[str, Any], out_dir: str | Path, meta: dict[str, Any] | None = None, plots: bool = True
) -> Path:
    """Write ``results.json``, ``predictions.jsonl``, ``report.md`` and plots into ``out_dir``.

    Example: ``write_run(evaluate_mc(...), "runs/eval/mc", {"models": {...}})``
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = dict(results)
    predictions = results.pop("predictions", None)
    results.update(meta or {})
    results.setdefault("command", " ".join(sys.argv))
    results.setdefault("date", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    results.setdefault("versions", library_versions())
    with atomic_write(out / "results.json") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
        f.write("\n")
    if predictions is not None:
        with atomic_write(out / "predictions.jsonl") as f:
            for row in predictions:
                f.write(dumps(row) + "\n")
    with atomic_write(out / "report.md") as f:
        f.write(markdown_report([results], title=f"cappy eval {results.get('suite', '')}".strip()))
    if plots:
        write_plots(results, out)
    return out


#: Reports show fractions as points: x100.
SCALE = 100.0


def x100(value: float) -> float:
    """A fraction as report points (the one place results are scaled). Example: ``x100(0.236)`` -> 23.6"""
    return SCALE * value


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x100(x):.1f}"


def _mean_of(column: dict[str, float], tasks: Sequence[str]) -> float | None:
    """The mean of a published column over the run's tasks (when the run is not the whole suite, whose printed
    mean is kept); None unless the column has every one of them."""
    values = [column[t] for t in tasks if t in column]
    return sum(values) / len(values) if values and len(values) == len(tasks) else None


def markdown_report(runs: Sequence[dict[str, Any]], title: str = "cappy report") -> str:
    """Tasks as rows, methods as columns (then a suite's published columns, e.g. the paper's), the mean last (laid
    out like the paper's tables)."""
    lines = [f"# {title}", ""]
    for run in runs:
        metric = run.get("metric", "?")
        methods = list(run["methods"])
        tasks: list[str] = []
        for m in methods:
            tasks += [t for t in run["methods"][m]["per_task"] if t not in tasks]
        label = run.get("label") or run.get("suite", "")
        lines += [f"## {label} — {metric} x100", ""]
        if "sample" in run:
            lines += [f"Sample: {json.dumps(run['sample'])}", ""]
        if "command" in run:
            lines += [f"Command: `{run['command']}`", ""]
        published = (run.get("published") or {}).get("columns") or {}
        published_means = (run.get("published") or {}).get("means") or {}
        lines.append("| Task | " + " | ".join([*methods, *published]) + " |")
        lines.append("|---|" + "---|" * (len(methods) + len(published)))
        for t in tasks:
            row = [_fmt(run["methods"][m]["per_task"].get(t)) for m in methods]
            row += [_fmt(col.get(t)) for col in published.values()]
            lines.append(f"| {t} | " + " | ".join(row) + " |")
        means = [run["methods"][m]["mean"] for m in methods]
        means += [published_means.get(name, _mean_of(col, tasks)) for name, col in published.items()]
        lines.append("| **Mean** | " + " | ".join(f"**{_fmt(v)}**" for v in means) + " |")
        lines.append("")
        if published:
            lines += [f"Published columns ({', '.join(published)}): {run['published'].get('source', '?')}", ""]
        comps = run.get("comparisons") or {}
        if comps:
            lines += ["Paired bootstrap (95% interval, x100):", ""]
            for name, c in comps.items():
                against = ""
                if "against" in c:
                    best = name.endswith(("best_baseline", "best_llm"))
                    against = f" (best LLM = {c['against']})" if best else f" ({c['against']})"
                diff, lo, hi = (x100(c[k]) for k in ("diff", "ci_low", "ci_high"))
                lines.append(f"- {name}{against}: {diff:+.1f} [{lo:+.1f}, {hi:+.1f}]")
            lines.append("")
    return "\n".join(lines)


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """``per_task.png`` (bars per task and method) and ``headline.png`` (mean per method)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    import numpy as np

    methods = list(results["methods"])
    tasks = list(next(iter(results["methods"].values()))["per_task"]) if methods else []
    paths = []
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(tasks) + 2), 4))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(tasks))
    for i, m in enumerate(methods):
        vals = [x100(results["methods"][m]["per_task"].get(t) or 0) for t in tasks]
        ax.bar(x + i * width, vals, width, label=m)
    ax.set_xticks(x + width * (len(methods) - 1) / 2)
    ax.set_xticklabels(tasks, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{results.get('metric', '')} x100")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "per_task.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(methods) + 2), 3.5))
    means = [x100(results["methods"][m]["mean"]) for m in methods]
    ax.bar(methods, means, color=["C3" if m.startswith("cappy") else "C0" for m in methods])
    for i, v in enumerate(means):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(f"mean {results.get('metric', '')} x100")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    paths.append(out / "headline.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def merge_reports(dirs: Sequence[str | Path]) -> str:
    """One markdown document from several run folders. Example: ``print(merge_reports(["runs/a", "runs/b"]))``"""
    runs = []
    for d in dirs:
        p = Path(d) / "results.json"
        if not p.is_file():
            raise FileNotFoundError(f"{d}: no results.json (is it a `cappy eval` output folder?)")
        try:
            run = json.loads(p.read_text())
        except ValueError as err:
            raise InputError(f"{p}: not a cappy results file (malformed JSON: {err})") from None
        if not isinstance(run, dict) or "methods" not in run:
            raise InputError(f"{p}: not a cappy results file (no 'methods')")
        run.setdefault("label", f"{Path(d).name} ({run.get('suite', '?')})")
        runs.append(run)
    return markdown_report(runs)
