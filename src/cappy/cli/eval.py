"""`cappy eval mc|bigbench` and `cappy report`."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from cappy.cli import DTYPE_HELP


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
    mc.add_argument(
        "--dtype",
        default="auto",
        help=DTYPE_HELP,
    )
    mc.add_argument("--out", required=False, default=None, help="output folder")
    mc.add_argument("--no-progress", action="store_true")
    mc.add_argument("--no-plots", action="store_true")
    mc.add_argument("--allow-contaminated", action="store_true", help="skip the contamination guard")
    mc.set_defaults(func=run_mc)

    bb = esub.add_parser("bigbench", help="BIG-Bench boosting: select among LLM candidates, Rouge-L x100")
    from cappy.cli.generate import add_backend_args

    bb.add_argument("--task", action="append", default=[], help="BIG-Bench task folder or task.json, repeatable")
    bb.add_argument("--max-tasks", type=int, default=None, help="only the first N tasks of the default suite")
    bb.add_argument("--max-examples", type=int, default=100, help="validation prompts per task (seeded sample)")
    bb.add_argument("--max-train", type=int, default=200, help="train prompts per task for adaptation")
    bb.add_argument("--model", default=None, help="Cappy checkpoint for zero-shot selection (method 'cappy')")
    bb.add_argument("--gens", default=None, help="generation cache JSONL (default: OUT/generations.jsonl)")
    bb.add_argument("--adapt", action="store_true", help="also adapt --model per task (method 'cappy_adapted')")
    bb.add_argument("--adapt-config", default="configs/adapt_paper.yaml", help="training preset for adaptation")
    bb.add_argument(
        "--adapt-scale", type=float, default=0.04, help="fraction of the preset's 102,400 pairs (CPU: ~0.04)"
    )
    bb.add_argument("--adapt-override", action="append", default=[], help="KEY=VALUE for the adaptation config")
    bb.add_argument(
        "--scorer-dtype",
        default="auto",
        help=DTYPE_HELP,
    )
    bb.add_argument("--out", required=True, help="output folder")
    bb.add_argument("--no-progress", action="store_true")
    bb.add_argument("--no-plots", action="store_true")
    bb.add_argument("--allow-contaminated", action="store_true", help="skip the contamination guard")
    add_backend_args(bb, required=False)
    bb.set_defaults(func=run_bigbench)

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
        scorer = Cappy.from_pretrained(path, device=args.device, dtype=args.dtype)
        meta["models"]["cappy"] = {
            "name": args.model,
            "path": path,
            "sha256": _weights_sha(path),
            "precision": scorer.precision,
        }
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


def run_bigbench(args: argparse.Namespace) -> int:
    import yaml

    from cappy.evaluate.bigbench import BBConfig, default_tasks, evaluate_bigbench
    from cappy.evaluate.guard import check_contamination
    from cappy.evaluate.report import write_run
    from cappy.generate.base import load_recipe
    from cappy.generate.cache import generate_to_cache, read_generations

    out = Path(args.out)
    tasks = [Path(t) for t in args.task] or default_tasks()[: args.max_tasks]
    for t in tasks:
        if not t.exists():
            raise FileNotFoundError(f"BIG-Bench task {t} does not exist")
    cfg = BBConfig(max_examples=args.max_examples or None, max_train=args.max_train or None, seed=args.seed)
    gens = Path(args.gens) if args.gens else out / "generations.jsonl"
    recipe = load_recipe(args.recipe)
    meta: dict[str, Any] = {
        "models": {},
        "command": args.command_line,
        "recipe": recipe.to_dict(),
        "generations": str(gens),
    }
    state: dict[str, Any] = {"generator": None}

    def generator() -> Any:
        if state["generator"] is None:
            if not args.backend:
                raise ValueError("candidates are missing from the cache and no --backend is given to generate them")
            from cappy.cli.generate import build_generator

            state["generator"] = build_generator(args)
            meta["models"]["llm"] = state["generator"].model_id
        return state["generator"]

    def get_candidates(task: str, prompts: list[str]) -> dict[str, list[Any]]:
        have = read_generations(gens, recipe=recipe.name, seed=args.seed) if gens.exists() else {}
        missing = [p for p in dict.fromkeys(prompts) if p not in have]
        if missing:
            generate_to_cache(
                generator(),
                [(p, None) for p in missing],
                recipe,
                gens,
                seed=args.seed,
                show_progress=not args.no_progress,
                total=len(missing),
            )
            have = read_generations(gens, recipe=recipe.name, seed=args.seed)
        models = {c.extra.get("model") for p in prompts for c in have.get(p, [])}
        if len(models) > 1:
            raise ValueError(f"{gens} mixes candidates of several models for task {task}: {sorted(models)}")
        meta["models"].setdefault("llm", next(iter(models), None))
        return {p: have[p] for p in prompts if p in have}

    scorers: dict[str, Any] = {}
    adapt = None
    if args.model:
        from cappy.model import Cappy, resolve_model_path

        path = resolve_model_path(args.model)
        if not args.allow_contaminated:
            check_contamination(
                path if Path(path).is_dir() else None, [(t.name, f"bigbench/{t.name}", None) for t in tasks]
            )
        scorers["cappy"] = Cappy.from_pretrained(path, device=args.device, dtype=args.scorer_dtype)
        meta["models"]["cappy"] = {
            "name": args.model,
            "path": path,
            "sha256": _weights_sha(path),
            "precision": scorers["cappy"].precision,
        }
        if args.adapt:
            overrides = {}
            for kv in args.adapt_override:
                k, sep, v = kv.partition("=")
                if not sep:
                    raise ValueError(f"--adapt-override {kv!r}: expected KEY=VALUE")
                overrides[k] = yaml.safe_load(v)

            def adapt(task: str, train: list[Any]) -> Any:
                return adapt_scorer(task, train, path, get_candidates, out / "adapt" / task, args, overrides)

            meta["adaptation"] = {"config": args.adapt_config, "scale": args.adapt_scale, "overrides": overrides}
    elif args.adapt:
        raise ValueError("--adapt needs --model (the pretrained Cappy to adapt)")
    results = evaluate_bigbench(tasks, cfg, get_candidates, scorers, adapt, show_progress=not args.no_progress)
    if state["generator"] is not None:
        state["generator"].close()
    write_run(results, out, meta, plots=not args.no_plots)
    print((out / "report.md").read_text())
    return 0


def adapt_scorer(
    task: str,
    examples: list[Any],
    model_path: str,
    get_candidates: Any,
    out: Path,
    args: argparse.Namespace,
    overrides: dict[str, Any],
) -> Any:
    """Adapt a Cappy to one task: LLM candidates of the train prompts labelled by Rouge-L, then `cappy train`."""
    from cappy.io import atomic_write, dumps
    from cappy.metrics import rouge_l
    from cappy.model import Cappy
    from cappy.train import TrainConfig, train

    best = out / "model"
    if not (best / "config.json").exists():
        cands = get_candidates(task, [ex.input for ex in examples])
        rows = 0
        with atomic_write(out / "pairs.jsonl") as f:
            for ex in examples:
                for c in cands.get(ex.input, []):
                    label = rouge_l(c.text, ex.references)
                    f.write(
                        dumps(
                            {
                                "instruction": ex.input,
                                "response": c.text,
                                "label": label,
                                "task": task,
                                "template": "bigbench",
                                "source": "llm",
                            }
                        )
                        + "\n"
                    )
                    rows += 1
        if rows == 0:
            raise ValueError(f"task {task}: no candidates for its train prompts; cannot adapt")
        settings = {
            "model": model_path,
            "train": [str(out / "pairs.jsonl")],
            "output_dir": str(out / "run"),
            "num_pairs": max(1, int(round(102400 * args.adapt_scale))),
            "progress": not args.no_progress,
            **overrides,
        }
        cfg = TrainConfig.from_yaml(args.adapt_config, settings)
        train(cfg)
        run = out / "run"
        src = run / "best" if (run / "best" / "config.json").exists() else run
        Cappy.from_pretrained(src, device="cpu").save_pretrained(best)
        if (src / "training_data.json").is_file():
            shutil.copy(src / "training_data.json", best / "training_data.json")
    return Cappy.from_pretrained(best, device=args.device, dtype=args.scorer_dtype)
