"""Selection rules on the held-aside scores of dump.py (scores.jsonl): Cappy's argmax, consensus (uniform MBR: mean
Rouge-L against the other candidates), Cappy score + lambda x consensus ("mix"), and MBR with the candidates
weighted by softmax(score / T) ("wmbr"). Rouge-L x100 per task and the mean over the 9 tasks (last column).

    .venv/bin/python results/cappy-mini/bigbench-adapt/session11-consensus/heldaside/mix.py > mix.txt
"""

import json
from pathlib import Path

import numpy as np

rows = [json.loads(line) for line in open(Path(__file__).parent / "scores.jsonl")]
tasks = list(dict.fromkeys(r["task"] for r in rows))


def pick(r, key, how, lam=0.0, t=1.0):
    s, p = np.array(r[key]), np.array(r["pair"])
    n = len(s)
    agree = (p.sum(1) - np.diag(p)) / (n - 1)
    if how == "argmax":
        v = s
    elif how == "mbr":
        v = agree
    elif how == "wmbr":
        w = np.exp((s - s.max()) / t)
        v = np.array([(w * p[i]).sum() - w[i] * p[i, i] for i in range(n)]) / w.sum()
    else:
        v = s + lam * agree
    return r["rouge"][int(np.argmax(v))]


def report(label, f):
    per = {t: np.mean([f(r) for r in rows if r["task"] == t]) for t in tasks}
    mean = 100 * np.mean(list(per.values()))
    print(f"{label:28s}", " ".join(f"{100 * v:5.1f}" for v in per.values()), f"| {mean:.2f}")


print(" " * 28, " ".join(t[:5] for t in tasks))
report("oracle", lambda r: max(r["rouge"]))
report("mbr uniform", lambda r: pick(r, "v1", "mbr"))
report("self_sum", lambda r: r["rouge"][int(np.argmax(r["lp_sum"]))])
for k in [k for k in ("v1", "s42", "s43", "s44") if k in rows[0]]:
    report(f"{k} argmax", lambda r, k=k: pick(r, k, "argmax"))
    for lam in (0.1, 0.2, 0.3, 0.5, 1.0):
        report(f"{k} mix {lam}", lambda r, k=k, lam=lam: pick(r, k, "mix", lam))
    for t in (0.05, 0.1, 0.2):
        report(f"{k} wmbr T{t}", lambda r, k=k, t=t: pick(r, k, "wmbr", t=t))
