"""The Cappy input format, defined here and nowhere else: scoring, training and serving all encode through it.

A pair is the tokenizer's text-pair encoding of ``(instruction, response)``, truncated longest-first to
``max_length``. A checkpoint may declare ``instruction_truncation: left`` (config.json, ``cappy``): an instruction
that must be cut then loses its start instead of its end, so the question at the end of a long few-shot prompt
stays in view.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cappy.errors import InputError

logger = logging.getLogger(__name__)

INSTRUCTION_TRUNCATION = ("right", "left")
# Models whose position ids start after the padding index, so two positions are not usable.
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer", "mpnet"}


def check_instruction_truncation(side: str) -> str:
    """``side`` if it is "right" or "left", else a ValueError. Example: ``check_instruction_truncation("left")``"""
    if side not in INSTRUCTION_TRUNCATION:
        raise InputError(f"instruction_truncation must be 'right' or 'left', got {side!r}")
    return side


def clamp_max_length(config: Any, max_length: int) -> int:
    """``max_length`` checked (an int >= 2) and lowered to the positions the model has, with a log line if cut.

    Example: ``clamp_max_length(roberta_config_with_514_positions, 1024)`` -> 512
    """
    if not isinstance(max_length, int) or max_length < 2:
        raise InputError(f"max_length must be an int >= 2, got {max_length!r}")
    limit = getattr(config, "max_position_embeddings", None)
    if limit and limit > 0:
        if getattr(config, "model_type", "") in _OFFSET_POSITION_MODELS:
            limit -= 2
        if max_length > limit:
            logger.info("max_length %d exceeds the model's %d positions; using %d", max_length, limit, limit)
            max_length = limit
    return max_length


def _precut(tokenizer: Any, texts: list[str], max_length: int) -> list[str]:
    """Cut very long texts a little past ``max_length`` tokens before pair encoding.

    Pair truncation in `tokenizers` is quadratic in the overflow (a 1 MB text takes minutes); tokens past
    ``max_length`` are dropped anyway, so cutting 16 tokens beyond it leaves the encoding unchanged.
    """
    keep = max_length + 16
    long_idx = [i for i, t in enumerate(texts) if len(t) > 8 * max_length]
    if not long_idx or not getattr(tokenizer, "is_fast", False):
        return texts
    enc = tokenizer(
        [texts[i] for i in long_idx],
        add_special_tokens=False,
        truncation=True,
        max_length=keep,
        return_offsets_mapping=True,
    )
    out = list(texts)
    for i, ids, offsets in zip(long_idx, enc["input_ids"], enc["offset_mapping"]):
        if len(ids) >= keep:
            out[i] = texts[i][: offsets[-1][1]]
    return out


def _kept_lengths(n_instruction: int, n_response: int, budget: int) -> tuple[int, int]:
    """Token counts longest-first truncation keeps of each side, as `tokenizers` computes them: the shorter side
    is kept whole if the longer can fill the rest; otherwise each keeps half (the longer one the odd token, the
    response on a tie)."""
    if n_instruction + n_response <= budget:
        return n_instruction, n_response
    n1, n2 = n_instruction, n_response
    swap = n1 > n2
    if swap:
        n1, n2 = n2, n1
    n2 = n1 if n1 > budget else max(n1, budget - n1)
    if n1 + n2 > budget:
        n1 = budget // 2
        n2 = n1 + budget % 2
    if swap:
        n1, n2 = n2, n1
    return min(n_instruction, n1), min(n_response, n2)


def _encode_left(tokenizer: Any, instructions: list[str], responses: list[str], max_length: int) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InputError("instruction_truncation='left' needs a fast (tokenizers-backed) tokenizer")
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    if budget < 2:
        raise InputError(f"max_length {max_length} leaves no room for a pair after the special tokens")
    # through the tokenizer call, not backend.encode_batch: the backend keeps the last call's truncation setting
    ins = tokenizer(instructions, add_special_tokens=False, truncation=False).encodings
    res = tokenizer(responses, add_special_tokens=False, truncation=False).encodings
    ids, types = [], []

    def counted(text: str, n: int) -> int:  # the length the right-side path sees after its pre-cut (_precut)
        return min(n, max_length + 16) if len(text) > 8 * max_length else n

    for text_a, text_b, a, b in zip(instructions, responses, ins, res):
        keep_a, keep_b = _kept_lengths(counted(text_a, len(a.ids)), counted(text_b, len(b.ids)), budget)
        if keep_a < len(a.ids):
            a.truncate(keep_a, direction="left")
        if keep_b < len(b.ids):
            b.truncate(keep_b, direction="right")
        enc = backend.post_processor.process(a, b, add_special_tokens=True)  # the template only, no re-truncation
        ids.append(enc.ids)
        types.append(enc.type_ids)
    out = {"input_ids": ids}
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ["token_type_ids"]):
        out["token_type_ids"] = types
    return out


def encode_pairs(
    tokenizer: Any,
    instructions: list[str],
    responses: list[str],
    max_length: int | None,
    instruction_truncation: str = "right",
) -> dict[str, list[list[int]]]:
    """The Cappy input format: the tokenizer's text-pair encoding of (instruction, response), unpadded.

    ``max_length`` truncates longest-first (what scoring and training use); None encodes the whole pairs (to
    measure them). ``instruction_truncation="left"`` cuts a too-long instruction from its start (keeping its end);
    the response is always cut from its end, and the token counts kept on each side are the same either way.
    Example: ``encode_pairs(tok, ["What is 2+2?"], ["4"], 512)["input_ids"]`` -> ``[[101, ...]]``
    """
    check_instruction_truncation(instruction_truncation)
    if max_length is None:
        # nothing is cut, so no pre-cut either: it would shorten what is being measured
        enc = tokenizer(instructions, responses, truncation=False, padding=False, return_attention_mask=False)
    elif instruction_truncation == "left":
        return _encode_left(tokenizer, instructions, responses, max_length)
    else:
        enc = tokenizer(
            _precut(tokenizer, instructions, max_length),
            _precut(tokenizer, responses, max_length),
            truncation="longest_first",
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
        )
    return {k: v for k, v in enc.items() if k in ("input_ids", "token_type_ids")}


def collate_pairs(
    enc: dict[str, list[list[int]]], tokenizer: Any, pad_to: int | None = None, rows: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded CPU tensors (input_ids, attention_mask, token_type_ids if encoded) of encoded pairs.

    Pads with the tokenizer's pad_token_id (0 without one) and pad_token_type_id, to the longest row or to
    ``pad_to`` if that is wider; ``rows`` picks and orders rows of ``enc`` (default: all).
    Example: ``collate_pairs(encode_pairs(tok, ["q"], ["a"], 512), tok)["input_ids"].shape`` -> ``(1, 5)``
    """
    ids = enc["input_ids"] if rows is None else [enc["input_ids"][i] for i in rows]
    if not ids:
        raise InputError("collate_pairs needs at least one encoded pair")
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    width = max(int(lengths.max()), pad_to or 0)
    mask = np.arange(width)[None, :] < lengths[:, None]
    total = int(lengths.sum())

    def fill(seqs: Sequence[list[int]], pad: int) -> torch.Tensor:
        # a boolean mask assigns in row-major order, which is the order of the concatenated rows
        out = np.full((len(seqs), width), pad, dtype=np.int64)
        out[mask] = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=total)
        return torch.from_numpy(out)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = {"input_ids": fill(ids, pad_id), "attention_mask": torch.from_numpy(mask.astype(np.int64))}
    if "token_type_ids" in enc:
        tt = enc["token_type_ids"] if rows is None else [enc["token_type_ids"][i] for i in rows]
        batch["token_type_ids"] = fill(tt, getattr(tokenizer, "pad_token_type_id", 0) or 0)
    return batch
