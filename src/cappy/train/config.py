"""`TrainConfig`: every knob of a training run, read from YAML with ``--key value`` overrides."""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESETS_DIR = Path(__file__).parent / "presets"


@dataclass
class TrainConfig:
    """One training run: pretraining a scorer from an encoder, or adapting a Cappy checkpoint to a task.

    Example:
        >>> cfg = TrainConfig(model="cappy-mini", train=["pairs/"], output_dir="out/adapted", lr=2e-5)
        >>> cfg.updates_per_batch_plan(world_size=1)  # (gradient accumulation steps, per-device batch)
        (8, 16)
    """

    model: str = ""
    """Encoder checkpoint (a new one-output regression head is added) or an existing Cappy checkpoint; any name
    :func:`cappy.model.resolve_model_path` takes."""
    train: list[str] = field(default_factory=list)
    """Pair data: `cappy data build` output folders (manifest.json + shards), .parquet or .jsonl files."""
    output_dir: str = ""
    dev: str | None = None
    """Dev pairs (same schema) for MSE and pairwise ranking accuracy during training."""

    max_length: int = 512
    instruction_truncation: str | None = None
    """"left" cuts a too-long instruction from its start (keeps its end, where a few-shot prompt's question is),
    "right" from its end; None keeps what the base checkpoint declares ("right" if nothing). Saved with the model."""
    batch_size: int = 128
    """Effective batch: pairs per optimizer update, over all processes and accumulation steps."""
    per_device_batch_size: int = 16
    """Most pairs in one forward pass on one device; accumulation steps follow from it."""
    lr: float = 2e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_ratio: float = 0.1
    warmup_updates: int | None = None
    """Overrides warmup_ratio when set."""
    max_grad_norm: float | None = 1.0
    num_pairs: int | None = None
    """Train on exactly this many pairs (the data repeated or truncated); else `epochs` passes."""
    epochs: int = 1
    seed: int = 42
    dropout: float | None = None
    """Override the encoder's hidden/attention/classifier dropout (None keeps the checkpoint's)."""

    rank_loss_weight: float = 0.0
    """Weight of a softmax cross-entropy over the responses of one instruction (0 = the paper's pure MSE)."""
    rank_scope: str = "micro_batch"
    """Where the listwise term finds an instruction's responses: "micro_batch" (each forward pass; a run longer
    than per_device_batch_size is split, so that size is part of the setting) or "batch" (the whole update batch
    on each process, whatever the micro-batch size: a gradient-free scoring pass first, about a third more
    compute when an update has several micro-batches)."""
    group_by_instruction: bool | None = None
    """Keep pairs of one instruction together in batches; defaults to on when rank_loss_weight > 0."""

    shuffle: bool = True
    shuffle_window_rows: int = 32768
    """Pairs read, shuffled and length-sorted together; bounds memory, sets how far the data mixes."""
    jsonl_block_rows: int = 4096
    pad_to_max_length: bool = False
    """Pad every batch to max_length (the released code's way; only for comparisons)."""

    mixed_precision: str = "auto"
    """no, bf16, fp16, or auto: bf16 autocast on CPUs with native bf16 (AVX512-BF16, AMX) and on GPUs that support
    it, else fp32 (detected at run time: machines differ)."""
    device: str = "auto"
    save_every: int = 500
    """Write training_state/ every N optimizer updates (0: only at the end)."""
    eval_every: int = 500
    metric_for_best: str = "dev_mse"
    """dev_mse (lower is better), dev_pairwise_accuracy or dev_hard_pairwise_accuracy (higher is better; only pairs
    whose negative is a wrong choice, a hard mismatched answer or an LLM candidate; needs a dev file with sources)."""
    log_every: int = 10
    eval_batch_size: int = 64
    progress: bool = True
    resume: bool = True
    """Continue from output_dir/training_state when it exists."""
    trace_data: bool = False
    """Write data_trace/rank-<i>.json: the global row ids each process trained on (for checks)."""

    # ------------------------------------------------------------------ derived values
    @property
    def grouped(self) -> bool:
        return self.rank_loss_weight > 0 if self.group_by_instruction is None else bool(self.group_by_instruction)

    def updates_per_batch_plan(self, world_size: int) -> tuple[int, int]:
        """(accumulation steps, per-device batch) for ``world_size`` processes."""
        per_update = math.ceil(self.batch_size / world_size)
        return math.ceil(per_update / self.per_device_batch_size), self.per_device_batch_size

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        if not self.model:
            raise ValueError("config: 'model' is required (an encoder or Cappy checkpoint)")
        if not self.train:
            raise ValueError("config: 'train' is required (pair files or `cappy data build` folders)")
        if not self.output_dir:
            raise ValueError("config: 'output_dir' is required")
        positive = ("max_length", "batch_size", "per_device_batch_size", "shuffle_window_rows", "jsonl_block_rows")
        for name in positive + ("epochs", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"config: lr must be a positive number, got {self.lr}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"config: warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if self.num_pairs is not None and self.num_pairs < 1:
            raise ValueError(f"config: num_pairs must be >= 1, got {self.num_pairs}")
        if self.instruction_truncation not in (None, "right", "left"):
            raise ValueError(
                f"config: instruction_truncation must be right, left or null, got {self.instruction_truncation!r}"
            )
        if self.rank_loss_weight < 0:
            raise ValueError(f"config: rank_loss_weight must be >= 0, got {self.rank_loss_weight}")
        if self.rank_scope not in ("micro_batch", "batch"):
            raise ValueError(f"config: rank_scope must be micro_batch or batch, got {self.rank_scope!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16", "auto"):
            raise ValueError(f"config: mixed_precision must be no, bf16, fp16 or auto, got {self.mixed_precision!r}")
        if self.metric_for_best not in ("dev_mse", "dev_pairwise_accuracy", "dev_hard_pairwise_accuracy"):
            raise ValueError(
                "config: metric_for_best must be dev_mse, dev_pairwise_accuracy or dev_hard_pairwise_accuracy, "
                f"got {self.metric_for_best!r}"
            )
        if self.save_every < 0 or self.eval_every < 0:
            raise ValueError("config: save_every and eval_every must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """Read a YAML mapping of TrainConfig fields (a file, or a shipped preset by name), then apply ``overrides``.

        Example: ``TrainConfig.from_yaml("adapt_paper", {"model": "cappy-mini", "train": ["p/"]})``
        """
        data = _read_yaml(path)
        data.pop(ADAPTATION_SECTION, None)  # pair-building settings of cappy.adapt (read by adaptation_settings)
        return cls.from_dict({**data, **(overrides or {})}, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a mapping, coercing YAML scalars to the field types; unknown keys are an error."""
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ValueError(f"{source}: unknown setting {key!r}; known settings: {', '.join(sorted(names))}")
            kwargs[name] = _coerce(name, value, hints[name], source)
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg


def available_presets() -> list[str]:
    """Names of the shipped training presets. Example: ``available_presets()`` -> ["adapt_cpu", "adapt_paper"]"""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


# A preset's optional mapping of how `cappy.adapt` builds its pairs; training itself ignores it.
ADAPTATION_SECTION = "adaptation"
ADAPTATION_KEYS = {"mismatched": 0}


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = preset_path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a training config is a YAML mapping of settings, got {type(data).__name__}")
    return data


def adaptation_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The ``adaptation:`` section of a preset or YAML file (how :func:`cappy.adapt` builds pairs), with defaults.

    Example: ``adaptation_settings("adapt_cpu")["mismatched"]`` -> 8
    """
    section = _read_yaml(path).get(ADAPTATION_SECTION) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{path}: '{ADAPTATION_SECTION}' must be a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - set(ADAPTATION_KEYS))
    if unknown:
        known = sorted(ADAPTATION_KEYS)
        raise ValueError(f"{path}: unknown {ADAPTATION_SECTION} setting(s) {unknown}; known: {known}")
    k = section.get("mismatched", 0)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"{path}: {ADAPTATION_SECTION}: mismatched must be a whole number >= 0, got {k!r}")
    return {**ADAPTATION_KEYS, **section}


def preset_path(name_or_path: str | os.PathLike) -> Path:
    """A YAML file path as given, else the shipped preset of that name (``adapt_paper``, ``adapt_cpu``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = PRESETS_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"config file not found: {name_or_path} (shipped presets: {available_presets()})")


def _coerce(name: str, value: Any, hint: Any, source: str) -> Any:
    if typing.get_origin(hint) is list:
        args: tuple[Any, ...] = (hint,)
    else:
        args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise ValueError(f"{source}: {name} may not be null")
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if typing.get_origin(base) is list or base is list:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str | os.PathLike) for v in items):
            raise ValueError(f"{source}: {name} must be a path or a list of paths, got {value!r}")
        return [str(v) for v in items]
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{source}: {name} must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
            raise ValueError(f"{source}: {name} must be an integer, got {value!r}")
        return int(value)
    if base is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{source}: {name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{source}: {name} must be a number, got {value!r}")
        return float(value)
    if base is str:
        if value is False and name == "mixed_precision":
            return "no"  # YAML 1.1 reads a bare `no` as false
        if isinstance(value, str | os.PathLike | int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{source}: {name} must be a string, got {value!r}")
    return value
