"""The Cappy scorer: one number per (instruction, response) pair, and the batching engine behind it.

Scoring sorts a call's pairs by length, cuts them into forward batches bounded by a pair count and a token budget
(and early where padding would pass a fifth of a batch's longest pair), pads each batch only to its own longest pair,
halves a batch that runs out of memory, and returns the scores in input order. The input format is
:mod:`cappy.model.encoding`'s; the score is the raw regression output of a one-label sequence-classification model
(no sigmoid).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from cappy.errors import InputError, InputTypeError
from cappy.model.backends import OpenVINORunner, openvino_precision, resolve_backend
from cappy.model.checkpoint import checkpoint_settings, load_scorer_model, save_checkpoint
from cappy.model.encoding import check_instruction_truncation, clamp_max_length, collate_pairs, encode_pairs
from cappy.model.precision import is_out_of_memory, resolve_device, resolve_precision

logger = logging.getLogger(__name__)

# Pairs tokenized at a time; sorting by length happens within a chunk so memory stays bounded.
_CHUNK = 4096
# A forward batch ends early at a pair shorter than this share of its longest (once it has _MIN_SPLIT pairs): a
# small call (a server's micro-batch of 64 pairs) spans a wide range of lengths, and padding them all to the longest
# cost a third of its time; a large sorted call rarely meets the rule, so it keeps its big batches.
_PAD_CUT = 0.8
# OpenVINO's cost per call is small (a batch of 8 pairs scores as fast per pair as one of 64), so its batches are cut
# at 5% padding: 11% more pairs/s than at 20% on 600 real pairs (benchmarks/score_throughput.py, docs/RESULTS.md).
_PAD_CUT_OPENVINO = 0.95
_MIN_SPLIT = 4


def _check_texts(name: str, values: Sequence[Any]) -> None:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise InputTypeError(f"{name}[{i}] must be a str, got {type(v).__name__}")


def _as_pairs(instructions: str | Sequence[str], responses: str | Sequence[str]) -> tuple[list[str], list[str], bool]:
    """Normalise the inputs of ``score``; a single str on one side is repeated to the other's length."""
    if instructions is None or responses is None:
        raise InputTypeError("instructions and responses must be str or lists of str, got None")
    single = isinstance(instructions, str) and isinstance(responses, str)
    if single:
        return [instructions], [responses], True
    if isinstance(instructions, str):
        if not isinstance(responses, Sequence):
            raise InputTypeError(f"responses must be a str or a list of str, got {type(responses).__name__}")
        instructions = [instructions] * len(responses)
    if isinstance(responses, str):
        if not isinstance(instructions, Sequence):
            raise InputTypeError(f"instructions must be a str or a list of str, got {type(instructions).__name__}")
        responses = [responses] * len(instructions)
    for name, seq in (("instructions", instructions), ("responses", responses)):
        if not isinstance(seq, Sequence) or isinstance(seq, bytes | bytearray):
            raise InputTypeError(f"{name} must be a str or a list of str, got {type(seq).__name__}")
    if len(instructions) != len(responses):
        raise InputError(
            f"instructions and responses must have the same length, got {len(instructions)} and {len(responses)}"
        )
    instructions, responses = list(instructions), list(responses)
    _check_texts("instructions", instructions)
    _check_texts("responses", responses)
    return instructions, responses, False


class Cappy:
    """A scorer of (instruction, response) pairs: higher means a more correct response.

    Example:
        >>> scorer = Cappy.from_pretrained("btan2/cappy-large")  # or a local directory, or "cappy-mini"
        >>> scorer.score("What is 2+2?", "4")
        0.93
        >>> scorer.choose("Is the sky blue? Yes or no.", ["yes", "no"])
        0
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        max_length: int = 512,
        batch_size: int = 64,
        max_tokens_per_batch: int = 16384,
        device: str | torch.device | None = None,
        name_or_path: str | None = None,
        autocast_dtype: torch.dtype | None = None,
        instruction_truncation: str | None = None,
        backend: str = "torch",
        ov_precision: str | None = None,
    ) -> None:
        if getattr(model.config, "num_labels", 1) != 1:
            raise InputError(
                f"a Cappy model has exactly one output, this one has num_labels={model.config.num_labels}"
            )
        if batch_size < 1 or max_tokens_per_batch < 1:
            raise InputError("batch_size and max_tokens_per_batch must be positive")
        self.model = model
        self.tokenizer = tokenizer
        self.device = resolve_device(device) if device is not None else next(model.parameters()).device
        if next(model.parameters()).device != self.device:
            self.model.to(self.device)
        self.model.eval()
        self.max_length = clamp_max_length(model.config, max_length)
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch
        self.name_or_path = name_or_path or getattr(model.config, "_name_or_path", None)
        self.autocast_dtype = autocast_dtype
        if instruction_truncation is None:  # what the checkpoint was trained with
            instruction_truncation = checkpoint_settings(model.config)[1]
        self.instruction_truncation = check_instruction_truncation(instruction_truncation)
        self.backend = resolve_backend(backend, self.device)
        self._runner: OpenVINORunner | None = None
        self.pad_cut = _PAD_CUT_OPENVINO if self.backend == "openvino" else _PAD_CUT
        if self.backend == "openvino":
            if ov_precision is None:  # what the torch model computes in
                weights = next(model.parameters()).dtype
                lower = autocast_dtype or (weights if weights != torch.float32 else None)
                ov_precision = "bf16" if lower == torch.bfloat16 else "f32"
            names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in self._input_names()]
            # the folder the weights came from (a name like "cappy-mini" resolved), where an export may lie beside
            source = getattr(model.config, "_name_or_path", None) or self.name_or_path
            self._runner = OpenVINORunner(self.model, names, ov_precision, source=source)

    def _input_names(self) -> set[str]:
        names = getattr(self.tokenizer, "model_input_names", None) or ["input_ids", "attention_mask"]
        return {*names, "input_ids", "attention_mask"}

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        max_length: int | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        batch_size: int = 64,
        max_tokens_per_batch: int = 16384,
        instruction_truncation: str | None = None,
        backend: str = "auto",
        **model_kwargs: Any,
    ) -> Cappy:
        """Load any one-output sequence-classification checkpoint (RoBERTa, BERT/MiniLM, DeBERTa-v2, ...).

        ``dtype="auto"`` computes in bfloat16 on CPUs with native bf16, in float32 on other CPUs, and in the
        checkpoint's dtype on GPUs (see :func:`resolve_precision`); ``backend`` picks the engine ("auto": OpenVINO
        on a CPU where installed, see :func:`cappy.model.backends.resolve_backend`; a model OpenVINO cannot convert
        falls back to eager torch with a warning). ``max_length`` and ``instruction_truncation`` ("right"/"left", see
        :func:`encode_pairs`) default to what the checkpoint declares.
        Example: ``Cappy.from_pretrained("btan2/cappy-large", device="cuda", dtype="bfloat16")``
        """
        engine = resolve_backend(backend, device, dtype)
        ov_precision = None
        if engine == "openvino":  # exported from float32 weights; OpenVINO computes in the precision asked for
            ov_precision = openvino_precision(dtype)
            torch_dtype, autocast_dtype = torch.float32, None
        else:
            torch_dtype, autocast_dtype = resolve_precision(dtype, device)
        model, tokenizer = load_scorer_model(
            name_or_path, torch_dtype, trust_remote_code=trust_remote_code, revision=revision, **model_kwargs
        )
        if max_length is None:
            max_length = checkpoint_settings(model.config)[0]
        settings = dict(
            max_length=max_length,
            batch_size=batch_size,
            max_tokens_per_batch=max_tokens_per_batch,
            device=device,
            name_or_path=str(name_or_path),
            instruction_truncation=instruction_truncation,
        )
        try:
            return cls(
                model, tokenizer, autocast_dtype=autocast_dtype, backend=engine, ov_precision=ov_precision, **settings
            )
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - a conversion failure of any kind: "auto" still gives a scorer
            if engine != "openvino" or backend not in (None, "auto") or dtype == "int8":
                raise
            logger.warning("OpenVINO could not convert %s (%s); scoring with eager torch", name_or_path, err)
            torch_dtype, autocast_dtype = resolve_precision(dtype, device)
            return cls(model.to(torch_dtype), tokenizer, autocast_dtype=autocast_dtype, backend="torch", **settings)

    @property
    def precision(self) -> str:
        """What scoring computes in: "float32", "bfloat16-autocast" (float32 weights), "bfloat16" or "float16".

        Example: ``Cappy.from_pretrained("cappy-mini", device="cpu", dtype="float32").precision`` -> "float32"
        """
        if self._runner is not None:
            return {"bf16": "bfloat16", "f32": "float32"}.get(self._runner.precision, self._runner.precision)
        if self.autocast_dtype is not None:
            return f"{str(self.autocast_dtype).replace('torch.', '')}-autocast"
        return str(next(self.model.parameters()).dtype).replace("torch.", "")

    def save_pretrained(self, save_directory: str | os.PathLike, model_card: str | None = None) -> Path:
        """Write a Hugging Face checkpoint that transformers and sentence-transformers read as a raw-score regressor,
        with this scorer's max_length and instruction_truncation; see :func:`cappy.model.checkpoint.save_checkpoint`.

        Example: ``scorer.save_pretrained("out/my-cappy")``
        """
        return save_checkpoint(
            self.model, self.tokenizer, save_directory, self.max_length, self.instruction_truncation, model_card
        )

    # ------------------------------------------------------------------ scoring
    def encode(self, instructions: list[str], responses: list[str]) -> dict[str, list[list[int]]]:
        """Tokenize pairs exactly as the model was trained on them (no padding); see :func:`encode_pairs`.

        Example: ``scorer.encode(["What is 2+2?"], ["4"])["input_ids"]``
        """
        return encode_pairs(self.tokenizer, instructions, responses, self.max_length, self.instruction_truncation)

    def _batches(self, lengths: np.ndarray, order: np.ndarray) -> Iterator[np.ndarray]:
        """Consecutive runs of ``order`` (longest first) bounded by batch_size and the token budget, cut early at a
        pair shorter than ``pad_cut`` of the batch's longest (0.8 on torch, 0.95 on OpenVINO)."""
        start = 0
        n = len(order)
        while start < n:
            longest = int(lengths[order[start]])
            limit = min(n, start + max(1, min(self.batch_size, self.max_tokens_per_batch // max(longest, 1))))
            end = start + 1
            while end < limit and (end - start < _MIN_SPLIT or lengths[order[end]] >= self.pad_cut * longest):
                end += 1
            yield order[start:end]
            start = end

    def _collate(self, enc: dict[str, list[list[int]]], idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in collate_pairs(enc, self.tokenizer, rows=idx).items()}

    def _forward(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        if self._runner is not None:
            return self._runner(batch)
        if self.autocast_dtype is None:
            cast = contextlib.nullcontext()
        else:
            cast = torch.autocast(self.device.type, dtype=self.autocast_dtype)
        with cast:
            logits = self.model(**batch).logits
        return logits.reshape(-1).float().cpu().numpy()

    def _score_chunk(
        self,
        instructions: list[str],
        responses: list[str],
        out: np.ndarray,
        pbar: Any,
        shard: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Fill ``out`` with the chunk's scores (with ``shard=(rank, world)`` only those of every world-th forward
        batch from rank on; the rest stay NaN); returns the encoded length of each pair."""
        enc = self.encode(instructions, responses)
        lengths = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(instructions))
        order = np.argsort(-lengths, kind="stable")
        pending = list(self._batches(lengths, order))
        if shard is not None:
            out[:] = np.nan
            pending = pending[shard[0] :: shard[1]]
        while pending:
            idx = pending.pop(0)
            try:
                out[idx] = self._forward(self._collate(enc, idx))
            except Exception as err:  # halve and retry on out-of-memory; anything else is a real error
                if not is_out_of_memory(err) or len(idx) == 1:
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                half = len(idx) // 2
                self.batch_size = max(1, min(self.batch_size, half))
                logger.warning("out of memory on a batch of %d pairs; retrying as two of %d", len(idx), half)
                pending[:0] = [idx[:half], idx[half:]]
                continue
            if pbar is not None:
                pbar.update(len(idx))
        return lengths

    @torch.inference_mode()
    def score(
        self,
        instructions: str | Sequence[str],
        responses: str | Sequence[str],
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        return_lengths: bool = False,
        shard: tuple[int, int] | None = None,
    ) -> float | np.ndarray | tuple[float | np.ndarray, int | np.ndarray]:
        """Score pairs. Two strings give a float; lists (or one str and a list) give a float32 array in input order.

        ``return_lengths=True`` also gives each pair's token count as scored (after truncation, without padding):
        ``(scores, lengths)``, an int64 array beside the array (an int beside the float).
        ``shard=(rank, world)`` runs only this process's share of the forward batches that one process would run
        (every world-th from ``rank``) and leaves the other scores NaN: merging the shares of all ranks gives the
        one-process scores exactly (see :func:`cappy.batch.score_jsonl` under accelerate or torchrun).

        Example:
            >>> scorer.score("What is 2+2?", "4")
            0.91
            >>> scorer.score(["What is 2+2?"] * 2, ["4", "5"])
            array([0.91, 0.12], dtype=float32)
            >>> scorer.score(["What is 2+2?"] * 2, ["4", "5"], return_lengths=True)
            (array([0.91, 0.12], dtype=float32), array([9, 9]))
        """
        instr, resp, single = _as_pairs(instructions, responses)
        if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
            raise InputError(f"shard must be (rank, world) with 0 <= rank < world, got {shard!r}")
        if batch_size is not None:
            if batch_size < 1:
                raise InputError(f"batch_size must be positive, got {batch_size}")
            saved, self.batch_size = self.batch_size, batch_size
        out = np.empty(len(instr), dtype=np.float32)
        lengths = np.empty(len(instr), dtype=np.int64)
        show = show_progress_bar if show_progress_bar is not None else len(instr) > 10 * _CHUNK
        pbar = None
        if show:
            from tqdm.auto import tqdm

            pbar = tqdm(total=len(instr), desc="scoring", unit="pair")
        try:
            for s in range(0, len(instr), _CHUNK):
                view = out[s : s + _CHUNK]
                chunk = (instr[s : s + _CHUNK], resp[s : s + _CHUNK])
                lengths[s : s + _CHUNK] = self._score_chunk(*chunk, view, pbar, shard)
        finally:
            if pbar is not None:
                pbar.close()
            if batch_size is not None:
                self.batch_size = saved
        if single:
            return (float(out[0]), int(lengths[0])) if return_lengths else float(out[0])
        return (out, lengths) if return_lengths else out

    def score_groups(
        self,
        instructions: Sequence[str],
        groups_of_responses: Sequence[Sequence[str]],
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        shard: tuple[int, int] | None = None,
    ) -> list[np.ndarray]:
        """Score every response of every group against its instruction in one batched :meth:`score` call.

        Returns one float32 array per instruction, in the order given (the groups may differ in size); a length
        mismatch, an empty group or a non-str text is a ValueError naming its index.
        Example: ``scorer.score_groups(["2+2?", "Sky colour?"], [["4", "5"], ["blue", "red", "green"]])``
        -> ``[array([0.9, 0.1], dtype=float32), array([0.8, 0.2, 0.1], dtype=float32)]``
        """
        for name, seq in (("instructions", instructions), ("groups_of_responses", groups_of_responses)):
            if isinstance(seq, str | bytes) or not isinstance(seq, Sequence):
                raise InputError(f"{name} must be a list, got {type(seq).__name__}")
        if len(instructions) != len(groups_of_responses):
            raise InputError(
                f"instructions and groups_of_responses must have the same length, got {len(instructions)} and "
                f"{len(groups_of_responses)}"
            )
        for i, (instruction, group) in enumerate(zip(instructions, groups_of_responses)):
            if not isinstance(instruction, str):
                raise InputError(f"instructions[{i}] must be a str, got {type(instruction).__name__}")
            if isinstance(group, str | bytes) or not isinstance(group, Sequence):
                raise InputError(f"groups_of_responses[{i}] must be a list of str, got {type(group).__name__}")
            if len(group) == 0:
                raise InputError(f"groups_of_responses[{i}] is empty; every instruction needs a response")
            for j, r in enumerate(group):
                if not isinstance(r, str):
                    raise InputError(f"groups_of_responses[{i}][{j}] must be a str, got {type(r).__name__}")
        if not instructions:
            return []
        flat_instr = [s for s, group in zip(instructions, groups_of_responses) for _ in group]
        flat_resp = [r for group in groups_of_responses for r in group]
        flat = self.score(
            flat_instr, flat_resp, batch_size=batch_size, show_progress_bar=show_progress_bar, shard=shard
        )
        bounds = np.cumsum([len(group) for group in groups_of_responses])[:-1]
        return np.split(flat, bounds)

    def choose(self, instruction: str, choices: Sequence[str]) -> int:
        """Index of the highest-scoring choice (ties go to the first).

        Example: ``scorer.choose("Is the sky blue? Yes or no.", ["yes", "no"])`` -> 0
        """
        scores = self._choice_scores(instruction, choices, "choices")
        return int(np.argmax(scores))

    def rank(self, instruction: str, candidates: Sequence[str], top_k: int | None = None) -> list[dict[str, Any]]:
        """Candidates best first as ``{"index", "score", "text"}``; ``top_k`` keeps the first k.

        Example: ``scorer.rank("Name a prime.", ["4", "7", "9"], top_k=1)``
        -> ``[{"index": 1, "score": 0.8, "text": "7"}]``
        """
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise InputError(f"top_k must be a positive int or None, got {top_k!r}")
        scores = self._choice_scores(instruction, candidates, "candidates")
        order = np.argsort(-scores, kind="stable")
        if top_k is not None:
            order = order[:top_k]
        return [{"index": int(i), "score": float(scores[i]), "text": candidates[i]} for i in order]

    def _choice_scores(self, instruction: str, options: Sequence[str], name: str) -> np.ndarray:
        if not isinstance(instruction, str):
            raise InputTypeError(f"instruction must be a str, got {type(instruction).__name__}")
        if options is None or isinstance(options, str) or not isinstance(options, Sequence):
            raise InputTypeError(f"{name} must be a list of str, got {type(options).__name__}")
        if len(options) == 0:
            raise InputError(f"{name} is empty; give at least one")
        _check_texts(name, options)
        return self.score(instruction, list(options))

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (
            f"Cappy({self.name_or_path!r}, {type(self.model).__name__}, {n / 1e6:.1f}M params, "
            f"device={self.device}, backend={self.backend}, precision={self.precision}, max_length={self.max_length})"
        )
