"""The same run as 1 process (per-device batch 2b) and as 2 CPU processes under torchrun/gloo (batch b) gives the
same weights, and the two processes train on disjoint parts of every batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import defaultdict

import torch
import yaml
from safetensors.torch import load_file

from cappy import Cappy
from cappy.train import TrainConfig, train
from test_train_data import make_rows, write_shards
from tolerances import adam_drift_bound, assert_scores_close


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows_per_update(trace_files) -> dict[int, list[int]]:
    rows: dict[int, list[int]] = defaultdict(list)
    for f in trace_files:
        for update, *ids in json.loads(f.read_text()):
            rows[update].extend(ids)
    return rows


def test_two_gloo_processes_match_one(tmp_path, tiny_model_dir):
    data = write_shards(tmp_path / "pairs", make_rows(24, seed=9), shard_rows=48, row_group_size=16)  # 96 pairs
    cfg = {
        "model": str(tiny_model_dir("bert")),
        "train": [str(data)],
        "batch_size": 8,
        "max_length": 48,
        "lr": 1e-3,
        "dropout": 0.0,  # dropout masks differ between one and two processes
        "shuffle_window_rows": 32,
        "save_every": 4,  # checkpoints written by both processes mid-run
        "log_every": 1,
        "device": "auto",  # on a machine without CUDA this must still give one gloo group, not 2 lone runs
        "mixed_precision": "no",
        "progress": False,
        "trace_data": True,
        "seed": 3,
    }
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = train(TrainConfig.from_dict({**cfg, "output_dir": str(tmp_path / "one"), "per_device_batch_size": 4}))
    finally:
        torch.set_num_threads(saved)

    two_dir = tmp_path / "two"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "cappy",
        "train",
        str(cfg_path),
        "--output-dir",
        str(two_dir),
        "--set",
        "per_device_batch_size=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]

    w1 = load_file(tmp_path / "one" / "model.safetensors")
    w2 = load_file(two_dir / "model.safetensors")
    assert w1.keys() == w2.keys()
    # Attention key biases cannot change any output (softmax is shift-invariant per query), so their true gradient
    # is 0 and what autograd returns is rounding noise, which Adam scales up to steps of about +-lr. They are
    # compared by that bound; every other weight by the drift that rounding of the gradients allows (the same
    # gradients summed over micro-batches in one process or all-reduced over two).
    inert = [k for k in w1 if k.endswith("attention.self.key.bias")]
    assert len(inert) == 2
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1 if k not in inert)
    assert worst <= adam_drift_bound(cfg["lr"], one["updates"]), worst
    assert all(float((w1[k] - w2[k]).abs().max()) <= 2 * cfg["lr"] * one["updates"] for k in inert)
    rows = make_rows(6, seed=10)
    instr, resp = [r["instruction"] for r in rows], [r["response"] for r in rows]
    s1 = Cappy.from_pretrained(tmp_path / "one", device="cpu").score(instr, resp)
    s2 = Cappy.from_pretrained(two_dir, device="cpu").score(instr, resp)
    # weights within that drift (~1e-5) move a tiny model's score (a product of 2 layers of weights of ~0.5) by
    # well under 1e-3 of its scale; training on other data, or without the all-reduce, moves it by ~1e-1
    assert_scores_close(s1, s2, rtol=1e-3)
    start = load_file(tiny_model_dir("bert") / "model.safetensors")
    assert float((start["classifier.weight"] - w2["classifier.weight"]).abs().max()) > 1e-4, "weights must move"

    state = two_dir / "training_state" / (two_dir / "training_state" / "latest").read_text().strip()
    assert (state / "random_states_0.pkl").is_file() and (state / "random_states_1.pkl").is_file()
    assert json.loads((state / "trainer_state.json").read_text())["world_size"] == 2

    # Same updates and losses; each process saw a disjoint half of every update batch.
    logs1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    logs2 = [json.loads(x) for x in (two_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in logs1] == [m["update"] for m in logs2] == list(range(1, one["updates"] + 1))
    for a, b in zip(logs1, logs2):
        # a loss is a sum of float32 squared errors over 8 pairs from weights within the drift above
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(a["loss"]))
    single = _rows_per_update([tmp_path / "one" / "data_trace" / "rank-0.json"])
    rank0 = _rows_per_update([two_dir / "data_trace" / "rank-0.json"])
    rank1 = _rows_per_update([two_dir / "data_trace" / "rank-1.json"])
    assert sorted(single) == sorted(rank0) == sorted(rank1)
    for update, rows in single.items():
        assert not set(rank0[update]) & set(rank1[update])
        assert sorted(rank0[update] + rank1[update]) == sorted(rows)
        assert abs(len(rank0[update]) - len(rank1[update])) <= 1
    assert sorted(i for rows in single.values() for i in rows) == list(range(96))
