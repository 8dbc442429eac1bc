"""BIG-Bench reader: prefixes, references, subtasks, the official split; real tasks from shared data."""

from __future__ import annotations

import json
import random

import pytest

from cappy.data.bigbench import BigBenchError, load_bigbench_task
from cappy.data.readers import read_examples
from conftest import SHARED_DATA

BB = SHARED_DATA / "bigbench"
needs_bb = pytest.mark.skipif(not BB.exists(), reason="shared BIG-Bench data not present")


def _task(path, examples, **extra):
    path.mkdir(parents=True, exist_ok=True)
    (path / "task.json").write_text(json.dumps({"name": path.name, "examples": examples, **extra}), encoding="utf-8")
    return path


def test_prefixes_references_and_defaults(tmp_path):
    ex = [{"input": "1+1", "target": "2"}, {"input": "say hi", "target": ["hi", "hello"]}]
    task = load_bigbench_task(
        _task(tmp_path / "t", ex, task_prefix="Math.\n", example_input_prefix="In: ", example_output_prefix=" Out:")
    )
    assert [e.input for e in task.examples] == ["Math.\nIn: 1+1 Out:", "Math.\nIn: say hi Out:"]
    assert [e.references for e in task.examples] == [["2"], ["hi", "hello"]]
    plain = load_bigbench_task(_task(tmp_path / "p", ex) / "task.json")
    assert plain.examples[0].input == "\nQ: 1+1\nA: "


def test_multiple_choice_keeps_choices(tmp_path):
    ex = [{"input": "sky?", "target_scores": {"blue": 1, "green": 0}}]
    e = load_bigbench_task(_task(tmp_path / "mc", ex)).examples[0]
    assert e.references == ["blue"] and e.choices == ["blue", "green"] and e.scores == [1.0, 0.0]
    assert e.input == "\nQ: sky?\n  choice: blue\n  choice: green\nA: "


def test_bad_target_names_file_and_example(tmp_path):
    with pytest.raises(BigBenchError, match=r"task\.json:examples\[1\]"):
        load_bigbench_task(_task(tmp_path / "bad", [{"input": "a", "target": "b"}, {"input": "c", "target": 3}]))


def test_official_split_rule(tmp_path):
    examples = [{"input": f"x{i}", "target": str(i)} for i in range(95)]
    examples[10:10] = [examples[3], examples[7], examples[3]]  # duplicates dropped, first kept
    sub_small = [{"input": f"s{i}", "target": "y"} for i in range(20)]
    root = tmp_path / "task"
    _task(root / "big", examples)
    _task(root / "small", sub_small)
    (root / "task.json").write_text(json.dumps({"name": "task", "description": "d"}), encoding="utf-8")
    task = load_bigbench_task(root)
    assert [s.name for s in task.subtasks] == ["big", "small"]
    train, val = task.split()

    # The rule, written out independently with the module-level random API.
    expected_val = []
    expected_train = []
    for raw in (examples, sub_small):
        unique = list(dict.fromkeys(json.dumps(e) for e in raw))
        random.seed(42)
        random.shuffle(unique)
        n_val = max(int(0.2 * len(unique)), 16)
        expected_train += [json.loads(u)["input"] for u in unique[:-n_val]]
        expected_val += [json.loads(u)["input"] for u in unique[-n_val:]]
    assert [e.raw_input for e in val] == expected_val
    assert [e.raw_input for e in train] == expected_train
    assert len(val) == 19 + 16 and len(train) == 76 + 4


@needs_bb
def test_real_task_with_subtasks():
    task = load_bigbench_task(BB / "modified_arithmetic")
    assert len(task.subtasks) == 6 and all(len(s.examples) == 1000 for s in task.subtasks)
    train, val = task.split()
    assert len(val) == 6 * 200 and len(train) == 6 * 800
    assert not {(e.subtask, e.index) for e in train} & {(e.subtask, e.index) for e in val}
    conlang = load_bigbench_task(BB / "conlang_translation")
    sub = conlang.subtasks[0]
    raw = json.loads((sub.path).read_text(encoding="utf-8"))
    assert sub.examples[0].input.startswith(raw["task_prefix"] + raw["example_input_prefix"])
    assert sub.examples[0].input.endswith(raw["example_output_prefix"])
    _, cval = conlang.split()
    assert len(cval) == sum(len({e.input for e in s.examples}) for s in conlang.subtasks)  # every subtask < 16


@needs_bb
def test_reader_interface_on_bigbench():
    rows = list(read_examples(BB / "codenames", split="validation"))
    assert len(rows) == max(int(0.2 * 85), 16)
    assert set(rows[0]) == {"idx", "inputs", "targets", "multiple_choice_targets", "multiple_choice_scores", "subtask"}
    assert rows[0]["inputs"].startswith("\nQ: ") and rows[0]["inputs"].endswith("\nA: ")
    assert all(isinstance(t, str) for r in rows for t in r["targets"])


def test_held_aside_is_a_function_of_the_prompt_and_holds_about_the_fraction():
    from cappy.data.bigbench import held_aside

    prompts = [f"Q: what is {i} plus {i}?\nA: " for i in range(4000)]
    held = [p for p in prompts if held_aside(p)]
    # 4000 fair draws at p=0.25: sd = sqrt(4000 * 0.25 * 0.75) ~ 27 prompts; 5 sd either side
    assert abs(len(held) - 1000) < 140
    assert held == [p for p in reversed(prompts) if held_aside(p)][::-1]  # order does not matter
    assert [p for p in prompts if held_aside(p, seed=1)] != held  # the seed picks another set
    assert not any(held_aside(p, 0.0) for p in prompts[:50]) and all(held_aside(p, 1.0) for p in prompts[:50])
    # the rule the committed held-aside records were made with: sha1 of "seed\0prompt", first 8 bytes < fraction
    assert held_aside("Input: 1972-08-24\nOutput: ", 0.25, 0) is True  # 0.0557 < 0.25
    with pytest.raises(ValueError, match="fraction"):
        held_aside("x", 1.5)
