"""One way to override a setting on the command line: ``--set KEY=VALUE`` (YAML values) and ``--config FILE`` for
cappy train, cappy adapt and every cappy eval suite; the former spellings fail naming the new one.

The job functions are replaced by recorders here, so each test sees the config a command line builds; the real runs
with ``--set`` are in test_train_faults.py, test_adapt.py, test_evaluate.py and test_evaluate_bigbench.py.
"""

from __future__ import annotations

import dataclasses
import types

import pytest

from cappy.adaptation import AdaptConfig
from cappy.cli import build_parser, main
from cappy.evaluate import BigBenchEvalConfig, MCEvalConfig, PairsEvalConfig
from cappy.train import TrainConfig


@pytest.fixture
def jobs(monkeypatch, tmp_path):
    """The config each job function was called with, by job; the functions do nothing else."""
    import cappy.adaptation
    import cappy.evaluate.runs
    import cappy.train.loop

    seen: dict[str, object] = {}

    def fake_eval(name):
        def run(cfg):
            seen[name] = cfg
            (tmp_path / "report.md").write_text("report\n")
            return {}

        return run

    def fake_adapt(config):
        seen["adapt"] = config
        counts = {"examples": 1, "pairs": 2, "gold": 1, "mismatched": 0}
        return types.SimpleNamespace(adaptation=types.SimpleNamespace(counts=counts, model_dir="m", reused=False))

    monkeypatch.setattr(cappy.train.loop, "train", lambda cfg: seen.update(train=cfg) or {})
    monkeypatch.setattr(cappy.adaptation, "adapt", fake_adapt)
    monkeypatch.setattr(cappy.evaluate.runs, "run_mc", fake_eval("mc"))
    monkeypatch.setattr(cappy.evaluate.runs, "run_bigbench", fake_eval("bigbench"))
    monkeypatch.setattr(cappy.evaluate.runs, "run_pairs", lambda cfg: seen.update(pairs=cfg) or {})
    return seen


@pytest.fixture
def train_yaml(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model: enc\nlr: 2.0e-5\nbatch_size: 32\n")
    return path


def test_train_takes_set_with_yaml_values(jobs, train_yaml, tmp_path):
    out = tmp_path / "run"
    argv = ["train", str(train_yaml), "--train", "a.jsonl", "b/", "--output-dir", str(out)]
    argv += ["--set", "lr=1e-4", "--set", "num_pairs=64", "--set", "mixed_precision=no", "--set", "dev=d.jsonl"]
    assert main(argv) == 0
    cfg = jobs["train"]
    assert isinstance(cfg, TrainConfig)
    assert (cfg.lr, cfg.num_pairs, cfg.mixed_precision, cfg.dev) == (1e-4, 64, "no", "d.jsonl")
    assert (cfg.model, cfg.batch_size, cfg.train, cfg.output_dir) == ("enc", 32, ["a.jsonl", "b/"], str(out))
    # the shipped preset by name, a YAML list as --train, a --set list
    assert main(["train", "adapt_cpu", "--model", "m", "--train", "[x.jsonl, y/]", "--output-dir", "o"]) == 0
    assert jobs["train"].train == ["x.jsonl", "y/"] and jobs["train"].lr == 1e-4  # adapt_cpu's lr
    assert main(["train", "adapt_cpu", "--set", "model=m", "--set", "train=[p/, q/]", "--set", "output_dir=o"]) == 0
    assert jobs["train"].train == ["p/", "q/"]


def test_train_old_spelling_names_the_new_one(jobs, train_yaml, capsys):
    assert main(["train", str(train_yaml), "--output-dir", "o", "--train", "t", "--lr", "1e-4"]) == 2
    err = capsys.readouterr().err
    assert "--lr is not an option of cappy train: use --set lr=1e-4" in err and "train" not in jobs
    assert main(["train", str(train_yaml), "--output-dir", "o", "--train", "t", "--warmup-ratio=0.05"]) == 2
    assert "use --set warmup_ratio=0.05" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not a setting: argparse's own message
        main(["train", str(train_yaml), "--frobnicate", "3"])
    assert "unrecognized arguments: --frobnicate 3" in capsys.readouterr().err


def test_train_unknown_key_and_wrong_type(jobs, train_yaml, capsys):
    base = ["train", str(train_yaml), "--train", "t", "--output-dir", "o"]
    assert main([*base, "--set", "lrr=1e-4"]) == 2
    err = capsys.readouterr().err
    assert "--set lrr=1e-4: unknown setting 'lrr' of cappy train; did you mean lr?" in err
    assert "Valid settings: adam_beta1" in err and "weight_decay" in err
    assert main([*base, "--set", "batch_size=big"]) == 2
    assert "--set batch_size=big: batch_size must be an integer, got 'big'" in capsys.readouterr().err
    assert main([*base, "--output-dir", "x", "--set", "output_dir=y"]) == 2  # two values for one setting
    assert "output_dir is given both as an option and as --set" in capsys.readouterr().err
    bad = train_yaml.parent / "bad.yaml"
    bad.write_text("model: m\nlearning_rate: 1\n")
    assert main(["train", str(bad), "--train", "t", "--output-dir", "o"]) == 2
    assert f"{bad}: unknown setting 'learning_rate' of cappy train" in capsys.readouterr().err
    assert "train" not in jobs


def test_adapt_takes_set_and_a_yaml_job(jobs, tmp_path, capsys):
    argv = ["adapt", "--train", "task.jsonl", "--gens", "g.jsonl", "--out", str(tmp_path / "o"), "--no-progress"]
    argv += ["--set", "lr=1e-4", "--set", "mismatched=2", "--set", "training.max_length=64", "--set", "gen_seed=3"]
    assert main(argv) == 0
    cfg = jobs["adapt"]
    assert isinstance(cfg, AdaptConfig) and cfg.examples == "task.jsonl" and cfg.candidates == "g.jsonl"
    assert cfg.training == {"lr": 1e-4, "max_length": 64} and (cfg.mismatched, cfg.gen_seed) == (2, 3)
    assert cfg.show_progress is False and cfg.model == "cappy-mini"
    # the whole job in a YAML file, options and --set on top
    job = tmp_path / "adapt.yaml"
    job.write_text("examples: task.jsonl\ncandidates: g.jsonl\noutput_dir: o2\ntraining: {lr: 5.0e-5, seed: 1}\n")
    assert main(["adapt", "--config", str(job), "--set", "lr=1e-3", "--mismatched", "1", "--device", "cpu"]) == 0
    cfg = jobs["adapt"]
    assert (cfg.output_dir, cfg.training, cfg.mismatched, cfg.device) == ("o2", {"lr": 1e-3, "seed": 1}, 1, "cpu")
    assert cfg.show_progress is True  # the command line's default: bars unless --no-progress
    full = tmp_path / "full.yaml"
    AdaptConfig(examples="t.jsonl", candidates="g.jsonl", output_dir="o3", keep_run=True).to_yaml(full)
    assert main(["adapt", "--config", str(full)]) == 0
    assert jobs["adapt"] == AdaptConfig(examples="t.jsonl", candidates="g.jsonl", output_dir="o3", keep_run=True)
    argv = ["adapt", "--config", str(job), "--seed", "4", "--backend", "hf", "--gen-model", "g", "--n-ctx", "64"]
    assert main(argv) == 0
    cfg = jobs["adapt"]  # the generator's options fill the generator settings; --seed is the samples' seed
    assert (cfg.generator, cfg.gen_model, cfg.gen_seed, cfg.generator_options) == ("hf", "g", 4, {"n_ctx": 64})


def test_adapt_old_spellings_name_the_new_ones(jobs, tmp_path, capsys):
    base = ["adapt", "--train", "task.jsonl", "--gens", "g.jsonl", "--out", str(tmp_path / "o")]
    assert main([*base, "--config", "adapt_paper"]) == 2  # --config named the training preset before
    assert "a training preset is --preset adapt_paper" in capsys.readouterr().err
    preset = tmp_path / "my_preset.yaml"
    preset.write_text("lr: 1.0e-4\nadaptation:\n  mismatched: 4\n")
    assert main([*base, "--config", str(preset)]) == 2
    assert f"a training preset is --preset {preset}" in capsys.readouterr().err
    assert main([*base, "--lr", "1e-4"]) == 2
    assert "use --set lr=1e-4" in capsys.readouterr().err
    assert main([*base, "--set", "training.model=x"]) == 2
    assert "training.model: set by adapt" in capsys.readouterr().err
    assert "adapt" not in jobs
    assert main([*base, "--preset", str(preset)]) == 0 and jobs["adapt"].preset == str(preset)


def test_eval_mc_takes_set_and_config(jobs, tmp_path, capsys):
    argv = ["eval", "mc", "--out", str(tmp_path), "--set", "methods=[cappy, chance]", "--set", "max_examples=10"]
    argv += ["--task", "super_glue/rte=r.jsonl", "--set", "max_templates=0"]
    assert main(argv) == 0
    cfg = jobs["mc"]
    assert isinstance(cfg, MCEvalConfig) and cfg.methods == ["cappy", "chance"] and cfg.max_examples == 10
    assert cfg.tasks == ["super_glue/rte=r.jsonl"] and cfg.max_templates is None  # 0: every template
    assert cfg.command.startswith("cappy eval mc --out")
    assert main(["eval", "mc", "--out", str(tmp_path), "--methods", "cappy,llm_sum"]) == 0
    assert jobs["mc"].methods == ["cappy", "llm_sum"]
    assert main(["eval", "mc", "--out", str(tmp_path), "--set", "methods=[cappy, chanse]"]) == 2
    assert "chanse: did you mean chance?" in capsys.readouterr().err
    assert main(["eval", "mc", "--out", str(tmp_path), "--set", "max_example=3"]) == 2
    assert "unknown setting 'max_example' of cappy eval mc; did you mean max_examples" in capsys.readouterr().err
    assert main(["eval", "mc"]) == 2
    assert "cappy eval mc: error: out is required" in capsys.readouterr().err


def test_eval_bigbench_yaml_job_with_set_on_top(jobs, tmp_path, capsys):
    job = tmp_path / "bb.yaml"
    BigBenchEvalConfig(tasks=["t1", "t2"], out=str(tmp_path), model="m", adapt=True, max_examples=50,
                       adapt_training={"max_length": 256}).to_yaml(job)  # fmt: skip
    argv = ["eval", "bigbench", "--config", str(job), "--set", "max_examples=10", "--max-train", "5"]
    argv += ["--set", "lr=1e-4", "--backend", "llamacpp", "--n-threads", "2", "--parallel", "4", "--set", "seed=7"]
    assert main(argv) == 0
    cfg = jobs["bigbench"]
    assert isinstance(cfg, BigBenchEvalConfig)
    assert (cfg.tasks, cfg.model, cfg.adapt, cfg.max_examples, cfg.max_train, cfg.seed) == (["t1", "t2"], "m", True,
                                                                                          10, 5, 7)  # fmt: skip
    assert cfg.adapt_training == {"max_length": 256, "lr": 1e-4}
    assert cfg.generator == "llamacpp"
    assert cfg.generator_options == {"n_threads": 2, "n_parallel": 4, "concurrency": 4}
    assert cfg.recipe == "cpu8_stop"  # no --recipe: the config's default
    assert main(["eval", "bigbench", "--config", str(job), "--adapt-config", "adapt_paper"]) == 0
    assert jobs["bigbench"].adapt_preset == "adapt_paper"  # the former name of --adapt-preset still works


def test_eval_bigbench_old_spellings_and_bad_keys(jobs, tmp_path, capsys):
    base = ["eval", "bigbench", "--out", str(tmp_path), "--model", "m", "--adapt"]
    assert main([*base, "--adapt-override", "max_length=64"]) == 2
    assert "--adapt-override is gone: use --set adapt_training.max_length=64" in capsys.readouterr().err
    assert main([*base, "--max-length", "64"]) == 2
    assert "--max-length is not an option of cappy eval bigbench: use --set max_length=64" in capsys.readouterr().err
    assert main([*base, "--set", "max_lenght=64"]) == 2
    err = capsys.readouterr().err
    assert "did you mean max_length" in err and "in adapt_training (adapt_training.KEY" in err
    assert main([*base, "--set", "max_examples=all"]) == 2
    assert "max_examples must be an integer or null, got 'all'" in capsys.readouterr().err
    assert main([*base, "--max-examples", "3", "--set", "max_examples=4"]) == 2
    assert "max_examples is given both as an option and as --set" in capsys.readouterr().err
    assert "bigbench" not in jobs


def test_eval_pairs_takes_set(jobs, capsys):
    assert main(["eval", "pairs", "--dev", "d.jsonl", "--model", "a", "--model", "b", "--set", "batch_size=8"]) == 0
    cfg = jobs["pairs"]
    assert isinstance(cfg, PairsEvalConfig) and cfg.models == ["a", "b"] and cfg.batch_size == 8
    assert main(["eval", "pairs", "--dev", "d.jsonl", "--model", "a", "--set", "batch=8"]) == 2
    assert "did you mean batch_size?" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "cls"),
    [
        (["train", "x"], TrainConfig),
        (["adapt"], AdaptConfig),
        (["eval", "mc"], MCEvalConfig),
        (["eval", "bigbench"], BigBenchEvalConfig),
        (["eval", "pairs"], PairsEvalConfig),
    ],
)
def test_options_come_from_the_config_fields(argv, cls):
    """Every field that declares options has them, with its help and default; none is typed twice."""
    sub = build_parser()._subparsers._group_actions[0].choices[argv[0]]
    if argv[0] == "eval":
        sub = sub._subparsers._group_actions[0].choices[argv[1]]
    options = {o: a for a in sub._actions for o in a.option_strings}
    assert "--set" in options
    for f in dataclasses.fields(cls):
        for flag in f.metadata.get("flags", ()):
            action = options[flag]
            assert action.dest == f.name and f.metadata["help"] in action.help
            if f.default not in (None, "", False, True, dataclasses.MISSING):
                assert f"(default: {f.default})" in action.help


def test_the_readme_and_docs_use_no_former_spelling():
    from conftest import REPO

    for name in ("README.md", "docs/RESULTS.md", "docs/EXPERIMENTS.md"):
        text = (REPO / name).read_text()
        assert "--adapt-override" not in text, name
        for line in text.splitlines():
            if "cappy train " in line:
                words = line.split("cappy train ", 1)[1].split("`")[0].split()
                options = [w.split("=")[0] for w in words if w.startswith("--")]
                assert set(options) <= {"--model", "--train", "--dev", "--output-dir", "--set"}, (name, line)


def test_a_yaml_job_runs_for_real_with_set_on_top(tiny_model_dir, tmp_path, capsys):
    """The config a file and --set make is the one that runs: results.json records its sample caps and seed."""
    import json

    from cappy.evaluate.bigbench import task_prompts
    from test_evaluate_bigbench import BB, write_cache

    task = BB / "repeat_copy_logic"
    cache = tmp_path / "gens.jsonl"
    write_cache(cache, task_prompts(task, BigBenchEvalConfig(max_examples=None))[2])  # every validation prompt
    job = tmp_path / "bb.yaml"
    BigBenchEvalConfig(tasks=[str(task)], out=str(tmp_path / "bb"), model=str(tiny_model_dir("bert")), gens=str(cache),
                       recipe="quick", max_examples=50, plots=False, device="cpu").to_yaml(job)  # fmt: skip
    assert main(["eval", "bigbench", "--config", str(job), "--set", "max_examples=3", "--set", "seed=0"]) == 0
    res = json.loads((tmp_path / "bb" / "results.json").read_text())
    assert res["sample"]["max_examples"] == 3 and res["tasks"]["repeat_copy_logic"]["n_validation"] == 3
    assert "cappy" in res["methods"] and "--set max_examples=3" in res["command"]
    assert "| **Mean** |" in capsys.readouterr().out
