"""Two more ways to pick among the held-aside candidates, from per-candidate scores already dumped (no training):
the adapted cappy-mini seeds of session 10 (s42, s43, s44) plus lam x the LLM's own log-likelihood (per token:
"+mean", summed: "+sum"), each z-normalised within the prompt; and the seeds plus the fresh all-mpnet-base-v2 adapted
in session 12 ("+mp": z-scores weighted w, or raw scores added). Rouge-L x100 per task and the mean (last column).

    .venv/bin/python results/cappy-mini/bigbench-adapt/session13-mixes/mixes.py > mixes.txt
"""

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
rows = [json.loads(line) for line in open(HERE.parent / "session11-consensus/heldaside/scores.jsonl")]


def z(v):
    v = np.asarray(v, float)
    s = v.std()
    return (v - v.mean()) / (s if s > 0 else 1.0)


def report(rows, label, f):
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    per = [np.mean([f(r) for r in rows if r["task"] == t]) for t in tasks]
    print(f"{label:20s}", " ".join(f"{100 * v:5.1f}" for v in per), f"| {100 * np.mean(per):.2f}")


def mean_lp(r):
    return np.array(r["lp_sum"]) / np.array(r["ntok"])


def best(r, v):
    return r["rouge"][int(np.argmax(v))]


print("1. adapted cappy-mini + LLM log-likelihood, 9 tasks")
print(" " * 20, " ".join(t[:5] for t in dict.fromkeys(r["task"] for r in rows)))
for k in ("s42", "s43", "s44"):
    report(rows, k, lambda r, k=k: best(r, r[k]))
    for lam in (0.05, 0.1, 0.2, 0.3, 0.5):
        report(rows, f"{k} +mean {lam}", lambda r, k=k, lam=lam: best(r, z(r[k]) + lam * z(mean_lp(r))))
    for lam in (0.1, 0.3):
        report(rows, f"{k} +sum {lam}", lambda r, k=k, lam=lam: best(r, z(r[k]) + lam * z(r["lp_sum"])))

mp = [json.loads(line) for line in open(HERE / "mp_scores.jsonl")]
both = [{**r, "mp": m["mp"]} for r, m in zip(rows, mp)]
assert all(r["task"] == m["task"] for r, m in zip(rows, mp))
print("\n2. adapted cappy-mini + adapted fresh mpnet, the 8 tasks with an mpnet model")
print(" " * 20, " ".join(t[:5] for t in dict.fromkeys(r["task"] for r in both)))
report(both, "oracle", lambda r: max(r["rouge"]))
report(both, "mp", lambda r: best(r, r["mp"]))
for k in ("s42", "s43", "s44"):
    report(both, k, lambda r, k=k: best(r, r[k]))
    for w in (0.5, 1.0):
        report(both, f"{k} +mp z {w}", lambda r, k=k, w=w: best(r, z(r[k]) + w * z(r["mp"])))
    report(both, f"{k} +mp raw", lambda r, k=k: best(r, np.array(r[k]) + np.array(r["mp"])))
report(both, "s42+s43 (z)", lambda r: best(r, z(r["s42"]) + z(r["s43"])))
