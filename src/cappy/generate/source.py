"""Where candidates come from: ``load_generator`` builds a backend by name, ``CandidateSource`` reads a generation
cache and generates (and appends) only what is missing.

Boosting, evaluation, adaptation and the server all get their candidates through a :class:`CandidateSource`, so
"cache or generate" is written once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cappy.errors import InputError, InputTypeError
from cappy.generate.base import DEFAULT_RECIPE, Candidate, Generator, Recipe, load_recipe, prompt_id_of
from cappy.generate.cache import generate_to_cache, read_generations
from cappy.generate.openai import OpenAIGenerator

BACKENDS = ("llamacpp", "hf", "openai")


# The options each backend takes (constructor keywords); see load_generator.
OPTIONS = {
    "llamacpp": ("n_ctx", "n_threads", "n_parallel", "n_batch", "verbose"),
    "hf": ("device", "dtype", "trust_remote_code"),
    "openai": (
        "base_url",
        "api_key",
        "api_key_env",
        "endpoint",
        "timeout",
        "max_retries",
        "concurrency",
        "server_extensions",
        "extra_body",
    ),
}


def load_generator(backend: str, model: str | None = None, **options: Any) -> Generator:
    """A generator by backend name; ``options`` go to the backend's constructor.

    ``llamacpp``: ``model`` is a GGUF path (default: the packaged Gemma 3 270M); ``n_ctx``, ``n_threads``,
    ``n_parallel``. ``hf``: ``model`` is a model directory or hub id (required); ``device``, ``dtype``. ``openai``:
    ``model`` is the served model name and ``base_url`` is required; ``api_key`` (default: the environment
    variable named by ``api_key_env``, "OPENAI_API_KEY"), ``endpoint``, ``timeout``, ``max_retries``,
    ``concurrency``, ``server_extensions``. Options set to None mean "the backend's default"; options of another
    backend are ignored (one set of command-line options serves all three); an option of no backend is an error.
    Example: ``load_generator("llamacpp", n_threads=1).generate(["Q: 2+2?\\nA:"], "quick")``
    """
    if backend not in OPTIONS:
        raise InputError(f"unknown generation backend {backend!r}; choose from {list(BACKENDS)}")
    unknown = sorted(set(options) - {k for keys in OPTIONS.values() for k in keys})
    if unknown:
        raise InputTypeError(f"unknown generator option(s) {unknown}")
    options = {k: v for k, v in options.items() if v is not None and k in OPTIONS[backend]}
    if backend == "llamacpp":
        from cappy.generate.llamacpp import LlamaCppGenerator  # deferred: numpy; keeps cappy --help fast

        return LlamaCppGenerator(model, **options)
    if backend == "hf":
        from cappy.generate.hf import HFGenerator  # deferred: imports torch

        if not model:
            raise InputError("backend 'hf' needs a model (a model directory or hub id)")
        return HFGenerator(model, **options)
    base_url = options.pop("base_url", None)
    if not base_url or not model:
        raise InputError("backend 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1) and a model name")
    key_env = options.pop("api_key_env", "OPENAI_API_KEY")
    options.setdefault("api_key", os.environ.get(key_env) or None)
    return OpenAIGenerator(base_url, model, **options)


class CandidateSource:
    """Candidates per prompt for one recipe and seed: from a cache file, generating the missing prompts.

    ``cache`` is a generation-cache JSONL (see :mod:`cappy.generate.cache`) or None (generate every time, keep
    nothing). ``generator`` is a :class:`Generator`, or a zero-argument callable that builds one, called only when
    something is missing (so a complete cache never loads a model). Without a generator, a prompt missing from the
    cache is an error naming the file. ``recipe=None`` reads whatever recipe the cache holds (one run per prompt).
    Example:
        >>> src = CandidateSource("cpu8", cache="gens.jsonl", generator=lambda: load_generator("llamacpp"))
        >>> src.get(["Q: 2+2?\\nA:"])[0][0].text
    """

    def __init__(
        self,
        recipe: Recipe | str | None = DEFAULT_RECIPE,
        cache: str | os.PathLike | None = None,
        generator: Generator | Callable[[], Generator] | None = None,
        seed: int = 0,
        show_progress: bool = False,
    ) -> None:
        self.recipe = load_recipe(recipe) if recipe is not None else None
        self.cache = Path(cache) if cache is not None else None
        self._generator = generator if isinstance(generator, Generator) else None
        self._factory = generator if generator is not None and self._generator is None else None
        if self.cache is None and generator is None:
            raise InputError("a CandidateSource needs a cache file, a generator, or both")
        self.seed = seed
        self.show_progress = show_progress
        self._read: dict[str, list[Candidate]] | None = None

    @property
    def generator(self) -> Generator | None:
        """The generator, built on first use from the factory; None when there is neither."""
        if self._generator is None and self._factory is not None:
            self._generator = self._factory()
            if not isinstance(self._generator, Generator):
                raise InputTypeError(
                    f"the generator factory returned a {type(self._generator).__name__}, not a Generator"
                )
        return self._generator

    @property
    def can_generate(self) -> bool:
        return self._generator is not None or self._factory is not None

    def _cached(self) -> dict[str, list[Candidate]]:
        if self._read is None:
            if self.cache is None or not self.cache.exists():
                self._read = {}
            else:
                model = self._generator.model_id if self._generator is not None else None
                self._read = read_generations(
                    self.cache,
                    model=model,
                    recipe=self.recipe.name if self.recipe is not None else None,
                    seed=self.seed if self.recipe is not None else None,
                )
        return self._read

    def get(
        self,
        prompts: Sequence[str],
        prompt_ids: Sequence[str | None] | None = None,
        recipe: Recipe | str | None = None,
    ) -> list[list[Candidate]]:
        """The candidates of each prompt, in order; missing ones are generated (and appended to the cache).

        ``recipe`` overrides the source's recipe for this call (the server's per-request recipes); such calls
        bypass the cache. Raises ValueError naming the cache when a prompt has no candidates and nothing can make
        them, or when a prompt's cached candidates come from several runs (models, recipes or seeds).
        """
        if isinstance(prompts, str):
            raise InputTypeError("prompts must be a list of str, got a single str")
        ids = list(prompt_ids) if prompt_ids is not None else [None] * len(prompts)
        if len(ids) != len(prompts):
            raise InputError(f"got {len(prompts)} prompts but {len(ids)} prompt ids")
        if recipe is not None or self.cache is None:
            gen = self.generator
            if gen is None:
                raise InputError("this candidate source has no generator for a recipe outside its cache")
            use = load_recipe(recipe) if recipe is not None else self.recipe
            if use is None:
                raise InputError("no recipe to generate with")
            pids = [i if i is not None else prompt_id_of(p) for p, i in zip(prompts, ids)]
            return gen.generate(list(prompts), use, seed=self.seed, prompt_ids=pids, show_progress=self.show_progress)
        have = self._cached()
        missing = [(p, i) for p, i in zip(prompts, ids) if not have.get(p)]
        missing = list(dict((p, (p, i)) for p, i in missing).values())
        if missing:
            if not self.can_generate:
                n = prompts.index(missing[0][0]) + 1
                raise InputError(
                    f"{self.cache}: no candidates for {len(missing)} prompt(s) (first: prompt {n}, "
                    f"{missing[0][0][:60]!r}) and no generator to make them"
                )
            if self.recipe is None:
                raise InputError(f"{self.cache}: prompts are missing; a recipe is needed to generate them")
            gen = self.generator
            generate_to_cache(gen, missing, self.recipe, self.cache, self.seed, self.show_progress, total=len(missing))
            self._read = None
            have = self._cached()
        out = []
        for p in prompts:
            cands = have.get(p)
            if not cands:  # the generator returned nothing for it
                raise ValueError(f"{self.cache}: still no candidates for prompt {p[:60]!r} after generating")
            runs = {(c.extra.get("model"), c.extra.get("recipe"), c.extra.get("seed")) for c in cands}
            if len(runs) > 1:
                raise InputError(
                    f"{self.cache}: prompt {p[:60]!r} has candidates from several runs {sorted(runs)}; "
                    "name the recipe, seed and generator to pick one"
                )
            out.append(cands)
        return out

    @property
    def model_id(self) -> str | None:
        """The generator's model, else the model the cached candidates record (None if unknown or mixed)."""
        if self._generator is not None:
            return self._generator.model_id
        models = {c.extra.get("model") for cs in self._cached().values() for c in cs}
        return next(iter(models)) if len(models) == 1 else None

    def close(self) -> None:
        if self._generator is not None:
            self._generator.close()

    def __enter__(self) -> CandidateSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
