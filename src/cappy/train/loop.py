"""The trainer: MSE (plus an optional ranking term) on Cappy pairs, on accelerate; resumable, fault-checked."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cappy.errors import CappyError, InputError
from cappy.io import atomic_write, dumps
from cappy.metrics import HARD_SOURCES, pairwise_accuracy
from cappy.model.checkpoint import load_scorer_model
from cappy.model.encoding import collate_pairs, encode_pairs
from cappy.model.precision import cpu_has_native_bf16
from cappy.model.scorer import Cappy
from cappy.train.config import TrainConfig
from cappy.train.data import Pairs, PairSource, Plan, read_column, read_dev
from cappy.train.record import build_record, write_record

logger = logging.getLogger(__name__)

STATE_DIR = "training_state"
BEST_DIR = "best"


class TrainingError(CappyError, RuntimeError):
    """A run that cannot go on (for example a non-finite loss); the message names the update."""

    exit_code = 3  # `cappy`'s exit status: not a usage error


def lr_factor(update: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier for the 0-based optimizer ``update``: linear warmup, then linear decay to 0.

    Counted in optimizer updates, never micro-steps. Example: ``lr_factor(0, 100, 10)`` -> 0.1
    """
    if update < warmup:
        return (update + 1) / warmup
    return max(0.0, (total - update) / max(1, total - warmup))


def resolve_mixed_precision(mixed_precision: str, cpu: bool) -> str:
    """The accelerate setting for ``mixed_precision``: "auto" is bf16 on CPUs with native bf16 and on GPUs that
    support it, else "no"; any other value is returned as given.

    Example: ``resolve_mixed_precision("auto", cpu=True)`` -> "no" on a CPU without avx512_bf16 or AMX
    """
    if mixed_precision != "auto":
        return mixed_precision
    if cpu:
        return "bf16" if cpu_has_native_bf16() else "no"
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _load_model(cfg: TrainConfig) -> tuple[Any, Any]:
    # float32 master weights whatever the checkpoint stores (cappy-mini ships float16, and transformers would
    # otherwise load it as such); mixed precision comes from autocast. A classifier's multi-output head is replaced.
    return load_scorer_model(cfg.model, torch.float32, dropout=cfg.dropout, replace_head=True)


def _fsdp_requested() -> bool:
    """`accelerate launch` with an FSDP config (distributed_type: FSDP) says so in the environment."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _shard_on_cpu(acc: Any, mixed_precision: str) -> None:
    """Make a multi-process CPU run FSDP as its launch config asks.

    accelerate (1.15) turns every multi-process CPU launch into MULTI_CPU, plain DDP, even under an FSDP config
    with ``use_cpu: true``, and says nothing. torch's ``fully_shard`` runs on CPU over gloo, so the state is set to
    FSDP with the plugin the launcher's FSDP_* variables describe, as accelerate does on GPUs, before anything is
    prepared. Example: ``accelerate launch --config_file fsdp_cpu.yaml -m cappy train ...`` trains sharded.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise InputError(
            f"FSDP on CPU needs fsdp_version: 2 in the accelerate config, got {plugin.fsdp_version} (accelerate's "
            "FSDP1 wrapper looks for a GPU: 'There are currently no available devices found')"
        )
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    # Both: every AcceleratorState() copies the process state's distributed_type over its own.
    for state in (AcceleratorState, PartialState):
        state._shared_state["distributed_type"] = DistributedType.FSDP
    if acc.distributed_type != DistributedType.FSDP:  # a later accelerate that keeps its state elsewhere
        raise TrainingError(f"FSDP on CPU: accelerate still runs {acc.distributed_type.value}; use a GPU or DDP")


def _wrap_layers_only(plugin: Any, model: Any) -> None:
    """Shard transformer layers, not the module holding the input embeddings.

    With TRANSFORMER_BASED_WRAP and no class list, accelerate wraps the model's ``_no_split_modules``, which for
    BERT and RoBERTa include their Embeddings module; its FSDP2 preparation then shards the word embeddings a second
    time and fails (``TypeError: Invariant encountered: value was None when it should not be``). accelerate gives
    the input embeddings a unit of their own anyway, so the layers alone are listed.
    """
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    if plugin.fsdp_version != 2 or plugin.transformer_cls_names_to_wrap is not None:
        return
    policy = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)
    if policy is not transformer_auto_wrap_policy:
        return
    embeddings = model.get_input_embeddings()
    names = getattr(model, "_no_split_modules", None) or []
    plugin.transformer_cls_names_to_wrap = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if type(m).__name__ in names and not any(sub is embeddings for sub in m.modules())
        }
    )


def _rank_term(scores: torch.Tensor, labels: torch.Tensor, instructions: list[str]) -> torch.Tensor:
    """Sum over runs of one instruction (>= 2 responses, some positive label) of run size x softmax cross-entropy
    between the scores and the labels normalised to a distribution."""
    total = scores.new_zeros(())
    start = 0
    n = len(instructions)
    while start < n:
        end = start + 1
        while end < n and instructions[end] == instructions[start]:
            end += 1
        y = labels[start:end]
        if end - start >= 2 and float(y.sum()) > 0:
            target = y / y.sum()
            total = total - (end - start) * (target * torch.log_softmax(scores[start:end], dim=0)).sum()
        start = end
    return total


class Trainer:
    """Runs one :class:`TrainConfig` as one process or as one rank of ``accelerate launch`` / ``torchrun``.

    Example:
        >>> Trainer(TrainConfig.from_yaml("adapt_paper", {"model": "cappy-mini", "train": ["p/"],
        ...         "output_dir": "out/task"})).train()
        {'updates': 800, 'pairs': 102400, 'dev_mse': 0.081, ...}
    """

    def __init__(self, cfg: TrainConfig) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, set_seed

        cfg.validate()
        self.cfg = cfg
        self.record: dict[str, Any] | None = None  # what the checkpoints were trained on (training_data.json)
        if not cfg.progress:
            import transformers

            transformers.utils.logging.disable_progress_bar()
        if cfg.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"config: device must be auto, cpu or cuda, got {cfg.device!r}")
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise InputError("config: device=cuda but CUDA is not available on this machine")
        from accelerate.state import AcceleratorState

        # accelerate keeps one state per process; a second run in the same process (notebooks, tests) may differ
        # in mixed precision. The process group lives in PartialState, which is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
        # accelerate without cpu=True on a machine without CUDA ignores a multi-process launch (every process would
        # train alone on all the data), so "auto" means cpu=True there.
        cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
        mp = resolve_mixed_precision(cfg.mixed_precision, cpu)
        logger.info("mixed precision: %s (config: %s)", mp, cfg.mixed_precision)
        self.accelerator = acc = Accelerator(mixed_precision=mp, cpu=cpu)
        if cpu and _fsdp_requested() and acc.num_processes > 1:
            _shard_on_cpu(acc, mp)
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if acc.num_processes != launched:
            raise InputError(
                f"launched as {launched} processes but accelerate runs {acc.num_processes}; check the launcher and "
                "the device setting"
            )
        self.world = acc.num_processes
        self.rank = acc.process_index
        self.deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        self.fsdp = acc.distributed_type == DistributedType.FSDP
        if self.world > 1 or self.fsdp or self.deepspeed:
            logger.info("distributed: %s over %d processes on %s", acc.distributed_type.value, self.world, acc.device)
        self.out = Path(cfg.output_dir)
        # Data first: bad input stops before any model is loaded.
        self.source = PairSource(cfg.train, cfg.jsonl_block_rows)
        self.plan = Plan(
            self.source, cfg.batch_size, cfg.seed, cfg.shuffle_window_rows, cfg.num_pairs, cfg.epochs, cfg.shuffle
        )
        self.dev = read_dev(cfg.dev, cfg.jsonl_block_rows) if cfg.dev else None
        sources = read_column(cfg.dev, "source") if cfg.dev else None
        # rows whose negatives count for the hard-pair metric (wrong choices, hard mismatched, LLM candidates)
        self.dev_hard = np.array([s in HARD_SOURCES for s in sources]) if sources else None
        if cfg.metric_for_best == "dev_hard_pairwise_accuracy" and (self.dev_hard is None or not self.dev_hard.any()):
            raise TrainingError(f"metric_for_best is dev_hard_pairwise_accuracy but {cfg.dev} has no hard negatives")

        set_seed(cfg.seed)
        model, self.tokenizer = _load_model(cfg)
        # The Cappy wrapper clamps max_length to the model's positions (and scores dev); training encodes and collates
        # with the same cappy.model.encoding functions as scoring (_inputs).
        self.scorer = Cappy(
            model,
            self.tokenizer,
            max_length=cfg.max_length,
            batch_size=cfg.eval_batch_size,
            device=acc.device,
            instruction_truncation=cfg.instruction_truncation,
        )
        model.train()
        self.max_length = self.scorer.max_length
        self.accum, self.micro = cfg.updates_per_batch_plan(self.world)
        self.total_updates = self.plan.total_updates
        self.warmup = (
            cfg.warmup_updates if cfg.warmup_updates is not None else round(cfg.warmup_ratio * self.total_updates)
        )
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "layernorm.weight")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": cfg.weight_decay},
            {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
        total, warmup = self.total_updates, self.warmup
        # Not passed through accelerator.prepare: its wrapper would step the schedule once per process.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: lr_factor(u, total, warmup))
        if self.deepspeed:  # not exercised by the test suite (no DeepSpeed here); accumulation is ours, not DS's
            ds = acc.state.deepspeed_plugin.deepspeed_config
            ds["train_micro_batch_size_per_gpu"] = self.micro
            ds["gradient_accumulation_steps"] = 1
            ds["train_batch_size"] = self.micro * self.world
            if cfg.max_grad_norm:
                ds["gradient_clipping"] = cfg.max_grad_norm
        if self.fsdp:
            _wrap_layers_only(acc.state.fsdp_plugin, model)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        acc.register_for_checkpointing(self.scheduler)
        self.update = 0
        self.pairs_seen = 0
        self.best: float | None = None
        self.trace: list[list[int]] = []

    # ------------------------------------------------------------------ checkpoints
    def _state_root(self) -> Path:
        return self.out / STATE_DIR

    def _latest(self) -> Path | None:
        pointer = self._state_root() / "latest"
        if not pointer.is_file():
            return None
        path = self._state_root() / pointer.read_text(encoding="utf-8").strip()
        return path if (path / "trainer_state.json").is_file() else None

    def save_state(self) -> Path:
        """Write training_state/step-<N> (model, optimizer, schedule, RNG, data position) and point `latest` at it.

        The folder is complete before the pointer moves, so a kill at any moment leaves a usable checkpoint.
        """
        acc = self.accelerator
        root = self._state_root()
        name = f"step-{self.update:08d}"
        tmp = root / f".tmp-{name}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)  # before any process writes its RNG state into it
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            w, b = self.plan.locate(self.update) if self.update < self.total_updates else (len(self.plan.windows), 0)
            state = {
                "update": self.update,
                "pairs_seen": self.pairs_seen,
                "best": self.best,
                "window": w,
                "batch_in_window": b,
                "total_updates": self.total_updates,
                "world_size": self.world,
                "config": self.cfg.to_dict(),
            }
            with atomic_write(tmp / "trainer_state.json") as f:
                f.write(json.dumps(state, indent=2) + "\n")
            final = root / name
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            with atomic_write(root / "latest") as f:
                f.write(name + "\n")
            for old in root.iterdir():
                if old.name not in (name, "latest") and old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return root / name

    def _resume(self) -> None:
        latest = self._latest()
        if latest is None:
            return
        state = json.loads((latest / "trainer_state.json").read_text(encoding="utf-8"))
        if state["total_updates"] != self.total_updates:
            raise InputError(
                f"{latest}: this checkpoint belongs to a run of {state['total_updates']} updates, the config now "
                f"gives {self.total_updates}; use a new output_dir or resume: false"
            )
        self.accelerator.load_state(str(latest))
        self.update = int(state["update"])
        self.pairs_seen = int(state["pairs_seen"])
        self.best = state["best"]
        logger.info("resumed from %s at update %d", latest, self.update)
        self._truncate_log()

    def _truncate_log(self) -> None:
        """Drop metrics.jsonl lines written after the checkpoint we resume from."""
        log = self.out / "metrics.jsonl"
        if not self.accelerator.is_main_process or not log.is_file():
            return
        keep = []
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("update", 0) <= self.update:
                    keep.append(line)
            except ValueError:
                continue  # a line cut by the kill
        with atomic_write(log) as f:
            f.write("".join(x + "\n" for x in keep))

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(dumps(record) + "\n")

    def save_model(self, directory: Path) -> None:
        """Write a Cappy checkpoint (the scorer's format). A subfolder such as best/ is built beside and swapped in
        whole; the run folder itself gets its files replaced one by one (it also holds training_state/)."""
        acc = self.accelerator
        state = acc.get_state_dict(self.model)
        if acc.is_main_process:
            unwrapped = acc.unwrap_model(self.model)
            model = unwrapped
            if self.fsdp:  # the full weights exist only in the gathered state dict
                model = type(unwrapped)(unwrapped.config)
                model.load_state_dict(state)
            scorer = Cappy(
                model,
                self.tokenizer,
                max_length=self.max_length,
                instruction_truncation=self.scorer.instruction_truncation,
            )
            if self.record is None:
                self.record = build_record(self.cfg.train, self.cfg.model)
            if directory == self.out:
                scorer.save_pretrained(directory)
                write_record(directory, self.record)
            else:
                tmp = directory.parent / f".tmp-{directory.name}"
                old = directory.parent / f".old-{directory.name}"
                shutil.rmtree(tmp, ignore_errors=True)
                scorer.save_pretrained(tmp)
                write_record(tmp, self.record)
                if directory.exists():
                    shutil.rmtree(old, ignore_errors=True)
                    os.replace(directory, old)
                os.replace(tmp, directory)
                shutil.rmtree(old, ignore_errors=True)
            unwrapped.train()
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Dev MSE and pairwise ranking accuracy of the current weights."""
        assert self.dev is not None
        model = self.model if self.fsdp else self.accelerator.unwrap_model(self.model)
        model.eval()
        saved = self.scorer.model
        self.scorer.model = model
        try:
            scores = self.scorer.score(self.dev.instructions, self.dev.responses, show_progress_bar=False)
        finally:
            self.scorer.model = saved
            model.train()
        mse = float(np.mean((scores.astype(np.float64) - self.dev.labels) ** 2))
        acc, n = pairwise_accuracy(self.dev.instructions, self.dev.labels, scores)
        out = {"dev_mse": mse, "dev_pairwise_accuracy": acc, "dev_pairs": len(self.dev), "dev_ranked_pairs": n}
        if self.dev_hard is not None and self.dev_hard.any():
            hard, n_hard = pairwise_accuracy(self.dev.instructions, self.dev.labels, scores, self.dev_hard)
            out.update(dev_hard_pairwise_accuracy=hard, dev_hard_pairs=n_hard)
        return out

    def _is_better(self, metrics: dict[str, float]) -> bool:
        value = metrics[self.cfg.metric_for_best]
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.cfg.metric_for_best == "dev_mse" else value > self.best

    # ------------------------------------------------------------------ one update
    def _micro_batches(self, batch: Pairs) -> list[Pairs | None]:
        """This process's share of an update batch, cut into the same number of micro-batches on every process
        (None where this process has run out, so collective calls stay matched)."""
        n = len(batch)
        if self.cfg.grouped:  # contiguous, so an instruction's run of pairs stays on one process
            mine = np.arange(self.rank * n // self.world, (self.rank + 1) * n // self.world)
        else:  # strided over the length-sorted batch, so every process gets the same mix of lengths
            mine = np.arange(self.rank, n, self.world)
        k = math.ceil(math.ceil(n / self.world) / self.micro)
        parts = np.array_split(mine, k) if len(mine) else [mine] * k
        return [batch.take(p) if len(p) else None for p in parts]

    def _step(self, batch: Pairs) -> tuple[float, float, float]:
        """One optimizer update on ``batch``; returns (mean loss, gradient norm, learning rate used).

        The loss over all processes is known before the last backward, so a non-finite loss returns before
        anything is applied (under DeepSpeed the optimizer steps inside that last backward).
        """
        acc = self.accelerator
        cfg = self.cfg
        n = len(batch)
        micro = self._micro_batches(batch)
        loss_sum = torch.zeros((), dtype=torch.float64)
        lr = self.scheduler.get_last_lr()[0]
        rank_grads: dict[int, torch.Tensor] | None = None
        # With one micro-batch, the in-pass term below already spans the whole share: no extra pass.
        if cfg.rank_loss_weight > 0 and cfg.rank_scope == "batch" and sum(mb is not None for mb in micro) > 1:
            rank_value, rank_grads = self._batch_rank_term(micro)
            loss_sum += cfg.rank_loss_weight * rank_value
        for i, mb in enumerate(micro):
            dummy = mb is None
            if dummy:  # keep forward/backward counts equal across processes; contributes zero gradient
                mb = batch.take(np.arange(1))
            inputs = self._inputs(mb)
            labels = torch.from_numpy(mb.labels).to(acc.device)
            sync = i == len(micro) - 1
            if self.deepspeed:
                acc.gradient_state._set_sync_gradients(sync)
                ctx: Any = contextlib.nullcontext()
            else:
                ctx = contextlib.nullcontext() if sync else acc.no_sync(self.model)
            with ctx:
                scores = self.model(**inputs).logits.reshape(-1).float()
                se = (scores - labels).pow(2).sum()
                if cfg.rank_loss_weight > 0 and rank_grads is None:
                    se = se + cfg.rank_loss_weight * _rank_term(scores, labels, mb.instructions)
                if not dummy:
                    loss_sum += se.detach().double().cpu()
                if rank_grads is not None and not dummy:  # the batch-wide term's gradient (its value is logged above)
                    se = se + cfg.rank_loss_weight * (rank_grads[i] * scores).sum()
                if sync:
                    total = float(acc.reduce(loss_sum.to(acc.device), reduction="sum").item()) / n
                    if not math.isfinite(total):
                        self.optimizer.zero_grad(set_to_none=True)
                        return total, float("nan"), lr
                # Sum over the whole update batch / its size; DDP averages over processes, so scale by world.
                loss = se * (0.0 if dummy else self.world / n)
                acc.backward(loss)
            if cfg.trace_data and not dummy:
                self.trace.append([self.update, *mb.row_ids.tolist()])
        norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm or float("inf"))
        norm = float(norm) if norm is not None else float("nan")
        if math.isfinite(norm) or acc.mixed_precision == "fp16" or self.deepspeed:  # fp16 scalers skip overflows
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, norm, lr

    def _batch_rank_term(self, micro: list[Pairs | None]) -> tuple[float, dict[int, torch.Tensor]]:
        """The listwise term over each instruction's run in this process's whole share of the update batch
        (``rank_scope: batch``): its value and its gradient with respect to each micro-batch's scores, from one
        scoring pass without gradients. The next pass backpropagates ``sum(grad * scores)``, which has that
        gradient, so memory stays bounded by the micro-batch whatever the run length (dropout draws differ between
        the two passes, as between any two forward passes)."""
        real = {i: mb for i, mb in enumerate(micro) if mb is not None}
        with torch.no_grad():
            scores = torch.cat([self.model(**self._inputs(mb)).logits.reshape(-1).float() for mb in real.values()])
        scores.requires_grad_(True)
        labels = torch.from_numpy(np.concatenate([mb.labels for mb in real.values()])).to(scores.device)
        term = _rank_term(scores, labels, [x for mb in real.values() for x in mb.instructions])
        if term.requires_grad:  # else no run of two or more responses with a positive label: no gradient
            term.backward()
        grad = scores.grad if scores.grad is not None else torch.zeros_like(scores)
        return float(term.detach()), dict(zip(real, grad.split([len(mb) for mb in real.values()]), strict=True))

    @property
    def _pad_to(self) -> int | None:
        return self.max_length if self.cfg.pad_to_max_length else None

    def _inputs(self, mb: Pairs) -> dict[str, torch.Tensor]:
        """The model inputs of a micro-batch: the scorer's pair encoding and collation, on this process's device."""
        enc = encode_pairs(
            self.tokenizer, mb.instructions, mb.responses, self.max_length, self.scorer.instruction_truncation
        )
        return {k: v.to(self.accelerator.device) for k, v in collate_pairs(enc, self.tokenizer, self._pad_to).items()}

    # ------------------------------------------------------------------ the run
    def train(self) -> dict[str, Any]:
        """Train to the end of the plan (resuming if a checkpoint exists); returns the final metrics."""
        from tqdm.auto import tqdm

        acc, cfg = self.accelerator, self.cfg
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        if cfg.resume:
            self._resume()
        if self.update == 0 and acc.is_main_process and (self.out / "metrics.jsonl").exists():
            (self.out / "metrics.jsonl").unlink()  # a fresh start: nothing of an earlier log belongs to this run
        acc.wait_for_everyone()
        if self.update == 0 and acc.is_main_process:
            with atomic_write(self.out / "train_config.json") as f:
                f.write(json.dumps(cfg.to_dict(), indent=2) + "\n")
        bar = tqdm(
            total=self.total_updates,
            initial=self.update,
            desc="training",
            unit="update",
            disable=not (cfg.progress and acc.is_main_process),
        )
        window = -1
        batches: list[Pairs] = []
        t0, pairs0 = time.perf_counter(), self.pairs_seen
        last: dict[str, Any] = {}
        try:
            while self.update < self.total_updates:
                w, b = self.plan.locate(self.update)
                if w != window:
                    window, batches = w, self.plan.batches(w, cfg.grouped, 8 * self.max_length)
                batch = batches[b]
                loss, norm, lr = self._step(batch)
                if not math.isfinite(loss) or (not math.isfinite(norm) and acc.mixed_precision != "fp16"):
                    latest = self._latest()
                    what = "loss" if not math.isfinite(loss) else "gradient norm"
                    raise TrainingError(
                        f"non-finite {what} ({loss if what == 'loss' else norm}) at update {self.update + 1} of "
                        f"{self.total_updates}; stopped without applying it. Last good checkpoint: "
                        f"{latest if latest else 'none (no checkpoint was written yet)'}"
                    )
                self.update += 1
                self.pairs_seen += len(batch)
                elapsed = time.perf_counter() - t0
                rate = (self.pairs_seen - pairs0) / elapsed if elapsed > 0 else 0.0
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", pairs_s=f"{rate:.0f}")
                last = {"update": self.update, "loss": loss, "lr": lr, "grad_norm": norm, "pairs": self.pairs_seen}
                if self.update % cfg.log_every == 0 or self.update == self.total_updates:
                    self._log({**last, "epoch": self.plan.windows[w].epoch, "pairs_per_s": rate})
                done = self.update == self.total_updates
                if self.dev is not None and (done or (cfg.eval_every and self.update % cfg.eval_every == 0)):
                    metrics = self.evaluate()
                    improved = self._is_better(metrics)
                    if improved:
                        self.best = metrics[cfg.metric_for_best]
                        self.save_model(self.out / BEST_DIR)
                    self._log({"update": self.update, **metrics, "best": improved})
                    last.update(metrics)
                if done or (cfg.save_every and self.update % cfg.save_every == 0):
                    self.save_state()
        finally:
            bar.close()
        self.save_model(self.out)
        if cfg.trace_data:
            trace_dir = self.out / "data_trace"
            trace_dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(trace_dir / f"rank-{self.rank}.json") as f:
                f.write(json.dumps(self.trace))
        acc.wait_for_everyone()
        return {
            **last,
            "updates": self.update,
            "total_updates": self.total_updates,
            "best": self.best,
            "mixed_precision": acc.mixed_precision,
        }


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run one training job; see :class:`TrainConfig`. Example: ``train(TrainConfig.from_yaml("run.yaml"))``"""
    return Trainer(cfg).train()
