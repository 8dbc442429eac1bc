"""PromptSource templates: YAML tags, rendering rules, selection, aliases; every offline dataset renders."""

from __future__ import annotations

import random
from itertools import islice

import pytest
import yaml

from cappy.data.readers import read_examples
from cappy.data.templates import (
    TemplateError,
    list_template_keys,
    load_template_file,
    load_templates,
    select_templates,
    template_key,
)
from conftest import REPO, SHARED_DATA

PRETRAIN = SHARED_DATA / "pretrain"
needs_data = pytest.mark.skipif(not PRETRAIN.exists(), reason="shared data not present")

BOOLQ = {"question": "is the sky blue", "passage": "The sky is blue on clear days.", "idx": 0, "label": 1}


def test_promptsource_files_load_with_tags():
    boolq = load_templates("super_glue/boolq")
    assert len(boolq) == 10
    gpt3 = select_templates(boolq, ["GPT-3 Style"])[0]
    assert gpt3.original_task is True and gpt3.choices_in_prompt is False
    assert gpt3.answer_choices == "No ||| Yes" and gpt3.metrics == ("Accuracy",)
    assert "super_glue/boolq" in list_template_keys() and "glue/sst2" in list_template_keys()


def test_apply_renders_instruction_target_choices():
    t = select_templates(load_templates("super_glue/boolq"), ["GPT-3 Style"])[0]
    p = t.apply(BOOLQ)
    assert p.instruction == "The sky is blue on clear days. \nQuestion: is the sky blue\nAnswer:"
    assert p.target == "Yes" and p.answer_choices == ["No", "Yes"] and p.references == ["Yes"]
    assert t.apply({**BOOLQ, "label": 0}).target == "No"
    assert t.apply({**BOOLQ, "label": -1}) is None  # empty target: skipped by the caller, which counts it


def test_pipes_in_data_do_not_split():
    t = select_templates(load_templates("super_glue/boolq"), ["GPT-3 Style"])[0]
    p = t.apply({**BOOLQ, "passage": "a ||| b"})
    assert p.instruction.startswith("a ||| b") and p.target == "Yes"


def test_missing_field_is_a_clear_error():
    t = select_templates(load_templates("super_glue/boolq"), ["GPT-3 Style"])[0]
    with pytest.raises(TemplateError, match=r"super_glue/boolq:'GPT-3 Style': missing field .*passage"):
        t.apply({"question": "q", "label": 1})
    with pytest.raises(TemplateError, match="reserved field"):
        t.apply({**BOOLQ, "answer_choices": "x"})


def test_choice_filter_is_seeded_and_keeps_all_references():
    t = select_templates(load_templates("trivia_qa/unfiltered"), ["question_answer"])[0]
    ex = {"question": "Who?", "answer": {"aliases": ["Ann", "Anne", "Annie"], "value": "Ann"}}
    picks = {t.apply(ex, random.Random(s)).target for s in range(30)}
    assert picks == {"Ann", "Anne", "Annie"}
    a, b = t.apply(ex, random.Random(7)), t.apply(ex, random.Random(7))
    assert a == b and sorted(a.references) == ["Ann", "Anne", "Annie"] and a.references[0] == a.target


def test_selection_and_aliases():
    ts = load_templates("super_glue/boolq")
    assert len(select_templates(ts, "original")) == sum(bool(t.original_task) for t in ts)
    piqa = load_templates("piqa")
    assert 0 < len(select_templates(piqa, "original")) < len(piqa)
    with pytest.raises(TemplateError, match="no template named"):
        select_templates(ts, ["nope"])
    assert template_key("tau/commonsense_qa") == "commonsense_qa"
    assert template_key("trivia_qa/rc.wikipedia.nocontext") == "trivia_qa/unfiltered"
    with pytest.raises(TemplateError, match="no templates for 'cais/mmlu'"):
        load_templates("cais/mmlu")


def test_template_file_from_any_folder(tmp_path):
    doc = {
        "dataset": "toy",
        "templates": {
            "t1": {"id": "t1", "name": "ask", "jinja": "Q: {{q}} ||| {{a}}", "answer_choices": None, "metadata": {}}
        },
    }
    text = yaml.safe_dump(doc).replace("t1:\n", "t1: !Template\n", 1)
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "templates.yaml").write_text(text, encoding="utf-8")
    [t] = load_templates("toy", tmp_path)
    assert t.apply({"q": "x", "a": "y"}).instruction == "Q: x"
    (tmp_path / "bad.yaml").write_text("templates: [1, 2", encoding="utf-8")
    with pytest.raises(TemplateError, match="malformed YAML"):
        load_template_file(tmp_path / "bad.yaml")


@needs_data
@pytest.mark.parametrize("name", ["offline", "train_splits"])
def test_every_offline_dataset_has_templates_that_render(name):
    from cappy.data.pairs import Mixture

    mix = Mixture.from_yaml(REPO / "configs" / "mixtures" / f"{name}.yaml")
    suffix = "_train.jsonl"
    on_disk = {p.name for p in PRETRAIN.glob("*.jsonl") if p.name.endswith(suffix) == (name == "train_splits")}
    assert {d.path for d in mix.datasets} == on_disk  # every pretrain file is in one of the two mixtures
    for d in mix.datasets:
        root = mix.resolve(d.templates_root) if d.templates_root else None
        templates = load_templates(d.template_key or template_key(d.name), root)
        if isinstance(d.templates, list):
            templates = [t for t in templates if t.name in d.templates]
            assert len(templates) == len(d.templates), (d.name, d.templates)
        assert templates, d.name
        for ex in islice(read_examples(PRETRAIN / d.path), 20):
            for t in templates:
                p = t.apply(ex, random.Random(0))
                assert p is None or (p.instruction and p.target), (d.name, t.name)
