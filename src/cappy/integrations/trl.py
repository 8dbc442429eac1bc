"""Cappy as a reward for TRL's online RL trainers (``GRPOTrainer``, ``RLOOTrainer``, Online DPO).

TRL calls each entry of ``reward_funcs`` as ``f(prompts=..., completions=..., **columns) -> list[float]``, with
prompts and completions either strings (standard format) or chat message lists (conversational format).
:func:`reward_function` returns such a callable: it flattens every (prompt, completion) to an (instruction,
response) text pair by :func:`flatten_prompt` and :func:`flatten_completion` and scores the whole batch with one
:meth:`cappy.Cappy.score` call. TRL logs the rewards as ``rewards/<name>/mean`` and ``rewards/<name>/std``.

The flattening rule (:mod:`cappy.chat`, shared with the OpenAI-compatible endpoints of ``cappy serve``) is plain
text and ignores any tokenizer or chat template, so the same conversation gets the same
score whatever policy model produced it:

* a string is used as it is;
* a prompt that is a single user message becomes that message's content;
* any other prompt becomes one ``"{role}: {content}"`` line per message, joined by newlines
  (``"system: Be brief.\\nuser: What is 2+2?"``);
* a completion becomes the non-empty contents of its assistant messages, joined by newlines; messages of other
  roles in it (the results of tool calls) are left out.

A content is a string or a list of text parts (``{"type": "text", "text": ...}``, joined by newlines); an assistant
message that only calls tools may have no content and contributes an empty string. Anything else (a message without
role or content, an image part, prompts and completions of different lengths) is a :class:`ValueError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cappy.chat import TextOrMessages, flatten_completion, flatten_prompt
from cappy.errors import InputError

__all__ = ["CappyReward", "TextOrMessages", "flatten_completion", "flatten_prompt", "reward_function"]

if TYPE_CHECKING:
    from cappy.model import Cappy


class CappyReward:
    """A TRL reward function over a loaded :class:`~cappy.Cappy`; build it with :func:`reward_function`.

    Calling it scores every (prompt, completion) with one ``Cappy.score`` call and returns the raw scores as floats.
    Example: ``CappyReward(scorer)(prompts=["What is 2+2?"], completions=["4"])`` -> ``[0.87]``
    """

    def __init__(self, scorer: Cappy, batch_size: int | None = None, name: str = "cappy_reward") -> None:
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise InputError(f"batch_size must be a positive int or None, got {batch_size!r}")
        if not isinstance(name, str) or not name:
            raise InputError(f"name must be a non-empty str, got {name!r}")
        self.scorer = scorer
        self.batch_size = batch_size
        # TRL names the reward in its logs by the callable's __name__ (rewards/<name>/mean)
        self.__name__ = name

    def pairs(
        self, prompts: Sequence[TextOrMessages], completions: Sequence[TextOrMessages]
    ) -> tuple[list[str], list[str]]:
        """The flattened (instructions, responses) that a call scores.

        Example: ``reward.pairs(["Q?"], [[{"role": "assistant", "content": "A"}]])`` -> ``(["Q?"], ["A"])``
        """
        for name, seq in (("prompts", prompts), ("completions", completions)):
            if isinstance(seq, str | Mapping) or not isinstance(seq, Sequence):
                raise InputError(f"{name} must be a list (one entry per completion), got {type(seq).__name__}")
        if len(prompts) != len(completions):
            raise InputError(
                f"got {len(prompts)} prompts and {len(completions)} completions; TRL passes one prompt per completion"
            )
        instructions, responses = [], []
        for i, (p, c) in enumerate(zip(prompts, completions)):
            try:
                instructions.append(flatten_prompt(p))
                responses.append(flatten_completion(c))
            except ValueError as err:
                raise InputError(f"pair {i}: {err}") from None
        return instructions, responses

    def __call__(
        self, prompts: Sequence[TextOrMessages], completions: Sequence[TextOrMessages], **kwargs: Any
    ) -> list[float]:
        # kwargs: what TRL adds (completion_ids, trainer_state, log_metric, the dataset's other columns); unused
        instructions, responses = self.pairs(prompts, completions)
        if not instructions:
            return []
        scores = self.scorer.score(instructions, responses, batch_size=self.batch_size, show_progress_bar=False)
        return [float(s) for s in scores]

    def __repr__(self) -> str:
        return f"CappyReward(name={self.__name__!r}, model={self.scorer.name_or_path!r})"


def reward_function(
    model: str | os.PathLike | Cappy = "cappy-mini",
    *,
    device: str | None = "auto",
    dtype: str | None = "auto",
    batch_size: int | None = None,
    max_length: int | None = None,
    name: str = "cappy_reward",
) -> CappyReward:
    """A Cappy scorer as a TRL reward function: ``f(prompts, completions, **kwargs) -> list[float]``.

    ``model`` is what :meth:`Cappy.from_pretrained` takes ("cappy-mini", a directory, a hub id), loaded with
    ``device``, ``dtype`` and ``max_length``, or an already loaded :class:`~cappy.Cappy` (then leave those three at
    their defaults). ``batch_size`` bounds the pairs per forward pass (None: the scorer's own). ``name`` is the
    function's ``__name__``, the key of its rewards in TRL's logs. Rewards are Cappy's raw scores (trained towards
    [0, 1]); weigh them against other rewards with ``GRPOConfig(reward_weights=...)``. Chat turns are flattened as
    the module docstring says.

    Example:
        >>> from trl import GRPOConfig, GRPOTrainer
        >>> reward = reward_function("cappy-mini", device="cpu")
        >>> reward(prompts=["What is 2+2?"], completions=["4"])
        [0.87]
        >>> GRPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=reward, args=GRPOConfig(), train_dataset=ds)
    """
    from cappy.model import Cappy  # deferred: imports torch

    if isinstance(model, Cappy):
        if (device, dtype, max_length) != ("auto", "auto", None):
            raise InputError("device, dtype and max_length apply when loading; pass them to Cappy.from_pretrained")
        scorer = model
    elif isinstance(model, str | os.PathLike):
        kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        if max_length is not None:
            kwargs["max_length"] = max_length
        scorer = Cappy.from_pretrained(model, **kwargs)
    else:
        raise InputError(f"model must be a name, a path or a loaded Cappy, got {type(model).__name__}")
    return CappyReward(scorer, batch_size=batch_size, name=name)
