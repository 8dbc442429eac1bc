"""Named task suites of `cappy eval mc`: which tasks, where their data comes from, and the published numbers.

``heldout`` is the offline suite under the shared data (the default when no task is given). ``paper`` is the
paper's zero-shot evaluation: 11 held-out PromptSource tasks (ANLI R1-R3, CB, RTE, StoryCloze, WSC, WiC,
Winogrande, WinoGender, CrowS-Pairs; the OPT-IML paper's Section 5.2 set, which the Cappy authors follow), every
PromptSource template with answer choices, all examples of the evaluation split, accuracy per task pooled over
templates and examples, the headline the mean over tasks. Its data is read from the Hugging Face hub by id, except
StoryCloze, whose files are given out on request only: ``--task story_cloze/2016=PATH``. Any task's source can be
replaced the same way (``--task NAME:KEY=PATH`` or ``--task KEY=PATH``), e.g. with a local copy of a hub dataset.

Light on purpose (no numpy, no templates): the command line lists the suites without loading anything.
Example: ``[t.name for t in SUITES["paper"].tasks]`` -> ``["anli_r1", ..., "crows_pairs"]``
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cappy.errors import InputError
from cappy.paths import shared_data_dir


@dataclass(frozen=True)
class SuiteTask:
    """One task of a suite: its report name, PromptSource key, data source (a local file, ``hub:ID[:CONFIG]``, or
    None when the user must give it) and split (for hub ids and saved DatasetDicts)."""

    name: str
    key: str
    source: str | None
    split: str | None = None
    label: str = ""
    missing: str = ""  # what to tell the user when ``source`` is None


@dataclass(frozen=True)
class Suite:
    """A named list of tasks, how to sample them, and published columns (name -> task name -> percent)."""

    name: str
    description: str
    tasks: tuple[SuiteTask, ...]
    max_examples: int | None = 100
    max_templates: int | None = 5
    published: dict[str, dict[str, float]] = field(default_factory=dict)
    published_means: dict[str, float] = field(default_factory=dict)
    published_source: str = ""

    def task(self, name: str) -> SuiteTask:
        for t in self.tasks:
            if t.name == name:
                return t
        raise InputError(f"suite {self.name}: no task {name!r}; tasks: {', '.join(t.name for t in self.tasks)}")


#: The default held-out suite: (task name, PromptSource key, file under shared/data/heldout).
DEFAULT_SUITE: tuple[tuple[str, str, str], ...] = (
    ("anli_r1", "anli", "anli_r1_dev.jsonl"),
    ("anli_r2", "anli", "anli_r2_dev.jsonl"),
    ("anli_r3", "anli", "anli_r3_dev.jsonl"),
    ("super_glue/cb", "super_glue/cb", "super_glue_cb_val.jsonl"),
    ("super_glue/copa", "super_glue/copa", "super_glue_copa_val.jsonl"),
    ("super_glue/rte", "super_glue/rte", "super_glue_rte_val.jsonl"),
    ("hellaswag", "hellaswag", "hellaswag_val.jsonl"),
    ("winogrande/winogrande_xl", "winogrande/winogrande_xl", "winogrande_xl_val.jsonl"),
)


def _heldout() -> Suite:
    data = shared_data_dir() / "heldout"
    return Suite(
        name="heldout",
        description="the offline held-out suite under the shared data (the default when no task is given); "
        "a seeded sample of 100 examples and 5 templates per task",
        tasks=tuple(SuiteTask(n, k, str(data / f)) for n, k, f in DEFAULT_SUITE),
    )


STORY_CLOZE_MISSING = (
    "StoryCloze 2016 is not on the Hugging Face hub: its files are given out on request by the ROCStories authors "
    "(cs.rochester.edu/nlp/rocstories, the 'Story Cloze Test Spring 2016' set). Give the validation file with "
    "--task story_cloze/2016=PATH: 'cloze_test_val__spring2016 - cloze_test_ALL_val.csv' (or the folder that holds "
    "it), or a JSON lines file in the Hugging Face story_cloze schema (input_sentence_1..4, sentence_quiz1, "
    "sentence_quiz2, answer_right_ending)"
)

# Hub ids that load without a loading script (the `datasets` library no longer runs scripts). The splits are T0's
# evaluation splits: validation where the labels are public, ANLI's dev rounds, and the only split of WinoGender
# (SuperGLUE's AX-g diagnostic) and CrowS-Pairs (test).
_PAPER_TASKS = (
    SuiteTask("anli_r1", "anli", "hub:facebook/anli", "dev_r1", "ANLI R1"),
    SuiteTask("anli_r2", "anli", "hub:facebook/anli", "dev_r2", "ANLI R2"),
    SuiteTask("anli_r3", "anli", "hub:facebook/anli", "dev_r3", "ANLI R3"),
    SuiteTask("cb", "super_glue/cb", "hub:aps/super_glue:cb", "validation", "CB"),
    SuiteTask("rte", "super_glue/rte", "hub:aps/super_glue:rte", "validation", "RTE"),
    SuiteTask("story_cloze", "story_cloze/2016", None, "validation", "StoryCloze", STORY_CLOZE_MISSING),
    SuiteTask("wsc", "super_glue/wsc.fixed", "hub:aps/super_glue:wsc.fixed", "validation", "WSC"),
    SuiteTask("wic", "super_glue/wic", "hub:aps/super_glue:wic", "validation", "WiC"),
    SuiteTask(
        "winogrande", "winogrande/winogrande_xl", "hub:allenai/winogrande:winogrande_xl", "validation", "Winogrande"
    ),
    SuiteTask("winogender", "super_glue/axg", "hub:aps/super_glue:axg", "test", "WinoGender"),
    SuiteTask("crows_pairs", "crows_pairs", "hub:nyu-mll/crows_pairs", "test", "CrowS-Pairs"),
)

#: The published zero-shot accuracies (percent, as printed) of the paper's 11 tasks. Source: the results table of
#: the authors' code release for the paper, github.com/tanyuqian/cappy, README.md at commit c6793d6 (section
#: "Evaluting Cappy on PromptSource (zero-shot)"): column "Cappy (ours, 0.36B)" (btan2/cappy-large), and column
#: "T0 11B", which that table quotes, like its other baselines, from the OPT-IML paper (Iyer et al. 2022,
#: arXiv 2212.12017, Section 5.2).
PAPER_PUBLISHED: dict[str, dict[str, float]] = {
    "Cappy 0.36B (paper)": {
        "anli_r1": 34.3,
        "anli_r2": 33.9,
        "anli_r3": 34.7,
        "cb": 59.4,
        "rte": 71.9,
        "story_cloze": 93.7,
        "wsc": 63.8,
        "wic": 51.9,
        "winogrande": 51.7,
        "winogender": 68.9,
        "crows_pairs": 57.8,
    },
    "T0 11B (paper)": {
        "anli_r1": 42.1,
        "anli_r2": 37.9,
        "anli_r3": 39.7,
        "cb": 58.5,
        "rte": 80.2,
        "story_cloze": 96.7,
        "wsc": 58.6,
        "wic": 56.0,
        "winogrande": 62.5,
        "winogender": 83.8,
        "crows_pairs": 24.0,
    },
}

#: The means over the 11 tasks printed under that table ("Average"). They are means of unrounded accuracies: the
#: mean of the printed Cappy column is 56.5, so a report of the whole suite shows these, not a recomputed mean.
PAPER_PUBLISHED_MEANS: dict[str, float] = {"Cappy 0.36B (paper)": 56.6, "T0 11B (paper)": 58.2}

PAPER_SOURCE = (
    "published: github.com/tanyuqian/cappy README (commit c6793d6), zero-shot PromptSource table; "
    "T0 11B there quoted from OPT-IML (arXiv 2212.12017, Section 5.2)"
)

SUITES: dict[str, Suite] = {
    "heldout": _heldout(),
    "paper": Suite(
        name="paper",
        description="the paper's 11 held-out tasks (ANLI R1-R3, CB, RTE, StoryCloze, WSC, WiC, Winogrande, "
        "WinoGender, CrowS-Pairs) by hub id, every template, all examples; StoryCloze from local files "
        "(--task story_cloze/2016=PATH); the report shows the published Cappy and T0 11B columns",
        tasks=_PAPER_TASKS,
        max_examples=None,
        max_templates=None,
        published=PAPER_PUBLISHED,
        published_means=PAPER_PUBLISHED_MEANS,
        published_source=PAPER_SOURCE,
    ),
}

DEFAULT_SUITE_NAME = "heldout"


def get_suite(name: str) -> Suite:
    """The suite called ``name``; an unknown name is an error listing the suites. Example: ``get_suite("paper")``"""
    if name not in SUITES:
        raise InputError(f"unknown suite {name!r}; suites: {', '.join(SUITES)} (cappy eval mc --list-suites)")
    return SUITES[name]


def published_columns(suite: Suite, tasks: list[str]) -> dict[str, Any] | None:
    """The suite's published columns for ``tasks`` as fractions (results.json holds fractions), with their source,
    and the published means when ``tasks`` are the whole suite; None when the suite publishes none.
    Example: ``published_columns(get_suite("paper"), ["rte"])``"""
    if not suite.published:
        return None
    columns = {col: {t: values[t] / 100.0 for t in tasks if t in values} for col, values in suite.published.items()}
    out: dict[str, Any] = {"source": suite.published_source, "columns": columns}
    if sorted(tasks) == sorted(t.name for t in suite.tasks) and suite.published_means:
        out["means"] = {col: value / 100.0 for col, value in suite.published_means.items()}
    return out


def describe_suites() -> str:
    """What `cappy eval mc --list-suites` prints: each suite, its tasks, sources and published numbers."""
    lines = []
    for s in SUITES.values():
        lines.append(f"{s.name}: {s.description}")
        for t in s.tasks:
            where = t.source if t.source else "local files: --task " + t.key + "=PATH"
            split = f" [{t.split}]" if t.split and t.source and t.source.startswith("hub:") else ""
            pub = "; ".join(f"{col} {vals[t.name]:.1f}" for col, vals in s.published.items() if t.name in vals)
            lines.append(f"  {t.name:14s} {t.key:26s} {where}{split}" + (f"  published: {pub}" if pub else ""))
        if s.published_source:
            lines.append(f"  {s.published_source}")
    return "\n".join(lines)


# ----------------------------------------------------------------------- rows of the datasets' original files
_STORY_CLOZE_COLUMNS = {
    "InputStoryid": "story_id",
    "InputSentence1": "input_sentence_1",
    "InputSentence2": "input_sentence_2",
    "InputSentence3": "input_sentence_3",
    "InputSentence4": "input_sentence_4",
    "RandomFifthSentenceQuiz1": "sentence_quiz1",
    "RandomFifthSentenceQuiz2": "sentence_quiz2",
    "AnswerRightEnding": "answer_right_ending",
}
_CROWS_STEREO = ("stereo", "antistereo")  # the Hugging Face ClassLabel order
_CROWS_BIAS = (
    "race-color",
    "socioeconomic",
    "gender",
    "disability",
    "nationality",
    "sexual-orientation",
    "physical-appearance",
    "religion",
    "age",
)


def _as_index(value: Any, names: tuple[str, ...], column: str, base: int = 0) -> int:
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text in names:
        return names.index(text) + base
    try:
        return int(text)
    except ValueError:
        raise InputError(f"column {column}: {value!r} is neither a number nor one of {list(names)}") from None


def story_cloze_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row of the official StoryCloze CSV (``InputSentence1``...) or of the hub schema -> the hub schema, with
    ``answer_right_ending`` an int (1 or 2), as PromptSource's templates index it."""
    out = {_STORY_CLOZE_COLUMNS.get(k, k): v for k, v in row.items()}
    if "answer_right_ending" not in out:
        raise InputError("no answer_right_ending (or AnswerRightEnding) column: is this the validation file?")
    out["answer_right_ending"] = _as_index(out["answer_right_ending"], (), "answer_right_ending")
    if out["answer_right_ending"] not in (1, 2):
        raise InputError(f"answer_right_ending is {out['answer_right_ending']}, expected 1 or 2")
    return out


def crows_pairs_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row of the CrowS-Pairs CSV (``stereo_antistereo`` = "stereo"/"antistereo", ``bias_type`` a name) or of the
    hub schema -> the hub schema (both as ClassLabel indices)."""
    out = dict(row)
    out.pop("", None)  # the CSV's unnamed index column
    for column, names in (("stereo_antistereo", _CROWS_STEREO), ("bias_type", _CROWS_BIAS)):
        if column in out:
            out[column] = _as_index(out[column], names, column)
    return out


#: Row converters by PromptSource key: they accept a dataset's original file as well as the hub's schema.
ROW_ADAPTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "story_cloze/2016": story_cloze_row,
    "crows_pairs": crows_pairs_row,
}

#: The file to read in a folder given for a key (the official StoryCloze download is a folder of CSVs).
FOLDER_FILES: dict[str, tuple[str, ...]] = {
    "story_cloze/2016": ("*val*2016*.csv", "*2016*val*.csv", "*validation*.jsonl", "*val*.jsonl"),
}


def resolve_local(key: str, path: str) -> str:
    """``path``, or for a folder given for a key of :data:`FOLDER_FILES` the one file in it that matches.

    Example: ``resolve_local("story_cloze/2016", "ROCStories/")`` -> ``"ROCStories/cloze_test_val__spring2016 ...csv"``
    """
    p = Path(path)
    if key not in FOLDER_FILES or not p.is_dir() or (p / "dataset_dict.json").exists() or (p / "state.json").exists():
        return path
    for pattern in FOLDER_FILES[key]:
        hits = sorted(p.glob(pattern))
        if len(hits) == 1:
            return str(hits[0])
        if len(hits) > 1:
            raise InputError(f"{p}: several files match {pattern!r} for {key}: {[h.name for h in hits]}; give one")
    raise InputError(f"{p}: no validation file for {key} here (looked for {', '.join(FOLDER_FILES[key])})")
