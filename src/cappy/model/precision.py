"""Device and precision rules, shared by the scorer, training and the transformers generator.

``dtype="auto"`` means: on a CPU, bfloat16 weights where the CPU computes bf16 natively (AVX512-BF16, AMX), plain
float32 elsewhere; on a GPU, the checkpoint's own dtype. bf16 weights beat bf16 autocast over float32 weights on both
kinds of bf16 CPU measured (autocast re-casts every weight at every call) and rank pairs as float32 does (Spearman
>= 0.999, the same best choice on >= 99% of questions: tests/test_precision_paths.py); see docs/RESULTS.md.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from cappy.errors import InputError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
#: Names that ask for float32 weights under autocast to a lower precision (what "auto" picks on CPUs with native bf16).
AUTOCAST_DTYPES = {"bf16-autocast": torch.bfloat16, "bfloat16-autocast": torch.bfloat16}
#: Set to 1 or 0 to override the detection of native bfloat16 on the CPU.
CPU_BF16_ENV = "CAPPY_CPU_BF16"
# CPU flags (Linux /proc/cpuinfo names) of native bfloat16 arithmetic: AVX512-BF16 dot products, AMX tiles.
_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Map "auto" / None to the best available device; pass anything else to ``torch.device``.

    Example: ``resolve_device("auto")`` -> ``device(type='cpu')`` on a machine without a GPU.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device!r} was requested but CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Accept "float32"/"bfloat16"/"float16" (or short forms) or a torch dtype; None keeps the checkpoint's.

    Example: ``resolve_dtype("bf16")`` -> ``torch.bfloat16``
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        names = sorted({"auto", *DTYPES, *AUTOCAST_DTYPES})
        raise InputError(f"dtype must be one of {names} or a torch.dtype, got {dtype!r}")
    return DTYPES[dtype]


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags to read, so no native bf16 is assumed
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16), read from its flags.

    Without them bf16 is emulated and slower than float32, so "auto" keeps float32 there. ``CAPPY_CPU_BF16=1`` or
    ``=0`` overrides the detection. Example: ``cpu_has_native_bf16()`` -> False on an AMD EPYC without avx512_bf16
    """
    forced = os.environ.get(CPU_BF16_ENV)
    if forced is not None and forced.strip() != "":
        if forced.strip() not in ("0", "1"):
            raise InputError(f"{CPU_BF16_ENV} must be 0 or 1, got {forced!r}")
        return forced.strip() == "1"
    return bool(_cpu_flags() & _BF16_FLAGS)


def resolve_precision(
    dtype: str | torch.dtype | None, device: str | torch.device | None
) -> tuple[torch.dtype | None, torch.dtype | None]:
    """``(weight dtype, autocast dtype)`` for a requested ``dtype`` on ``device``; None means "leave as is".

    "auto" (or None): on a CPU, bfloat16 weights where the CPU has native bf16, float32 elsewhere; on a GPU, the
    checkpoint's dtype. "bf16-autocast" forces autocast over float32 weights; "float32",
    "bfloat16" and "float16" cast the weights and use no autocast.
    Example: ``resolve_precision("auto", "cpu")`` -> ``(torch.float32, None)`` on a CPU without native bf16
    """
    dev = resolve_device(device)
    if dtype is None or dtype == "auto":
        if dev.type == "cpu":
            return (torch.bfloat16 if cpu_has_native_bf16() else torch.float32), None
        return None, None
    if isinstance(dtype, str) and dtype in AUTOCAST_DTYPES:
        return torch.float32, AUTOCAST_DTYPES[dtype]
    return resolve_dtype(dtype), None


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a device (CUDA) or host allocation failure, which a smaller batch may avoid.

    Example: ``is_out_of_memory(RuntimeError("CUDA out of memory"))`` -> True
    """
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)
