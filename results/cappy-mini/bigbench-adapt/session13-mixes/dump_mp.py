r"""Scores of the fresh all-mpnet-base-v2 models adapted with the preset in session 12 (not committed: 440 MB each;
`~/.cache/cappy/runs/joint/MPNET*/preset/<task>/model`) on the held-aside train prompts of the session-11 dump
(`../session11-consensus/heldaside/scores.jsonl`, same rows in the same order). linguistics_puzzles has no such
model (its adaptation was killed for memory), so the file stops after few_shot_nlg. Writes mp_scores.jsonl here.

    .venv/bin/python results/cappy-mini/bigbench-adapt/session13-mixes/dump_mp.py
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "scripts"))
from bigbench_adapt_select import held_aside  # noqa: E402

from cappy import Cappy  # noqa: E402
from cappy.evaluate.bigbench import BBConfig, task_prompts  # noqa: E402
from cappy.generate import CandidateSource  # noqa: E402

RUNS = Path.home() / ".cache/cappy/runs/joint"
WHERE = {"matrixshapes": "MPNET", "physics_questions": "MPNET", "unnatural_in_context_learning": "MPNET"}
WHERE |= {"list_functions": "MPNET2"}  # the other tasks: MPNET3
rows = [json.loads(line) for line in open(HERE.parent / "session11-consensus/heldaside/scores.jsonl")]
src = CandidateSource("cpu8_stop", cache=ROOT / "results/gemma-270m/bigbench-adapt-train/gens.jsonl", seed=0)
i = 0
with open(HERE / "mp_scores.jsonl", "w") as out:
    for t in dict.fromkeys(r["task"] for r in rows):
        model = RUNS / WHERE.get(t, "MPNET3") / "preset" / t / "model"
        if not model.is_dir():
            print(f"{t}: no adapted mpnet model; stopped", flush=True)
            break
        m = Cappy.from_pretrained(str(model), device="cpu")
        _, train, _ = task_prompts(ROOT.parent / "shared/data/bigbench" / t, BBConfig(max_examples=0, max_train=100))
        held = [ex for ex in train if held_aside(ex.input, 0.25, 0)]
        for ex, cs in zip(held, src.get([ex.input for ex in held])):
            assert rows[i]["task"] == t
            i += 1
            scores = m.score([ex.input] * len(cs), [c.text for c in cs]).tolist()
            out.write(json.dumps({"task": t, "mp": scores}) + "\n")
        print(t, flush=True)
