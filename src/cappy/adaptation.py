"""The third job: adapt a Cappy to a task by finetuning only the scorer, never the LLM.

For each training example (an instruction and its gold references) the LLM's candidates are read from a cache or
generated, each labelled by a metric against the references (the references themselves get 1.0), and a copy of
the scorer is trained on those pairs with an adaptation preset (``adapt_cpu`` on CPU, ``adapt_paper`` on GPU:
the paper's MSE schedule). Example:
    >>> from cappy import adapt
    >>> examples = [{"instruction": "Q: 2+2?\\nA:", "references": ["4"]}, ...]
    >>> tuned = adapt("cappy-mini", examples, generator="llamacpp", candidates="gens.jsonl", output_dir="out/my-task")
    >>> tuned.score(["Q: 3+3?\\nA:"], ["6"])
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cappy.generate.base import DEFAULT_RECIPE, Candidate, Generator, Recipe
from cappy.generate.source import CandidateSource, load_generator

logger = logging.getLogger(__name__)

Metric = Callable[[str, Sequence[str]], float]
SETTINGS_FILE = "adapt.json"


@dataclass
class AdaptExample:
    """One training example of a task: the instruction (prompt) and its gold references."""

    instruction: str
    references: list[str]
    id: str | None = None
    where: str = ""

    def __post_init__(self) -> None:
        at = f"{self.where}: " if self.where else ""
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise ValueError(f"{at}the instruction must be a non-empty string")
        refs = [self.references] if isinstance(self.references, str) else self.references
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"{at}references must be a string or a non-empty list of strings")
        if not any(r.strip() for r in refs):
            raise ValueError(f"{at}every reference is empty")
        self.references = list(refs)


@dataclass
class AdaptResult:
    """What :func:`adapt` wrote: the model folder, the pair file and how many pairs of each kind it holds."""

    model_dir: Path
    pairs_file: Path
    counts: dict[str, int] = field(default_factory=dict)
    reused: bool = False


def as_examples(examples: Sequence[Any]) -> list[AdaptExample]:
    """Normalise examples: :class:`AdaptExample`, objects with ``.input``/``.references`` (BIG-Bench examples),
    mappings with "instruction" (or "prompt"/"input") and "references" (or "reference"/"target"/"targets"), or
    ``(instruction, references)`` tuples. Example: ``as_examples([("Q: 2+2?", "4")])[0].references`` -> ["4"]"""
    out = []
    for i, ex in enumerate(examples):
        where = f"example {i}"
        if isinstance(ex, AdaptExample):
            out.append(ex)
        elif isinstance(ex, tuple) and len(ex) == 2:
            out.append(AdaptExample(ex[0], ex[1], where=where))
        elif isinstance(ex, dict):
            instr = next((ex[k] for k in ("instruction", "prompt", "input") if k in ex), None)
            refs = next((ex[k] for k in ("references", "reference", "targets", "target") if k in ex), None)
            if instr is None or refs is None:
                raise ValueError(
                    f"{where}: needs an 'instruction' (or 'prompt') and 'references' field, has {sorted(ex)}"
                )
            out.append(AdaptExample(instr, refs, id=ex.get("id"), where=where))
        elif hasattr(ex, "input") and hasattr(ex, "references"):
            out.append(AdaptExample(ex.input, list(ex.references), where=getattr(ex, "where", "") or where))
        else:
            raise TypeError(f"{where}: cannot read a training example from a {type(ex).__name__}")
    if not out:
        raise ValueError("adaptation needs at least one training example")
    return out


def read_examples(
    source: str | Path,
    instruction_field: str = "instruction",
    references_field: str = "references",
    id_field: str = "id",
    split: str | None = None,
) -> list[AdaptExample]:
    """Training examples from any file the readers take (JSONL, CSV, Parquet, a BIG-Bench task, ...).

    A row without the fields, or with a bad value, is an error naming its file and line.
    Example: ``read_examples("task.jsonl", instruction_field="question", references_field="answers")``
    """
    from cappy.data.readers import iter_examples

    out = []
    for where, row in iter_examples(source, split=split):
        if "inputs" in row and "targets" in row and instruction_field not in row:  # a BIG-Bench task file
            row = {instruction_field: row["inputs"], references_field: row["targets"]}
        for name in (instruction_field, references_field):
            if name not in row:
                raise ValueError(f"{where}: missing field {name!r} (has {sorted(row)})")
        pid = row.get(id_field)
        out.append(
            AdaptExample(row[instruction_field], row[references_field], str(pid) if pid is not None else None, where)
        )
    if not out:
        raise ValueError(f"{source}: no training examples")
    return out


def _metric(metric: str | Metric) -> Metric:
    if callable(metric):
        return metric
    if metric == "rouge_l":
        from cappy.metrics import rouge_l

        return rouge_l
    raise ValueError(f"unknown metric {metric!r}; use 'rouge_l' or a callable (text, references) -> float")


def adaptation_pairs(
    examples: Sequence[AdaptExample],
    candidates: Sequence[Sequence[Candidate]],
    metric: str | Metric = "rouge_l",
    task: str = "adapt",
    include_references: bool = True,
    mismatched: int = 0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Training pairs: every candidate labelled by ``metric`` against the example's references, plus each
    reference itself with label 1.0 (the paper's recipe). ``mismatched=k`` adds, per example, k gold references
    of other examples (the pretraining recipe's mismatched answers), labelled by ``metric`` against this example's
    references, so an answer that happens to be right here is not called wrong; drawn with ``seed``, never one of
    the example's own responses. Example:
    ``adaptation_pairs([AdaptExample("Q: 2+2?", ["4"])], [[cand]])[0]["label"]``
    """
    if len(examples) != len(candidates):
        raise ValueError(f"{len(examples)} examples but {len(candidates)} candidate lists")
    if isinstance(mismatched, bool) or not isinstance(mismatched, int) or mismatched < 0:
        raise ValueError(f"mismatched must be a whole number >= 0, got {mismatched!r}")
    score = _metric(metric)
    rows = []
    pool = [(i, r) for i, ex in enumerate(examples) for r in dict.fromkeys(ex.references) if r.strip()]
    rng = random.Random(seed)
    for i, (ex, cands) in enumerate(zip(examples, candidates)):
        base = {"instruction": ex.instruction, "task": task, "template": "adapt"}
        if include_references:
            for ref in dict.fromkeys(r for r in ex.references if r.strip()):
                rows.append({**base, "response": ref, "label": 1.0, "source": "gold"})
        for c in cands:
            label = float(score(c.text, ex.references))
            if not 0.0 <= label <= 1.0:
                raise ValueError(f"metric gave {label} for a candidate; labels must be in [0, 1]")
            rows.append({**base, "response": c.text, "label": label, "source": "llm"})
        if mismatched:
            own = set(ex.references) | {c.text for c in cands}
            for text in _draw_mismatched(pool, i, own, mismatched, rng):
                rows.append(
                    {**base, "response": text, "label": float(score(text, ex.references)), "source": "mismatched"}
                )
    return rows


def _draw_mismatched(pool: list[tuple[int, str]], i: int, own: set[str], k: int, rng: random.Random) -> list[str]:
    """Up to k distinct references of examples other than i, none in ``own``: rejection sampling (a bounded number
    of draws, so the cost is O(k) per example, not a scan of the pool), then a scan if the pool is nearly used up."""
    got: dict[str, None] = {}
    for _ in range(8 * k):
        j, text = pool[rng.randrange(len(pool))]
        if j != i and text not in own:
            got[text] = None
            if len(got) == k:
                return list(got)
    rest = [t for j, t in pool if j != i and t not in own and t not in got]
    rng.shuffle(rest)
    return [*got, *dict.fromkeys(rest)][:k]


def default_preset(device: str | None = "auto") -> str:
    """``adapt_cpu`` when training runs on the CPU, ``adapt_paper`` on a GPU."""
    from cappy.model import resolve_device

    return "adapt_cpu" if resolve_device(device).type == "cpu" else "adapt_paper"


def _candidate_source(
    candidates: Any, generator: Any, recipe: Recipe | str | None, seed: int, show_progress: bool
) -> CandidateSource | list[list[Candidate]]:
    if isinstance(candidates, CandidateSource):
        return candidates
    if isinstance(candidates, list | tuple):
        return list(candidates)
    gen = load_generator(generator) if isinstance(generator, str) else generator
    if gen is not None and not (isinstance(gen, Generator) or callable(gen)):
        raise TypeError(f"generator must be a backend name, a Generator or a factory, got {type(gen).__name__}")
    if candidates is None and gen is None:
        raise ValueError("adaptation needs candidates: a generation cache, a CandidateSource or a generator")
    return CandidateSource(recipe, cache=candidates, generator=gen, seed=seed, show_progress=show_progress)


def adapt(
    scorer: Any,
    examples: Sequence[Any],
    *,
    output_dir: str | Path,
    candidates: Any = None,
    generator: Generator | str | Callable[[], Generator] | None = None,
    recipe: Recipe | str | None = DEFAULT_RECIPE,
    metric: str | Metric = "rouge_l",
    config: str | Path | None = None,
    gen_seed: int = 0,
    scale: float | None = None,
    task: str = "adapt",
    device: str = "auto",
    dtype: str = "auto",
    show_progress: bool = False,
    mismatched: int | None = None,
    keep_run: bool = False,
    **overrides: Any,
) -> Any:
    """Adapt ``scorer`` (a Cappy, or a checkpoint name/path) to ``examples``; returns the adapted :class:`Cappy`.

    ``candidates``: a generation-cache path (missing prompts are generated with ``generator`` and appended), a
    :class:`CandidateSource`, or one candidate list per example. ``generator``: a backend name ("llamacpp", ...), a
    :class:`Generator` or a factory; ``recipe``: what it generates (default :data:`cappy.generate.DEFAULT_RECIPE`, the
    recipe of the candidates ``best_of_n`` picks among by default). ``config``: a training preset name or YAML file
    (default: ``adapt_cpu`` on CPU, ``adapt_paper`` on GPU); ``scale`` multiplies its ``num_pairs``; ``overrides``
    replace any other :class:`cappy.train.TrainConfig` setting (``seed`` is the training seed, ``gen_seed`` the
    samples'). The model is saved in ``output_dir/model`` with its pairs and settings; a second call with the same
    settings and data reuses it. ``mismatched``: other examples' references added per example as pairs labelled by the
    metric (:func:`adaptation_pairs`); None takes the preset's ``adaptation: mismatched``. The training run's folder
    (``output_dir/run``: two more copies of the weights and the optimizer state, about four times the model's size) is
    deleted once the model is saved, its log kept as ``output_dir/train_metrics.jsonl``; ``keep_run=True`` keeps it. A
    call that trains starts a fresh run (an interrupted one is not resumed). The returned scorer's ``adaptation``
    attribute is an :class:`AdaptResult` (folders, pair counts, whether it was reused).
    Example:
        >>> tuned = adapt("cappy-mini", [("Q: 2+2?\\nA:", "4")], candidates="gens.jsonl", output_dir="out/t")
    """
    from cappy.io import atomic_write, dumps, sha256_file
    from cappy.model import Cappy, export_checkpoint, resolve_model_path
    from cappy.train import TrainConfig, train
    from cappy.train.config import adaptation_settings

    exs = as_examples(examples)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(scorer, Cappy):  # its weights as they are in memory, which may differ from where it came from
        base = str(out / "base")
        scorer.save_pretrained(base)
    else:
        base = resolve_model_path(scorer)
    weights = Path(base) / "model.safetensors"

    source = _candidate_source(candidates, generator, recipe, gen_seed, show_progress)
    if isinstance(source, CandidateSource):
        cands = source.get([e.instruction for e in exs], [e.id for e in exs])
    else:
        cands = source
    preset = str(config) if config is not None else default_preset(device)
    if mismatched is None:
        mismatched = adaptation_settings(preset)["mismatched"]
    rows = adaptation_pairs(exs, cands, metric=metric, task=task, mismatched=mismatched, seed=gen_seed)
    pairs = out / "pairs.jsonl"
    with atomic_write(pairs) as f:
        for r in rows:
            f.write(dumps(r) + "\n")
    cfg = TrainConfig.from_yaml(preset, {"model": base, "train": [str(pairs)], "output_dir": str(out / "run")})
    settings: dict[str, Any] = {"num_pairs": cfg.num_pairs, "device": device, **overrides, "progress": show_progress}
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        settings["num_pairs"] = max(1, round((cfg.num_pairs or len(rows)) * scale))
    cfg = TrainConfig.from_dict({**cfg.to_dict(), **settings}, source=preset)
    record = {
        "base": base,
        "base_sha256": sha256_file(weights) if weights.is_file() else None,
        "preset": preset,
        "config": {k: v for k, v in cfg.to_dict().items() if k not in ("progress", "output_dir")},
        "pairs_sha256": sha256_file(pairs),
        "metric": metric if isinstance(metric, str) else getattr(metric, "__name__", "custom"),
        "mismatched": mismatched,
    }
    counts = {"pairs": len(rows), "examples": len(exs)}
    counts |= {k: sum(r["source"] == k for r in rows) for k in ("gold", "llm", "mismatched")}
    model_dir = out / "model"
    saved = out / SETTINGS_FILE
    reused = (model_dir / "config.json").is_file() and saved.is_file() and json.loads(saved.read_text()) == record
    if not reused:
        if counts["pairs"] == counts["gold"]:
            logger.warning("%s: no LLM candidates; adapting on the references alone", task)
        shutil.rmtree(out / "run", ignore_errors=True)  # other settings: do not resume that run
        shutil.rmtree(model_dir, ignore_errors=True)
        saved.unlink(missing_ok=True)
        (out / "train_metrics.jsonl").unlink(missing_ok=True)  # an earlier setting's log
        train(cfg)
        run = out / "run"
        export_checkpoint(run / "best" if (run / "best" / "config.json").exists() else run, model_dir)
        with atomic_write(saved) as f:
            f.write(json.dumps(record, indent=2) + "\n")
        if not keep_run:
            if (run / "metrics.jsonl").is_file():
                shutil.copyfile(run / "metrics.jsonl", out / "train_metrics.jsonl")
            shutil.rmtree(run, ignore_errors=True)
    tuned = Cappy.from_pretrained(model_dir, device=device, dtype=dtype)
    tuned.adaptation = AdaptResult(model_dir, pairs, counts, reused)
    return tuned
