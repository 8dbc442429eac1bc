"""`TrainConfig`: every knob of a training run, read from YAML with ``--set key=value`` overrides (cappy.config)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cappy.config import ConfigError, JobConfig, read_yaml_mapping, setting

PRESETS_DIR = Path(__file__).parent / "presets"


@dataclass
class TrainConfig(JobConfig):
    """One training run: pretraining a scorer from an encoder, or adapting a Cappy checkpoint to a task.

    Example:
        >>> cfg = TrainConfig(model="cappy-mini", train=["pairs/"], output_dir="out/adapted", lr=2e-5)
        >>> cfg.updates_per_batch_plan(world_size=1)  # (gradient accumulation steps, per-device batch)
        (8, 16)
    """

    job: ClassVar[str] = "cappy train"

    model: str = setting(
        "",
        "encoder (a new regression head is added) or Cappy checkpoint: any name resolve_model_path takes",
        flags=("--model",),
    )
    """Encoder checkpoint (a new one-output regression head is added) or an existing Cappy checkpoint; any name
    :func:`cappy.model.resolve_model_path` takes."""
    train: list[str] = setting(
        [], "pair data: `cappy data build` folders, .parquet or .jsonl files (one or more)", flags=("--train",)
    )
    """Pair data: `cappy data build` output folders (manifest.json + shards), .parquet or .jsonl files."""
    output_dir: str = setting("", "output folder: the checkpoint, best/, metrics.jsonl", flags=("--output-dir",))
    dev: str | None = setting(None, "dev pairs for MSE and ranking accuracy during training", flags=("--dev",))
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

    mixed_precision: str = setting("auto", choices=("no", "bf16", "fp16", "auto"))
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
        """Raise ConfigError (a ValueError) naming the first bad setting."""
        if not self.model:
            raise ConfigError("config: 'model' is required (an encoder or Cappy checkpoint)")
        if not self.train:
            raise ConfigError("config: 'train' is required (pair files or `cappy data build` folders)")
        if not self.output_dir:
            raise ConfigError("config: 'output_dir' is required")
        positive = ("max_length", "batch_size", "per_device_batch_size", "shuffle_window_rows", "jsonl_block_rows")
        for name in positive + ("epochs", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"config: lr must be a positive number, got {self.lr}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ConfigError(f"config: warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if self.num_pairs is not None and self.num_pairs < 1:
            raise ConfigError(f"config: num_pairs must be >= 1, got {self.num_pairs}")
        if self.instruction_truncation not in (None, "right", "left"):
            raise ConfigError(
                f"config: instruction_truncation must be right, left or null, got {self.instruction_truncation!r}"
            )
        if self.rank_loss_weight < 0:
            raise ConfigError(f"config: rank_loss_weight must be >= 0, got {self.rank_loss_weight}")
        if self.rank_scope not in ("micro_batch", "batch"):
            raise ConfigError(f"config: rank_scope must be micro_batch or batch, got {self.rank_scope!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16", "auto"):
            raise ConfigError(f"config: mixed_precision must be no, bf16, fp16 or auto, got {self.mixed_precision!r}")
        if self.metric_for_best not in ("dev_mse", "dev_pairwise_accuracy", "dev_hard_pairwise_accuracy"):
            raise ConfigError(
                "config: metric_for_best must be dev_mse, dev_pairwise_accuracy or dev_hard_pairwise_accuracy, "
                f"got {self.metric_for_best!r}"
            )
        if self.save_every < 0 or self.eval_every < 0:
            raise ConfigError("config: save_every and eval_every must be >= 0")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike, overrides: dict[str, Any] | None = None, source: str = "overrides"
    ) -> TrainConfig:
        """Read a YAML mapping of TrainConfig fields (a file, or a shipped preset by name), then apply ``overrides``
        (names and types checked by :mod:`cappy.config`; an unknown name is an error listing the close ones).

        Example: ``TrainConfig.from_yaml("adapt_paper", {"model": "cappy-mini", "train": ["p/"]})``
        """
        data = yaml_settings(path)
        return cls.from_dict(data, source=str(path), validate=False).with_overrides(overrides or {}, source)


def available_presets() -> list[str]:
    """Names of the shipped training presets. Example: ``available_presets()`` -> ["adapt_cpu", "adapt_paper"]"""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


# A preset's optional mapping of how `cappy.adapt` builds its pairs; training itself ignores it.
ADAPTATION_SECTION = "adaptation"
ADAPTATION_KEYS = {"mismatched": 0}


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    return read_yaml_mapping(preset_path(path), "training config")


def yaml_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The TrainConfig settings of a YAML file or shipped preset, as written (its ``adaptation:`` section, which
    :func:`adaptation_settings` reads, left out). Example: ``yaml_settings("adapt_cpu")["lr"]`` -> 1e-4"""
    data = _read_yaml(path)
    data.pop(ADAPTATION_SECTION, None)
    return data


def adaptation_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The ``adaptation:`` section of a preset or YAML file (how :func:`cappy.adapt` builds pairs), with defaults.

    Example: ``adaptation_settings("adapt_cpu")["mismatched"]`` -> 8
    """
    section = _read_yaml(path).get(ADAPTATION_SECTION) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: '{ADAPTATION_SECTION}' must be a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - set(ADAPTATION_KEYS))
    if unknown:
        known = sorted(ADAPTATION_KEYS)
        raise ConfigError(f"{path}: unknown {ADAPTATION_SECTION} setting(s) {unknown}; known: {known}")
    k = section.get("mismatched", 0)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"{path}: {ADAPTATION_SECTION}: mismatched must be a whole number >= 0, got {k!r}")
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
