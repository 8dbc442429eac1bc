"""Named suites of `cappy eval mc`: the paper's 11 tasks resolve in PromptSource 0.2.3, StoryCloze's missing files
are named, a run over local stand-ins (the datasets' own schemas and files) reports the published columns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cappy.cli import main
from cappy.config import ConfigError
from cappy.data.mixture import DEFAULT_HELDOUT, heldout_hits
from cappy.data.templates import load_templates
from cappy.errors import InputError
from cappy.evaluate import MCConfig, MCEvalConfig
from cappy.evaluate.mc import build_prompts
from cappy.evaluate.suites import (
    PAPER_PUBLISHED,
    PAPER_PUBLISHED_MEANS,
    SUITES,
    crows_pairs_row,
    published_columns,
    resolve_local,
    story_cloze_row,
)

DATA = Path(__file__).parent / "data" / "paper_suite"
STORY_DIR = DATA / "story_cloze"
STORY_VAL = STORY_DIR / "cloze_test_val__spring2016 - cloze_test_ALL_val.csv"

# Every (task, template) of the paper suite in PromptSource 0.2.3: templates with answer choices (the ones a scorer
# can rank); CrowS-Pairs has two more, generation-only ones (transform_stereo, transform_anti_stereo).
PAPER_TEMPLATES = {
    "anli_r1": 15,
    "anli_r2": 15,
    "anli_r3": 15,
    "cb": 15,
    "rte": 10,
    "story_cloze": 6,
    "wsc": 10,
    "wic": 10,
    "winogrande": 6,
    "winogender": 10,
    "crows_pairs": 6,
}

# The stand-ins: a few rows of each task in its own schema; StoryCloze and CrowS-Pairs as their authors ship them
STANDINS = [
    f"anli_r1:anli={DATA / 'anli_r1.jsonl'}",
    f"anli_r2:anli={DATA / 'anli_r2.jsonl'}",
    f"anli_r3:anli={DATA / 'anli_r3.jsonl'}",
    f"super_glue/cb={DATA / 'cb.jsonl'}",
    f"super_glue/rte={DATA / 'rte.jsonl'}",
    f"story_cloze/2016={STORY_DIR}",
    f"super_glue/wsc.fixed={DATA / 'wsc.jsonl'}",
    f"super_glue/wic={DATA / 'wic.jsonl'}",
    f"winogrande/winogrande_xl={DATA / 'winogrande.jsonl'}",
    f"super_glue/axg={DATA / 'winogender.jsonl'}",
    f"crows_pairs={DATA / 'crows_pairs_anonymized.csv'}",
]


def test_paper_suite_names_the_papers_eleven_tasks_by_hub_id():
    paper = SUITES["paper"]
    assert [t.name for t in paper.tasks] == list(PAPER_TEMPLATES)
    for t in paper.tasks:
        if t.name == "story_cloze":
            assert t.source is None and "rocstories" in t.missing.lower()
        else:
            assert t.source.startswith("hub:") and t.split
    assert paper.max_examples is None and paper.max_templates is None  # every example, every template


def test_paper_suite_resolves_in_promptsource():
    for t in SUITES["paper"].tasks:
        templates = load_templates(t.key)
        with_choices = [x for x in templates if x.answer_choices]
        assert len(with_choices) == PAPER_TEMPLATES[t.name], t.name
        assert len({x.name for x in templates}) == len(templates)


def test_paper_suite_is_held_out_of_training_mixtures():
    for t in SUITES["paper"].tasks:
        names = [t.key] + ([t.source[len("hub:") :].replace(":", "/")] if t.source else [])
        assert heldout_hits(names, DEFAULT_HELDOUT) == names, t.name


def test_published_columns_match_the_printed_means():
    # a mistyped task value shows against the means printed under the published table: each printed value is
    # within 0.05 of its accuracy, so their mean is within 0.05 of the true mean, itself within 0.05 of the print
    assert PAPER_PUBLISHED_MEANS == {"Cappy 0.36B (paper)": 56.6, "T0 11B (paper)": 58.2}
    for column, mean in PAPER_PUBLISHED_MEANS.items():
        values = PAPER_PUBLISHED[column]
        assert set(values) == set(PAPER_TEMPLATES)
        assert sum(values.values()) / 11 == pytest.approx(mean, abs=0.1), column
    # the whole suite shows the printed means; a part of it the mean of its published values
    paper = SUITES["paper"]
    assert published_columns(paper, list(PAPER_TEMPLATES))["means"]["Cappy 0.36B (paper)"] == pytest.approx(0.566)
    part = published_columns(paper, ["rte", "cb"])
    assert "means" not in part and part["columns"]["T0 11B (paper)"] == pytest.approx({"rte": 0.802, "cb": 0.585})


def test_missing_story_cloze_says_what_and_how(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"story_cloze.*rocstories.*--task story_cloze/2016=PATH"):
        MCEvalConfig(suite="paper", out=str(tmp_path)).mc_tasks()
    rc = main(["eval", "mc", "--suite", "paper", "--methods", "chance", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "suite paper is missing data" in err and "cloze_test_val__spring2016" in err
    assert not (tmp_path / "o").exists()


def test_suite_overrides_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="not a task of suite paper"):
        MCEvalConfig(suite="paper", tasks=["super_glue/boolq=x.jsonl"], out="o").mc_tasks()
    # anli is three tasks of the suite: the override must say which
    with pytest.raises(ConfigError, match="anli_r1:anli=PATH"):
        MCEvalConfig(suite="paper", tasks=["anli=x.jsonl"], out="o").mc_tasks()
    with pytest.raises(ConfigError, match="unknown suite 'papr'.*did you mean paper"):
        MCEvalConfig(suite="papr", out="o").validate()
    tasks = MCEvalConfig(suite="paper", tasks=STANDINS, out="o").mc_tasks()
    assert [t.name for t in tasks] == list(PAPER_TEMPLATES)
    assert all(not t.path.startswith("hub:") and t.split is None for t in tasks)
    # an override by key keeps the other tasks on the hub, with their split
    tasks = MCEvalConfig(suite="paper", tasks=[f"story_cloze/2016={STORY_VAL}"], out="o").mc_tasks()
    assert tasks[5].path == str(STORY_VAL) and tasks[0].path == "hub:facebook/anli" and tasks[0].split == "dev_r1"


def test_original_files_become_the_hub_schema():
    assert resolve_local("story_cloze/2016", str(STORY_DIR)) == str(STORY_VAL)  # not the test file beside it
    assert resolve_local("super_glue/rte", str(DATA)) == str(DATA)  # only StoryCloze's folders are looked into
    row = story_cloze_row({"InputSentence1": "a", "RandomFifthSentenceQuiz1": "x", "AnswerRightEnding": "2"})
    assert row == {"input_sentence_1": "a", "sentence_quiz1": "x", "answer_right_ending": 2}
    with pytest.raises(InputError, match="answer_right_ending is 3"):
        story_cloze_row({"answer_right_ending": 3})
    row = crows_pairs_row({"": "7", "stereo_antistereo": "antistereo", "bias_type": "religion", "sent_more": "s"})
    assert row == {"stereo_antistereo": 1, "bias_type": 7, "sent_more": "s"}
    assert crows_pairs_row({"stereo_antistereo": 0, "bias_type": 2}) == {"stereo_antistereo": 0, "bias_type": 2}
    with pytest.raises(InputError, match="bias_type"):
        crows_pairs_row({"bias_type": "weather"})


def test_bad_story_cloze_row_names_file_and_row(tmp_path):
    bad = tmp_path / "val.csv"
    header, first, *rest = STORY_VAL.read_text().splitlines()
    assert first.endswith(",1")
    bad.write_text("\n".join([header, first[:-1] + "7", *rest]) + "\n")
    cfg = MCEvalConfig(suite="paper", tasks=[f"story_cloze/2016={bad}"], out="o")
    task = cfg.mc_tasks()[5]
    with pytest.raises(InputError, match=rf"{bad} row 1: answer_right_ending is 7"):
        build_prompts(task, MCConfig(max_examples=None, max_templates=None))


def test_hub_failure_names_the_task_and_the_local_way(monkeypatch):
    from cappy.evaluate.config import MCTask

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/crows_pairs' on the Hub (LocalEntryNotFoundError)")

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", offline)
    task = MCTask("crows_pairs", "crows_pairs", "hub:nyu-mll/crows_pairs", split="test")
    with pytest.raises(
        InputError, match=r"crows_pairs: reading hub:nyu-mll/crows_pairs \(split test\).*Couldn't reach"
    ):
        build_prompts(task, MCConfig())
    with pytest.raises(InputError, match="--task crows_pairs:crows_pairs=PATH"):
        build_prompts(task, MCConfig())


def test_paper_suite_run_over_standins_reports_the_published_columns(tiny_model_dir, tmp_path):
    out = tmp_path / "paper"
    args = ["eval", "mc", "--suite", "paper", "--model", str(tiny_model_dir("bert")), "--methods", "cappy,chance"]
    args += [x for spec in STANDINS for x in ("--task", spec)]
    assert main([*args, "--out", str(out), "--no-progress", "--no-plots", "--device", "cpu"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["task_suite"] == "paper" and res["sample"]["max_examples"] is None
    assert list(res["methods"]["cappy"]["per_task"]) == list(PAPER_TEMPLATES)
    for name, n_templates in PAPER_TEMPLATES.items():
        info = res["tasks"][name]
        # every template, every example of each stand-in (3 rows each), nothing skipped
        assert len(info["templates"]) == n_templates and info["n_examples"] == 3 and not info["skipped"], name
        assert info["n_prompts"] == 3 * n_templates
    assert res["tasks"]["story_cloze"]["path"] == str(STORY_VAL)
    golds = {(r["task"], r["example_index"]): r["gold"] for r in map(json.loads, open(out / "predictions.jsonl"))}
    assert [golds["story_cloze", i] for i in range(3)] == [0, 1, 0]  # AnswerRightEnding 1, 2, 1
    published = res["published"]["columns"]
    assert published["Cappy 0.36B (paper)"]["story_cloze"] == pytest.approx(0.937)  # fractions, like every metric
    report = (out / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| Task |"))
    assert header == "| Task | cappy | chance | Cappy 0.36B (paper) | T0 11B (paper) |"
    row = next(line for line in report.splitlines() if line.startswith("| crows_pairs |"))
    assert row.endswith("| 57.8 | 24.0 |")
    mean = next(line for line in report.splitlines() if line.startswith("| **Mean** |"))
    assert mean.endswith("| **56.6** | **58.2** |")
    assert "tanyuqian/cappy" in report
    # the merged report of several runs keeps the columns
    assert main(["report", str(out), "--out", str(tmp_path / "m.md")]) == 0
    assert "| **56.6** | **58.2** |" in (tmp_path / "m.md").read_text()


def test_list_suites(capsys):
    assert main(["eval", "mc", "--list-suites"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("heldout: ") and "\npaper: " in out
    lines = out.splitlines()
    for name in PAPER_TEMPLATES:
        assert any(line.split()[:1] == [name] for line in lines), name
    story = next(line for line in lines if line.split()[:1] == ["story_cloze"])
    assert "--task story_cloze/2016=PATH" in story and "Cappy 0.36B (paper) 93.7" in story
    assert "hub:aps/super_glue:axg [test]" in out and "tanyuqian/cappy" in out


def test_reproduce_doc_commands_parse_and_quote_the_published_numbers():
    import shlex

    from cappy.cli import build_parser
    from conftest import REPO

    text = (REPO / "docs" / "REPRODUCE.md").read_text()
    steps = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]  # the table of steps
    pattern = re.compile(r"`(?:accelerate launch --config_file (\S+) -m )?(cappy [^`]+)`")
    found = [c for line in steps for c in pattern.findall(line)]
    assert all((REPO / config).is_file() for config, _ in found if config)
    commands = [c for _, c in found if "$(" not in c]
    assert len(commands) == 7  # step 5 builds its task list in the shell
    for command in commands:
        argv = shlex.split(command)[1:]
        _, extra = build_parser().parse_known_args(argv)
        assert not extra, (command, extra)
    # the document's zero-shot table is the one the report prints
    for name, value in PAPER_PUBLISHED["Cappy 0.36B (paper)"].items():
        label = SUITES["paper"].task(name).label
        row = next(line for line in text.splitlines() if line.startswith(f"| {label.split(' R')[0]}"))
        assert f"{value:.1f}" in row, (name, row)
