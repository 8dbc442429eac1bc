"""Inference engines behind :class:`cappy.Cappy`: eager PyTorch, or OpenVINO on a CPU.

``backend="torch"`` runs the transformers model as loaded. ``backend="openvino"`` converts that same model once
(``openvino.convert_model``), keeps the converted model in the cache (``~/.cache/cappy/backends/openvino/<key>``,
keyed by the weights, the config and the OpenVINO version, so a changed checkpoint never meets a stale export) and
runs it through OpenVINO's CPU plugin, which fuses attention, layer norms and activations and computes in bfloat16
on CPUs with native bf16 (AVX512-BF16, AMX). ``backend="auto"`` with ``dtype="auto"`` is OpenVINO on a CPU where
it is installed (``pip install cappy[openvino]``), eager PyTorch elsewhere or when a dtype is named.

An OpenVINO scorer runs on ``torch.get_num_threads()`` threads as they are when it loads (a compiled model keeps its
thread count): set them first, as ``cappy serve`` does.

The export goes to the cache, not beside the checkpoint: checkpoints are often read-only (the embedded
cappy-mini inside an installed package, the hub's snapshot cache). An export found in the checkpoint's own
``openvino/`` folder (``openvino_model.xml``, as sentence-transformers lays it out) is used before the cache.

Example:
    >>> scorer = Cappy.from_pretrained("cappy-mini", backend="openvino")
    >>> scorer.backend
    'openvino'
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cappy.errors import InputError
from cappy.model.precision import AUTOCAST_DTYPES, cpu_has_native_bf16, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino")
#: Set to "torch" or "openvino" to decide what ``backend="auto"`` means (the test suite pins "torch").
BACKEND_ENV = "CAPPY_BACKEND"
OPENVINO_FILE = "openvino_model.xml"
#: A statically quantized export (int8 weights and activations, calibrated on real pairs), made by
#: :func:`cappy.model.quantize.quantize_openvino` in the checkpoint's ``openvino/`` folder; read with ``dtype="int8"``.
OPENVINO_INT8_FILE = "openvino_model_qint8.xml"


def openvino_available() -> bool:
    """Whether the ``openvino`` package is installed. Example: ``openvino_available()`` -> True"""
    return importlib.util.find_spec("openvino") is not None


def resolve_backend(backend: str | None, device: str | torch.device | None, dtype: Any = "auto") -> str:
    """The engine a scorer runs on: "torch" or "openvino". "auto" (or None) is OpenVINO on a CPU where it is
    installed and ``dtype`` is "auto" too (the fastest path that ranks as float32 does); a ``dtype`` given by name
    asks for that arithmetic exactly, so it runs on eager PyTorch, the reference (``backend="openvino"`` with it
    gives OpenVINO in that precision).

    Example: ``resolve_backend("auto", "cuda")`` -> "torch"
    """
    if backend is None:
        backend = "auto"
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    dev = resolve_device(device)
    if backend == "auto" and dtype == "int8":  # only OpenVINO has it: an explicit opt-in, never what "auto" picks
        backend = "openvino"
    forced = os.environ.get(BACKEND_ENV, "").strip()
    if backend == "auto" and forced:
        if forced not in BACKENDS:
            raise InputError(f"{BACKEND_ENV} must be one of {list(BACKENDS)}, got {forced!r}")
        backend = forced
    if backend == "auto":
        chosen = dtype in (None, "auto")
        return "openvino" if chosen and dev.type == "cpu" and openvino_available() else "torch"
    if backend == "torch" and dtype == "int8":
        raise InputError("dtype='int8' is a statically quantized OpenVINO export: use backend='openvino'")
    if backend == "openvino":
        if dev.type != "cpu":
            raise InputError(f"backend='openvino' runs on the CPU; got device={str(dev)!r} (use backend='torch')")
        if not openvino_available():
            raise InputError("backend='openvino' needs the openvino package: pip install 'cappy[openvino]'")
    return backend


def openvino_precision(dtype: str | torch.dtype | None) -> str:
    """OpenVINO's CPU inference precision for a Cappy ``dtype``: "auto" is bf16 where the CPU has native bf16, f32
    elsewhere (emulated bf16 is slower); float16 is refused (the CPU plugin has no general f16 path).

    Example: ``openvino_precision("float32")`` -> "f32"
    """
    if dtype is None or dtype == "auto":
        return "bf16" if cpu_has_native_bf16() else "f32"
    if dtype == "int8":
        return "int8"
    named = None if isinstance(dtype, str) and dtype in AUTOCAST_DTYPES else resolve_dtype(dtype)
    precision = {torch.float32: "f32", torch.bfloat16: "bf16"}.get(named)
    if precision is None:
        raise InputError(f"backend='openvino' computes in float32, bfloat16 or int8, not {dtype!r}")
    return precision


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of a model's weights, buffers and config: the key of its exports. Example: ``model_fingerprint(m)``"""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        h.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


def _example_inputs(model: torch.nn.Module, input_names: list[str]) -> dict[str, torch.Tensor]:
    ids = torch.full((2, 8), 5, dtype=torch.long)
    ids[:, 0] = getattr(model.config, "bos_token_id", None) or 0
    example = {"input_ids": ids, "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    example["attention_mask"][1, 6:] = 0
    if "token_type_ids" in input_names:
        example["token_type_ids"] = torch.zeros(2, 8, dtype=torch.long)
    return example


class OpenVINORunner:
    """A one-output sequence classifier compiled by OpenVINO for the CPU; called with a padded batch of torch
    tensors, returns the scores as a float32 numpy array.

    Example: ``OpenVINORunner(model, ["input_ids", "attention_mask"], "bf16")(batch)`` -> ``array([...])``
    """

    def __init__(
        self,
        model: torch.nn.Module,
        input_names: list[str],
        precision: str,
        source: str | os.PathLike | None = None,
        threads: int | None = None,
    ) -> None:
        import openvino as ov

        self.input_names = list(input_names)
        core = ov.Core()
        if precision == "int8":
            path = Path(source or "") / "openvino" / OPENVINO_INT8_FILE
            if source is None or not path.is_file():
                raise InputError(
                    f"dtype='int8' needs a quantized export at {path}; make one with `cappy export CHECKPOINT "
                    "--out DIR --backend openvino --int8-calibration PAIRS.jsonl` and load DIR"
                )
        else:
            path = self._find_or_export(model, self.input_names, source, ov)
        ov_model = core.read_model(str(path))
        # one stream, as many threads as torch uses: a call scores one batch at a time, like the torch path; an int8
        # model's layers that stay unquantized compute as "auto" would
        hint = openvino_precision("auto") if precision == "int8" else precision
        config = {
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
        }
        self.compiled = core.compile_model(ov_model, "CPU", config)
        # what the plugin settled on: a bf16 request on a CPU it cannot serve in bf16 runs in f32
        got = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        got = got.get_type_name() if hasattr(got, "get_type_name") else str(got)
        self.precision = "int8" if precision == "int8" else got
        self.path = path
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # an infer request serves one call at a time
        names = {name for port in self.compiled.inputs for name in port.get_names()}
        missing = [n for n in self.input_names if n not in names]
        if missing:
            raise InputError(f"the OpenVINO model at {path} has no input(s) {missing}; delete it to re-export")
        self.input_names = [n for n in self.input_names if n in names]

    @staticmethod
    def _find_or_export(
        model: torch.nn.Module, input_names: list[str], source: str | os.PathLike | None, ov: Any
    ) -> Path:
        if source is not None and (Path(source) / "openvino" / OPENVINO_FILE).is_file():
            return Path(source) / "openvino" / OPENVINO_FILE
        from cappy.paths import cache_dir  # stdlib-only

        key = f"{model_fingerprint(model)}-{len(input_names)}in-ov{ov.__version__.split('-')[0]}"
        folder = cache_dir() / "backends" / "openvino" / key
        path = folder / OPENVINO_FILE
        if path.is_file():
            return path
        logger.info("converting the scorer to OpenVINO (once per checkpoint): %s", folder)
        was_training = model.training
        model.eval()
        example = _example_inputs(model, input_names)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python control flow in the attention code
            ov_model = ov.convert_model(_Logits(model, list(example)), example_input=tuple(example.values()))
        for port, name in zip(ov_model.inputs, example):
            port.get_tensor().set_names({name})
        ov_model.reshape({name: ov.PartialShape([-1, -1]) for name in example})
        model.train(was_training)
        folder.parent.mkdir(parents=True, exist_ok=True)
        # written to a temporary folder and renamed: a reader never meets half an export
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".export-"))
        ov.save_model(ov_model, str(tmp / OPENVINO_FILE), compress_to_fp16=False)  # fp16 weights would move scores
        try:
            tmp.rename(folder)
        except OSError:  # another process exported the same model first
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
        return path

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        inputs = {n: batch[n].numpy() for n in self.input_names}
        with self._lock:
            result = self._request.infer(inputs)
            return np.asarray(result[self.compiled.outputs[0]], dtype=np.float32).reshape(-1).copy()


class _Logits(torch.nn.Module):
    """The classifier with positional inputs and its logits as the only output, which is what conversion traces."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors))).logits
