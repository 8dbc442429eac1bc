"""The Cappy scorer and everything about its checkpoints.

Modules, lowest first (each imports only those before it):

- ``precision``: device and dtype rules (``resolve_device``, ``resolve_precision``, ``cpu_has_native_bf16``);
- ``encoding``: the pair input format and its truncation (``encode_pairs``, ``collate_pairs``), the one place it
  is defined;
- ``backends``: the engines behind the scorer (``resolve_backend``: eager PyTorch, or OpenVINO on a CPU);
- ``record``: the training-data record ``training_data.json`` (standard library only);
- ``checkpoint``: the one model-name resolver (``resolve_model_path``), loading, saving, export and merge;
- ``scorer``: the ``Cappy`` class and its batching engine;
- ``quantize``: the static int8 OpenVINO export (``quantize_openvino``, NNCF), read with ``dtype="int8"``.

Every name is importable from ``cappy.model`` itself; they are loaded on first use, so that reading a light module
(``cappy.model.record``) does not import torch.

Example:
    >>> from cappy.model import Cappy
    >>> Cappy.from_pretrained("cappy-mini").score("What is 2+2?", "4")
    0.91
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "precision": (
        "AUTOCAST_DTYPES",
        "CPU_BF16_ENV",
        "DTYPES",
        "cpu_has_native_bf16",
        "is_out_of_memory",
        "resolve_device",
        "resolve_dtype",
        "resolve_precision",
    ),
    "encoding": (
        "INSTRUCTION_TRUNCATION",
        "check_instruction_truncation",
        "clamp_max_length",
        "collate_pairs",
        "encode_pairs",
    ),
    "backends": ("openvino_available", "resolve_backend"),
    "record": ("RECORD_FILE", "read_record", "unite_records", "write_record"),
    "checkpoint": (
        "IDENTITY_ACTIVATION",
        "SHIPPED_MODELS",
        "ModelNotFoundError",
        "NotACheckpointError",
        "checkpoint_settings",
        "export_checkpoint",
        "hub_offline_reason",
        "load_scorer_model",
        "merge_checkpoints",
        "resolve_model_path",
        "save_checkpoint",
        "shipped_models",
    ),
    "scorer": ("Cappy",),
}
_WHERE = {name: module for module, names in _HOMES.items() for name in names}
__all__ = [
    "AUTOCAST_DTYPES",
    "CPU_BF16_ENV",
    "Cappy",
    "DTYPES",
    "IDENTITY_ACTIVATION",
    "INSTRUCTION_TRUNCATION",
    "ModelNotFoundError",
    "NotACheckpointError",
    "RECORD_FILE",
    "SHIPPED_MODELS",
    "check_instruction_truncation",
    "checkpoint_settings",
    "clamp_max_length",
    "collate_pairs",
    "cpu_has_native_bf16",
    "encode_pairs",
    "export_checkpoint",
    "hub_offline_reason",
    "is_out_of_memory",
    "load_scorer_model",
    "merge_checkpoints",
    "openvino_available",
    "read_record",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_path",
    "resolve_precision",
    "resolve_backend",
    "save_checkpoint",
    "shipped_models",
    "unite_records",
    "write_record",
]  # every name of _HOMES (a test checks)

if TYPE_CHECKING:
    from cappy.model.backends import openvino_available, resolve_backend
    from cappy.model.checkpoint import (
        IDENTITY_ACTIVATION,
        SHIPPED_MODELS,
        ModelNotFoundError,
        NotACheckpointError,
        checkpoint_settings,
        export_checkpoint,
        hub_offline_reason,
        load_scorer_model,
        merge_checkpoints,
        resolve_model_path,
        save_checkpoint,
        shipped_models,
    )
    from cappy.model.encoding import (
        INSTRUCTION_TRUNCATION,
        check_instruction_truncation,
        clamp_max_length,
        collate_pairs,
        encode_pairs,
    )
    from cappy.model.precision import (
        AUTOCAST_DTYPES,
        CPU_BF16_ENV,
        DTYPES,
        cpu_has_native_bf16,
        is_out_of_memory,
        resolve_device,
        resolve_dtype,
        resolve_precision,
    )
    from cappy.model.record import RECORD_FILE, read_record, unite_records, write_record
    from cappy.model.scorer import Cappy


def __getattr__(name: str) -> Any:
    if name in _HOMES:  # a submodule not imported yet: ``from cappy import model; model.precision``
        return importlib.import_module(f"cappy.model.{name}")
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'cappy.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cappy.model.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, *_HOMES])
