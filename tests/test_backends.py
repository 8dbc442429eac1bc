"""The OpenVINO engine behind ``Cappy``: same scores as eager float32, its export cache, its errors, the CLI flag."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cappy import Cappy
from cappy.cli import main
from cappy.errors import InputError
from cappy.model.backends import model_fingerprint, resolve_backend
from tolerances import assert_scores_close

pytest.importorskip("openvino")

PAIRS = [
    ("What is 2+2?", "4"),
    ("What is 2+2?", "five"),
    ("Capital of France? Think about it for a while before you answer, then answer in one word.", "Paris"),
    ("", "an empty instruction"),
    ("A long instruction " * 40, "cut to the model's length"),
]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPPY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("arch", ["bert", "roberta"])  # with and without token_type_ids
def test_openvino_float32_scores_as_torch_does(tiny_model_dir, arch):
    path = tiny_model_dir(arch)
    instr, resp = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    ref = Cappy.from_pretrained(path, device="cpu", dtype="float32", backend="torch").score(instr, resp)
    ov = Cappy.from_pretrained(path, device="cpu", dtype="float32", backend="openvino")
    assert ov.backend == "openvino" and ov.precision == "float32" and "backend=openvino" in repr(ov)
    assert_scores_close(ov.score(instr, resp), ref)
    # one pair, a float, and the same through choose/rank
    assert ov.score(*PAIRS[0]) == pytest.approx(float(ref[0]), abs=1e-4)
    assert ov.choose(PAIRS[0][0], ["4", "five"]) == int(np.argmax(ref[:2]))


def test_openvino_bf16_is_bf16_close(tiny_model_dir):
    path = tiny_model_dir("bert")
    instr, resp = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    ref = Cappy.from_pretrained(path, device="cpu", dtype="float32", backend="torch").score(instr, resp)
    ov = Cappy.from_pretrained(path, device="cpu", dtype="bfloat16", backend="openvino")
    got = ov.score(instr, resp)
    # bf16's 8 mantissa bits over 2 layers of large random weights: a few % of the score range (as torch bf16)
    assert np.abs(got - ref).max() < 0.1 * np.ptp(ref)


def test_export_is_cached_by_weights(tiny_model_dir, own_cache, tmp_path):
    path = tiny_model_dir("bert")
    first = Cappy.from_pretrained(path, device="cpu", backend="openvino", dtype="float32")
    xml = first._runner.path
    assert xml.is_file() and own_cache in xml.parents
    stamp = xml.stat().st_mtime_ns
    again = Cappy.from_pretrained(path, device="cpu", backend="openvino", dtype="float32")
    assert again._runner.path == xml and xml.stat().st_mtime_ns == stamp  # read back, not exported again
    # other weights: another key, so a changed checkpoint never meets a stale export
    changed = Cappy.from_pretrained(path, device="cpu", dtype="float32", backend="torch")
    with torch.no_grad():
        changed.model.classifier.bias.add_(1.0)
    out = changed.save_pretrained(tmp_path / "changed")
    other = Cappy.from_pretrained(out, device="cpu", backend="openvino", dtype="float32")
    assert other._runner.path != xml
    assert model_fingerprint(changed.model) != model_fingerprint(first.model)
    shift = other.score(*PAIRS[0]) - first.score(*PAIRS[0])
    assert shift == pytest.approx(1.0, abs=1e-4)


def test_export_beside_the_checkpoint_is_used_first(tiny_model_dir, tmp_path):
    path = tiny_model_dir("bert")
    scorer = Cappy.from_pretrained(path, device="cpu", dtype="float32", backend="torch")
    out = scorer.save_pretrained(tmp_path / "ckpt")
    cached = Cappy.from_pretrained(out, device="cpu", backend="openvino", dtype="float32")._runner.path
    (out / "openvino").mkdir()
    for f in cached.parent.iterdir():
        (out / "openvino" / f.name).write_bytes(f.read_bytes())
    beside = Cappy.from_pretrained(out, device="cpu", backend="openvino", dtype="float32")
    assert beside._runner.path == out / "openvino" / "openvino_model.xml"


def test_backend_choice_and_errors(tiny_model_dir, monkeypatch):
    monkeypatch.delenv("CAPPY_BACKEND", raising=False)
    assert resolve_backend("auto", "cpu") == "openvino"
    assert resolve_backend("auto", "cpu", "float32") == "torch"  # a named dtype asks for the reference arithmetic
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(InputError, match="backend must be one of"):
        resolve_backend("tensorrt", "cpu")
    monkeypatch.setenv("CAPPY_BACKEND", "torch")
    assert resolve_backend("auto", "cpu") == "torch" and resolve_backend("openvino", "cpu") == "openvino"
    monkeypatch.setenv("CAPPY_BACKEND", "cuda-graphs")
    with pytest.raises(InputError, match="CAPPY_BACKEND must be one of"):
        resolve_backend("auto", "cpu")
    with pytest.raises(InputError, match="float32, bfloat16 or int8"):
        Cappy.from_pretrained(tiny_model_dir("bert"), device="cpu", dtype="float16", backend="openvino")


def test_cli_score_takes_the_backend(tiny_model_dir, tmp_path):
    model = tiny_model_dir("bert")
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"instruction": a, "response": b}) + "\n" for a, b in PAIRS))
    scores = {}
    for backend in ("torch", "openvino"):
        out = tmp_path / f"{backend}.jsonl"
        args = ["score", "--model", str(model), "--input", str(inp), "--output", str(out), "--device", "cpu"]
        assert main([*args, "--backend", backend, "--dtype", "float32"]) == 0
        scores[backend] = [json.loads(line)["score"] for line in open(out)]
    assert_scores_close(scores["openvino"], scores["torch"])
    with pytest.raises(SystemExit):
        main(["score", "--model", str(model), "--input", str(inp), "--backend", "onnx"])


def test_auto_falls_back_to_torch_when_conversion_fails(tiny_model_dir, monkeypatch, caplog):
    from cappy.model import backends

    monkeypatch.delenv("CAPPY_BACKEND", raising=False)

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operation: aten::made_up")

    monkeypatch.setattr(backends.OpenVINORunner, "_find_or_export", staticmethod(broken))
    path = tiny_model_dir("bert")
    with caplog.at_level("WARNING", logger="cappy.model.scorer"):
        scorer = Cappy.from_pretrained(path, device="cpu")
    assert scorer.backend == "torch" and "could not convert" in caplog.text and "aten::made_up" in caplog.text
    ref = Cappy.from_pretrained(path, device="cpu", dtype="float32", backend="torch")
    if scorer.precision == "float32":
        assert_scores_close(scorer.score(*PAIRS[0]), ref.score(*PAIRS[0]))
    with pytest.raises(RuntimeError, match="made_up"):  # asked for by name: the failure is the answer
        Cappy.from_pretrained(path, device="cpu", backend="openvino")


def test_deberta_converts_or_falls_back(tiny_model_dir, monkeypatch):
    monkeypatch.delenv("CAPPY_BACKEND", raising=False)
    path = tiny_model_dir("deberta-v2")
    scorer = Cappy.from_pretrained(path, device="cpu")
    ref = Cappy.from_pretrained(path, device="cpu", dtype="float32", backend="torch")
    instr, resp = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    got = scorer.score(instr, resp)
    # either engine, in bf16 or f32 by the CPU: within bf16's few % of the score range of a tiny random model
    assert np.abs(got - ref.score(instr, resp)).max() < 0.1 * max(np.ptp(ref.score(instr, resp)), 1e-3)
