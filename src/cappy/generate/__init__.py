"""Candidate generation from LLMs: one ``Generator`` interface, three backends (``load_generator``), recipes, a
resumable cache and ``CandidateSource`` (cache or generate).

Backends are imported lazily so that ``import cappy.generate`` needs neither llama-cpp-python nor a server.
Example:
    >>> from cappy.generate import LlamaCppGenerator, load_recipe
    >>> cands = LlamaCppGenerator().generate(["Q: What is 2+2?\\nA:"], load_recipe("paper17"))[0]
    >>> [(c.decoding, c.text, c.logprob_mean) for c in cands]
"""

from __future__ import annotations

from typing import Any

from cappy.generate.base import (
    DEFAULT_RECIPE,
    Candidate,
    Decoding,
    GenerationError,
    Generator,
    Recipe,
    available_recipes,
    load_recipe,
    prompt_id_of,
)
from cappy.generate.cache import generate_to_cache, iter_generations, read_generations
from cappy.generate.source import BACKENDS, CandidateSource, load_generator

_LAZY = {
    "LlamaCppGenerator": "cappy.generate.llamacpp",
    "gemma_gguf_path": "cappy.generate.llamacpp",
    "HFGenerator": "cappy.generate.hf",
    "OpenAIGenerator": "cappy.generate.openai",
}

__all__ = [
    "DEFAULT_RECIPE",
    "Candidate",
    "Decoding",
    "GenerationError",
    "Generator",
    "Recipe",
    "available_recipes",
    "load_recipe",
    "prompt_id_of",
    "generate_to_cache",
    "iter_generations",
    "read_generations",
    "BACKENDS",
    "CandidateSource",
    "load_generator",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cappy.generate' has no attribute {name!r}")
