r"""Per held-aside train prompt of the 9 short kept tasks (the hash rule of scripts/bigbench_adapt_select.py):
each cpu8_stop candidate's Rouge-L against the references, the pairwise Rouge-L between candidates, the LLM
log-likelihoods, and the scores of the shipped cappy-mini (v1) and of each adapted run given as NAME=DIR
(DIR/<task>/model, e.g. the session-10 seeds). Validation prompts are never read. Writes scores.jsonl here.

    .venv/bin/python results/cappy-mini/bigbench-adapt/session11-consensus/heldaside/dump.py \
        s42=~/.cache/cappy/runs/sel10/S42/s42 s43=~/.cache/cappy/runs/sel10/S43/s43 \
        s44=~/.cache/cappy/runs/sel10/S44/s44
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "scripts"))
from bigbench_adapt_select import held_aside  # noqa: E402

from cappy import Cappy  # noqa: E402
from cappy.evaluate.bigbench import BBConfig, task_prompts  # noqa: E402
from cappy.generate import CandidateSource  # noqa: E402
from cappy.metrics import rouge_l  # noqa: E402

TASKS = (
    "unnatural_in_context_learning repeat_copy_logic simp_turing_concept sufficient_information physics_questions "
    "matrixshapes list_functions few_shot_nlg linguistics_puzzles"
).split()
src = CandidateSource("cpu8_stop", cache=ROOT / "results/gemma-270m/bigbench-adapt-train/gens.jsonl", seed=0)
v1 = Cappy.from_pretrained("cappy-mini", device="cpu")
runs = dict(a.split("=", 1) for a in sys.argv[1:])
with open(Path(__file__).parent / "scores.jsonl", "w") as out:
    for t in TASKS:
        _, train, _ = task_prompts(ROOT.parent / "shared/data/bigbench" / t, BBConfig(max_examples=0, max_train=100))
        held = [ex for ex in train if held_aside(ex.input, 0.25, 0)]
        models = {k: Cappy.from_pretrained(f"{v}/{t}/model", device="cpu") for k, v in runs.items()}
        for ex, cs in zip(held, src.get([ex.input for ex in held])):
            texts = [c.text for c in cs]
            row = {
                "task": t,
                "rouge": [rouge_l(x, ex.references) for x in texts],
                "pair": [[rouge_l(a, [b]) for b in texts] for a in texts],
                "lp_sum": [c.logprob_sum for c in cs],
                "v1": v1.score([ex.input] * len(texts), texts).tolist(),
            }
            for k, m in models.items():
                row[k] = m.score([ex.input] * len(texts), texts).tolist()
            out.write(json.dumps(row) + "\n")
        print(t, flush=True)
