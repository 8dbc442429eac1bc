"""BIG-Bench JSON tasks: load a ``task.json`` (or a task folder with subtask folders) and split it officially.

The prompt of an example is ``task_prefix + example_input_prefix + input + example_output_prefix`` with the
task's own prefixes (BIG-Bench's defaults ``"\\nQ: "`` and ``"\\nA: "`` when absent); every target is kept as a
list of references. Multiple-choice examples also keep their choices and scores; their choices are appended
to the input (``choice_prefix``, in the order the task lists them) unless ``append_choices_to_input`` is false.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cappy.errors import InputError

DEFAULT_INPUT_PREFIX = "\nQ: "
DEFAULT_OUTPUT_PREFIX = "\nA: "
DEFAULT_CHOICE_PREFIX = "\n  choice: "
SPLIT_SEED = 42
MIN_VALIDATION = 16


class BigBenchError(InputError):
    """A BIG-Bench task file that does not follow the JSON task schema; names the file and example."""


@dataclass(frozen=True)
class BigBenchExample:
    """One prompted example. ``input`` has the prefixes applied; ``references`` lists every gold target."""

    input: str
    references: list[str]
    subtask: str | None
    index: int
    raw_input: str
    choices: list[str] | None = None
    scores: list[float] | None = None
    where: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The Hugging Face ``bigbench`` schema (plus ``subtask``): idx, inputs, targets, multiple_choice_*."""
        return {
            "idx": self.index,
            "inputs": self.input,
            "targets": list(self.references),
            "multiple_choice_targets": list(self.choices or []),
            "multiple_choice_scores": list(self.scores or []),
            "subtask": self.subtask,
        }


@dataclass
class BigBenchSubtask:
    """The examples of one ``task.json``; ``name`` is the subtask folder (None for a task without subtasks)."""

    name: str | None
    path: Path
    examples: list[BigBenchExample] = field(default_factory=list)


@dataclass
class BigBenchTask:
    """A BIG-Bench task: ``name``, ``subtasks`` (at least one), ``examples`` (all, in subtask order)."""

    name: str
    path: Path
    subtasks: list[BigBenchSubtask]
    description: str = ""

    @property
    def examples(self) -> list[BigBenchExample]:
        return [ex for sub in self.subtasks for ex in sub.examples]

    def split(
        self, seed: int = SPLIT_SEED, min_validation: int = MIN_VALIDATION, validation_fraction: float = 0.2
    ) -> tuple[list[BigBenchExample], list[BigBenchExample]]:
        """The official train/validation split, per subtask, concatenated in subtask order.

        Per subtask: drop duplicate examples (same input and references) keeping the first, shuffle with
        ``random.seed(42)``, and the last ``max(int(0.2 * n), 16)`` examples are validation.
        Example: ``train, val = load_bigbench_task("bigbench/codenames").split()``
        """
        train: list[BigBenchExample] = []
        validation: list[BigBenchExample] = []
        for sub in self.subtasks:
            t, v = split_examples(sub.examples, seed, min_validation, validation_fraction)
            train += t
            validation += v
        return train, validation


def split_examples(
    examples: list[BigBenchExample],
    seed: int = SPLIT_SEED,
    min_validation: int = MIN_VALIDATION,
    validation_fraction: float = 0.2,
) -> tuple[list[BigBenchExample], list[BigBenchExample]]:
    """Split one subtask's examples by the official rule; see :meth:`BigBenchTask.split`."""
    seen: set[tuple[str, tuple[str, ...], tuple[str, ...]]] = set()
    unique = []
    for ex in examples:
        key = (ex.input, tuple(ex.references), tuple(ex.choices or ()))
        if key not in seen:
            seen.add(key)
            unique.append(ex)
    # random.Random(seed).shuffle draws exactly what random.seed(seed); random.shuffle(...) draws.
    random.Random(seed).shuffle(unique)
    n_val = min(len(unique), max(int(validation_fraction * len(unique)), min_validation))
    return unique[: len(unique) - n_val], unique[len(unique) - n_val :]


HELD_ASIDE_FRACTION = 0.25


def held_aside(prompt: str, fraction: float = HELD_ASIDE_FRACTION, seed: int = 0) -> bool:
    """Whether a train prompt is held aside: kept out of adaptation so that settings can be chosen on it, never on
    the validation split. A function of the prompt text alone (sha1 of seed and prompt), so the choice does not
    depend on which other prompts were read or in what order, and about ``fraction`` of a task's prompts are held.

    Example: ``[ex for ex in train if not held_aside(ex.input)]`` -> the prompts to adapt on.
    """
    if not 0.0 <= fraction <= 1.0:
        raise InputError(f"held-aside fraction must be in [0, 1], got {fraction}")
    digest = hashlib.sha1(f"{seed}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def load_bigbench_task(path: str | os.PathLike, include_task_prefix: bool = True) -> BigBenchTask:
    """Load a BIG-Bench JSON task from a ``task.json`` or a task folder (with or without subtask folders).

    Example: ``task = load_bigbench_task("../shared/data/bigbench/modified_arithmetic"); len(task.subtasks)``
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such BIG-Bench task file or folder")
    task_dir = path if path.is_dir() else path.parent
    top_file = path if path.is_file() else path / "task.json"
    top = _read_json(top_file) if top_file.exists() else {}
    subtasks: list[BigBenchSubtask] = []
    if top.get("examples"):
        subtasks.append(_load_subtask(top_file, top, None, include_task_prefix))
    if path.is_dir():
        for sub_file in sorted(path.glob("*/task.json")):
            data = _read_json(sub_file)
            subtasks.append(_load_subtask(sub_file, data, sub_file.parent.name, include_task_prefix))
    if not subtasks:
        raise BigBenchError(f"{path}: no examples (neither task.json examples nor subtask folders with task.json)")
    name = str(top.get("name") or task_dir.name)
    return BigBenchTask(name=name, path=path, subtasks=subtasks, description=str(top.get("description", "")))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as err:
        raise BigBenchError(f"{path}: malformed JSON ({err})") from None
    if not isinstance(data, dict):
        raise BigBenchError(f"{path}: a BIG-Bench task is a JSON object, got {type(data).__name__}")
    return data


def _load_subtask(path: Path, data: dict[str, Any], name: str | None, include_task_prefix: bool) -> BigBenchSubtask:
    examples = data.get("examples")
    if not isinstance(examples, list):
        raise BigBenchError(f"{path}: field 'examples' must be a list")
    task_prefix = str(data.get("task_prefix", "")) if include_task_prefix else ""
    in_prefix = str(data.get("example_input_prefix", DEFAULT_INPUT_PREFIX))
    out_prefix = str(data.get("example_output_prefix", DEFAULT_OUTPUT_PREFIX))
    choice_prefix = str(data.get("choice_prefix", DEFAULT_CHOICE_PREFIX))
    append_choices = bool(data.get("append_choices_to_input", True))
    sub = BigBenchSubtask(name=name, path=path)
    for i, ex in enumerate(examples):
        where = f"{path}:examples[{i}]"
        if not isinstance(ex, dict):
            raise BigBenchError(f"{where}: expected an object, got {type(ex).__name__}")
        if not isinstance(ex.get("input"), str):
            raise BigBenchError(f"{where}: missing or non-string 'input'")
        choices = scores = None
        if ex.get("target_scores") is not None:
            ts = ex["target_scores"]
            if not isinstance(ts, dict) or not ts:
                raise BigBenchError(f"{where}: 'target_scores' must be a non-empty object")
            choices, scores = [str(k) for k in ts], [float(v) for v in ts.values()]
        target = ex.get("target")
        if isinstance(target, str):
            refs = [target]
        elif isinstance(target, list) and target and all(isinstance(t, str) for t in target):
            refs = list(target)
        elif target is None and choices is not None:
            best = max(scores)
            refs = [c for c, s in zip(choices, scores) if s == best]
        else:
            raise BigBenchError(f"{where}: 'target' must be a string or a non-empty list of strings")
        text = ex["input"]
        if choices is not None and append_choices:
            text = text + choice_prefix + choice_prefix.join(choices)
        sub.examples.append(
            BigBenchExample(
                input=task_prefix + in_prefix + text + out_prefix,
                references=refs,
                subtask=name,
                index=i,
                raw_input=ex["input"],
                choices=choices,
                scores=scores,
                where=where,
            )
        )
    return sub
