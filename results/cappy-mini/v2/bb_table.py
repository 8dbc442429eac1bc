"""The session-6 table of issue 15 with the v2 candidate beside v1: `python bb_table.py <v2 results.json>`."""

import json
import sys

v2 = json.load(open(sys.argv[1]))
v1 = json.load(open("results/cappy-mini/bigbench-adapt/all12/results.json"))
cols = ["first:greedy", "self_score_sum", "self_score_mean", "oracle:rouge_l"]
extra = [(v1, "cappy"), (v1, "cappy_adapted"), (v2, "cappy"), (v2, "cappy_adapted")]


def per_task(r, m, t):
    return 100 * r["methods"][m]["per_task"][t]


def mean(r, m):
    return 100 * r["methods"][m]["mean"]


print("| Task | " + " | ".join(cols) + " | v1 zero-shot | v1 adapted | v2 cand. zero-shot | v2 cand. adapted |")
print("|---" * (len(cols) + 5) + "|")
for t in v2["methods"]["cappy"]["per_task"]:
    cells = [per_task(v2, c, t) for c in cols] + [per_task(r, m, t) for r, m in extra]
    print(f"| {t} | " + " | ".join(f"{x:.1f}" for x in cells) + " |")
cells = [mean(v2, c) for c in cols] + [mean(r, m) for r, m in extra]
print("| **Mean** | " + " | ".join(f"**{x:.1f}**" for x in cells) + " |")
print(json.dumps(v2.get("comparisons", {}))[:1500])
