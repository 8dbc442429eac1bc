"""`cappy score` / `cappy rank` across processes: 2 gloo CPU processes under torchrun and under accelerate launch
write one output, in input order, equal to one process's."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys

import numpy as np
import pytest

from cappy.batch import _merge
from cappy.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "the cat sat on a mat while two dogs ran far away under blue sky".split()
    rows = []
    for i in range(n):
        instr = " ".join(rng.choices(words, k=rng.randint(3, 40)))  # mixed lengths: many forward batches
        rows.append({"id": i, "instruction": instr, "response": " ".join(rng.choices(words, k=rng.randint(1, 12)))})
    return rows


def _env() -> dict[str, str]:
    # one thread per process on both sides, so the two runs compute every batch with the same kernels
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def test_shares_of_all_ranks_merge_to_the_one_process_scores(tiny_scorer):
    rows = _rows(150, seed=1)
    instr, resp = [r["instruction"] for r in rows], [r["response"] for r in rows]
    whole = tiny_scorer.score(instr, resp, batch_size=8)
    parts = [tiny_scorer.score(instr, resp, batch_size=8, shard=(k, 3)) for k in range(3)]
    assert all(np.isnan(p).any() for p in parts)  # each rank computed only its share
    assert sum((~np.isnan(p)).sum() for p in parts) == len(rows)  # and the shares do not overlap
    assert np.array_equal(_merge(parts), whole)  # the same batches in the same shapes: bit-identical
    with pytest.raises(ValueError, match="shard must be"):
        tiny_scorer.score(instr, resp, shard=(2, 2))


@pytest.mark.parametrize(("launcher", "command"), [("torchrun", "score"), ("accelerate", "rank")])
def test_two_gloo_processes_write_the_one_process_output(tiny_model_dir, tmp_path, launcher, command):
    rows = _rows(300)
    if command == "rank":
        rows = [
            {"id": r["id"], "instruction": r["instruction"], "candidates": [r["response"], "a", "b c"]} for r in rows
        ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = str(tiny_model_dir("bert"))
    args = [command, "--model", model, "--input", str(inp), "--batch-size", "16", "--device", "cpu"]
    one = subprocess.run(
        [sys.executable, "-m", "cappy", *args, "--output", str(tmp_path / "one.jsonl")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    port = str(_free_port())
    if launcher == "torchrun":
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        launch += ["--master_addr", "127.0.0.1", "--master_port", port]
    else:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        launch += ["--main_process_ip", "127.0.0.1", "--main_process_port", port]
    two = subprocess.run(
        [*launch, "-m", "cappy", *args, "--output", str(tmp_path / "two.jsonl")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stderr.count(f"cappy {command}: 300 rows") == 1  # reported once, by the first process
    a = [json.loads(x) for x in open(tmp_path / "one.jsonl")]
    b = [json.loads(x) for x in open(tmp_path / "two.jsonl")]
    assert [r["id"] for r in b] == list(range(300))  # input order
    assert a == b  # every score equal: each process ran its share of the very batches one process runs


def test_one_process_run_is_unchanged_by_the_sharding_code(tiny_model_dir, tmp_path, capsys):
    rows = _rows(20)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert main(["score", "--model", str(tiny_model_dir("bert")), "--input", str(inp), "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 20 and "20 rows" in capsys.readouterr().err


@pytest.mark.parametrize("fails", [False, True])
def test_a_command_leaves_the_process_group_before_exit(tiny_model_dir, tmp_path, monkeypatch, fails):
    # A rank that exits with its gloo group still up could abort at interpreter exit (seen as a flaky SIGABRT of
    # the torchrun test above); the CLI tears the group down after the command, whether it succeeded or failed.
    import torch.distributed as dist

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in _rows(5)) + ("not json\n" if fails else ""))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        args = ["score", "--model", str(tiny_model_dir("bert")), "--input", str(inp), "--output", str(tmp_path / "o")]
        assert main(args) == (2 if fails else 0)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
