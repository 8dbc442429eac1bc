"""The demo's runner: ``python -m cappy.demo [--quick] [--fresh]``; see :mod:`cappy.demo` for what it shows."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import time
from collections.abc import Sequence
from typing import Any

from cappy.adaptation import adapt, default_preset
from cappy.boost import boost_candidates
from cappy.demo import (
    ADAPT_TASK,
    COMMITTED_TRAIN_GENS,
    PROMPTS,
    RESAMPLES,
    SEED,
    Interval,
    _best_baseline,
    adaptation_split,
    baseline_strategies,
    best_of_n_candidates,
    choose_demo,
    demo_cache_dir,
    generation_cache,
    intervals,
    load_best_of_n_prompts,
    load_demo_scorer,
    paired_difference,
    pick_table,
    score_demo,
    verdict,
)
from cappy.generate import DEFAULT_RECIPE, CandidateSource, load_recipe
from cappy.generate.llamacpp import LlamaCppGenerator
from cappy.logs import quiet_libraries as quiet
from cappy.paths import shared_data_dir


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` gives it (``/proc/cpuinfo`` on Linux), else what Python knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def quiet_libraries() -> None:
    """No weight-loading bars or info lines from transformers (llama.cpp's generator keeps its own to errors)."""
    quiet()


def _step(msg: str) -> None:
    print(msg, flush=True)


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _print_table(table: dict[str, Interval], n: int, what: str, notes: dict[str, str]) -> None:
    print(f"  Rouge-L x100, mean over {n} {what} [95% bootstrap interval, {RESAMPLES} resamples, seed {SEED}]:")
    for s, iv in table.items():
        print(f"    {s:<18} {iv.show():<22} {notes.get(s, '')}".rstrip())


# --------------------------------------------------------------------------- job 1
def job_scoring(scorer: Any) -> str:
    _step("\n== 1. Scoring and choosing ==")
    rows, right, n = score_demo(scorer)
    print("  score   (instruction -> response)")
    for r in rows:
        mark = "right" if r["correct"] else "wrong"
        print(f"  {r['score']:+.3f}  {_clip(r['instruction'], 60)!r} -> {r['response']!r} ({mark})")
    print(f"  the right response scores above the wrong one for {right} of {n} instructions")
    print("  choose among answer choices")
    questions, chosen_right = choose_demo(scorer)
    for q in questions:
        print(f"    {q['instruction']}")
        print("      " + ", ".join(f"{c['text']} {c['score']:+.3f}" for c in q["ranked"]))
        mark = "the answer" if q["chosen"] == q["answer"] else f"not the answer {q['answer']!r}"
        print(f"      -> chosen: {q['chosen']!r} ({mark})")
    print(f"  chose the answer in {chosen_right} of {len(questions)} questions")
    return (
        f"scoring and choosing: the right response scores above the wrong one for {right} of {n} instructions; "
        f"the answer chosen in {chosen_right} of {len(questions)} multiple-choice questions"
    )


# --------------------------------------------------------------------------- job 2
def _llamacpp_factory() -> Any:
    return LlamaCppGenerator(n_threads=os.cpu_count() or 1)


def job_best_of_n(scorer: Any, fresh: bool) -> str:
    rows = load_best_of_n_prompts()
    recipe = load_recipe(DEFAULT_RECIPE)
    _step(f"\n== 2. Zero-shot best-of-N: Gemma 3 270M, {len(rows)} fixed questions ({PROMPTS / 'best_of_n.jsonl'}) ==")
    decodings = ", ".join(f"{d.name} x{d.n}" for d in recipe.decodings)
    print(
        f"  recipe {recipe.name} (the default): {recipe.num_candidates} candidates per question ({decodings}; "
        f"llama.cpp runs beam as greedy), at most {recipe.max_new_tokens} tokens, cut at {list(recipe.stop)}"
    )
    cache = generation_cache(recipe)
    if fresh:
        cache.unlink(missing_ok=True)
    print(f"  candidates cached in {cache} ({'reused' if cache.exists() else 'generating'})", flush=True)
    prompts = [r["prompt"] for r in rows]
    refs = [r["references"] for r in rows]
    try:
        cands = best_of_n_candidates(prompts, recipe, cache, _llamacpp_factory)
    except (ImportError, FileNotFoundError) as err:
        print(f"  skipped: {err}")
        return f"zero-shot best-of-N: not run here ({err})"
    strategies = ["cappy", *baseline_strategies(cands)]
    start = time.perf_counter()
    res = boost_candidates(prompts, cands, scorer, strategies, refs, seed=SEED, show_progress=True)
    print(f"  scored {sum(len(c) for c in cands)} candidates in {time.perf_counter() - start:.1f} s")
    greedy = strategies[1]
    print(f"  per question: cappy's pick and {greedy}'s, with Rouge-L x100 against the references")
    for row, r in zip(rows, res):
        c, g = r.candidates[r.chosen["cappy"]].text, r.candidates[r.chosen[greedy]].text
        mc, mg = 100 * r.metric["cappy"], 100 * r.metric[greedy]
        print(
            f"    {row['id']:<14} {_clip(row['question'], 34):<34} cappy {_clip(c, 22)!r:<26} {mc:>3.0f}"
            f" | greedy {_clip(g, 22)!r:<26} {mg:>3.0f} | ref {_clip(row['references'][0], 20)!r}"
        )
    per = pick_table(res, strategies)
    table = intervals(per)
    _print_table(table, len(rows), "questions", {"oracle:rouge_l": "(the best candidate: the ceiling)"})
    best = _best_baseline(table)
    d_greedy = paired_difference(per["cappy"], per[greedy])
    d_best = paired_difference(per["cappy"], per[best])
    print(f"  cappy - {greedy}: {d_greedy.show(signed=True)} (paired over questions)")
    if best != greedy:
        print(f"  cappy - {best} (the LM's best own choice here): {d_best.show(signed=True)}")
    line = (
        f"zero-shot best-of-N ({len(rows)} questions, Gemma 3 270M, {recipe.name}): cappy {table['cappy'].show()} vs "
        f"{greedy} {table[greedy].show()}: difference {d_greedy.show(signed=True)}, "
        f"{verdict(d_greedy, 'better on these prompts', 'worse on these prompts')}"
    )
    if best != greedy:
        line += f"; vs {best} {table[best].show()}: {d_best.show(signed=True)}, {verdict(d_best)}"
    return line + f"; oracle {table['oracle:rouge_l'].show()} is the ceiling"


# --------------------------------------------------------------------------- job 3
def job_adaptation(scorer: Any, label: str, fresh: bool, overrides: dict[str, Any]) -> str:
    _step("\n== 3. Adaptation: cappy.adapt on one BIG-Bench task, then best-of-N on its held-aside train prompts ==")
    task_dir = shared_data_dir() / "bigbench" / ADAPT_TASK
    missing = [p for p in (COMMITTED_TRAIN_GENS, task_dir) if not p.exists()]
    if missing:
        note = f"needs the committed candidate cache and the shared BIG-Bench data, missing here: {missing}"
        print(f"  skipped: {note}")
        return f"adaptation: not run here ({note})"
    name, fit, held = adaptation_split(task_dir)
    print(
        f"  task {name} (the cheapest of the 12 adaptation tasks to adapt on CPU; rule in {PROMPTS / 'README.md'}):"
        f" {len(fit) + len(held)} seeded train prompts, {len(fit)} to adapt on, {len(held)} held aside; no"
        " validation prompt is read"
    )
    source = CandidateSource(None, cache=COMMITTED_TRAIN_GENS, seed=SEED)  # whatever recipe the cache holds
    prompts = [ex.input for ex in held]
    refs = [list(ex.references) for ex in held]
    cands = source.get(prompts)
    fit_cands = source.get([ex.input for ex in fit])
    recipes = {c.extra.get("recipe") for cs in cands + fit_cands for c in cs}
    note = "" if recipes == {DEFAULT_RECIPE} else f" (the default recipe is {DEFAULT_RECIPE})"
    print(f"  candidates: {COMMITTED_TRAIN_GENS} (committed; recipe {', '.join(sorted(map(str, recipes)))}){note}")
    strategies = ["cappy", *baseline_strategies(cands)]
    _step("  zero-shot: cappy-mini picks among the held-aside prompts' candidates")
    zero = boost_candidates(prompts, cands, scorer, strategies, refs, seed=SEED, show_progress=True)
    out = demo_cache_dir() / "adapt" / name
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    preset = default_preset("cpu")
    reduced = f", REDUCED from the preset: {overrides}" if overrides else ""
    _step(f"  adapting the scorer on the {len(fit)} fit prompts: preset {preset}{reduced} -> {out}")
    base = "cappy-mini" if label.startswith("cappy-mini") else scorer
    start = time.perf_counter()
    tuned = adapt(
        base, fit, candidates=fit_cands, output_dir=out, task=name, device="cpu", show_progress=True, **overrides
    )
    took = time.perf_counter() - start
    info = tuned.adaptation
    cfg = json.loads((out / "adapt.json").read_text())["config"]
    updates = -(-cfg["num_pairs"] // cfg["batch_size"])
    how = "reused from an earlier run with the same settings and data" if info.reused else f"adapted in {took:.0f} s"
    print(
        f"  {how}: {cfg['num_pairs']} pairs drawn from {info.counts['pairs']} ({info.counts['llm']} candidates, "
        f"{info.counts['gold']} references, {info.counts['mismatched']} mismatched answers), {updates} updates of "
        f"{cfg['batch_size']}, lr {cfg['lr']:g}, max length {cfg['max_length']}"
    )
    _step("  adapted: the adapted scorer picks among the same candidates")
    after = boost_candidates(prompts, cands, tuned, ["cappy"], refs, seed=SEED, show_progress=True)
    per = {"cappy adapted": [float(r.metric["cappy"]) for r in after], **pick_table(zero, strategies)}
    per["cappy zero-shot"] = per.pop("cappy")
    order = ["cappy adapted", "cappy zero-shot", *strategies[1:]]
    table = intervals({s: per[s] for s in order})
    _print_table(table, len(held), "held-aside prompts", {"oracle:rouge_l": "(the best candidate: the ceiling)"})
    best = _best_baseline(table)
    d_zero = paired_difference(per["cappy adapted"], per["cappy zero-shot"])
    d_best = paired_difference(per["cappy adapted"], per[best])
    print(f"  adapted - zero-shot: {d_zero.show(signed=True)}")
    print(f"  adapted - {best} (the best baseline here): {d_best.show(signed=True)}")
    timing = "reused" if info.reused else f"{took:.0f} s to adapt"
    greedy = strategies[1]
    line = (
        f"adaptation ({name}, {len(held)} held-aside train prompts, {timing}{reduced}): adapted "
        f"{table['cappy adapted'].show()} vs zero-shot {table['cappy zero-shot'].show()}: "
        f"{d_zero.show(signed=True)}, {verdict(d_zero)}; vs the best baseline {best} {table[best].show()}: "
        f"{d_best.show(signed=True)}, {verdict(d_best)}"
    )
    if best != greedy:
        line += f"; {greedy} {table[greedy].show()}"
    return line + f"; oracle {table['oracle:rouge_l'].show()} is the ceiling"


# --------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m cappy.demo",
        description="Cappy's three jobs on fixed prompts: scoring and choosing, zero-shot best-of-N on Gemma 3 270M, "
        "and adaptation to one BIG-Bench task; a few minutes on 2 CPU cores.",
    )
    ap.add_argument("--quick", action="store_true", help="skip adaptation (job 3)")
    ap.add_argument(
        "--fresh", action="store_true", help="generate and adapt again instead of reusing ~/.cache/cappy/demo"
    )
    ap.add_argument("--verbose", action="store_true", help="keep the libraries' log lines and loading bars")
    ap.add_argument(
        "--adapt-pairs",
        type=int,
        default=None,
        help="train on this many pairs instead of the preset's (a reduced preset; the printout says so)",
    )
    args = ap.parse_args(argv)
    if args.adapt_pairs is not None and args.adapt_pairs < 1:
        ap.error(f"--adapt-pairs must be >= 1, got {args.adapt_pairs}")
    return args


def main(argv: Sequence[str] | None = None) -> list[str]:
    """Run the demo; returns the closing summary lines (also printed)."""
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.verbose:
        quiet_libraries()
    start = time.perf_counter()
    import torch

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"Cappy demo, {now}; CPU {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    scorer, label = load_demo_scorer()
    print(f"scorer: {label}\n        {scorer!r}", flush=True)
    summary = [job_scoring(scorer), job_best_of_n(scorer, args.fresh)]
    if args.quick:
        summary.append("adaptation: skipped (--quick)")
    else:
        overrides = {"num_pairs": args.adapt_pairs} if args.adapt_pairs else {}
        summary.append(job_adaptation(scorer, label, args.fresh, overrides))
    if not label.startswith("cappy-mini"):
        summary.insert(0, "NOTE: the scorer is an untrained stand-in, so its picks are noise")
    took = time.perf_counter() - start
    print("\n== Where each job stands (the numbers measured above; Rouge-L x100, 95% intervals) ==")
    for line in summary:
        print(f"- {line}")
    print(f"wall time: {took // 60:.0f} min {took % 60:.0f} s")
    return summary


if __name__ == "__main__":
    main()
