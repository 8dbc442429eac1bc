"""configs/pretrain_large.yaml: the Cappy-large recipe loads as a TrainConfig, every setting says where it comes
from, it fits the accelerate configs it is launched with, and it trains (on a tiny RoBERTa built from a config)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from cappy.train import TrainConfig, train
from conftest import REPO

RECIPE = REPO / "configs" / "pretrain_large.yaml"
ACCELERATE = [REPO / "configs" / "accelerate" / f"{name}.yaml" for name in ("ddp", "fsdp")]


def test_recipe_loads_as_the_papers_setting():
    cfg = TrainConfig.from_yaml(RECIPE, {"train": ["t.parquet"], "output_dir": "o"})
    cfg.validate()
    assert cfg.model == "roberta-large" and cfg.max_length == 512
    assert cfg.rank_loss_weight == 0.0 and not cfg.grouped  # the paper's pure MSE, pairs not grouped
    assert (cfg.lr, cfg.weight_decay, cfg.warmup_ratio, cfg.batch_size) == (2e-5, 0.0, 0.1, 128)
    assert cfg.mixed_precision == "bf16" and cfg.epochs == 1 and cfg.num_pairs is None


def test_every_setting_says_where_it_comes_from():
    text = RECIPE.read_text()
    keys = set(yaml.safe_load(text))
    tagged = set()
    for line in text.splitlines():
        m = re.match(r"^(\w+):.*#\s*\[(paper|released|ours)\]", line)
        if m:
            tagged.add(m.group(1))
    assert keys == tagged, f"settings without a [paper]/[released]/[ours] source: {sorted(keys - tagged)}"


@pytest.mark.parametrize("accelerate_config", ACCELERATE, ids=lambda p: p.stem)
def test_recipe_fits_the_accelerate_configs(accelerate_config):
    acc = yaml.safe_load(accelerate_config.read_text())
    cfg = TrainConfig.from_yaml(RECIPE, {"train": ["t"], "output_dir": "o"})
    assert acc["mixed_precision"] == cfg.mixed_precision
    # 8 processes x 16 pairs is the effective batch with no accumulation; one GPU accumulates 8 micro-batches
    assert cfg.updates_per_batch_plan(acc["num_processes"]) == (1, 16)
    assert cfg.updates_per_batch_plan(1) == (8, 16)
    assert "configs/pretrain_large.yaml" in RECIPE.read_text() and accelerate_config.name in RECIPE.read_text()


def test_recipe_trains_a_roberta_encoder_into_a_regression_scorer(tmp_path, tiny_model_dir):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    src = tiny_model_dir("roberta")  # a tiny RoBERTa (byte-level BPE trained here) in place of roberta-large
    encoder_dir = tmp_path / "encoder"
    config = AutoConfig.from_pretrained(src)
    config.architectures = ["RobertaModel"]
    AutoModel.from_pretrained(src, config=config).save_pretrained(encoder_dir)
    AutoTokenizer.from_pretrained(src).save_pretrained(encoder_dir)
    rows = [
        {"instruction": f"Is {i} even? Yes or no.", "response": r, "label": float((i % 2 == 0) == (r == "Yes"))}
        for i in range(8)
        for r in ("Yes", "No")
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # the recipe as written, cut to CPU size: a 128-position model, one small batch, float32 on a CPU
    small = {"max_length": 64, "batch_size": 8, "per_device_batch_size": 4, "mixed_precision": "no", "device": "cpu"}
    small |= {"model": str(encoder_dir), "train": [str(data)], "output_dir": str(tmp_path / "run"), "progress": False}
    small |= {"save_every": 0, "eval_every": 0, "log_every": 1}
    cfg = TrainConfig.from_yaml(RECIPE, small)
    train(cfg)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["problem_type"] == "regression" and len(saved["id2label"]) == 1  # one output
    assert saved["architectures"] == ["RobertaForSequenceClassification"]
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    # 16 pairs / 8 per update; finite MSEs (the tiny init, initializer_range 0.5, puts outputs units from 0/1)
    assert len(losses) == 2 and all(0 <= x < 100 for x in losses)
