import json, sys
v2 = json.load(open(sys.argv[1]))
v1 = json.load(open("results/cappy-mini/bigbench-adapt/all12/results.json"))
cols = ["first:greedy", "self_score_sum", "self_score_mean", "oracle:rouge_l"]
print("| Task | " + " | ".join(cols) + " | v1 zero-shot | v1 adapted | v2 cand. zero-shot | v2 cand. adapted |")
print("|---" * (len(cols) + 5) + "|")
g = lambda r, m, t: 100 * r["methods"][m]["per_task"][t]
for t in v2["methods"]["cappy"]["per_task"]:
    print(f"| {t} | " + " | ".join(f"{g(v2, c, t):.1f}" for c in cols)
          + f" | {g(v1, 'cappy', t):.1f} | {g(v1, 'cappy_adapted', t):.1f} | {g(v2, 'cappy', t):.1f} | {g(v2, 'cappy_adapted', t):.1f} |")
m = lambda r, k: 100 * r["methods"][k]["mean"]
print("| **Mean** | " + " | ".join(f"**{m(v2, c):.1f}**" for c in cols)
      + f" | **{m(v1, 'cappy'):.1f}** | **{m(v1, 'cappy_adapted'):.1f}** | **{m(v2, 'cappy'):.1f}** | **{m(v2, 'cappy_adapted'):.1f}** |")
print(json.dumps(v2.get("comparisons", {}))[:1500])
