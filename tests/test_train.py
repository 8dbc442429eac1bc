"""Training on tiny models built from configs, in this process: schedule, evaluation, best checkpoint, heads,
the ranking term, NaN handling, config and CLI parsing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cappy import Cappy
from cappy.config import parse_set
from cappy.model import resolve_model_path
from cappy.train import TrainConfig, Trainer, TrainingError, lr_factor, pairwise_accuracy, train
from cappy.train.loop import _rank_term
from test_train_data import make_rows, write_jsonl, write_shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(model_dir, train_path, out, **kw) -> TrainConfig:
    base = dict(
        model=str(model_dir),
        train=[str(train_path)],
        output_dir=str(out),
        batch_size=16,
        per_device_batch_size=4,
        max_length=64,
        lr=1e-3,
        warmup_ratio=0.2,
        dropout=0.0,
        device="cpu",
        mixed_precision="no",
        progress=False,
        save_every=0,
        eval_every=0,
        log_every=1,
        shuffle_window_rows=64,
        seed=7,
    )
    base.update(kw)
    return TrainConfig.from_dict(base)


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_config_yaml_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ntrain: data/\noutput_dir: o\nlr: 2.0e-5\nbatch_size: 128\n")
    cfg = TrainConfig.from_yaml(path, {"lr": "1e-4", "per_device_batch_size": 32.0})
    assert cfg.train == ["data/"] and cfg.lr == 1e-4 and cfg.per_device_batch_size == 32
    assert cfg.updates_per_batch_plan(world_size=2) == (2, 32)
    with pytest.raises(ValueError, match="unknown setting 'learning_rate'"):
        TrainConfig.from_yaml(path, {"learning_rate": 1})
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        TrainConfig.from_yaml(path, {"batch_size": 12.5})
    with pytest.raises(ValueError, match="'model' is required"):
        TrainConfig.from_dict({"train": ["x"], "output_dir": "o"})
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig.from_yaml(path, {"mixed_precision": "fp8"})
    # --set values are YAML; "1e-4" (a string to YAML 1.1) becomes a number because lr is one
    over = parse_set(["lr=1e-4", "train=[a.jsonl, b/]", "progress=false", "num-pairs=64"])
    assert over == {"lr": "1e-4", "train": ["a.jsonl", "b/"], "progress": False, "num_pairs": 64}
    cfg = TrainConfig.from_yaml(path, over)
    assert (cfg.lr, cfg.train, cfg.progress, cfg.num_pairs) == (1e-4, ["a.jsonl", "b/"], False, 64)
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_set(["lr"])


def test_shipped_configs_load(tmp_path):
    from conftest import REPO

    adapt = TrainConfig.from_yaml("adapt_paper", {"model": "m", "train": "t", "output_dir": "o"})
    assert (adapt.lr, adapt.weight_decay, adapt.warmup_ratio) == (2e-5, 0.0, 0.1)
    assert (adapt.batch_size, adapt.num_pairs, adapt.max_length) == (128, 102400, 512)
    cpu = TrainConfig.from_yaml("adapt_cpu", {"model": "m", "train": "t", "output_dir": "o"})
    assert cpu.num_pairs < adapt.num_pairs and cpu.lr > 0
    with pytest.raises(FileNotFoundError, match="adapt_cpu"):  # the error lists the shipped presets
        TrainConfig.from_yaml("no_such_preset")
    mini = TrainConfig.from_yaml(REPO / "configs" / "pretrain_mini.yaml", {"train": "t", "output_dir": "o"})
    assert (
        resolve_model_path(mini.model) and __import__("pathlib").Path(resolve_model_path(mini.model)) / "config.json"
    ).exists()


def test_lr_schedule_counts_optimizer_updates_not_micro_steps(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "p.jsonl", make_rows(40))  # 160 pairs -> 10 updates of 16, 4 micro-steps each
    out = tmp_path / "run"
    result = train(_cfg(tiny_model_dir("roberta"), data, out))
    logs = [m for m in _metrics(out) if "loss" in m]
    assert [m["update"] for m in logs] == list(range(1, 11)) and result["updates"] == 10
    assert [m["pairs"] for m in logs] == [16 * u for u in range(1, 11)]
    lrs = [m["lr"] for m in logs]
    expected = [1e-3 * lr_factor(u, 10, 2) for u in range(10)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-9)  # one float64 formula, JSON round-trips it: ulps at most
    # float64 ratios of small integers: approx's default rel 1e-6 is far above their rounding
    assert lrs[1] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-3 / 8)  # warmed up, then decayed
    assert lr_factor(0, 100, 10) == pytest.approx(0.1) and lr_factor(99, 100, 10) == pytest.approx(1 / 90)


def test_training_learns_keeps_best_and_writes_a_cappy_checkpoint(tmp_path, tiny_model_dir):
    train_dir = write_shards(tmp_path / "pairs", make_rows(96, seed=1), shard_rows=160, row_group_size=40)
    dev = write_jsonl(tmp_path / "dev.jsonl", make_rows(12, seed=2))
    model_dir = tiny_model_dir("roberta")
    out = tmp_path / "run"
    cfg = _cfg(model_dir, train_dir, out, dev=str(dev), epochs=3, eval_every=8, lr=3e-3, save_every=12)
    trainer = Trainer(cfg)
    before = trainer.evaluate()
    result = trainer.train()
    evals = [m for m in _metrics(out) if "dev_mse" in m]
    total = result["total_updates"]
    assert total == trainer.plan.total_updates > 60  # 3 epochs of 384 pairs, windows of 80 with partial batches
    assert [m["update"] for m in evals] == list(range(8, total, 8)) + [total]
    best = min(evals, key=lambda m: m["dev_mse"])
    assert best["dev_mse"] < 0.5 * before["dev_mse"], (before, best)
    assert result["best"] == pytest.approx(best["dev_mse"])  # the same float, once through JSON
    # best/ holds the weights of the best evaluation; rescoring the dev file reproduces its numbers.
    # float32 as the trainer's dev pass ran (mixed_precision "no"); "auto" would pick bf16 autocast on some CPUs
    scorer = Cappy.from_pretrained(out / "best", device="cpu", dtype="float32")
    rows = make_rows(12, seed=2)
    scores = scorer.score([r["instruction"] for r in rows], [r["response"] for r in rows])
    labels = np.array([r["label"] for r in rows])
    # rescored in other batches than the trainer's dev pass: score rounding (SCORE_RTOL) carried into the MSE
    assert float(np.mean((scores - labels) ** 2)) == pytest.approx(best["dev_mse"], rel=1e-4)
    acc, n = pairwise_accuracy([r["instruction"] for r in rows], labels, scores)
    assert n == 12 * 5 and acc == pytest.approx(best["dev_pairwise_accuracy"])
    # The run folder itself is a Cappy checkpoint of the final weights, declared as a raw-score regressor.
    config = json.loads((out / "config.json").read_text())
    assert len(config["id2label"]) == 1 and config["problem_type"] == "regression"
    assert config["cappy"]["max_length"] == 64
    final = Cappy.from_pretrained(out, device="cpu", dtype="float32").score(
        rows[0]["instruction"], rows[0]["response"]
    )
    # the same float32 weights after a save and load, the same single pair: exact
    assert final == float(trainer.scorer.score(rows[0]["instruction"], rows[0]["response"]))
    assert (out / "training_state" / "latest").read_text().strip() == f"step-{total:08d}"


def test_encoder_checkpoint_gets_a_fresh_regression_head(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    src = tiny_model_dir("bert")
    encoder_dir = tmp_path / "encoder"
    config = AutoConfig.from_pretrained(src)
    config.architectures = ["BertModel"]
    encoder = AutoModel.from_pretrained(src, config=config)  # the encoder part of the tiny model, no head
    encoder.save_pretrained(encoder_dir)
    AutoTokenizer.from_pretrained(src).save_pretrained(encoder_dir)
    out = tmp_path / "run"
    data = write_jsonl(tmp_path / "p.jsonl", make_rows(8))
    train(_cfg(encoder_dir, data, out, lr=1e-6))
    weights = load_file(out / "model.safetensors")
    assert weights["classifier.weight"].shape == (1, 32)
    before = encoder.embeddings.word_embeddings.weight.detach()
    after = weights["bert.embeddings.word_embeddings.weight"]
    # 8 updates at lr 1e-6 move a weight by at most ~8e-6 (Adam steps are ~lr); a re-initialisation moves it by ~0.5
    assert torch.allclose(before, after, atol=1e-4), "the encoder weights must be loaded, not re-initialised"
    assert json.loads((out / "config.json").read_text())["problem_type"] == "regression"


def test_rank_term_matches_softmax_cross_entropy():
    scores = torch.tensor([2.0, 0.0, -1.0, 0.5, 0.3, 5.0], requires_grad=True)
    labels = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0, 1.0])
    instr = ["a", "a", "a", "b", "b", "c"]  # group b has no positive label, c has one response: no term
    got = _rank_term(scores, labels, instr)
    target = torch.tensor([2 / 3, 0.0, 1 / 3])
    want = -3 * (target * torch.log_softmax(scores[:3].detach(), 0)).sum()
    assert float(got.detach()) == pytest.approx(float(want))  # the same float32 formula, rel 1e-6 = a few ulps
    got.backward()
    # softmax gradients sum to 0 exactly in real arithmetic; float32 leaves a few ulps of values of order 1
    assert torch.all(scores.grad[3:] == 0) and float(scores.grad[:3].sum()) == pytest.approx(0.0, abs=1e-6)


def test_rank_loss_changes_training_and_groups_batches(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "p.jsonl", make_rows(32))
    plain = train(_cfg(tiny_model_dir("roberta"), data, tmp_path / "a"))
    ranked = train(_cfg(tiny_model_dir("roberta"), data, tmp_path / "b", rank_loss_weight=1.0))
    assert TrainConfig.from_dict({"model": "m", "train": ["x"], "output_dir": "o", "rank_loss_weight": 0.5}).grouped
    assert ranked["updates"] == plain["updates"] == 8
    assert not math.isclose(ranked["loss"], plain["loss"], rel_tol=1e-3)  # rounding is ~1e-6; a real term is >1e-3


def test_rank_scope_batch_spans_micro_batches(tmp_path, tiny_model_dir):
    """rank_scope=batch takes the listwise term over an instruction's whole run in the update batch: the same
    loss and gradient as one micro-batch holding the batch, unlike micro_batch scope with runs cut at 4."""
    data = write_jsonl(tmp_path / "p.jsonl", make_rows(8, per_instruction=8))
    got = {}
    for name, kw in {
        "batch_pd4": dict(rank_scope="batch", per_device_batch_size=4),
        "one_pass": dict(per_device_batch_size=16),
        "micro_pd4": dict(per_device_batch_size=4),
    }.items():
        trainer = Trainer(_cfg(tiny_model_dir("roberta"), data, tmp_path / name, rank_loss_weight=1.0, **kw))
        batch = trainer.plan.batches(0, True, 8 * trainer.max_length)[0]
        assert len(batch) == 16 and len(set(batch.instructions)) <= 3  # runs of 8: cut by micro-batches of 4
        loss, norm, _ = trainer._step(batch)
        got[name] = (loss, norm)
    # The same float32 sums in another order: agreement to ~1e-6 relative, checked at 1e-5; cutting the runs changes
    # the loss by percents and the (MSE-dominated) gradient norm by ~0.5%, both far outside that.
    assert got["batch_pd4"] == pytest.approx(got["one_pass"], rel=1e-5)
    assert not math.isclose(got["micro_pd4"][0], got["one_pass"][0], rel_tol=1e-3)
    assert not math.isclose(got["micro_pd4"][1], got["one_pass"][1], rel_tol=1e-3)
    with pytest.raises(ValueError, match="rank_scope"):
        TrainConfig.from_dict({"model": "m", "train": ["x"], "output_dir": "o", "rank_scope": "epoch"}).validate()


def test_pairwise_accuracy_counts_ties_half():
    instr = ["q", "q", "q", "r", "r"]
    labels = np.array([1.0, 0.0, 0.5, 1.0, 1.0])
    scores = np.array([0.9, 0.1, 0.9, 0.2, 0.3])
    acc, n = pairwise_accuracy(instr, labels, scores)
    assert n == 3  # (q0,q1), (q0,q2), (q2,q1); r has equal labels
    assert acc == pytest.approx((1 + 0.5 + 1) / 3)  # a float64 ratio of counts: exact up to ulps


def test_nan_loss_stops_with_the_update_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "p.jsonl", make_rows(16))
    out = tmp_path / "run"
    # An absurd learning rate sends the weights to ~1e30 after one update, so the next forward overflows.
    cfg = _cfg(tiny_model_dir("roberta"), data, out, lr=1e30, warmup_ratio=0.0, save_every=1, max_grad_norm=None)
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at update 2 of 4.*step-00000001"):
        train(cfg)
    latest = out / "training_state" / (out / "training_state" / "latest").read_text().strip()
    assert latest.name == "step-00000001"
    state = load_file(latest / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not (out / "model.safetensors").exists()


def test_bad_data_stops_before_the_model_is_loaded(tmp_path):
    rows = make_rows(4)
    rows[3]["label"] = float("nan")
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"p\.jsonl:4: label is nan"):
        Trainer(_cfg(tmp_path / "no-such-model", data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_bf16_autocast_on_cpu_trains_and_saves_float32(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "p.jsonl", make_rows(8))
    fp32 = train(_cfg(tiny_model_dir("roberta"), data, tmp_path / "fp32"))
    bf16 = train(_cfg(tiny_model_dir("roberta"), data, tmp_path / "bf16", mixed_precision="bf16"))
    assert math.isfinite(bf16["loss"])
    # float32 reruns agree to ~1e-6; bf16's 8-bit mantissa moves the loss by ~1e-3, so 1e-5 tells them apart
    assert not math.isclose(bf16["loss"], fp32["loss"], rel_tol=1e-5), "autocast must be active"
    weights = load_file(tmp_path / "bf16" / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in weights.values())


def test_adapting_a_float16_checkpoint_trains_in_float32(tmp_path, tiny_model_dir):
    # cappy-mini ships float16; adapting it must not train half-precision weights on the CPU (NaN at update 2)
    from safetensors.torch import load_file

    half = Cappy.from_pretrained(tiny_model_dir("bert"), device="cpu", dtype="float16").save_pretrained(tmp_path / "h")
    assert {v.dtype for v in load_file(half / "model.safetensors").values()} == {torch.float16}
    data = write_jsonl(tmp_path / "p.jsonl", make_rows(8))
    res = train(_cfg(half, data, tmp_path / "out", lr=1e-2))
    assert math.isfinite(res["loss"]) and all(math.isfinite(m["loss"]) for m in _metrics(tmp_path / "out"))
    assert {v.dtype for v in load_file(tmp_path / "out" / "model.safetensors").values()} == {torch.float32}


@pytest.mark.slow
def test_pretrain_mini_config_on_real_pairs(tmp_path):
    """configs/pretrain_mini.yaml end to end: MiniLM-L6 + a fresh head, auto precision, real SciQ pairs."""
    from conftest import REPO, SHARED_DATA

    rows = []
    with open(SHARED_DATA / "pretrain" / "sciq_val.jsonl", encoding="utf-8") as f:
        for line in list(f)[:48]:
            d = json.loads(line)
            instruction = f"Question: {d['question']}\nAnswer:"
            rows.append({"instruction": instruction, "response": d["correct_answer"], "label": 1.0})
            rows.append({"instruction": instruction, "response": d["distractor1"], "label": 0.0})
    data = write_jsonl(tmp_path / "sciq.jsonl", rows[:64])
    dev = write_jsonl(tmp_path / "dev.jsonl", rows[64:])
    out = tmp_path / "mini"
    overrides = {"train": str(data), "dev": str(dev), "output_dir": str(out), "batch_size": 16}
    overrides.update(per_device_batch_size=16, progress=False, eval_every=2, save_every=2, warmup_ratio=0.25)
    overrides["num_pairs"] = 64
    result = train(TrainConfig.from_yaml(REPO / "configs" / "pretrain_mini.yaml", overrides))
    assert result["updates"] == 4 and math.isfinite(result["loss"])
    scorer = Cappy.from_pretrained(out, device="cpu")
    assert scorer.max_length == 128 and scorer.model.config.problem_type == "regression"
    assert (out / "best" / "model.safetensors").is_file()
    assert len([m for m in _metrics(out) if "dev_mse" in m]) == 2


def test_cli_override_bare_no_means_no_mixed_precision():
    # YAML 1.1 reads a bare `no` as false; the setting's choices take the word back
    over = parse_set(["mixed_precision=no", "model=m", "train=x.jsonl", "output_dir=o"])
    assert over["mixed_precision"] is False and TrainConfig.from_dict(over).mixed_precision == "no"
    with pytest.raises(ValueError, match="progress must be true or false"):
        TrainConfig.from_dict({**over, "progress": "maybe"})


def test_checkpoint_records_training_tasks_and_guard_refuses(tiny_model_dir, tmp_path):
    from cappy.evaluate.guard import ContaminationError, check_contamination

    data = write_jsonl(tmp_path / "pairs.jsonl", make_rows(8, task="super_glue/rte"))
    out = tmp_path / "run"
    train(_cfg(tiny_model_dir("bert"), data, out, num_pairs=32))
    rec = json.loads((out / "training_data.json").read_text())
    assert rec["tasks"] == ["super_glue/rte"] and rec["inputs"][0]["sha256"]
    with pytest.raises(ContaminationError, match="super_glue/rte"):
        check_contamination(out, [("rte", "super_glue/rte", None)])
    check_contamination(out, [("cb", "super_glue/cb", None)])  # other tasks are fine
    # adapting that checkpoint on another task keeps the first task in the record
    data2 = write_jsonl(tmp_path / "pairs2.jsonl", make_rows(8, task="glue/sst2"))
    train(_cfg(out, data2, tmp_path / "run2", num_pairs=32))
    rec2 = json.loads((tmp_path / "run2" / "training_data.json").read_text())
    assert rec2["tasks"] == ["glue/sst2", "super_glue/rte"]


def test_mixed_precision_auto_follows_the_cpu(tmp_path, tiny_model_dir, monkeypatch):
    from cappy.train.loop import resolve_mixed_precision

    data = write_jsonl(tmp_path / "p.jsonl", make_rows(4))
    monkeypatch.setenv("CAPPY_CPU_BF16", "1")
    assert (
        train(_cfg(tiny_model_dir("bert"), data, tmp_path / "a", mixed_precision="auto"))["mixed_precision"] == "bf16"
    )
    monkeypatch.setenv("CAPPY_CPU_BF16", "0")
    assert train(_cfg(tiny_model_dir("bert"), data, tmp_path / "b", mixed_precision="auto"))["mixed_precision"] == "no"
    # an explicit setting is never changed by the detection
    monkeypatch.setenv("CAPPY_CPU_BF16", "1")
    assert resolve_mixed_precision("no", cpu=True) == "no" and resolve_mixed_precision("bf16", cpu=True) == "bf16"
