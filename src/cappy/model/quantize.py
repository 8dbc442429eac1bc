"""A statically quantized OpenVINO export of a scorer: int8 weights and activations, calibrated on real pairs.

``dtype="int8"`` is an explicit opt-in, never what ``dtype="auto"`` picks: its ranking is close to float32's, not
within the bar the automatic choice must pass (on cappy-mini: Spearman 0.997 against float32 over the 960 answers
of 240 real multiple-choice questions, the same best answer on 97% of them; tests/test_quantize.py). It is made
once, with NNCF's post-training quantization (``pip install 'cappy[openvino]'``), from the float32 OpenVINO export,
and calibrated on pairs batched and padded exactly as the scorer batches them. Both exports go into the
checkpoint's ``openvino/`` folder, where :class:`cappy.Cappy` finds them:

- ``openvino/openvino_model.xml``: the float32 export (``backend="openvino"`` with dtype float32 or bfloat16);
- ``openvino/openvino_model_qint8.xml``: the int8 one (``dtype="int8"``).

Example:
    >>> instr, resp = read_pairs("calibration.jsonl", limit=300)
    >>> quantize_openvino("runs/mini/best", instr, resp, out_dir="runs/mini-int8")
    PosixPath('runs/mini-int8/openvino/openvino_model_qint8.xml')
    >>> Cappy.from_pretrained("runs/mini-int8", dtype="int8", backend="openvino").precision
    'int8'
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cappy.errors import InputError
from cappy.io import iter_jsonl
from cappy.model.backends import OPENVINO_FILE, OPENVINO_INT8_FILE, openvino_available
from cappy.model.scorer import Cappy

logger = logging.getLogger(__name__)

#: Calibration pairs used by default: NNCF's own default subset, and where the int8 ranking stopped improving.
DEFAULT_CALIBRATION_SIZE = 300
PRESETS = ("mixed", "performance")


def nncf_available() -> bool:
    """Whether NNCF (the quantizer) is installed. Example: ``nncf_available()`` -> True"""
    return importlib.util.find_spec("nncf") is not None


def read_pairs(path: str | os.PathLike, limit: int | None = None) -> tuple[list[str], list[str]]:
    """``(instructions, responses)`` of the first ``limit`` rows (all when None) of a JSONL file whose rows have
    "instruction" and "response" strings; a bad row is an error naming the file and line.

    Example: ``read_pairs("calibration.jsonl", limit=300)`` -> ``(["What is 2+2?", ...], ["4", ...])``
    """
    if limit is not None and limit < 1:
        raise InputError(f"the number of calibration pairs must be positive, got {limit}")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file" if not p.exists() else f"{path}: is a folder, not a JSONL file")
    instructions: list[str] = []
    responses: list[str] = []
    for lineno, row in iter_jsonl(p):
        for name in ("instruction", "response"):
            if name not in row:
                raise InputError(f"{path}:{lineno}: missing field {name!r}")
            if not isinstance(row[name], str):
                raise InputError(f"{path}:{lineno}: field {name!r} must be str, got {type(row[name]).__name__}")
        instructions.append(row["instruction"])
        responses.append(row["response"])
        if limit is not None and len(instructions) >= limit:
            break
    if not instructions:
        raise InputError(f"{path}: no rows (a JSONL file of {{'instruction', 'response'}} objects is needed)")
    return instructions, responses


def _float32_openvino_scorer(scorer_or_path: Cappy | str | os.PathLike) -> Cappy:
    """A scorer on OpenVINO float32 (its runner holds the float32 export's path), batching as the int8 one will."""
    if not isinstance(scorer_or_path, Cappy):
        return Cappy.from_pretrained(scorer_or_path, device="cpu", dtype="float32", backend="openvino")
    scorer = scorer_or_path
    if scorer._runner is not None and scorer._runner.precision != "int8":
        return scorer  # its export is the float32 one, whatever precision it computes in
    if next(scorer.model.parameters()).dtype != torch.float32:
        raise InputError(
            "quantize a float32 model: load the scorer with dtype='float32' (its weights are "
            f"{next(scorer.model.parameters()).dtype}) or pass the checkpoint's path"
        )
    return Cappy(
        scorer.model,
        scorer.tokenizer,
        max_length=scorer.max_length,
        batch_size=scorer.batch_size,
        max_tokens_per_batch=scorer.max_tokens_per_batch,
        device="cpu",
        name_or_path=scorer.name_or_path,
        instruction_truncation=scorer.instruction_truncation,
        backend="openvino",
        ov_precision="f32",
    )


def calibration_batches(scorer: Cappy, instructions: list[str], responses: list[str]) -> list[dict[str, np.ndarray]]:
    """The padded batches ``scorer.score(instructions, responses)`` would run, as the model's numpy inputs: the
    quantizer sees the shapes and padding scoring gives it. Example: ``calibration_batches(scorer, ["2+2?"], ["4"])``
    """
    names = scorer._runner.input_names if scorer._runner is not None else ["input_ids", "attention_mask"]
    enc = scorer.encode(instructions, responses)
    lengths = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(instructions))
    order = np.argsort(-lengths, kind="stable")
    out = []
    for idx in scorer._batches(lengths, order):
        batch = scorer._collate(enc, idx)
        out.append({n: batch[n].cpu().numpy() for n in names if n in batch})
    return out


def _out_dir(scorer_or_path: Cappy | str | os.PathLike, out_dir: str | os.PathLike | None) -> Path:
    """``out_dir``, or by default the scorer's own checkpoint folder (a local one: a shipped or hub model is not
    written into)."""
    if out_dir is not None:
        return Path(out_dir)
    name = scorer_or_path.name_or_path if isinstance(scorer_or_path, Cappy) else scorer_or_path
    source = Path(name or "")
    if name and source.is_dir() and (source / "config.json").is_file():
        return source
    raise InputError(
        f"{str(name)!r} is not a local checkpoint folder to write openvino/ into: give out_dir "
        "(a folder; the checkpoint is saved there first)"
    )


def _publish(files: Sequence[tuple[Path, Path]]) -> None:
    """Copy ``(source, target)`` files, each through a temporary name, the .bin before its .xml: a reader that
    finds the .xml finds its weights."""
    for src, dst in sorted(files, key=lambda f: f[1].suffix != ".bin"):
        if dst.exists() and os.path.samefile(src, dst):
            continue
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def quantize_openvino(
    scorer_or_path: Cappy | str | os.PathLike,
    instructions: Sequence[str],
    responses: Sequence[str],
    out_dir: str | os.PathLike | None = None,
    subset_size: int = DEFAULT_CALIBRATION_SIZE,
    preset: str = "mixed",
) -> Path:
    """Quantize a scorer's float32 OpenVINO export to int8 (weights and activations) with NNCF, calibrated on the
    first ``subset_size`` of the given pairs, and write it to ``out_dir/openvino/openvino_model_qint8.xml`` beside
    a copy of the float32 export (``openvino/openvino_model.xml``). Returns the int8 model's path.

    ``out_dir`` defaults to the scorer's own checkpoint folder; a folder that is not a checkpoint yet gets the
    scorer's checkpoint saved into it first, so ``Cappy.from_pretrained(out_dir, dtype="int8")`` loads it.
    ``preset`` is NNCF's: "mixed" (symmetric weights, asymmetric activations: the one for transformers) or
    "performance" (symmetric both).

    Example: ``quantize_openvino("runs/mini/best", instr, resp)`` -> ``Path("runs/mini/best/openvino/...")``
    """
    if not openvino_available() or not nncf_available():
        raise InputError("the int8 export needs openvino and nncf: pip install 'cappy[openvino]'")
    if preset not in PRESETS:
        raise InputError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
    if subset_size < 1:
        raise InputError(f"subset_size must be positive, got {subset_size}")
    if isinstance(instructions, str) or isinstance(responses, str):
        raise InputError("instructions and responses must be lists of str (the calibration pairs)")
    if len(instructions) != len(responses):
        raise InputError(
            f"instructions and responses must have the same length, got {len(instructions)} and {len(responses)}"
        )
    if not instructions:
        raise InputError("no calibration pairs: quantization needs real pairs to measure activations on")
    for name, seq in (("instructions", instructions), ("responses", responses)):
        for i, v in enumerate(seq):
            if not isinstance(v, str):
                raise InputError(f"{name}[{i}] must be a str, got {type(v).__name__}")
    import nncf
    import openvino as ov

    out = _out_dir(scorer_or_path, out_dir)
    scorer = _float32_openvino_scorer(scorer_or_path)
    if not (out / "config.json").is_file():
        scorer.save_pretrained(out)
    pairs = min(subset_size, len(instructions))
    batches = calibration_batches(scorer, list(instructions[:pairs]), list(responses[:pairs]))
    source = Path(scorer._runner.path)
    logger.info("quantizing %s to int8 on %d pairs (%d batches)", source, pairs, len(batches))
    quantized = nncf.quantize(
        ov.Core().read_model(str(source)),
        nncf.Dataset(batches),
        model_type=nncf.ModelType.TRANSFORMER,
        preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(batches),  # NNCF counts dataset items: here batches, which hold the `pairs` pairs
    )
    folder = out / "openvino"
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".int8-"))
    try:
        ov.save_model(quantized, str(staging / OPENVINO_INT8_FILE), compress_to_fp16=False)
        int8 = [(staging / OPENVINO_INT8_FILE), staging / Path(OPENVINO_INT8_FILE).with_suffix(".bin")]
        float32 = [source, source.with_suffix(".bin")]
        _publish(
            [(f, folder / f.name) for f in int8]
            + [(f, folder / Path(OPENVINO_FILE).with_suffix(f.suffix).name) for f in float32]
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / OPENVINO_INT8_FILE


def export_openvino(scorer_or_path: Cappy | str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write a scorer's float32 OpenVINO export to ``out_dir/openvino/openvino_model.xml`` (``out_dir`` as in
    :func:`quantize_openvino`), where ``backend="openvino"`` finds it before converting. Returns its path.

    Example: ``export_openvino("runs/mini/best")`` -> ``Path("runs/mini/best/openvino/openvino_model.xml")``
    """
    if not openvino_available():
        raise InputError("backend='openvino' needs the openvino package: pip install 'cappy[openvino]'")
    out = _out_dir(scorer_or_path, out_dir)
    scorer = _float32_openvino_scorer(scorer_or_path)
    if not (out / "config.json").is_file():
        scorer.save_pretrained(out)
    source = Path(scorer._runner.path)
    folder = out / "openvino"
    folder.mkdir(parents=True, exist_ok=True)
    _publish(
        [(f, folder / Path(OPENVINO_FILE).with_suffix(f.suffix).name) for f in (source, source.with_suffix(".bin"))]
    )
    return folder / OPENVINO_FILE
