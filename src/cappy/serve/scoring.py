"""The scorer's side of the service: what runs on the scoring thread, and what the batcher estimates.

Huge texts are cut before anything tokenizes them. A pair is truncated to the model's ``max_length`` tokens, yet a
fast tokenizer still reads a whole text first: about 1.7 us a character on one core, so a 10 MB text (under the
16 MB body limit) held the scoring thread for 17 s while every other request waited. A text longer than
:data:`CAP_CHARS_PER_TOKEN` characters per ``max_length`` token is cut to its first words (its last ones for an
instruction of a left-truncating model) that still hold ``max_length + 16`` tokens, cut between words; the pair
then encodes exactly as it would have whole (the tokens past the cut are the ones truncation drops, and the 16
spare ones are those the scorer's own pre-cut keeps). A text whose prefix holds too few tokens (long runs of
spaces) is tried on a prefix 8x longer, up to the whole text.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cappy.model import Cappy, check_instruction_truncation, encode_pairs

# Texts up to this many characters per max_length token are never cut (English runs about 4.5 characters a token).
CAP_CHARS_PER_TOKEN = 16
# /rerank with truncate=false reports a too-long pair's length exactly up to this many characters per token.
MEASURE_CHARS_PER_TOKEN = 64
_SPARE_TOKENS = 16  # tokens kept past max_length: the scorer's own pre-cut keeps as many


def cap_texts(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    keep_end: bool = False,
    chars_per_token: int = CAP_CHARS_PER_TOKEN,
) -> tuple[list[str], list[bool]]:
    """``texts`` with each one longer than ``chars_per_token * max_length`` characters cut to its first whole words
    that hold ``max_length + 16`` tokens (its last ones with ``keep_end``), and which were cut. The cut never
    changes a pair's encoding under ``max_length`` truncation. A slow (not tokenizers-backed) tokenizer has no word
    offsets; then nothing is cut.

    Example: ``cap_texts(scorer.tokenizer, ["a b c " * 2_000_000], 128)[0][0]`` -> its first 144 words
    """
    out = list(texts)
    cut = [False] * len(out)
    chars = chars_per_token * max_length
    pending = [i for i, t in enumerate(out) if len(t) > chars]
    if not pending or not getattr(tokenizer, "is_fast", False):
        return out, cut
    need = max_length + _SPARE_TOKENS
    while pending:
        parts = [out[i][-chars:] if keep_end else out[i][:chars] for i in pending]
        enc = tokenizer(parts, add_special_tokens=False, return_offsets_mapping=True)
        retry = []
        for k, (i, part) in enumerate(zip(pending, parts)):
            kept = _whole_words(part, enc.word_ids(k), enc["offset_mapping"][k], need, keep_end)
            if kept is not None:
                out[i], cut[i] = kept, True
            elif len(out[i]) > 8 * chars:
                retry.append(i)  # too few tokens in this much text (long runs of spaces): try 8x more
        pending, chars = retry, 8 * chars
    return out, cut


def _whole_words(
    part: str, words: list[int | None], offsets: list[tuple[int, int]], need: int, keep_end: bool
) -> str | None:
    """The shortest run of whole words from the start of ``part`` (from its end with ``keep_end``) with at least
    ``need`` tokens; None if the words that its edge does not cut hold fewer. A word's tokens are consecutive, so a
    word starts where the word id changes; the word cut by the edge of ``part`` is never kept."""
    n = len(words)
    if keep_end:
        start = next((b for b in range(n - need, 0, -1) if words[b - 1] != words[b]), None)
        return None if start is None else part[offsets[start][0] :]
    end = next((b for b in range(need, n) if words[b - 1] != words[b]), None)
    return None if end is None else part[: offsets[end - 1][1]]


def truncating(scorer: Cappy, direction: str | None) -> Cappy:
    """``scorer``, or a view of it (the same model and tokenizer) that cuts a too-long instruction from ``direction``
    ("right": its end, "left": its start); the scorer itself is never changed.

    Example: ``truncating(scorer, "left").instruction_truncation`` -> "left"
    """
    if direction is None or direction == scorer.instruction_truncation:
        return scorer
    view = copy.copy(scorer)
    view.instruction_truncation = check_instruction_truncation(direction)
    return view


def score_function(scorer: Cappy) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """The batcher's function: ``(scores, token counts as scored)`` of the pairs, huge texts cut first
    (:func:`cap_texts`). Token counts come from the encoding that scored, for /v1/rerank's usage. A third argument,
    the batch's key, is a truncation direction ("right" or "left") for the instruction; without it the scorer's own.

    Example: ``MicroBatcher(score_function(scorer), returns_lengths=True)``
    """

    def score(instructions: list[str], responses: list[str], direction: str | None = None) -> tuple[Any, Any]:
        use = truncating(scorer, direction)  # a shallow copy per call: it follows the scorer's current settings
        left = use.instruction_truncation == "left"
        instructions = cap_texts(use.tokenizer, instructions, use.max_length, keep_end=left)[0]
        responses = cap_texts(use.tokenizer, responses, use.max_length)[0]
        return use.score(instructions, responses, show_progress_bar=False, return_lengths=True)

    return score


def pair_cost(max_length: int) -> Callable[[str, str], int]:
    """An upper bound of a pair's token count under ``max_length`` truncation, without tokenizing (the batcher's
    estimate): a token covers at least one UTF-8 byte in WordPiece, byte-level BPE and SentencePiece, plus 4 for
    special tokens. Cheap: a text of ``max_length`` characters or more is counted as ``max_length`` unencoded.

    Example: ``pair_cost(128)("What is 2+2?", "4")`` -> 17
    """

    def cost(instruction: str, response: str) -> int:
        n = 4
        for text in (instruction, response):
            n += max_length if len(text) >= max_length else len(text.encode("utf-8"))
        return min(n, max_length)

    return cost


def first_tokens(scorer: Cappy, texts: Sequence[str], n: int) -> list[str]:
    """Each text cut after its first ``n`` tokens (the tokenizer's own offsets; shorter texts unchanged).

    Example: ``first_tokens(scorer, ["the cat sat on the mat"], 3)`` -> ``["the cat sat"]``
    """
    # Tokens past max_length + 16 cannot change a score, so cutting huge texts there first changes nothing.
    capped = cap_texts(scorer.tokenizer, texts, scorer.max_length)[0]
    enc = scorer.tokenizer(capped, add_special_tokens=False, return_offsets_mapping=True)
    return [t if len(off) <= n else t[: off[n - 1][1]] for t, off in zip(capped, enc["offset_mapping"])]


def pair_lengths(
    scorer: Cappy, query: str, texts: Sequence[str], direction: str | None = None
) -> list[tuple[int, bool]]:
    """Each (query, text) pair's length in Cappy's encoding before any truncation, and whether it is only a lower
    bound (a huge text or query measured up to its cut, which is already past ``max_length``).

    Example: ``pair_lengths(scorer, "q", ["a", "b c"])`` -> ``[(5, False), (6, False)]`` for a BERT tokenizer
    """
    left = (direction or scorer.instruction_truncation) == "left"
    [query], [query_cut] = cap_texts(
        scorer.tokenizer, [query], scorer.max_length, keep_end=left, chars_per_token=MEASURE_CHARS_PER_TOKEN
    )
    capped, cut = cap_texts(scorer.tokenizer, texts, scorer.max_length, chars_per_token=MEASURE_CHARS_PER_TOKEN)
    enc = encode_pairs(scorer.tokenizer, [query] * len(capped), capped, max_length=None)
    return [(len(x), c or query_cut) for x, c in zip(enc["input_ids"], cut)]
