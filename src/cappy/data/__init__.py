"""Instruction data: readers, BIG-Bench tasks, PromptSource templates and the pretraining-pair builder.

Example:
    >>> from cappy.data import load_templates, read_examples
    >>> boolq = load_templates("super_glue/boolq")
    >>> rows = read_examples("../shared/data/pretrain/super_glue_boolq_val.jsonl")
"""

from cappy.data.bigbench import BigBenchExample, BigBenchTask, load_bigbench_task
from cappy.data.builder import build_pairs, export_prompts
from cappy.data.mixture import DEFAULT_HELDOUT, DatasetSpec, HeldOutError, Mixture
from cappy.data.readers import ReaderError, iter_examples, read_examples
from cappy.data.shards import iter_pairs
from cappy.data.templates import Prompt, Template, TemplateError, load_templates, select_templates, template_key

__all__ = [
    "DEFAULT_HELDOUT",
    "BigBenchExample",
    "BigBenchTask",
    "DatasetSpec",
    "HeldOutError",
    "Mixture",
    "Prompt",
    "ReaderError",
    "Template",
    "TemplateError",
    "build_pairs",
    "export_prompts",
    "iter_examples",
    "iter_pairs",
    "load_bigbench_task",
    "load_templates",
    "read_examples",
    "select_templates",
    "template_key",
]
