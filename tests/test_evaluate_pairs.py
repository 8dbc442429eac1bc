"""Dev metrics on labelled pairs: hard-pair accuracy (the promotion metric), per-source and choice accuracy, the
`cappy eval pairs` command, and the trainer's hard-pair dev metric."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cappy.cli import main
from cappy.evaluate.pairs import choice_accuracy, evaluate_pairs
from cappy.metrics import HARD_SOURCES, pairwise_accuracy
from cappy.train import TrainConfig, Trainer, TrainingError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows():
    rows = []
    for q in range(6):
        task = "mc_task" if q % 2 else "qa_task"
        instr = f"Question {q}: what is the colour of item {q}?"
        rows.append({"instruction": instr, "response": f"colour {q}", "label": 1.0, "source": "gold", "task": task})
        rows.append(
            {"instruction": instr, "response": f"shade {q}", "label": 0.0, "source": "wrong_choice", "task": task}
        )
        rows.append(
            {"instruction": instr, "response": "a dog barked", "label": 0.0, "source": "mismatched", "task": task}
        )
        rows.append(
            {"instruction": instr, "response": f"hue {q}", "label": 0.0, "source": "hard_mismatched", "task": task}
        )
        rows.append({"instruction": instr, "response": f"colour {q}!", "label": 0.4, "source": "llm", "task": task})
    return rows


def test_negatives_mask_counts_only_the_marked_pairs():
    instr = ["q"] * 3
    labels = np.array([1.0, 0.0, 0.0])
    scores = np.array([0.5, 0.9, 0.1])  # wrong on the hard negative (row 1), right on the easy one (row 2)
    assert pairwise_accuracy(instr, labels, scores) == (0.5, 2)
    assert pairwise_accuracy(instr, labels, scores, np.array([False, True, False])) == (0.0, 1)
    assert pairwise_accuracy(instr, labels, scores, np.array([False, False, True])) == (1.0, 1)


def test_choice_accuracy_per_task():
    instr = ["a", "a", "a", "b", "b", "c"]
    sources = ["gold", "wrong_choice", "wrong_choice", "gold", "wrong_choice", "gold"]
    scores = np.array([0.9, 0.1, 0.95, 0.8, 0.2, 0.0])
    out = choice_accuracy(instr, sources, scores, ["t1", "t1", "t1", "t2", "t2", "t2"])
    # a: a wrong choice beats the gold; b: right; c has no wrong choice and is not a question
    assert out["by_task"] == {"t1": {"accuracy": 0.0, "questions": 1}, "t2": {"accuracy": 1.0, "questions": 1}}
    assert out["mean"] == 0.5 and out["questions"] == 2


def test_evaluate_pairs_matches_the_scores_and_the_cli_writes_them(tiny_scorer, tiny_model_dir, tmp_path):
    rows = _rows()
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = evaluate_pairs(tiny_scorer, dev)
    scores = tiny_scorer.score([r["instruction"] for r in rows], [r["response"] for r in rows])
    instr, labels = [r["instruction"] for r in rows], np.array([r["label"] for r in rows])
    hard = np.array([r["source"] in HARD_SOURCES for r in rows])
    want_hard = pairwise_accuracy(instr, labels, scores, hard)
    assert (got["hard_pairwise_accuracy"], got["hard_pairs"]) == pytest.approx(want_hard)
    assert got["hard_pairs"] == 6 * (3 + 2)  # gold over wrong, hard, llm; llm over wrong and hard
    assert got["by_source"]["mismatched"]["pairs"] == 6 * 2 and got["rows"] == 30 and got["instructions"] == 6
    assert set(got["choice_accuracy"]["by_task"]) == {"mc_task", "qa_task"} and len(got["sha256"]) == 64
    out = tmp_path / "m.json"
    model = str(tiny_model_dir("bert"))
    assert main(["eval", "pairs", "--dev", str(dev), "--model", model, "--out", str(out), "--device", "cpu"]) == 0
    saved = json.loads(out.read_text())[model]
    assert saved["hard_pairs"] == 30 and 0.0 <= saved["hard_pairwise_accuracy"] <= 1.0
    no_src = tmp_path / "plain.jsonl"
    no_src.write_text(
        "".join(json.dumps({k: r[k] for k in ("instruction", "response", "label")}) + "\n" for r in rows)
    )
    with pytest.raises(ValueError, match="need a 'source' column"):
        evaluate_pairs(tiny_scorer, no_src)


def test_trainer_reports_and_selects_by_the_hard_pair_metric(tiny_model_dir, tmp_path):
    rows = _rows()
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = dict(
        model=str(tiny_model_dir("bert")),
        train=[str(data)],
        output_dir=str(tmp_path / "run"),
        dev=str(data),
        batch_size=10,
        per_device_batch_size=5,
        max_length=32,
        device="cpu",
        mixed_precision="no",
        progress=False,
        save_every=0,
        eval_every=0,
        num_pairs=20,
        metric_for_best="dev_hard_pairwise_accuracy",
    )
    trainer = Trainer(TrainConfig.from_dict(base))
    m = trainer.evaluate()
    assert m["dev_hard_pairs"] == 30 and m["dev_ranked_pairs"] > m["dev_hard_pairs"]
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({k: r[k] for k in ("instruction", "response", "label")}) + "\n" for r in rows))
    with pytest.raises(TrainingError, match="has no hard negatives"):
        Trainer(TrainConfig.from_dict({**base, "dev": str(plain), "output_dir": str(tmp_path / "run2")}))
