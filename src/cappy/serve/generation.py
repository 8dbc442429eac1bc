"""Wiring /best-of-n to cappy.generate: a request's (recipe name, n) -> a Recipe.

Only shipped recipe names (and the one the operator configured) are accepted from a request: a recipe may be a
file path, and HTTP clients must not choose files on the server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


def recipe_factory(default: str = "quick") -> Callable[[str | None, int | None], Any]:
    """``make(name, n)`` -> a :class:`cappy.generate.Recipe`: ``name`` (or ``default``) cut to its first n candidates.

    Example: ``recipe_factory("paper17")(None, 5).num_candidates`` -> 5 (beam4 x1, then 4 plain samples)
    """
    from cappy.generate import available_recipes, load_recipe

    default_recipe = load_recipe(default)  # fail at start-up, not on the first request

    def make(name: str | None, n: int | None) -> Any:
        if name is None or name == default:
            recipe = default_recipe
        elif name in available_recipes():
            recipe = load_recipe(name)
        else:
            raise ValueError(f"unknown recipe {name!r}; this server offers {sorted({default, *available_recipes()})}")
        if n is None or n == recipe.num_candidates:
            return recipe
        if n > recipe.num_candidates:
            raise ValueError(
                f"recipe {recipe.name!r} makes {recipe.num_candidates} candidates; ask for at most that many "
                "or pick a larger recipe"
            )
        decodings, left = [], n
        for d in recipe.decodings:
            if left == 0:
                break
            take = min(d.n, left)
            decodings.append(dataclasses.replace(d, n=take))
            left -= take
        return dataclasses.replace(recipe, decodings=tuple(decodings))

    return make
