"""`cappy merge`: the weighted average of two checkpoints, parameter by parameter, with their training records."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from cappy.cli import main
from cappy.model import merge_checkpoints


def _perturbed_copy(src, dst, seed: int, tasks: list[str]):
    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    g = torch.Generator().manual_seed(seed)
    state = {k: v + torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in state.items()}
    from safetensors.torch import save_file

    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    (dst / "training_data.json").write_text(
        json.dumps({"tasks": tasks, "inputs": [{"path": str(dst), "sha256": "x"}]})
    )
    return state


def test_merge_is_the_weighted_average_and_unites_records(tiny_model_dir, tmp_path):
    a = _perturbed_copy(tiny_model_dir("bert"), tmp_path / "a", 1, ["sciq"])
    b = _perturbed_copy(tiny_model_dir("bert"), tmp_path / "b", 2, ["piqa", "sciq"])
    out = tmp_path / "merged"
    assert (
        main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", "0.25", "0.75", "--out", str(out)]) == 0
    )
    merged = load_file(out / "model.safetensors")
    key = "bert.encoder.layer.0.attention.self.query.weight"
    # float32 sums of two terms: exact up to one rounding of each product (~1e-7 relative)
    torch.testing.assert_close(merged[key], 0.25 * a[key] + 0.75 * b[key], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(merged[key], a[key]) and not torch.allclose(merged[key], b[key])
    record = json.loads((out / "training_data.json").read_text())
    assert record["tasks"] == ["piqa", "sciq"]
    assert len(record["inputs"]) == 2
    config = json.loads((out / "config.json").read_text())
    assert len(config["id2label"]) == 1 and config["problem_type"] == "regression"


def test_merge_refuses_bad_weights_and_other_architectures(tiny_model_dir, tmp_path):
    bert, roberta = tiny_model_dir("bert"), tiny_model_dir("roberta")
    with pytest.raises(ValueError, match="sum to 1"):
        merge_checkpoints([bert, bert], [0.5, 0.6], tmp_path / "x")
    with pytest.raises(ValueError, match="non-negative"):
        merge_checkpoints([bert, bert], [1.5, -0.5], tmp_path / "x")
    with pytest.raises(ValueError, match="one weight each"):
        merge_checkpoints([bert], [1.0], tmp_path / "x")
    with pytest.raises(ValueError, match="different parameters"):
        merge_checkpoints([bert, roberta], [0.5, 0.5], tmp_path / "x")
