"""The trainer under `accelerate launch` with the shipped FSDP config on 2 CPU processes (gloo): the parameters are
really sharded (FSDP2 DTensors, per-process shards in training_state/), the weights match one process, and a run
killed with SIGKILL resumes from its sharded state to the same bits as an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader

from conftest import REPO
from test_train_data import make_rows, write_shards
from test_train_ddp import _free_port
from test_train_faults import kill_at_checkpoint
from tolerances import adam_drift_bound

ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _launch(run, output_dir) -> list[str]:
    """The documented command (`accelerate launch --config_file ... -m cappy train`) on 2 CPU processes."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(run["accelerate"]),
        "--main_process_port",
        str(_free_port()),
        "-m",
        "cappy",
        "--verbose",
        "train",
        str(run["config"]),
        "--output-dir",
        str(output_dir),
        "--set",
        "per_device_batch_size=2",
    ]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, tiny_model_dir):
    """One uninterrupted FSDP run on 2 CPU processes, and its settings."""
    tmp = tmp_path_factory.mktemp("fsdp")
    data = write_shards(tmp / "pairs", make_rows(24, seed=9), shard_rows=48, row_group_size=16)  # 96 pairs
    cfg = {
        "model": str(tiny_model_dir("bert")),
        "train": [str(data)],
        "batch_size": 8,
        "max_length": 48,
        "lr": 1e-3,
        "epochs": 3,  # 36 updates: time to kill a run between checkpoints
        "dropout": 0.0,  # dropout masks differ between one and two processes
        "shuffle_window_rows": 32,
        "save_every": 3,
        "log_every": 1,
        "device": "cpu",
        "mixed_precision": "no",
        "progress": False,
        "seed": 3,
    }
    config = tmp / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    # The shipped config as a user would adapt it to this machine: 2 processes, CPU, float32.
    acc = yaml.safe_load((REPO / "configs" / "accelerate" / "fsdp.yaml").read_text())
    assert acc["distributed_type"] == "FSDP" and acc["fsdp_config"]["fsdp_version"] == 2
    acc.update(num_processes=2, use_cpu=True, mixed_precision="no")
    accelerate = tmp / "fsdp_cpu.yaml"
    accelerate.write_text(yaml.safe_dump(acc))
    run = {"cfg": cfg, "config": config, "accelerate": accelerate, "out": tmp / "fsdp"}
    done = subprocess.run(
        _launch(run, run["out"]), env={**os.environ, **ENV}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    run["stderr"] = done.stderr
    return run


def test_fsdp1_on_cpu_is_refused_with_the_reason(monkeypatch):
    from cappy.errors import InputError
    from cappy.train.loop import _shard_on_cpu

    monkeypatch.setenv("FSDP_VERSION", "1")  # as `accelerate launch` sets it from fsdp_config: fsdp_version: 1
    with pytest.raises(InputError, match="FSDP on CPU needs fsdp_version: 2 .*no available devices"):
        _shard_on_cpu(None, "no")


def test_fsdp_on_two_cpu_processes_shards_and_matches_one_process(fsdp_run, tmp_path):
    from cappy.train import TrainConfig, train

    out = fsdp_run["out"]
    # What ran is FSDP, not the DDP that accelerate would otherwise fall back to on CPU.
    assert fsdp_run["stderr"].count("distributed: FSDP over 2 processes") == 2, fsdp_run["stderr"][-4000:]
    state = out / "training_state" / (out / "training_state" / "latest").read_text().strip()
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):  # a shard per process (torch.distributed.checkpoint)
        assert {p.name for p in (state / part).iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert not (state / "model.safetensors").exists()  # the replicated (DDP) checkpoint format
    assert json.loads((state / "trainer_state.json").read_text())["world_size"] == 2

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = {**fsdp_run["cfg"], "output_dir": str(tmp_path / "one"), "per_device_batch_size": 4}
        one = train(TrainConfig.from_dict(cfg))
    finally:
        torch.set_num_threads(saved)
    w1 = load_file(tmp_path / "one" / "model.safetensors")
    w2 = load_file(out / "model.safetensors")  # the gathered full state dict, in the scorer's format
    assert w1.keys() == w2.keys()
    # Every parameter was a DTensor sharded over the 2 processes: each saved its part of dim 0 (the first process
    # the larger one, as FSDP2 cuts), none was replicated.
    meta = FileSystemReader(str(state / "pytorch_model_fsdp_0")).read_metadata().state_dict_metadata
    for key in w2:
        rows, half = w2[key].shape[0], -(-w2[key].shape[0] // 2)
        assert [(c.offsets[0], c.sizes[0]) for c in meta[f"model.{key}"].chunks] == [(0, half), (half, rows - half)]
    # As under DDP (test_train_ddp): the gradients of one process's accumulated micro-batches and of two processes'
    # reduce-scattered shards differ only by rounding, which AdamW turns into steps differing by about
    # lr * (relative gradient error) per update. Attention key biases have a true gradient of 0 (softmax is
    # shift-invariant per query), so Adam scales their rounding noise up to steps of about +-lr.
    inert = [k for k in w1 if k.endswith("attention.self.key.bias")]
    assert len(inert) == 2
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1 if k not in inert)
    assert worst <= adam_drift_bound(fsdp_run["cfg"]["lr"], one["updates"]), worst
    assert all(float((w1[k] - w2[k]).abs().max()) <= 2 * fsdp_run["cfg"]["lr"] * one["updates"] for k in inert)
    start = load_file(os.path.join(fsdp_run["cfg"]["model"], "model.safetensors"))
    assert float((start["classifier.weight"] - w2["classifier.weight"]).abs().max()) > 1e-4, "weights must move"
    logs1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    logs2 = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in logs1] == [m["update"] for m in logs2] == list(range(1, one["updates"] + 1))
    for a, b in zip(logs1, logs2):
        # a loss is a sum of float32 squared errors over 8 pairs from weights within the drift above
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(a["loss"]))


def test_fsdp_run_killed_resumes_from_its_sharded_state_to_the_same_weights(fsdp_run, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, **ENV}
    killed_at = kill_at_checkpoint(_launch(fsdp_run, out), env, out / "training_state", 9)
    assert not (out / "model.safetensors").exists(), "killed before the end"

    again = subprocess.run(_launch(fsdp_run, out), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    resumed = [line for line in again.stderr.splitlines() if "resumed from" in line]
    assert len(resumed) == 2, again.stderr[-4000:]  # both processes, from the same checkpoint
    resumed_at = {int(line.rsplit(" ", 1)[1]) for line in resumed}
    total = json.loads((fsdp_run["out"] / "metrics.jsonl").read_text().splitlines()[-1])["update"]
    assert len(resumed_at) == 1 and killed_at <= min(resumed_at) < total, (killed_at, resumed_at, total)
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in logs] == list(range(1, total + 1)), "each update logged once across the kill"

    # The same 2 processes, the same order of every sum: resuming restores each shard of the weights and of the
    # optimizer state exactly, so the result is the uninterrupted run's to the bit.
    ref = load_file(fsdp_run["out"] / "model.safetensors")
    got = load_file(out / "model.safetensors")
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
