"""Print the session-12 held-aside table: cappy-mini (preset, three seeds) beside all-mpnet-base-v2 fresh and after
a short Cappy pretraining. Reads the select.json files of scripts/bigbench_adapt_select.py under ~/.cache/cappy/runs.
Usage: python results/mpnet-probe/table.py"""

import json
from pathlib import Path

R = Path.home() / ".cache/cappy/runs"
TASKS = [
    "unnatural_in_context_learning",
    "repeat_copy_logic",
    "simp_turing_concept",
    "sufficient_information",
    "physics_questions",
    "matrixshapes",
    "list_functions",
    "few_shot_nlg",
    "linguistics_puzzles",
]


def load(*paths: str) -> dict:
    out: dict = {}
    for p in paths:
        f = R / p / "select.json"
        if f.exists():
            out.update(json.loads(f.read_text()))
    return out


def adapted(d: dict, task: str) -> float | None:
    v = d.get(task, {})
    keys = [k for k in v if k.startswith("adapted:")]
    return 100 * v[keys[0]] if keys else None


cols = {
    "cappy-mini s42": load("sel10/S42"),
    "cappy-mini s43": load("sel10/S43"),
    "cappy-mini s44": load("sel10/S44"),
    "mpnet fresh": load("joint/MPNET", "joint/MPNET2", "joint/MPNET3"),
    "mpnet pretrained": load("joint/MPNETP1", "joint/MPNETP2", "joint/MPNETP3", "joint/MPNETP4"),
    "mpnet pretrained, lr 3e-5": load("joint/MPNETLR1", "joint/MPNETLR2"),
}
ref = cols["cappy-mini s42"]
print(
    "| task | self_score_mean | consensus | cappy-mini zero-shot | "
    + " | ".join(cols)
    + " | mpnet pretrained zero-shot |"
)
sums: dict[str, list[float]] = {k: [] for k in cols}
MAIN = list(cols)[:5]  # the lr column covers two tasks only: the mean is over the tasks these five share
shared = [t for t in TASKS if all(adapted(cols[k], t) is not None for k in MAIN)]
for t in TASKS:
    cells = [adapted(c, t) for c in cols.values()]
    zs = cols["mpnet pretrained"].get(t, {}).get("cappy")
    cons = next((c[t]["consensus:rouge_l"] for c in cols.values() if "consensus:rouge_l" in c.get(t, {})), None)
    row = [f"{100 * ref[t]['self_score_mean']:.1f}", "" if cons is None else f"{100 * cons:.1f}"]
    row.append(f"{100 * ref[t]['cappy']:.1f}")
    row += ["" if x is None else f"{x:.1f}" for x in cells] + ["" if zs is None else f"{100 * zs:.1f}"]
    print(f"| {t} ({ref[t]['n_fit']} / {ref[t]['n_held']}) | " + " | ".join(row) + " |")
    if t in shared:
        for k, x in zip(cols, cells):
            if k in MAIN:
                sums[k].append(x)
if shared:
    means = " | ".join(f"**{sum(v) / len(v):.1f}**" if v else "" for v in sums.values())
    print(f"| **mean of the {len(shared)} tasks every column has** | | | | {means} | |")
