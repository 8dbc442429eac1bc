"""Wiring /best-of-n to cappy.generate: a request's (recipe name, n) -> a Recipe.

Only shipped recipe names (and the one the operator configured) are accepted from a request: a recipe may be a
file path, and HTTP clients must not choose files on the server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


def recipe_factory(default: str = "quick") -> Callable[[str | None, int | None], Any]:
    """``make(name, n)`` -> a :class:`cappy.generate.Recipe`: ``name`` (or ``default``) cut to its first n candidates,
    or with more samples of its last sampling decoding when n is larger than the recipe.

    Example: ``recipe_factory("paper17")(None, 5).num_candidates`` -> 5 (beam4 x1, then 4 plain samples)
    """
    from cappy.generate import available_recipes, load_recipe

    default_recipe = load_recipe(default)  # fail at start-up, not on the first request

    def make(name: str | None, n: int | None) -> Any:
        if name is None or name in (default, default_recipe.name):
            recipe = default_recipe
        elif name in available_recipes():
            recipe = load_recipe(name)
        else:
            raise ValueError(f"unknown recipe {name!r}; this server offers {make.names}")
        if n is None or n == recipe.num_candidates:
            return recipe
        if n > recipe.num_candidates:
            # more samples of the recipe's last sampling decoding, so a request gets the n it asks for
            last = max((i for i, d in enumerate(recipe.decodings) if d.method == "sample"), default=None)
            if last is None:
                raise ValueError(
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
