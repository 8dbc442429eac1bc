"""What every generation backend shares: decodings, recipes, candidates and the ``Generator`` interface.

A :class:`Recipe` is a list of :class:`Decoding` s, each asked for ``n`` samples; a generator turns each prompt into
one :class:`Candidate` per (decoding, sample). Named recipes (``paper17``, ``quick``) are YAML files shipped in
``cappy/generate/recipes/``; any other YAML file with the same keys works too.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cappy.errors import CappyError, InputError, InputTypeError

logger = logging.getLogger(__name__)

RECIPES_DIR = Path(__file__).parent / "recipes"
METHODS = ("greedy", "beam", "sample")
# The one best-of-N recipe that boost, adapt, serve and the demo use unless told otherwise. cpu8_stop: 8 candidates
# from five decodings, cut at stop strings so a base LM's candidates end where an answer ends. It is the recipe of
# the committed BIG-Bench adaptation caches, so an adapted scorer picks among the kind of candidate it was trained
# on, and it costs half of paper17's candidates and tokens on a CPU. Without stop strings a base LM runs on into
# the next few-shot example and every selection strategy falls to a few Rouge-L points (docs/RESULTS.md).
DEFAULT_RECIPE = "cpu8_stop"


class GenerationError(CappyError, RuntimeError):
    """A backend failed in a way the caller should see (server unreachable, bad response, ...)."""

    exit_code = 1  # `cappy`'s exit status: not a usage error


@dataclass(frozen=True)
class Decoding:
    """One decoding and how many candidates it contributes.

    ``method`` is "greedy", "beam" (``num_beams`` beams, best ``n`` returned) or "sample" (``temperature``,
    ``top_k`` with 0 = off, ``top_p`` with 1.0 = off). The name is what candidates record; by default it is built
    from the parameters: "greedy", "beam4", "sample", "temp0.9", "topk40", "topp0.95".
    Example: ``Decoding("sample", temperature=0.9, n=4).name`` -> "temp0.9"
    """

    method: str
    n: int = 1
    num_beams: int = 4
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    name: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"decoding method must be one of {METHODS}, got {self.method!r}")
        if not isinstance(self.n, int) or self.n < 1:
            raise InputError(f"decoding n must be a positive int, got {self.n!r}")
        if self.method == "beam" and (not isinstance(self.num_beams, int) or self.num_beams < 1):
            raise InputError(f"num_beams must be a positive int, got {self.num_beams!r}")
        if self.method == "beam" and self.n > self.num_beams:
            raise InputError(f"beam search returns at most num_beams={self.num_beams} sequences, asked n={self.n}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise InputError(f"temperature must be > 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InputError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not self.name:
            object.__setattr__(self, "name", self._default_name())

    def _default_name(self) -> str:
        if self.method == "greedy":
            return "greedy"
        if self.method == "beam":
            return f"beam{self.num_beams}"
        parts = []
        if self.temperature != 1.0:
            parts.append(f"temp{self.temperature:g}")
        if self.top_k:
            parts.append(f"topk{self.top_k}")
        if self.top_p != 1.0:
            parts.append(f"topp{self.top_p:g}")
        return "-".join(parts) or "sample"


@dataclass(frozen=True)
class Recipe:
    """A named list of decodings plus length limits shared by all of them.

    The prompt is cut to its last ``max_prompt_tokens`` tokens (``truncation_side="left"``, which keeps the
    question at the end of a few-shot prompt) or its first (``"right"``). ``stop`` strings end a candidate (the
    text is cut before the first one); useful for base LMs that go on to write the next few-shot example.
    Example: ``load_recipe("paper17").num_candidates`` -> 17
    """

    name: str
    decodings: tuple[Decoding, ...]
    min_new_tokens: int = 3
    max_new_tokens: int = 64
    max_prompt_tokens: int = 512
    truncation_side: str = "left"
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise InputError("a recipe needs a non-empty name")
        object.__setattr__(self, "decodings", tuple(self.decodings))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if not all(isinstance(x, str) and x for x in stop):
            raise InputError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", stop)
        if not self.decodings:
            raise InputError(f"recipe {self.name!r} has no decodings")
        names = [d.name for d in self.decodings]
        dupes = sorted({x for x in names if names.count(x) > 1})
        if dupes:
            raise InputError(f"recipe {self.name!r} repeats decoding names {dupes}; give each a distinct name")
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise InputError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not (isinstance(self.min_new_tokens, int) and 0 <= self.min_new_tokens <= self.max_new_tokens):
            raise InputError(f"min_new_tokens must be an int in [0, max_new_tokens], got {self.min_new_tokens!r}")
        if not (isinstance(self.max_prompt_tokens, int) and self.max_prompt_tokens >= 1):
            raise InputError(f"max_prompt_tokens must be an int >= 1, got {self.max_prompt_tokens!r}")
        if self.truncation_side not in ("left", "right"):
            raise InputError(f"truncation_side must be 'left' or 'right', got {self.truncation_side!r}")

    @property
    def num_candidates(self) -> int:
        return sum(d.n for d in self.decodings)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Recipe:
        """Build from the YAML/JSON layout: ``{"name", "decodings": [{"method", ...}], "max_new_tokens", ...}``."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: a recipe must be a mapping, got {type(data).__name__}")
        known = {
            "name",
            "decodings",
            "min_new_tokens",
            "max_new_tokens",
            "max_prompt_tokens",
            "truncation_side",
            "stop",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"{source}: unknown recipe keys {unknown}; expected some of {sorted(known)}")
        raw = data.get("decodings")
        if not isinstance(raw, list):
            raise InputError(f"{source}: 'decodings' must be a list")
        decodings = []
        for i, d in enumerate(raw):
            if not isinstance(d, dict):
                raise InputError(f"{source}: decodings[{i}] must be a mapping")
            try:
                decodings.append(Decoding(**d))
            except (TypeError, ValueError) as err:
                raise InputError(f"{source}: decodings[{i}]: {err}") from None
        try:
            return cls(**{**data, "decodings": tuple(decodings)})
        except (TypeError, ValueError) as err:
            raise InputError(f"{source}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decodings": [asdict(d) for d in self.decodings]}


def available_recipes() -> list[str]:
    """Names of the shipped recipes. Example: ``available_recipes()`` -> ["paper17", "quick"]"""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | os.PathLike | Recipe) -> Recipe:
    """A shipped recipe by name ("paper17") or a YAML file path. Example: ``load_recipe("configs/my.yaml")``"""
    import yaml

    if isinstance(name_or_path, Recipe):
        return name_or_path
    path = Path(name_or_path)
    if not path.is_file():
        shipped = RECIPES_DIR / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise InputError(f"unknown recipe {str(name_or_path)!r}: not a file and not one of {available_recipes()}")
        path = shipped
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err})") from None
    return Recipe.from_dict(data, source=str(path))


@dataclass
class Candidate:
    """One generated response. ``logprob_*`` are under the model's own distribution (no temperature or
    truncation), over the generated tokens excluding the stop token; None where the backend gives none.
    ``sample_index`` counts within the candidate's decoding.
    """

    text: str
    decoding: str
    sample_index: int
    logprob_sum: float | None
    logprob_mean: float | None
    num_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_logprobs(
        cls, text: str, decoding: str, sample_index: int, logprobs: Sequence[float] | None, num_tokens: int
    ) -> Candidate:
        if logprobs is None:
            return cls(text, decoding, sample_index, None, None, num_tokens)
        total = float(sum(logprobs))
        mean = total / len(logprobs) if len(logprobs) else 0.0
        return cls(text, decoding, sample_index, total, mean, num_tokens)


def stop_cut(pieces: Sequence[str], stop: Sequence[str], min_tokens: int = 0) -> tuple[str, int] | None:
    """Where the candidate made of ``pieces`` (one text piece per token) ends at a stop string, if it does.

    A stop string counts once it ends after the first ``min_tokens`` pieces (the recipe's minimum length: a
    candidate that opens with a blank line is not cut to nothing). It cuts at its start when that keeps at least
    ``min_tokens`` tokens, else at its end (the stop string began inside the minimum: the candidate keeps it rather
    than run on). The earliest such cut wins.

    Returns ``(text before the cut, tokens kept)``: a token is kept if it starts before the cut.
    Example: ``stop_cut(["4", "\\nQ", ":"], ["\\n"])`` -> ``("4", 1)``;
    ``stop_cut(["Jupiter", "\\n", "Question", ":", " What"], ["\\nQuestion:"], 3)`` -> ``("Jupiter\\nQuestion:", 4)``
    """
    if not stop:
        return None
    text = "".join(pieces)
    starts, pos = [], 0
    for piece in pieces:
        starts.append(pos)
        pos += len(piece)
    min_end = starts[min_tokens] if min_tokens < len(starts) else len(text)

    def kept(cut: int) -> int:
        return bisect.bisect_left(starts, cut)

    best: int | None = None
    for s in stop:
        if not s:
            continue
        # Occurrences that end inside the minimum are skipped. After the first one that ends past it, only an
        # occurrence overlapping that one (a repeat such as "\n\n\n") can still cut earlier.
        first = i = text.find(s, max(0, min_end - len(s) + 1))
        while 0 <= i < first + len(s):
            cut = i if kept(i) >= min_tokens else i + len(s)
            best = cut if best is None else min(best, cut)
            i = text.find(s, i + 1)
    if best is None:
        return None
    return text[:best], kept(best)


def prompt_id_of(prompt: str) -> str:
    """The default prompt id: sha1 of the UTF-8 prompt text. Example: ``prompt_id_of("hi")[:8]`` -> "c22b5f91"."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from any parts, stable across runs and machines (unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Generator(ABC):
    """A backend: ``generate(prompts, recipe)`` -> for each prompt, its candidates in recipe order.

    Samples are seeded from (seed, prompt id, decoding, sample index), so a prompt's candidates do not depend on the
    other prompts in the call, and a rerun reproduces them (up to the backend's own determinism).
    Example:
        >>> gen = LlamaCppGenerator()  # or HFGenerator("google/flan-t5-base"), OpenAIGenerator(url, model)
        >>> gen.generate(["Q: What is 2+2?\\nA:"], load_recipe("paper17"))[0][0].text
    """

    #: what generated rows record as "model"
    model_id: str = "unknown"
    #: whether "beam" decodings run as beam search; if not they run greedy, recorded as "greedy"
    supports_beam: bool = False
    #: how many prompts the backend decodes together (callers that stream prompts pass this many at a time)
    prompts_in_flight: int = 1
    _warned_beam: bool = False

    def plan(self, recipe: Recipe) -> list[Decoding]:
        """The decodings this backend will actually run for ``recipe`` (beam -> greedy where unsupported)."""
        out = []
        for d in recipe.decodings:
            if d.method == "beam" and not self.supports_beam:
                if not self._warned_beam:
                    logger.warning(
                        "%s has no beam search; decoding %r runs greedy and is recorded as 'greedy'",
                        type(self).__name__,
                        d.name,
                    )
                    self._warned_beam = True
                d = Decoding("greedy", n=1, name="greedy" if d.name.startswith("beam") else d.name)
            out.append(d)
        names = [d.name for d in out]
        if len(set(names)) != len(names):
            raise InputError(f"recipe {recipe.name!r} maps to repeated decodings {names} on {type(self).__name__}")
        return out

    def generate(
        self,
        prompts: Sequence[str],
        recipe: Recipe | str,
        seed: int = 0,
        prompt_ids: Sequence[str] | None = None,
        show_progress: bool = False,
    ) -> list[list[Candidate]]:
        """For each prompt, ``recipe.num_candidates`` candidates (fewer only where beam fell back to greedy)."""
        recipe = load_recipe(recipe)
        if isinstance(prompts, str):
            raise InputTypeError("prompts must be a list of str, got a single str")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise InputTypeError(f"prompts[{i}] must be a str, got {type(p).__name__}")
        ids = list(prompt_ids) if prompt_ids is not None else [prompt_id_of(p) for p in prompts]
        if len(ids) != len(prompts):
            raise InputError(f"got {len(prompts)} prompts but {len(ids)} prompt_ids")
        plan = self.plan(recipe)
        items = list(zip(prompts, ids))
        step = max(1, self.prompts_in_flight)
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), desc="generating", unit="prompt")
        out: list[list[Candidate]] = []
        try:
            for start in range(0, len(items), step):
                chunk = items[start : start + step]
                out += self._generate_many(chunk, recipe, plan, seed)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return out

    def _generate_many(
        self, items: list[tuple[str, str]], recipe: Recipe, plan: list[Decoding], seed: int
    ) -> list[list[Candidate]]:
        """The candidates of several ``(prompt, prompt id)`` pairs; backends that batch prompts override this."""
        return [self._generate_prompt(p, pid, recipe, plan, seed) for p, pid in items]

    @abstractmethod
    def _generate_prompt(
        self, prompt: str, prompt_id: str, recipe: Recipe, plan: list[Decoding], seed: int
    ) -> list[Candidate]:
        """All candidates of one prompt, in ``plan`` order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (models, connections)."""
