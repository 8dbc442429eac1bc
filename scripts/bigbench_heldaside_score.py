"""Rescore already adapted models on held-aside train prompts, with no new training: per task, every baseline, the
shipped scorer zero-shot, and the adapted model (optionally mixed with the pretrained weights, WiSE-FT style) picking
among one or more candidate pools of the same prompts. Validation prompts are never read.

The held-aside prompts are those of ``scripts/bigbench_adapt_select.py`` (same hash rule, ``--max-train`` sample);
``--run`` is one of its setting folders (``<out>/<setting>``, a ``<task>/model`` per task). With several ``--run``
(e.g. the same setting under other training seeds) each further run is scored alone (``run<i>``), and all of them
together as a uniform weight average (``soup``) and as the mean of their scores (``ensemble``).

Reproduces the held-aside comparisons of docs/EXPERIMENTS.md that need no training: WiSE-FT mixes of the adapted
weights, the 17-candidate pool, soups and score ensembles of three training seeds.

Example:
    python scripts/bigbench_heldaside_score.py --run ~/.cache/cappy/runs/sel8/B/mm8_4k_b32 \\
        --pool cpu8_stop=cpu8_stop@results/gemma-270m/bigbench-adapt-train/gens.jsonl --alpha 0.5 --alpha 1 \\
        --out heldaside.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from cappy import Cappy
from cappy.boost import boost_candidates
from cappy.data.bigbench import held_aside
from cappy.evaluate.bigbench import BBConfig, strategies_for, task_prompts
from cappy.generate import CandidateSource
from cappy.generate.base import Candidate


def parse_pool(spec: str) -> tuple[str, str, str, int | None]:
    """``NAME=RECIPE@GENS[#CUT]`` -> (name, recipe, cache, cut): CUT keeps each candidate's first CUT tokens."""
    name, _, rest = spec.partition("=")
    recipe, _, gens = rest.partition("@")
    gens, _, cut = gens.partition("#")
    if not name or not recipe or not gens or (cut and not cut.isdigit()):
        raise SystemExit(f"--pool {spec!r}: expected NAME=RECIPE@GENS[#CUT]")
    return name, recipe, gens, int(cut) if cut else None


def cut_candidates(cands: list[list[Candidate]], tokens: int) -> list[list[Candidate]]:
    """Each candidate's first ``tokens`` tokens under the packaged Gemma tokenizer: what ``max_new_tokens=tokens``
    would have produced for the same samples (up to re-tokenization of the text)."""
    import llama_cpp

    from cappy.generate.llamacpp import gemma_gguf_path

    vocab = llama_cpp.Llama(str(gemma_gguf_path()), vocab_only=True, verbose=False)
    out = []
    for cs in cands:
        row = []
        for c in cs:
            toks = vocab.tokenize(c.text.encode(), add_bos=False, special=True)
            text = vocab.detokenize(toks[:tokens]).decode("utf-8", errors="ignore") if len(toks) > tokens else c.text
            row.append(replace(c, text=text))
        out.append(row)
    return out


class _Ensemble:
    """The mean of several scorers' scores (duck-types the ``score_groups`` that boosting calls)."""

    def __init__(self, members: list[Cappy]) -> None:
        self.members = members

    def score_groups(self, instructions: list[str], groups: list[list[str]]) -> list[np.ndarray]:
        per = [m.score_groups(instructions, groups, show_progress_bar=False) for m in self.members]
        return [np.mean([p[i] for p in per], axis=0) for i in range(len(instructions))]


def _picked(prompts: list[str], cands: list, scorer: object, refs: list, seed: int) -> float:
    picked = boost_candidates(prompts, cands, scorer, ["cappy"], refs, seed=seed)
    return float(np.mean([r.metric["cappy"] for r in picked]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--run", action="append", required=True, help="a setting folder of bigbench_adapt_select.py (<task>/model)"
    )
    ap.add_argument("--pool", action="append", required=True, help="NAME=RECIPE@GENS[#CUT], repeatable")
    ap.add_argument("--alpha", type=float, action="append", default=None, help="weight of the adapted model")
    ap.add_argument("--task", action="append", default=None, help="only these task names")
    ap.add_argument("--bigbench", default="../shared/data/bigbench")
    ap.add_argument("--max-train", type=int, default=100)
    ap.add_argument("--held-fraction", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="cappy-mini")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    alphas = args.alpha or [1.0]
    pools = [parse_pool(p) for p in args.pool]
    base = Cappy.from_pretrained(args.model, device="cpu")
    base_sd = {k: v.clone() for k, v in base.model.state_dict().items()}
    mixed = Cappy.from_pretrained(args.model, device="cpu")
    runs = [Path(r).expanduser() for r in args.run]
    folders = sorted(p for p in runs[0].iterdir() if (p / "model" / "config.json").is_file())
    table: dict[str, dict[str, dict]] = {}
    for folder in folders:
        if args.task and folder.name not in args.task:
            continue
        cfg = BBConfig(max_examples=0, max_train=args.max_train, seed=args.seed)
        name, train, _ = task_prompts(Path(args.bigbench) / folder.name, cfg)
        held = [ex for ex in train if held_aside(ex.input, args.held_fraction, args.seed)]
        prompts, refs = [ex.input for ex in held], [list(ex.references) for ex in held]
        tuned = Cappy.from_pretrained(folder / "model", device="cpu")
        tuned_sd = tuned.model.state_dict()
        others = [Cappy.from_pretrained(r / folder.name / "model", device="cpu") for r in runs[1:]]
        mixed.max_length, mixed.instruction_truncation = tuned.max_length, tuned.instruction_truncation
        for pool, recipe, gens, cut in pools:
            cands = CandidateSource(recipe, cache=gens, seed=args.seed).get(prompts)
            if cut:
                cands = cut_candidates(cands, cut)
            strategies = strategies_for(cands, with_cappy=True)
            res = boost_candidates(prompts, cands, base, strategies, refs, seed=args.seed)
            row: dict[str, float] = {s: float(np.mean([r.metric[s] for r in res])) for s in strategies}
            for a in alphas:
                sd = {k: (1 - a) * v + a * tuned_sd[k] if v.is_floating_point() else v for k, v in base_sd.items()}
                mixed.model.load_state_dict(sd)
                picked = boost_candidates(prompts, cands, mixed, ["cappy"], refs, seed=args.seed)
                row[f"adapted@{a:g}"] = float(np.mean([r.metric["cappy"] for r in picked]))
            if others:
                members = [tuned, *others]
                for i, m in enumerate(others, 1):
                    row[f"run{i}"] = _picked(prompts, cands, m, refs, args.seed)
                sds = [m.model.state_dict() for m in members]
                soup = {
                    k: sum(sd[k] for sd in sds) / len(sds) if v.is_floating_point() else v for k, v in base_sd.items()
                }
                mixed.model.load_state_dict(soup)
                row["soup"] = _picked(prompts, cands, mixed, refs, args.seed)
                row["ensemble"] = _picked(prompts, cands, _Ensemble(members), refs, args.seed)
            row["n_held"] = len(prompts)
            table.setdefault(pool, {})[name] = row
            print(pool, name, {k: round(100 * v, 1) for k, v in row.items() if k != "n_held"}, flush=True)
        Path(args.out).write_text(json.dumps(table, indent=2) + "\n")
    for pool, rows in table.items():
        methods = [m for m in next(iter(rows.values())) if m != "n_held"]
        print(f"\n{pool}\n| task | " + " | ".join(methods) + " |")
        for t, row in rows.items():
            print(f"| {t} | " + " | ".join(f"{100 * row[m]:.1f}" for m in methods) + " |")
        means = [f"**{100 * np.mean([r[m] for r in rows.values()]):.1f}**" for m in methods]
        print("| **mean** | " + " | ".join(means) + " |")


if __name__ == "__main__":
    main()
