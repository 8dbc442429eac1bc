"""cappy.adapt / `cappy adapt`: candidates (cached or generated) labelled against references, then a trained copy."""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

from cappy import Cappy, adapt
from cappy.adaptation import AdaptExample, adaptation_pairs, as_examples, read_examples
from cappy.cli import main
from cappy.generate import Candidate, CandidateSource, Generator, read_generations
from cappy.metrics import rouge_l
from cappy.train import TrainConfig
from cappy.train.config import adaptation_settings
from test_train_faults import kill_at_checkpoint

# a tiny run: 64 pairs in batches of 8 at length 64, a large lr so 8 updates visibly move the scores
FAST = {"num_pairs": 64, "batch_size": 8, "per_device_batch_size": 8, "max_length": 64, "lr": 1e-3}

EXAMPLES = [
    {"instruction": "Q: What is the capital of France?\nA:", "references": ["Paris"]},
    {"instruction": "Q: Name a primary colour.\nA:", "references": ["red", "blue", "yellow"]},
    {"instruction": "Q: What is 2+2?\nA:", "references": "4"},
]


class EchoGenerator(Generator):
    """Candidates from fixed texts, one per planned (decoding, sample); counts the prompts it is asked for."""

    model_id = "echo"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def _generate_prompt(self, prompt, prompt_id, recipe, plan, seed):
        self.prompts.append(prompt)
        texts = ["Paris", "I am not sure", "red and blue", "4 apples", "London", "yes", "no", "maybe"]
        slots = [(d.name, i) for d in plan for i in range(d.n)]
        return [Candidate(texts[k % len(texts)], n, i, -1.0 - k, -1.0, 2) for k, (n, i) in enumerate(slots)]


def test_examples_are_normalised_and_bad_ones_named():
    exs = as_examples([EXAMPLES[2], ("Q: hi", ["hello", "hey"])])
    assert [e.references for e in exs] == [["4"], ["hello", "hey"]]
    with pytest.raises(ValueError, match="example 0: needs an 'instruction'"):
        as_examples([{"question": "q", "references": ["a"]}])
    with pytest.raises(ValueError, match="every reference is empty"):
        AdaptExample("q", ["", " "])
    with pytest.raises(ValueError, match="at least one"):
        as_examples([])


def test_pairs_label_candidates_by_rouge_and_add_the_references():
    exs = as_examples(EXAMPLES[:2])
    cands = [[Candidate("Paris", "greedy", 0, -1, -1, 1), Candidate("the city of Paris", "sample", 0, -2, -1, 4)]]
    cands.append([Candidate("green", "greedy", 0, -1, -1, 1)])
    rows = adaptation_pairs(exs, cands)
    gold = [r for r in rows if r["source"] == "gold"]
    assert [(r["response"], r["label"]) for r in gold] == [
        ("Paris", 1.0),
        ("red", 1.0),
        ("blue", 1.0),
        ("yellow", 1.0),
    ]
    llm = [r for r in rows if r["source"] == "llm"]
    assert [r["label"] for r in llm] == [1.0, rouge_l("the city of Paris", ["Paris"]), 0.0]
    with pytest.raises(ValueError, match="2 examples but 1 candidate lists"):
        adaptation_pairs(exs, cands[:1])


def test_mismatched_references_are_other_examples_answers_labelled_against_this_one():
    exs = as_examples(
        [("Q: capital of France?", ["Paris"]), ("Q: capital of Italy?", ["Rome"]), ("Q: city of lights?", ["Paris"])]
        + [(f"Q: number {i}?", [f"{i} items"]) for i in range(5)]
    )
    cands = [[Candidate("Rome", "greedy", 0, -1, -1, 1)]] + [[] for _ in exs[1:]]
    rows = adaptation_pairs(exs, cands, mismatched=3, seed=1)
    assert rows == adaptation_pairs(exs, cands, mismatched=3, seed=1)  # seeded
    assert [r for r in rows if r["source"] != "mismatched"] == adaptation_pairs(exs, cands)  # nothing else changes
    for ex, c in zip(exs, cands):
        got = [r for r in rows if r["source"] == "mismatched" and r["instruction"] == ex.instruction]
        texts = [r["response"] for r in got]
        assert len(texts) == 3 and len(set(texts)) == 3
        assert not set(texts) & (set(ex.references) | {x.text for x in c})  # never one of its own responses
        assert all(r["label"] == rouge_l(r["response"], ex.references) for r in got)
    assert any(r["label"] > 0 for r in rows if r["source"] == "mismatched")  # "3 items" for "1 items": partly right
    # the other Paris question's answer is France's own reference, so France never gets it as a wrong answer;
    # Italy has one distinct other answer: no padding, no duplicates
    pool_rows = [r for r in adaptation_pairs(exs[:3], [[], [], []], mismatched=2) if r["source"] == "mismatched"]
    drawn = {q: {r["response"]: r["label"] for r in pool_rows if q in r["instruction"]} for q in ("France", "Italy")}
    assert drawn == {"France": {"Rome": 0.0}, "Italy": {"Paris": 0.0}}
    with pytest.raises(ValueError, match="mismatched must be a whole number"):
        adaptation_pairs(exs, cands, mismatched=-1)


def test_adapt_end_to_end_with_a_fake_generator_then_reuses_the_cache(tiny_model_dir, tmp_path):
    gen = EchoGenerator()
    cache = tmp_path / "gens.jsonl"
    base = Cappy.from_pretrained(tiny_model_dir("bert"), device="cpu")
    out = tmp_path / "adapted"
    tuned = adapt(base, EXAMPLES, candidates=str(cache), generator=gen, recipe="quick", output_dir=out, **FAST)
    assert len(gen.prompts) == 3  # each instruction generated once, appended to the cache
    assert set(read_generations(cache)) == {e["instruction"] for e in EXAMPLES}
    info = tuned.adaptation
    # the adapt_cpu preset adds up to 8 other examples' references each: all 8 distinct ones not already its own
    assert info.counts == {"pairs": 3 * 5 + 5 + 8, "gold": 5, "llm": 15, "mismatched": 8, "examples": 3}
    assert not info.reused
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "config.json").is_file()
    # the training run's folder (a checkpoint and the optimizer state) is gone once the model is saved; its log stays
    assert not (out / "run").exists()
    logged = [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["pairs"] >= 64  # the last update is always logged: the log covers the whole budget
    before = base.score([EXAMPLES[0]["instruction"]] * 2, ["Paris", "London"])
    after = tuned.score([EXAMPLES[0]["instruction"]] * 2, ["Paris", "London"])
    assert abs(after - before).max() > 1e-3  # 8 updates at lr 1e-3 move float32 scores far past rounding

    # the same call again: nothing generated, the saved model reused, identical scores
    gen2 = EchoGenerator()
    again = adapt(base, EXAMPLES, candidates=str(cache), generator=gen2, recipe="quick", output_dir=out, **FAST)
    assert gen2.prompts == [] and again.adaptation.reused
    assert (
        again.score([EXAMPLES[0]["instruction"]], ["Paris"]) == tuned.score([EXAMPLES[0]["instruction"]], ["Paris"])
    ).all()
    # another setting trains again
    changed = adapt(
        base, EXAMPLES, candidates=str(cache), recipe="quick", output_dir=out, keep_run=True, **{**FAST, "lr": 5e-4}
    )
    assert not changed.adaptation.reused and (out / "run" / "training_state").is_dir()
    assert not (out / "train_metrics.jsonl").exists()  # the first setting's log does not pass for this run's
    # mismatched answers are other examples' references: example 1 (colours) can only get "4", since "Paris" is
    # among its own candidates; examples 0 and 2 get two each
    mm = adapt(base, EXAMPLES, candidates=str(cache), recipe="quick", output_dir=out, mismatched=2, **FAST)
    assert not mm.adaptation.reused and mm.adaptation.counts["mismatched"] == 5
    rows = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert sum(r["source"] == "mismatched" for r in rows) == 5 and len(rows) == 25


def test_adapt_from_a_real_cache_file_without_a_generator(tiny_model_dir, tmp_path):
    cache = tmp_path / "gens.jsonl"
    CandidateSource("quick", cache=cache, generator=EchoGenerator()).get([e["instruction"] for e in EXAMPLES])
    tuned = adapt(
        str(tiny_model_dir("bert")), EXAMPLES, candidates=str(cache), recipe="quick", output_dir=tmp_path / "o", **FAST
    )
    assert tuned.adaptation.counts["pairs"] == 28
    with pytest.raises(ValueError, match="no candidates for 1 prompt.*no generator"):
        adapt(
            str(tiny_model_dir("bert")),
            EXAMPLES + [{"instruction": "Q: unseen?\nA:", "references": ["x"]}],
            candidates=str(cache),
            recipe="quick",
            output_dir=tmp_path / "o2",
            **FAST,
        )


def test_a_presets_adaptation_section_sets_mismatched_and_training_ignores_it(tiny_model_dir, tmp_path):
    cache = tmp_path / "gens.jsonl"
    CandidateSource("quick", cache=cache, generator=EchoGenerator()).get([e["instruction"] for e in EXAMPLES])
    preset = tmp_path / "p.yaml"
    preset.write_text(
        "lr: 1.0e-3\nbatch_size: 8\nper_device_batch_size: 8\nnum_pairs: 64\nmax_length: 64\n"
        "adaptation:\n  mismatched: 2\n"
    )
    need = {"model": str(tiny_model_dir("bert")), "train": [str(cache)], "output_dir": str(tmp_path / "r")}
    assert TrainConfig.from_yaml(preset, need).lr == 1e-3  # the section is not a training setting
    assert adaptation_settings(preset) == {"mismatched": 2}
    assert adaptation_settings("adapt_paper") == {"mismatched": 0}  # the paper's recipe: no section, no extras
    args = dict(candidates=str(cache), recipe="quick", config=str(preset), device="cpu")
    tuned = adapt(str(tiny_model_dir("bert")), EXAMPLES, output_dir=tmp_path / "a", **args)
    assert tuned.adaptation.counts["mismatched"] == 5  # as drawn in the end-to-end test above
    explicit = adapt(str(tiny_model_dir("bert")), EXAMPLES, output_dir=tmp_path / "b", mismatched=0, **args)
    assert explicit.adaptation.counts["mismatched"] == 0  # an argument beats the preset
    for bad, match in [
        ("adaptation: 3\n", "must be a mapping"),
        ("adaptation:\n  hard: 1\n", "unknown adaptation"),
        ("adaptation:\n  mismatched: '8'\n", "p.yaml: adaptation: mismatched must be a whole number"),
    ]:
        preset.write_text(bad)
        with pytest.raises(ValueError, match=match):
            adaptation_settings(preset)


def test_cli_adapt_reads_any_format_with_field_options(tiny_model_dir, tmp_path, capsys):
    rows = [{"q": e["instruction"], "gold": e["references"]} for e in EXAMPLES]
    train = tmp_path / "task.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "gens.jsonl"
    CandidateSource("quick", cache=cache, generator=EchoGenerator()).get([r["q"] for r in rows])
    args = ["adapt", "--train", str(train), "--instruction-field", "q", "--references-field", "gold"]
    args += [
        "--model",
        str(tiny_model_dir("bert")),
        "--gens",
        str(cache),
        "--recipe",
        "quick",
        "--out",
        str(tmp_path / "m"),
    ]
    args += ["--no-progress", "--device", "cpu"] + [x for k, v in FAST.items() for x in ("--set", f"{k}={v}")]
    assert main(args) == 0
    assert "3 examples, 28 pairs (5 gold, 8 mismatched)" in capsys.readouterr().err  # the preset's 8
    assert json.loads((tmp_path / "m" / "model" / "training_data.json").read_text())["tasks"] == ["adapt"]
    assert main(args + ["--mismatched", "2"]) == 0  # the same 5 drawn as through the API above
    assert "3 examples, 25 pairs (5 gold, 5 mismatched)" in capsys.readouterr().err
    assert main(args + ["--mismatched", "0"]) == 0  # the paper's pairs only
    assert "3 examples, 20 pairs (5 gold, 0 mismatched)" in capsys.readouterr().err
    assert main(args + ["--set", "mismatched=2"]) == 0  # an adapt setting: --set reaches it as --mismatched does
    assert "3 examples, 25 pairs (5 gold, 5 mismatched) -> " in capsys.readouterr().err
    assert main(args + ["--set", "mismatched=two"]) == 2  # the key and the type it wants
    assert "--set mismatched=two: mismatched must be an integer or null" in capsys.readouterr().err

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"q": "only a question"}) + "\n")
    assert main(args[:2] + [str(bad)] + args[3:]) == 2
    assert f"{bad}:2: missing field 'gold'" in capsys.readouterr().err


def test_cli_adapt_killed_resumes_to_the_weights_of_an_uninterrupted_run(tiny_model_dir, tmp_path, capsys, caplog):
    rows = [{"instruction": e["instruction"], "references": e["references"]} for e in EXAMPLES]
    train = tmp_path / "task.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "gens.jsonl"
    CandidateSource("quick", cache=cache, generator=EchoGenerator()).get([r["instruction"] for r in rows])
    args = ["adapt", "--train", str(train), "--model", str(tiny_model_dir("bert")), "--gens", str(cache)]
    args += ["--recipe", "quick", "--no-progress", "--device", "cpu"]
    # 320 pairs in updates of about 8 (a batch keeps an instruction's pairs together), a checkpoint every 3; the
    # preset's listwise term and the checkpoint's dropout stay on, so resuming must restore the optimizer, the
    # schedule, the data position and the RNG state exactly
    training = {**FAST, "num_pairs": 320, "per_device_batch_size": 4, "save_every": 3, "log_every": 1}
    args += [x for k, v in training.items() for x in ("--set", f"{k}={v}")]

    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in the subprocess: the same kernels, the same bits
    try:
        assert main(args + ["--out", str(tmp_path / "ref")]) == 0
        capsys.readouterr()
        out = tmp_path / "killed"
        cmd = [sys.executable, "-m", "cappy", *args, "--out", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        killed_at = kill_at_checkpoint(cmd, env, out / "run" / "training_state", 9)
        assert not (out / "model").exists() and (out / "run" / "adapt.json").is_file()

        # other settings: stopped, the mismatch named, the interrupted run left as it was
        assert main(args + ["--out", str(out), "--set", "lr=5e-4"]) == 2
        err = capsys.readouterr().err
        assert f"{out / 'run'} holds an interrupted adaptation" in err and "lr 0.001 -> 0.0005" in err, err
        assert "--overwrite" in err
        # a setting that does not change the weights (how often to checkpoint) does not stop a resume
        caplog.set_level(logging.INFO, logger="cappy.adaptation")
        assert main(args + ["--out", str(out), "--set", "save_every=5"]) == 0
    finally:
        torch.set_num_threads(saved)
    resumed = [r.message for r in caplog.records if "resuming the interrupted adaptation" in r.message]
    assert len(resumed) == 1, caplog.text
    step = int(resumed[0].rsplit("-", 1)[1])
    total = json.loads((tmp_path / "ref" / "train_metrics.jsonl").read_text().splitlines()[-1])["update"]
    assert killed_at <= step < total
    assert f"(resumed from step-{step:08d})" in capsys.readouterr().err
    logged = [json.loads(line)["update"] for line in (out / "train_metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, total + 1)), "each update logged once across the kill"
    assert not (out / "run").exists()  # deleted once the model is saved, as after an uninterrupted run

    # Same kernels on one thread, same batches, the state restored bit for bit: the same weights exactly.
    ref = load_file(tmp_path / "ref" / "model" / "model.safetensors")
    got = load_file(out / "model" / "model.safetensors")
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    start = load_file(tiny_model_dir("bert") / "model.safetensors")
    assert not torch.equal(start["classifier.weight"], got["classifier.weight"])  # training moved the weights


def test_an_interrupted_adaptation_of_other_settings_needs_overwrite(tiny_model_dir, tmp_path, caplog):
    cache = tmp_path / "gens.jsonl"
    CandidateSource("quick", cache=cache, generator=EchoGenerator()).get([e["instruction"] for e in EXAMPLES])
    args = dict(candidates=str(cache), recipe="quick", output_dir=tmp_path / "o", device="cpu", **FAST)
    first = adapt(str(tiny_model_dir("bert")), EXAMPLES, keep_run=True, **args)
    # as if killed after the last checkpoint, before the model was saved
    (tmp_path / "o" / "adapt.json").unlink()
    with pytest.raises(
        ValueError, match=r"interrupted adaptation \(checkpoint step-\d+\) with other settings \(lr 0.001 -> 0.0005\)"
    ):
        adapt(str(tiny_model_dir("bert")), EXAMPLES, **{**args, "lr": 5e-4})
    caplog.set_level(logging.INFO, logger="cappy.adaptation")
    again = adapt(str(tiny_model_dir("bert")), EXAMPLES, overwrite=True, **{**args, "lr": 5e-4})
    assert "discarding the interrupted adaptation" in caplog.text
    assert again.adaptation.resumed is None and not again.adaptation.reused
    instr = [EXAMPLES[0]["instruction"]] * 2
    assert abs(again.score(instr, ["Paris", "London"]) - first.score(instr, ["Paris", "London"])).max() > 1e-4


def test_read_examples_of_a_bigbench_task_split():
    from conftest import REPO

    task = REPO.parent / "shared" / "data" / "bigbench" / "repeat_copy_logic"
    if not task.exists():
        pytest.skip("the shared BIG-Bench data is not beside the checkout")
    exs = read_examples(task, split="train")
    assert exs and all(e.references for e in exs) and all("repeat" in e.instruction.lower() for e in exs[:3])
