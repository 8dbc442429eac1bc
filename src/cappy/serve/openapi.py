"""The served OpenAPI schema: FastAPI's, with this server's limits and recipe names written in.

Clients and fuzzers read the limits from the schema: every list a request may send, /best-of-n's ``n`` and the
OpenAI-compatible endpoints' ``n`` and ``best_of`` get ``maxItems`` / ``maximum`` = ``max_items_per_request`` (a 413
beyond), and ``recipe`` the names the server accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI

from cappy.serve.schemas import LIMITED_FIELDS

# Request bodies whose ``recipe`` is one of the server's recipe names.
RECIPE_MODELS = ("BestOfNRequest", "ChatCompletionRequest", "CompletionRequest")


def _properties(schema: dict[str, Any], model: str) -> dict[str, Any]:
    return schema.get("components", {}).get("schemas", {}).get(model, {}).get("properties", {})


def with_limits(schema: dict[str, Any], max_items: int, recipe_names: Sequence[str] | None) -> dict[str, Any]:
    """``schema`` (changed in place and returned) with ``max_items`` on every limited field and, when given, the
    recipe names as the enum of /best-of-n's ``recipe``.

    Example: ``with_limits(app.openapi(), 256, None)``
    """
    for name, field in LIMITED_FIELDS:
        prop = _properties(schema, name).get(field)
        if prop is None:
            continue
        for branch in [prop, *prop.get("anyOf", [])]:
            if branch.get("type") == "array":
                branch["maxItems"] = max_items
            elif branch.get("type") == "integer":
                branch["maximum"] = max_items
    for model in RECIPE_MODELS:
        for branch in _properties(schema, model).get("recipe", {}).get("anyOf", []):
            if recipe_names is not None and branch.get("type") == "string":
                branch["enum"] = list(recipe_names)  # the recipe names this server accepts
    return schema


def install_openapi(app: FastAPI, max_items: int, recipe_names: Sequence[str] | None) -> None:
    """Make ``app.openapi()`` serve :func:`with_limits` of FastAPI's schema (built once, on the first call)."""
    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_limits(base_openapi(), max_items, recipe_names)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
