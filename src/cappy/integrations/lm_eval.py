"""Cappy as a model of EleutherAI's lm-evaluation-harness: any multiple-choice task scored by Cappy.

lm-eval turns a multiple-choice question into one ``(context, continuation)`` request per choice and asks the model
for the log-likelihood of each continuation; ``acc`` is then whether the highest-scoring choice is the gold one.
:class:`CappyLM` answers with Cappy's score of the pair instead, all requests of a run in one
:meth:`cappy.Cappy.score` call (so Cappy sorts them by length and batches them), and so turns any lm-eval
``output_type: multiple_choice`` task into a Cappy benchmark. The pair is the context without its trailing
whitespace and the continuation without its leading whitespace: lm-eval puts its ``target_delimiter`` (a space by
default) in front of each choice, and Cappy was trained on responses without it.

What a scorer cannot do is an error: ``generate_until`` (generation tasks), ``loglikelihood_rolling`` (perplexity)
and chat templates raise :class:`CappyTaskError`. Tasks of ``output_type: loglikelihood`` (one continuation per
document, such as lambada) get a warning: their metrics (perplexity, "is the continuation the greedy one") need
log-probabilities, and Cappy's numbers are not that. Only ``acc`` means something: ``acc_norm`` divides each score
by the choice's length in characters (``acc_bytes`` in bytes), which corrects a sum of per-token log-probabilities
for longer choices, while Cappy's score of a pair is one number, not a sum over its tokens.

Registration (how ``--model cappy`` finds this class):

* cappy declares an entry point ``cappy = "cappy.integrations.lm_eval:CappyLM"`` in the group ``lm_eval.models``
  (in ``pyproject.toml``). lm-eval releases that discover model plugins through that group (added to lm-eval's
  registry after 0.4.13) then know ``--model cappy`` as soon as cappy is installed, importing nothing before.
* Importing this module registers ``"cappy"`` with lm-eval's ``register_model``: enough for the Python API
  (``import cappy.integrations.lm_eval`` then ``lm_eval.simple_evaluate(model="cappy", ...)``) and for lm-eval's
  ``--plugins cappy.integrations.lm_eval`` where that option exists.
* lm-eval 0.4.13 (the pinned release) reads no entry points and has no plugin option; for it,
  ``python -m cappy.integrations.lm_eval <lm_eval arguments>`` registers Cappy and runs lm-eval's own command line
  with the arguments unchanged (``python -m cappy.integrations.lm_eval --model cappy --tasks ...``).

Example:
    >>> import lm_eval
    >>> import cappy.integrations.lm_eval  # registers "cappy"
    >>> out = lm_eval.simple_evaluate(model="cappy", model_args="pretrained=cappy-mini", tasks=["arc_easy"])
    >>> out["results"]["arc_easy"]["acc,none"]  # the share of questions whose best-scored choice is the gold one
"""

from __future__ import annotations

import logging
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cappy.errors import CappyError, InputError

try:
    import lm_eval.models  # noqa: F401  (lm-eval's own models; see register())
    from lm_eval.api.model import LM
    from lm_eval.api.registry import model_registry, register_model
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("cappy.integrations.lm_eval needs lm-evaluation-harness: pip install 'cappy[lm-eval]'") from err

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance

    from cappy.model import Cappy

logger = logging.getLogger(__name__)

#: the name lm-eval knows Cappy by: ``--model cappy``
MODEL_NAME = "cappy"
_SETTINGS = ("pretrained", "device", "dtype", "batch_size", "max_batch_size", "max_length", "instruction_truncation")


class CappyTaskError(CappyError, NotImplementedError):
    """A request that Cappy, a scorer of (context, continuation) pairs, cannot answer (generation, perplexity)."""


def cappy_pair(context: str, continuation: str) -> tuple[str, str]:
    """The (instruction, response) that Cappy scores for an lm-eval ``(context, continuation)`` request.

    Example: ``cappy_pair("Question: Is the sky blue?\\nAnswer:", " yes")`` -> ``("Question: ...Answer:", "yes")``
    """
    return context.rstrip(), continuation.lstrip()


def _rows_per_batch(batch_size: int | str | None, max_batch_size: int | None) -> int | None:
    """Cappy's pairs per forward pass for lm-eval's ``batch_size`` ("auto", "auto:N", an int or its digits);
    None keeps Cappy's own (64 pairs, bounded by 16384 tokens)."""
    if batch_size is None or (isinstance(batch_size, str) and batch_size.strip().lower().startswith("auto")):
        return max_batch_size
    try:
        rows = int(batch_size)
    except (TypeError, ValueError):
        raise InputError(f"batch_size must be an int, 'auto' or 'auto:N', got {batch_size!r}") from None
    if rows < 1:
        raise InputError(f"batch_size must be positive, got {rows}")
    return rows


class CappyLM(LM):
    """lm-eval's ``cappy`` model: the log-likelihood of a continuation replaced by Cappy's score of the pair.

    ``pretrained`` is what :meth:`cappy.Cappy.from_pretrained` takes ("cappy-mini", a directory, a hub id), loaded
    with ``device``, ``dtype``, ``max_length`` and ``instruction_truncation`` ("right" or "left"; "left" keeps the
    end of a long few-shot prompt, where its question is), or an already loaded :class:`~cappy.Cappy`.
    ``batch_size`` (lm-eval's ``--batch_size``: an int, or "auto" for Cappy's own length-sorted batching up to
    ``max_batch_size`` pairs) bounds the pairs per forward pass.

    Example:
        >>> lm = CappyLM(pretrained="cappy-mini", device="cpu", batch_size="auto")  # or CappyLM(loaded_scorer)
        >>> lm_eval.simple_evaluate(model=lm, tasks=["piqa"])["results"]["piqa"]["acc,none"]
    """

    def __init__(
        self,
        pretrained: str | os.PathLike | Cappy = "cappy-mini",
        device: str | None = "auto",
        dtype: str | None = "auto",
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        max_length: int | None = None,
        instruction_truncation: str | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise InputError(
                f"unknown model_args for --model cappy: {', '.join(sorted(unknown))}; known: {', '.join(_SETTINGS)}"
            )
        super().__init__()
        from cappy.model import Cappy  # deferred: imports torch

        rows = _rows_per_batch(batch_size, max_batch_size)
        if rows == 1:
            logger.info("batch_size 1 scores one pair per forward pass; --batch_size auto lets Cappy batch by length")
        if isinstance(pretrained, Cappy):
            if (device or "auto", dtype or "auto", max_length, instruction_truncation) != ("auto", "auto", None, None):
                raise InputError(
                    "device, dtype, max_length and instruction_truncation apply when loading; "
                    "pass them to Cappy.from_pretrained"
                )
            self.scorer = pretrained
        elif isinstance(pretrained, str | os.PathLike):
            kwargs: dict[str, Any] = {"device": device or "auto", "dtype": dtype or "auto"}
            if max_length is not None:
                kwargs["max_length"] = int(max_length)
            if instruction_truncation is not None:
                kwargs["instruction_truncation"] = instruction_truncation
            self.scorer = Cappy.from_pretrained(str(pretrained), **kwargs)
        else:
            raise InputError(f"pretrained must be a name, a path or a loaded Cappy, got {type(pretrained).__name__}")
        self.rows = rows  # pairs per forward pass; None: the scorer's own
        self._device = self.scorer.device

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> CappyLM:
        """Build from ``--model_args`` (``"pretrained=cappy-mini,dtype=float32"``) and lm-eval's own options.

        Example: ``CappyLM.create_from_arg_string("pretrained=cappy-mini", {"batch_size": "auto", "device": "cpu"})``
        """
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> CappyLM:
        """Build from a dict of model_args and lm-eval's own options (``--batch_size``, ``--device``).

        A setting given in both is taken from model_args (lm-eval's base class raises a TypeError instead), and a
        CUDA device from lm-eval on a machine without CUDA becomes "auto" with a warning: lm-eval's command line
        passes ``cuda:0`` whenever ``--device`` is left out.
        Example: ``CappyLM.create_from_arg_obj({"pretrained": "cappy-mini"}, {"device": "cuda:0"})``
        """
        harness = {k: v for k, v in (additional_config or {}).items() if v is not None}
        device = harness.get("device")
        if "device" not in arg_dict and isinstance(device, str) and device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                logger.warning("device %s asked but this machine has no CUDA; Cappy picks the device itself", device)
                harness["device"] = "auto"
        return cls(**{**harness, **arg_dict})

    def loglikelihood(self, requests: Sequence[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(score, False)`` per ``(context, continuation)`` request, from one :meth:`cappy.Cappy.score` call.

        Example: ``lm.loglikelihood([Instance("loglikelihood", {}, ("2+2=", " 4"), 0)])`` -> ``[(0.91, False)]``
        """
        if not requests:
            return []
        self._warn_single_continuation_tasks(requests)
        pairs = [cappy_pair(*req.args) for req in requests]
        scores = self.scorer.score(
            [p[0] for p in pairs],
            [p[1] for p in pairs],
            batch_size=self.rows,
            show_progress_bar=not disable_tqdm and self.rank == 0,
        )
        results = []
        for req, score in zip(requests, scores):
            # is_greedy says whether greedy decoding would produce the continuation; a scorer generates nothing, so
            # it cannot claim that. False keeps multiple-choice metrics intact (they read only the first value).
            result = (float(score), False)
            self.cache_hook.add_partial("loglikelihood", req.args, result)
            results.append(result)
        return results

    def loglikelihood_rolling(self, requests: Sequence[Instance], disable_tqdm: bool = False) -> list[float]:
        raise CappyTaskError(
            f"Cappy is a scorer for multiple-choice tasks: it has no log-probability of a text, so it cannot compute "
            f"perplexity (loglikelihood_rolling, asked by {_tasks(requests)})"
        )

    def generate_until(self, requests: Sequence[Instance], disable_tqdm: bool = False) -> list[str]:
        raise CappyTaskError(
            f"Cappy is a scorer for multiple-choice tasks: it rates (context, continuation) pairs and cannot "
            f"generate text (generate_until, asked by {_tasks(requests)}); run output_type: multiple_choice tasks"
        )

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        raise CappyTaskError("Cappy scores plain (context, continuation) text and has no chat template")

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.scorer.tokenizer, "name_or_path", "")).replace("/", "__")

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval writes into its results' ``config``: the scorer, its precision and encoding."""
        return {
            "model_name": self.scorer.name_or_path,
            "model_precision": self.scorer.precision,
            "model_max_length": self.scorer.max_length,
            "instruction_truncation": self.scorer.instruction_truncation,
        }

    def _warn_single_continuation_tasks(self, requests: Sequence[Instance]) -> None:
        per_doc: dict[tuple[Any, Any], int] = defaultdict(int)
        for req in requests:
            per_doc[(req.task_name, req.doc_id)] += 1
        single: dict[Any, bool] = {}
        for (task, _), n in per_doc.items():
            single[task] = single.get(task, True) and n == 1
        for task in sorted(str(t) for t, one in single.items() if one):
            logger.warning(
                "task %s asks one continuation per document (output_type: loglikelihood): its metrics need "
                "log-probabilities, and Cappy's scores are not that; only multiple-choice acc is meaningful",
                task,
            )


def _tasks(requests: Sequence[Instance]) -> str:
    names = sorted({str(getattr(r, "task_name", None)) for r in requests})
    return ", ".join(names) if names else "no task"


def register() -> None:
    """Make ``--model cappy`` known to lm-eval in this process (done on importing this module).

    lm-eval's own models are registered first: lm-eval only loads them into an empty registry, so registering Cappy
    alone would hide "hf" and the rest. Example: ``register(); lm_eval.simple_evaluate(model="cappy", ...)``
    """
    if MODEL_NAME not in model_registry:
        register_model(MODEL_NAME)(CappyLM)


register()


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line with Cappy registered: ``python -m cappy.integrations.lm_eval --model cappy ...``.

    Example: ``python -m cappy.integrations.lm_eval --model cappy --model_args pretrained=cappy-mini --tasks piqa``
    """
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
