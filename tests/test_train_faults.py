"""A run killed with SIGKILL and resumed with the same command ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time

import psutil  # a dependency of accelerate
import torch
import yaml
from safetensors.torch import load_file

from cappy.cli import main
from cappy.train import TrainConfig, train
from test_train_data import make_rows, write_shards


def _config(tmp_path, model_dir, data) -> dict:
    return {
        "model": str(model_dir),
        "train": [str(data)],
        "batch_size": 8,
        "per_device_batch_size": 4,
        "max_length": 64,
        "lr": 1e-3,
        "epochs": 2,
        "shuffle_window_rows": 48,
        "save_every": 3,
        "log_every": 1,
        "device": "cpu",
        "mixed_precision": "no",
        "progress": False,
        "seed": 11,
        # the checkpoint's dropout (0.1) stays on: resuming must restore the RNG state exactly
    }


def _kill_tree(pid: int) -> None:
    root = psutil.Process(pid)
    for p in [*root.children(recursive=True), root]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)


def kill_at_checkpoint(cmd: list[str], env: dict, state_dir, step: int, timeout: float = 240) -> int:
    """Run ``cmd`` and SIGKILL it with every process it started (a launcher's workers too, which torchrun puts in
    sessions of their own), as when a machine dies, once ``state_dir/latest`` names a checkpoint of update ``step``
    or later; returns that update."""
    log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would stall a chatty launcher
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    latest = state_dir / "latest"
    deadline = time.monotonic() + timeout
    killed_at = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            name = latest.read_text().strip() if latest.is_file() else ""
            if name and int(name.rsplit("-", 1)[1]) >= step:
                _kill_tree(proc.pid)
                killed_at = int(name.rsplit("-", 1)[1])
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and killed_at is None:
            _kill_tree(proc.pid)
        proc.wait(timeout=60)
        log.seek(0)
        output = log.read().decode(errors="replace")
        log.close()
    assert killed_at is not None, "the run ended before a checkpoint could be killed:\n" + output[-3000:]
    assert proc.returncode == -signal.SIGKILL, output[-3000:]
    return killed_at


def test_sigkill_then_resume_gives_identical_weights(tmp_path, tiny_model_dir, caplog):
    data = write_shards(tmp_path / "pairs", make_rows(40, seed=5), shard_rows=60, row_group_size=24)  # 160 pairs
    cfg = _config(tmp_path, tiny_model_dir("roberta"), data)
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))

    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in the subprocess: same kernels, same bits
    try:
        reference = train(TrainConfig.from_dict({**cfg, "output_dir": str(tmp_path / "ref")}))
    finally:
        torch.set_num_threads(saved)
    total = reference["updates"]
    assert total == reference["total_updates"] >= 40

    out = tmp_path / "run"
    argv = ["train", str(cfg_path), "--output-dir", str(out)]
    cmd = [sys.executable, "-m", "cappy", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    killed_at = kill_at_checkpoint(cmd, env, out / "training_state", 9)
    assert not (out / "model.safetensors").exists(), "killed before the end"

    # The same command again, through the same entry point (in this process, to spare a second start-up).
    caplog.set_level(logging.INFO, logger="cappy.train.loop")
    torch.set_num_threads(1)
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(saved)
    resumed_at = [int(r.message.rsplit(" ", 1)[1]) for r in caplog.records if "resumed from" in r.message]
    assert resumed_at and killed_at <= resumed_at[0] < total
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in logs] == list(range(1, total + 1)), "each update logged once across the kill"

    ref_w = load_file(tmp_path / "ref" / "model.safetensors")
    got_w = load_file(out / "model.safetensors")
    assert ref_w.keys() == got_w.keys()
    for k in ref_w:
        assert torch.equal(ref_w[k], got_w[k]), k
    # Not trivially equal: training moved the weights away from the starting checkpoint.
    start = load_file(tiny_model_dir("roberta") / "model.safetensors")
    assert not torch.equal(start["classifier.out_proj.weight"], got_w["classifier.out_proj.weight"])
