"""cappy.config: the one reader of job settings (mappings, YAML files, ``--set`` overrides) and the job configs
built on it (TrainConfig, AdaptConfig, MCEvalConfig, BigBenchEvalConfig, PairsEvalConfig)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import pytest
import yaml

from cappy.adaptation import AdaptConfig
from cappy.config import ConfigError, JobConfig, parse_set, setting
from cappy.evaluate import BigBenchEvalConfig, MCEvalConfig, PairsEvalConfig
from cappy.evaluate.mc import MCTask
from cappy.train import TrainConfig


def test_set_values_are_yaml():
    got = parse_set(["lr=1e-4", "tasks=[a, b]", "adapt=true", "max-examples=10", "dev=", "name=a=b", "x=null"])
    # YAML 1.1 reads 1e-4 as a string: the config makes it a number where the setting is one (below)
    assert got == {"lr": "1e-4", "tasks": ["a", "b"], "adapt": True, "max_examples": 10, "dev": None, "name": "a=b",
                   "x": None}  # fmt: skip
    assert parse_set(["seed=1", "seed=2"]) == {"seed": 2}  # the last of a key wins
    with pytest.raises(ConfigError, match="'lr': expected KEY=VALUE"):
        parse_set(["lr"])
    with pytest.raises(ConfigError, match="tasks=\\[a: the value is not valid YAML"):
        parse_set(["tasks=[a"])


def test_set_reaches_fields_by_type():
    cfg = BigBenchEvalConfig(out="o").with_overrides(
        parse_set(["max_examples=10", "adapt_scale=1e-2", "tasks=[a, b]", "adapt=true", "model=m", "lr=1e-4"])
    )
    assert cfg.max_examples == 10 and isinstance(cfg.max_examples, int)
    assert cfg.adapt_scale == 0.01 and cfg.tasks == ["a", "b"] and cfg.adapt is True
    assert cfg.adapt_training == {"lr": 1e-4} and isinstance(cfg.adapt_training["lr"], float)
    # 0 means all, as on the command line; null too
    assert cfg.with_overrides({"max_examples": 0}).max_examples is None
    assert cfg.with_overrides(parse_set(["max_examples=null"])).max_examples is None


def test_a_setting_of_a_section_by_its_dotted_name_or_alone():
    cfg = AdaptConfig(output_dir="o")
    a = cfg.with_overrides(parse_set(["lr=1e-4", "training.max_length=64", "seed=3", "mismatched=2", "device=cpu"]))
    # lr, max_length and seed (the training seed; gen_seed is the samples') are TrainConfig's; the others adapt's
    assert a.training == {"lr": 1e-4, "max_length": 64, "seed": 3}
    assert (a.mismatched, a.device, a.gen_seed) == (2, "cpu", 0)
    with pytest.raises(ConfigError, match="training.model: set by adapt"):
        cfg.with_overrides({"training.model": "x"})
    with pytest.raises(ConfigError, match="^adapt\\(\\): training.lr must be a number, got 'fast'"):
        cfg.with_overrides({"training.lr": "fast"}, "adapt()")
    with pytest.raises(ConfigError, match="mismatched is a single setting, not a section"):
        cfg.with_overrides({"mismatched.k": 1})


def test_an_ambiguous_name_lists_its_places():
    @dataclass
    class Inner(JobConfig):
        lr: float = 1.0

    @dataclass
    class Outer(JobConfig):
        job = "test job"
        a: dict[str, Any] = setting({}, section=Inner)
        b: dict[str, Any] = setting({}, section=Inner)

    with pytest.raises(ConfigError, match="lr is ambiguous: write one of a.lr, b.lr"):
        Outer().with_overrides({"lr": 2})
    assert Outer().with_overrides({"b.lr": 2}).b == {"lr": 2.0}


@pytest.mark.parametrize(
    ("cls", "base", "key", "close"),
    [
        (TrainConfig, {"model": "m", "train": ["t"], "output_dir": "o"}, "learning_rate", None),
        (TrainConfig, {"model": "m", "train": ["t"], "output_dir": "o"}, "lrr", "lr"),
        (AdaptConfig, {"output_dir": "o"}, "mismatch", "mismatched"),
        (MCEvalConfig, {"out": "o"}, "max_template", "max_templates"),
        (BigBenchEvalConfig, {"out": "o"}, "max_exampels", "max_examples"),
        (BigBenchEvalConfig, {"out": "o"}, "max_lenght", "max_length"),
        (PairsEvalConfig, {"dev": "d", "models": ["m"]}, "model", "models"),
    ],
)
def test_an_unknown_key_names_the_close_ones_and_the_valid_ones(cls, base, key, close):
    with pytest.raises(ConfigError) as err:
        cls.from_dict(base).with_overrides(parse_set([f"{key}=1"]), "--set")
    msg = str(err.value)
    assert msg.startswith(f"--set {key}=1: unknown setting {key!r} of {cls.job}")
    if close:
        assert f"did you mean {close}" in msg
    else:
        assert "did you mean" not in msg
    valid = msg.split("Valid settings: ", 1)[1]
    assert all(f.name in valid for f in fields(cls))


@pytest.mark.parametrize(
    ("cls", "base", "item", "said"),
    [
        (TrainConfig, {"model": "m", "train": ["t"], "output_dir": "o"}, "batch_size=12.5", "must be an integer"),
        (TrainConfig, {"model": "m", "train": ["t"], "output_dir": "o"}, "progress=maybe", "must be true or false"),
        (TrainConfig, {"model": "m", "train": ["t"], "output_dir": "o"}, "lr=fast", "must be a number"),
        (TrainConfig, {"model": "m", "train": ["t"], "output_dir": "o"}, "train={a: b}", "must be a list of strings"),
        (TrainConfig, {"model": "m", "train": ["t"], "output_dir": "o"}, "mixed_precision=fp8", "must be one of no, "),
        (AdaptConfig, {"output_dir": "o"}, "mismatched=two", "must be an integer or null"),
        (MCEvalConfig, {"out": "o"}, "max_examples=[1]", "must be an integer or null"),
        (BigBenchEvalConfig, {"out": "o"}, "adapt=yes please", "must be true or false"),
        (BigBenchEvalConfig, {"out": "o"}, "adapt_training=[lr]", "must be a mapping of TrainConfig settings"),
    ],
)
def test_a_wrong_type_names_the_key_and_the_type(cls, base, item, said):
    key = item.split("=")[0]
    with pytest.raises(ConfigError, match=f"{key} {said}"):
        cls.from_dict(base).with_overrides(parse_set([item]), "--set")


def test_checks_across_fields_name_the_setting():
    with pytest.raises(ConfigError, match="out is required"):
        BigBenchEvalConfig.from_dict({})
    with pytest.raises(ConfigError, match="adapt_recipe needs adapt"):
        BigBenchEvalConfig.from_dict({"out": "o", "adapt_recipe": "cpu8"})
    with pytest.raises(ConfigError, match="chanse: did you mean chance"):
        MCEvalConfig.from_dict({"out": "o", "methods": ["cappy", "chanse"]})
    with pytest.raises(ConfigError, match="generator must be one of llamacpp, hf, openai"):
        AdaptConfig.from_dict({"output_dir": "o", "generator": "vllm"})


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig.from_yaml("adapt_cpu", {"model": "m", "train": ["a.jsonl", "b/"], "output_dir": "o"}),
        AdaptConfig(
            examples="task.jsonl",
            output_dir="o",
            generator="hf",
            gen_model="g",
            generator_options={"device": "cpu"},
            mismatched=2,
            training={"lr": 1e-4, "mixed_precision": "no"},
            scale=0.5,
        ),  # fmt: skip
        MCEvalConfig(
            tasks=["super_glue/rte=rte.jsonl", MCTask("cb", "super_glue/cb", "cb.jsonl")],
            out="o",
            methods=["cappy", "chance"],
            max_examples=None,
        ),  # fmt: skip
        BigBenchEvalConfig(
            tasks=["a", "b"],
            out="o",
            model="m",
            adapt=True,
            adapt_training={"max_length": 256},
            generator="llamacpp",
            generator_options={"n_threads": 4},
            max_train=None,
        ),  # fmt: skip
        PairsEvalConfig(dev="d.jsonl", models=["a", "b"], out="m.json", batch_size=8),
    ],
    ids=lambda c: type(c).__name__,
)
def test_a_config_round_trips_through_yaml(cfg, tmp_path):
    path = tmp_path / "job.yaml"
    text = cfg.to_yaml(path)
    assert path.read_text() == text
    again = type(cfg).from_yaml(path)
    assert again == cfg and again.to_yaml() == text
    assert type(cfg).from_dict(yaml.safe_load(text)) == cfg
    # a file of a subset of the settings: the rest from the defaults, overrides on top
    cut = tmp_path / "cut.yaml"
    cut.write_text(yaml.safe_dump({k: v for i, (k, v) in enumerate(cfg.to_dict().items()) if i % 2 == 0}))
    partial = type(cfg).from_yaml(cut, {k: v for i, (k, v) in enumerate(cfg.to_dict().items()) if i % 2 == 1})
    assert partial == cfg


def test_the_mc_tasks_of_a_yaml_file_become_tasks():
    cfg = MCEvalConfig.from_dict(
        {"out": "o", "tasks": ["super_glue/rte=r.jsonl", {"name": "c", "key": "k", "path": "p"}]}
    )
    tasks = cfg.mc_tasks()
    assert [(t.name, t.key, t.path) for t in tasks] == [
        ("super_glue/rte", "super_glue/rte", "r.jsonl"),
        ("c", "k", "p"),
    ]
    with pytest.raises(ConfigError, match="a task mapping has name, key and path"):
        MCEvalConfig.from_dict({"out": "o", "tasks": [{"name": "c"}]}).mc_tasks()
    assert len(MCEvalConfig(out="o").mc_tasks()) == 8  # none given: the held-out suite


def test_yaml_files_a_config_cannot_hold_or_read_are_errors_naming_them(tmp_path):
    with pytest.raises(ConfigError, match="generator holds a EchoGen"):

        class EchoGen:
            pass

        AdaptConfig(output_dir="o", generator=EchoGen()).to_yaml()
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: o\nmax_examples: [1\n")
    with pytest.raises(ConfigError, match=f"{bad}:3: not valid YAML"):
        BigBenchEvalConfig.from_yaml(bad)
    bad.write_text("- out\n")
    with pytest.raises(ConfigError, match="is a YAML mapping of settings, got list"):
        BigBenchEvalConfig.from_yaml(bad)
    bad.write_text("out: o\nlr: 1.0e-4\n")  # in a file, a section's setting goes inside its section
    with pytest.raises(ConfigError, match=f"{bad}: unknown setting 'lr'.*write it inside adapt_training:"):
        BigBenchEvalConfig.from_yaml(bad)


def test_the_former_keyword_forms_of_the_job_functions_build_the_same_config(monkeypatch):
    import cappy.adaptation
    import cappy.evaluate.runs as runs
    from cappy.evaluate.bigbench import BBConfig

    seen = {}
    monkeypatch.setattr(runs, "_run_bigbench", lambda cfg, c, a: seen.setdefault("bb", cfg))

    class Source:
        cache, recipe = None, None

        def close(self):
            seen["closed"] = True

    runs.run_bigbench(["t1"], BBConfig(max_examples=5, max_train=7, seed=3), "out", Source(), model="m", adapt=True,
                      adapt_config="adapt_paper", adapt_overrides={"lr": 1e-4}, adapt_scale=0.5)  # fmt: skip
    want = BigBenchEvalConfig(tasks=["t1"], max_examples=5, max_train=7, seed=3, out="out", model="m", adapt=True,
                              adapt_preset="adapt_paper", adapt_training={"lr": 1e-4}, adapt_scale=0.5)  # fmt: skip
    assert seen["bb"] == want and seen["closed"]

    monkeypatch.setattr(cappy.adaptation, "_adapt", lambda scorer, exs, cfg, source: seen.setdefault("adapt", cfg))
    cappy.adaptation.adapt("m", [("q", "a")], candidates=[[]], output_dir="o", config="adapt_paper", lr=1e-4, seed=5)
    assert seen["adapt"].preset == "adapt_paper" and seen["adapt"].training == {"lr": 1e-4, "seed": 5}
