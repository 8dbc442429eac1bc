"""`cappy eval mc|bigbench` and `cappy report`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate scorers and LLM baselines on task suites")
    esub = p.add_subparsers(dest="suite", metavar="<suite>")
    esub.required = True

    mc = esub.add_parser("mc", help="zero-shot multiple-choice classification (PromptSource templates)")
    mc.add_argument(
        "--task", action="append", default=[], help="DATASET[/CONFIG]=PATH, repeatable (default: the held-out suite)"
    )
    mc.add_argument("--max-examples", type=int, default=100, help="seeded sample of examples per task (0 = all)")
    mc.add_argument("--max-templates", type=int, default=5, help="templates per task, original-task ones first")
    mc.add_argument("--seed", type=int, default=0)
    mc.add_argument("--methods", default="cappy,llm_sum,llm_mean,chance", help="comma-separated")
    mc.add_argument("--list-methods", action="store_true", help="print the method names and exit")
    mc.add_argument("--model", default="cappy-mini", help="Cappy checkpoint for the 'cappy' method")
    mc.add_argument("--llm", default="llamacpp", help="llamacpp[:GGUF] or hf:PATH for the llm_* methods")
    mc.add_argument("--llm-cache", default=None, help="log-likelihood cache (default: OUT/loglik_cache.jsonl)")
    mc.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    mc.add_argument("--device", default="auto")
    mc.add_argument("--out", required=False, default=None, help="output folder")
    mc.add_argument("--no-progress", action="store_true")
    mc.add_argument("--no-plots", action="store_true")
    mc.add_argument("--allow-contaminated", action="store_true", help="skip the contamination guard")
    mc.set_defaults(func=run_mc)

    r = sub.add_parser("report", help="merge the results of several eval runs into one markdown table")
    r.add_argument("dirs", nargs="+", help="eval output folders (each with results.json)")
    r.add_argument("--out", default="-", help="markdown file, or - for stdout")
    r.set_defaults(func=run_report)


def make_loglik(spec: str, cache: Path, threads: int | None = None) -> Any:
    """``llamacpp``, ``llamacpp:/path/model.gguf`` or ``hf:/path/or/id`` -> a cached log-likelihood backend."""
    from cappy.evaluate.loglik import CachedLogLik, HFLogLik, LlamaCppLogLik

    kind, _, arg = spec.partition(":")
    if kind == "llamacpp":
        inner = LlamaCppLogLik(arg or None, n_threads=threads)
    elif kind == "hf":
        if not arg:
            raise ValueError("--llm hf:PATH needs a model path or id")
        inner = HFLogLik(arg)
    else:
        raise ValueError(f"--llm {spec!r}: expected llamacpp[:GGUF] or hf:PATH")
    return CachedLogLik(inner, cache)


def run_mc(args: argparse.Namespace) -> int:
    from cappy.evaluate.guard import check_contamination
    from cappy.evaluate.mc import DEFAULT_SUITE, METHODS, SHARED, MCConfig, MCTask, evaluate_mc, file_sha256
    from cappy.evaluate.report import write_run

    if args.list_methods:
        for name, desc in METHODS.items():
            print(f"{name:10s} {desc}")
        return 0
    if not args.out:
        raise ValueError("--out DIR is required")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; `cappy eval mc --list-methods` lists them")
    if args.task:
        tasks = [MCTask.parse(s) for s in args.task]
    else:
        tasks = [MCTask(name, key, str(SHARED / "heldout" / f)) for name, key, f in DEFAULT_SUITE]
    for t in tasks:
        if not Path(t.path).exists():
            raise FileNotFoundError(f"task {t.name}: {t.path} does not exist")
    cfg = MCConfig(max_examples=args.max_examples or None, max_templates=args.max_templates or None, seed=args.seed)
    out = Path(args.out)
    meta: dict[str, Any] = {"models": {}, "command": args.command_line}
    scorer = loglik = None
    if "cappy" in methods:
        from cappy.model import Cappy, resolve_model_path

        path = resolve_model_path(args.model)
        if not args.allow_contaminated:
            check_contamination(
                path if Path(path).is_dir() else None, [(t.name, t.key, file_sha256(t.path)) for t in tasks]
            )
        scorer = Cappy.from_pretrained(path, device=args.device)
        meta["models"]["cappy"] = {"name": args.model, "path": path, "sha256": _weights_sha(path)}
    if any(m.startswith("llm_") for m in methods):
        loglik = make_loglik(args.llm, Path(args.llm_cache or out / "loglik_cache.jsonl"), args.threads)
        meta["models"]["llm"] = {"spec": args.llm, "model_id": loglik.model_id}
    results = evaluate_mc(tasks, methods, cfg, scorer=scorer, loglik=loglik, show_progress=not args.no_progress)
    write_run(results, out, meta, plots=not args.no_plots)
    print((out / "report.md").read_text())
    return 0


def _weights_sha(path: str) -> str | None:
    from cappy.evaluate.mc import file_sha256

    p = Path(path) / "model.safetensors"
    return file_sha256(p) if p.is_file() else None


def run_report(args: argparse.Namespace) -> int:
    from cappy.evaluate.report import merge_reports
    from cappy.io import atomic_write

    text = merge_reports(args.dirs)
    with atomic_write(args.out) as f:
        f.write(text)
    if args.out != "-":
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
