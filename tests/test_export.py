"""`cappy export`: half-precision copy with card and training record, read back in float32 on CPU."""

from __future__ import annotations

import json
import shutil

import numpy as np

from cappy import Cappy
from cappy.cli import main


def test_export_half_keeps_scores_card_and_record(tiny_model_dir, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir("bert"), src)
    (src / "training_data.json").write_text(json.dumps({"tasks": ["sciq"], "inputs": []}))
    card = tmp_path / "card.md"
    card.write_text("# my scorer\n")
    out = tmp_path / "exported"
    assert main(["export", str(src), "--out", str(out), "--card", str(card)]) == 0
    assert (out / "README.md").read_text() == "# my scorer\n"
    assert json.loads((out / "training_data.json").read_text())["tasks"] == ["sciq"]
    assert (out / "model.safetensors").stat().st_size < 0.6 * (src / "model.safetensors").stat().st_size
    a = Cappy.from_pretrained(src, device="cpu").score(["What is 2+2?", "Sky?"], ["4", "blue"])
    b = Cappy.from_pretrained(out, device="cpu").score(["What is 2+2?", "Sky?"], ["4", "blue"])
    # float16 keeps 11 mantissa bits (relative error 5e-4 per weight); over 2 layers of a tiny model with large
    # random weights that moves a score by well under 2% of its value, while a wrong export is off by its whole scale
    np.testing.assert_allclose(a, b, rtol=0.02, atol=0.02)
