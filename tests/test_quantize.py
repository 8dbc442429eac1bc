"""The static int8 OpenVINO export (``dtype="int8"``, an explicit opt-in): made by NNCF from the float32 export,
calibrated on real pairs batched as scoring batches them, found beside the checkpoint, its ranking measured."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from cappy import Cappy
from cappy.cli import main
from cappy.errors import InputError
from cappy.model.backends import OPENVINO_FILE, OPENVINO_INT8_FILE
from cappy.paths import shared_data_dir

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from cappy.model.quantize import calibration_batches, quantize_openvino  # noqa: E402
from test_precision_paths import TIE_GAP, _questions, _reference, _spearman  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mc_pairs(name: str, start: int, stop: int) -> tuple[list[str], list[str]]:
    """Every (question, choice) pair of rows [start, stop) of a multiple-choice validation file: real pairs, none of
    them among test_precision_paths' questions (the first rows of SciQ, Social IQa and CommonsenseQA)."""
    with open(shared_data_dir() / "pretrain" / name) as f:
        rows = [json.loads(line) for line in f][start:stop]
    instructions, responses = [], []
    for r in rows:
        if "question_stem" in r:  # OpenBookQA
            prompt, choices = r["question_stem"], r["choices"]["text"]
        elif "support" in r:  # SciQ
            prompt = (r["support"] + "\n" if r["support"] else "") + r["question"]
            choices = [r["correct_answer"], r["distractor1"], r["distractor2"], r["distractor3"]]
        else:  # ARC
            prompt, choices = r["question"], r["choices"]["text"]
        instructions += [prompt] * len(choices)
        responses += list(choices)
    return instructions, responses


def _calibration_pairs() -> tuple[list[str], list[str]]:
    """300 real pairs: OpenBookQA and ARC-Easy questions, and SciQ questions with their support passage (long pairs)
    from rows 300 on, past the ones test_precision_paths scores."""
    parts = [
        _mc_pairs("openbookqa_main_val.jsonl", 0, 25),
        _mc_pairs("ai2_arc_easy_val.jsonl", 0, 25),
        _mc_pairs("sciq_val.jsonl", 300, 325),
    ]
    return [i for p in parts for i in p[0]][:300], [r for p in parts for r in p[1]][:300]


def _op_counts(path) -> Counter:
    import openvino as ov

    model = ov.Core().read_model(str(path))
    ops = Counter(op.get_type_name() for op in model.get_ops())
    for op in model.get_ops():
        if op.get_type_name() == "Constant":
            ops[f"Constant:{op.get_element_type().get_type_name()}"] += 1
    return ops


def _quantized_ops(ops: Counter) -> int:
    return ops["FakeQuantize"] + ops["FakeConvert"] + ops["Constant:i8"] + ops["Constant:u8"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPPY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_int8_export_loads_and_ranks_close_to_float32(tiny_model_dir, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir("bert"), src)
    instr, resp = _mc_pairs("openbookqa_main_val.jsonl", 0, 50)  # 200 pairs
    test_instr, test_resp = _mc_pairs("openbookqa_main_val.jsonl", 100, 150)
    path = quantize_openvino(src, instr, resp, subset_size=200)  # into the checkpoint's own openvino/ folder
    assert path == src / "openvino" / OPENVINO_INT8_FILE and path.with_suffix(".bin").is_file()
    assert (src / "openvino" / OPENVINO_FILE).is_file()  # the float32 export beside it

    # the int8 model really is quantized: the float32 export has no quantization nodes, the int8 one has them on
    # every matmul's inputs (FakeQuantize for activations) and int8 weight constants
    float_ops, int8_ops = _op_counts(src / "openvino" / OPENVINO_FILE), _op_counts(path)
    assert _quantized_ops(float_ops) == 0
    assert int8_ops["FakeQuantize"] >= int8_ops["MatMul"] > 0 and int8_ops["Constant:i8"] > 0

    q = Cappy.from_pretrained(src, device="cpu", dtype="int8", backend="openvino")
    assert q.backend == "openvino" and q.precision == "int8" and q._runner.path == path
    f32 = Cappy.from_pretrained(src, device="cpu", dtype="float32", backend="openvino")
    assert f32._runner.path == src / "openvino" / OPENVINO_FILE  # the copy beside the checkpoint is read first
    ref = Cappy.from_pretrained(src, device="cpu", dtype="float32", backend="torch").score(test_instr, test_resp)
    got = q.score(test_instr, test_resp)
    assert got.shape == ref.shape == (len(test_instr),) and got.dtype == np.float32 and np.isfinite(got).all()
    # The tiny model's random weights (initializer_range 0.5) make activations far wider and more outlying than a
    # trained model's, so 256 int8 levels per tensor cost more rank here than on cappy-mini (0.997 there): measured
    # on these 200 held-out pairs, Spearman 0.945 and a mean error of 4% of the score range (single pairs move more);
    # a broken export (wrong weights, wrong inputs, scores out of order) is near 0 and off by the whole range.
    assert _spearman(got, ref) >= 0.85
    assert np.abs(got - ref).mean() < 0.1 * np.ptp(ref)
    assert isinstance(q.score(test_instr[0], test_resp[0]), float)


def test_calibration_batches_are_the_batches_scoring_runs(tiny_model_dir):
    scorer = Cappy.from_pretrained(tiny_model_dir("bert"), device="cpu", dtype="float32", backend="openvino")
    instr, resp = _calibration_pairs()
    seen = []
    runner = scorer._runner
    scorer._runner = lambda batch: seen.append({k: v.numpy() for k, v in batch.items()}) or runner(batch)
    scorer.score(instr, resp)
    scorer._runner = runner
    batches = calibration_batches(scorer, instr, resp)
    assert len(batches) == len(seen) > 1
    for got, want in zip(batches, seen):
        assert sorted(got) == sorted(runner.input_names)
        for name in got:
            np.testing.assert_array_equal(got[name], want[name])  # same pairs, same padding, same shapes


def test_missing_int8_export_names_the_path_and_the_command(tiny_model_dir):
    path = tiny_model_dir("bert")
    with pytest.raises(InputError) as err:
        Cappy.from_pretrained(path, device="cpu", dtype="int8", backend="openvino")
    assert str(path / "openvino" / OPENVINO_INT8_FILE) in str(err.value)
    assert "cappy export" in str(err.value) and "--int8-calibration" in str(err.value)


def test_quantize_refuses_what_it_cannot_use(tiny_model_dir, tmp_path):
    path = tiny_model_dir("bert")
    with pytest.raises(InputError, match="same length"):
        quantize_openvino(path, ["a", "b"], ["c"], out_dir=tmp_path / "out")
    with pytest.raises(InputError, match="no calibration pairs"):
        quantize_openvino(path, [], [], out_dir=tmp_path / "out")
    with pytest.raises(InputError, match="preset"):
        quantize_openvino(path, ["a"], ["b"], out_dir=tmp_path / "out", preset="int4")
    with pytest.raises(InputError, match="local checkpoint folder"):
        quantize_openvino("cappy-mini", ["a"], ["b"])  # the shipped model is not written into: out_dir is needed
    assert not (tmp_path / "out").exists()


def test_cli_export_writes_the_openvino_and_int8_exports(tiny_model_dir, tmp_path, capsys):
    src = tiny_model_dir("bert")
    instr, resp = _mc_pairs("ai2_arc_easy_val.jsonl", 0, 40)
    pairs = tmp_path / "calibration.jsonl"
    pairs.write_text("".join(json.dumps({"instruction": a, "response": b}) + "\n" for a, b in zip(instr, resp)))
    out = tmp_path / "exported"
    args = ["export", str(src), "--out", str(out), "--backend", "openvino"]
    assert main([*args, "--int8-calibration", str(pairs), "--calibration-size", "120"]) == 0
    printed = capsys.readouterr().out
    assert "as float32" in printed and "calibrated on 120 pairs" in printed
    # the saved weights stay float32 (OpenVINO converts from them): the same size as the source's
    size = (out / "model.safetensors").stat().st_size
    assert abs(size - (src / "model.safetensors").stat().st_size) < 0.05 * size
    assert (out / "openvino" / OPENVINO_FILE).is_file() and (out / "openvino" / OPENVINO_INT8_FILE).is_file()
    q = Cappy.from_pretrained(out, device="cpu", dtype="int8", backend="openvino")
    ref = Cappy.from_pretrained(src, device="cpu", dtype="float32", backend="torch").score(instr[120:], resp[120:])
    assert q.precision == "int8" and _spearman(q.score(instr[120:], resp[120:]), ref) >= 0.85  # as above

    # without calibration: the float32 export only
    plain = tmp_path / "plain"
    assert main(["export", str(src), "--out", str(plain), "--backend", "openvino"]) == 0
    assert (plain / "openvino" / OPENVINO_FILE).is_file() and not (plain / "openvino" / OPENVINO_INT8_FILE).exists()


@pytest.mark.parametrize(
    "line3,message",
    [
        (json.dumps({"instruction": "What is 2+2?"}), "missing field 'response'"),
        (json.dumps({"instruction": "What is 2+2?", "response": 4}), "field 'response' must be str"),
        ('{"instruction": "What is 2+2?", "response": ', "malformed JSONL line"),
    ],
)
def test_cli_bad_calibration_file_names_file_and_line(tiny_model_dir, tmp_path, capsys, line3, message):
    pairs = tmp_path / "calibration.jsonl"
    good = json.dumps({"instruction": "Sky colour?", "response": "blue"})
    pairs.write_text(f"{good}\n{good}\n{line3}\n{good}\n")
    out = tmp_path / "exported"
    args = ["export", str(tiny_model_dir("bert")), "--out", str(out), "--backend", "openvino"]
    assert main([*args, "--int8-calibration", str(pairs)]) == 2
    err = capsys.readouterr().err
    assert f"{pairs}:3:" in err and message in err
    assert not out.exists()  # refused before anything was written
    assert main(["export", str(tiny_model_dir("bert")), "--out", str(out), "--int8-calibration", str(pairs)]) == 2
    assert "--backend openvino" in capsys.readouterr().err


@pytest.mark.slow
def test_int8_cappy_mini_on_real_questions(tmp_path):
    """cappy-mini calibrated on 300 real pairs, scored on test_precision_paths' 240 questions (960 pairs)."""
    instr, resp = _calibration_pairs()
    assert len(instr) == 300
    path = quantize_openvino("cappy-mini", instr, resp, out_dir=tmp_path / "cappy-mini-int8")
    assert _quantized_ops(_op_counts(path)) > 0
    questions = _questions(80)
    reference = _reference(questions)
    q = Cappy.from_pretrained(tmp_path / "cappy-mini-int8", device="cpu", dtype="int8", backend="openvino")
    groups = q.score_groups([p for p, _ in questions], [c for _, c in questions])
    spearman = _spearman(np.concatenate(groups), np.concatenate(reference))
    same = np.mean([int(np.argmax(g)) == int(np.argmax(r)) for g, r in zip(groups, reference)])
    clear = [(g, r) for g, r in zip(groups, reference) if np.diff(np.sort(r)[-2:])[0] >= TIE_GAP]
    same_clear = np.mean([int(np.argmax(g)) == int(np.argmax(r)) for g, r in clear])
    # An opt-in, not held to "auto"'s bar (0.999 and 99%). Measured on an AMD EPYC (avx512_vnni, avx512_bf16):
    # Spearman 0.99735, the same best choice on 97.1% of the 240 questions (98.7% of those float32 does not see as
    # a tie). Floors a little under that: calibration statistics and int8 kernels differ slightly between CPUs.
    assert spearman >= 0.995, f"int8 Spearman vs float32 {spearman:.5f}"
    assert same >= 0.95 and same_clear >= 0.97, f"same best choice on {same:.1%} ({same_clear:.1%} without ties)"
