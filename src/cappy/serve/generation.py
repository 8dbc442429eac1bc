"""Wiring /best-of-n to cappy.generate: a request's (recipe name, n) -> a Recipe, run on a generation thread.

Only shipped recipe names (and the one the operator configured) are accepted from a request: a recipe may be a
file path, and HTTP clients must not choose files on the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cappy.errors import InputError
from cappy.generate import (
    DEFAULT_RECIPE,
    Candidate,
    CandidateSource,
    Generator,
    Recipe,
    available_recipes,
    load_recipe,
)

# A candidate's fields /best-of-n returns besides its text (those it has; objects and dicts alike).
CANDIDATE_FIELDS = ("decoding", "sample_index", "logprob_sum", "logprob_mean", "num_tokens", "model", "recipe", "seed")


def recipe_factory(default: str = DEFAULT_RECIPE) -> Callable[[str | None, int | None], Any]:
    """``make(name, n)`` -> a :class:`cappy.generate.Recipe`: ``name`` (or ``default``) cut to its first n candidates,
    or with more samples of its last sampling decoding when n is larger than the recipe.

    Example: ``recipe_factory("paper17")(None, 5).num_candidates`` -> 5 (beam4 x1, then 4 plain samples)
    """
    default_recipe = load_recipe(default)  # fail at start-up, not on the first request

    def make(name: str | None, n: int | None) -> Any:
        if name is None or name in (default, default_recipe.name):
            recipe = default_recipe
        elif name in available_recipes():
            recipe = load_recipe(name)
        else:
            raise InputError(f"unknown recipe {name!r}; this server offers {make.names}")
        if n is None or n == recipe.num_candidates:
            return recipe
        if n > recipe.num_candidates:
            # more samples of the recipe's last sampling decoding, so a request gets the n it asks for
            last = max((i for i, d in enumerate(recipe.decodings) if d.method == "sample"), default=None)
            if last is None:
                raise InputError(
                    f"recipe {recipe.name!r} has no sampling decoding to make more than "
                    f"{recipe.num_candidates} candidates"
                )
            decodings = list(recipe.decodings)
            decodings[last] = dataclasses.replace(decodings[last], n=decodings[last].n + n - recipe.num_candidates)
            return dataclasses.replace(recipe, decodings=tuple(decodings))
        decodings, left = [], n
        for d in recipe.decodings:
            if left == 0:
                break
            take = min(d.n, left)
            decodings.append(dataclasses.replace(d, n=take))
            left -= take
        return dataclasses.replace(recipe, decodings=tuple(decodings))

    make.names = sorted({default_recipe.name, *available_recipes()})  # what a request may name
    return make


def candidate_fields(cand: Any) -> dict[str, Any]:
    """A candidate (a :class:`cappy.generate.Candidate` or a dict) as JSON-safe fields: its text and
    :data:`CANDIDATE_FIELDS` it has. Example: ``candidate_fields({"text": "4", "seed": 0})`` -> the same dict"""
    get = cand.get if isinstance(cand, dict) else (lambda k, d=None: getattr(cand, k, d))
    text = get("text")
    if not isinstance(text, str):
        raise TypeError(f"a candidate without a str text: {cand!r}")
    out = {"text": text}
    for key in CANDIDATE_FIELDS:
        value = get(key)
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # JSON has no NaN/inf (e.g. the log-probability of an empty candidate)
        if value is not None:
            out[key] = value if isinstance(value, str | int | float | bool) else str(value)
    return out


def prompt_token_count(generator: Generator, prompt: str) -> int:
    """``prompt``'s token count in ``generator``'s own tokenizer (llama.cpp or transformers), else 0.

    Example: ``prompt_token_count(LlamaCppGenerator(), "Hello")`` -> 2 (with the BOS token)
    """
    llm = getattr(generator, "llm", None)
    if llm is not None and hasattr(llm, "tokenize"):
        return len(llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False))
    tokenizer = getattr(generator, "tokenizer", None)
    if tokenizer is not None and callable(tokenizer):
        return len(tokenizer(prompt)["input_ids"])
    return 0


class Generation:
    """The generator behind /best-of-n: its default ``recipe`` (a shipped name or a YAML file), every sample seeded
    from ``seed``, generating on one thread of its own (off the event loop and the scoring thread).

    Example:
        >>> gen = Generation(load_generator("llamacpp", None), "llamacpp:gemma")
        >>> cands = await gen.candidates("Q: What is 2+2?\\nA:", None, 3)
        >>> gen.close()
    """

    def __init__(self, generator: Generator, name: str | None, recipe: str = DEFAULT_RECIPE, seed: int = 0) -> None:
        self.generator = generator
        self.name = name  # as configured (None: /info shows none; answers name the generator's class)
        self.make_recipe = recipe_factory(recipe)
        self.source = CandidateSource(self.make_recipe(None, None), generator=generator, seed=seed)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cappy-generate")

    @property
    def recipe_names(self) -> list[str]:
        """The recipe names a request may send."""
        return list(self.make_recipe.names)

    @property
    def display_name(self) -> str:
        return self.name or type(self.generator).__name__

    async def sample(self, prompt: str, recipe: Recipe, seed: int) -> tuple[list[Candidate], int]:
        """``prompt``'s candidates under ``recipe`` seeded from ``seed``, and the prompt's token count (0 when the
        generator does not say), on the generation thread.

        Example: ``cands, prompt_tokens = await gen.sample("Q: 2+2?\nA:", recipe, seed=7)``
        """
        loop = asyncio.get_running_loop()

        def run() -> tuple[list[Candidate], int]:
            cands = self.generator.generate([prompt], recipe, seed=seed)[0]
            return cands, min(prompt_token_count(self.generator, prompt), recipe.max_prompt_tokens)

        return await loop.run_in_executor(self._executor, run)

    async def candidates(self, prompt: str, recipe: str | None, n: int | None) -> list[Any]:
        """``prompt``'s candidates under ``recipe`` (None: the default) cut or grown to ``n``; ValueError for a
        recipe name the server does not offer."""
        asked = self.make_recipe(recipe, n)
        loop = asyncio.get_running_loop()
        return (await loop.run_in_executor(self._executor, self.source.get, [prompt], None, asked))[0]

    def close(self) -> None:
        """Wait for a generation in progress, then stop the thread."""
        self._executor.shutdown(wait=True)
