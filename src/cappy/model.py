"""The Cappy scorer: one number per (instruction, response) pair.

The input format lives here and nowhere else: the tokenizer's text-pair encoding of
``(instruction, response)``, truncated longest-first to ``max_length``. The score is the raw
regression output of a one-label sequence-classification model (no sigmoid). A checkpoint may declare
``instruction_truncation: left`` (config.json, ``cappy``): an instruction that must be cut then loses its start
instead of its end, so the question at the end of a long few-shot prompt stays in view.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from cappy.io import default_file_mode

logger = logging.getLogger(__name__)

IDENTITY_ACTIVATION = "torch.nn.modules.linear.Identity"
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
#: Names that ask for float32 weights under autocast to a lower precision (what "auto" picks on CPUs with native bf16).
AUTOCAST_DTYPES = {"bf16-autocast": torch.bfloat16, "bfloat16-autocast": torch.bfloat16}
#: Set to 1 or 0 to override the detection of native bfloat16 on the CPU.
CPU_BF16_ENV = "CAPPY_CPU_BF16"
# CPU flags (Linux /proc/cpuinfo names) of native bfloat16 arithmetic: AVX512-BF16 dot products, AMX tiles.
_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}
# Models whose position ids start after the padding index, so two positions are not usable.
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer", "mpnet"}
# Pairs tokenized at a time; sorting by length happens within a chunk so memory stays bounded.
_CHUNK = 4096
# A forward batch ends early at a pair shorter than this share of its longest (once it has _MIN_SPLIT pairs): a
# small call (a server's micro-batch of 64 pairs) spans a wide range of lengths, and padding them all to the longest
# cost a third of its time; a large sorted call rarely meets the rule, so it keeps its big batches.
_PAD_CUT = 0.8
_MIN_SPLIT = 4


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Map "auto" / None to the best available device; pass anything else to ``torch.device``.

    Example: ``resolve_device("auto")`` -> ``device(type='cpu')`` on a machine without a GPU.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Accept "float32"/"bfloat16"/"float16" (or short forms) or a torch dtype; None keeps the checkpoint's."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        names = sorted({"auto", *DTYPES, *AUTOCAST_DTYPES})
        raise ValueError(f"dtype must be one of {names} or a torch.dtype, got {dtype!r}")
    return DTYPES[dtype]


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags to read, so no native bf16 is assumed
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16), read from its flags.

    Without them bf16 is emulated and slower than float32, so "auto" keeps float32 there. ``CAPPY_CPU_BF16=1`` or
    ``=0`` overrides the detection. Example: ``cpu_has_native_bf16()`` -> False on an AMD EPYC without avx512_bf16
    """
    forced = os.environ.get(CPU_BF16_ENV)
    if forced is not None and forced.strip() != "":
        if forced.strip() not in ("0", "1"):
            raise ValueError(f"{CPU_BF16_ENV} must be 0 or 1, got {forced!r}")
        return forced.strip() == "1"
    return bool(_cpu_flags() & _BF16_FLAGS)


def resolve_precision(
    dtype: str | torch.dtype | None, device: str | torch.device | None
) -> tuple[torch.dtype | None, torch.dtype | None]:
    """``(weight dtype, autocast dtype)`` for a requested ``dtype`` on ``device``; None means "leave as is".

    "auto" (or None): on a CPU, float32 weights under bfloat16 autocast where the CPU has native bf16, plain float32
    elsewhere; on a GPU, the checkpoint's dtype. "bf16-autocast" forces autocast over float32 weights; "float32",
    "bfloat16" and "float16" cast the weights and use no autocast.
    Example: ``resolve_precision("auto", "cpu")`` -> ``(torch.float32, None)`` on a CPU without native bf16
    """
    dev = resolve_device(device)
    if dtype is None or dtype == "auto":
        if dev.type == "cpu":
            return torch.float32, (torch.bfloat16 if cpu_has_native_bf16() else None)
        return None, None
    if isinstance(dtype, str) and dtype in AUTOCAST_DTYPES:
        return torch.float32, AUTOCAST_DTYPES[dtype]
    return resolve_dtype(dtype), None


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Local directory, an embedded model name (e.g. "cappy-mini"), or a Hugging Face hub id (returned as is)."""
    path = Path(name_or_path)
    if path.is_dir():
        return str(path)
    embedded = Path(__file__).parent / "models" / str(name_or_path)
    if embedded.is_dir() and (embedded / "config.json").exists():
        return str(embedded)
    if str(name_or_path) == "cappy-mini":
        raise FileNotFoundError(
            "the embedded model 'cappy-mini' is not part of this installation "
            f"(looked in {embedded}); pass a local checkpoint directory or a hub id"
        )
    if path.exists():
        raise ValueError(f"{name_or_path!r} is a file; a model is a directory with config.json")
    return str(name_or_path)


def _check_texts(name: str, values: Sequence[Any]) -> None:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(v).__name__}")


def _as_pairs(instructions: str | Sequence[str], responses: str | Sequence[str]) -> tuple[list[str], list[str], bool]:
    """Normalise the inputs of ``score``; a single str on one side is repeated to the other's length."""
    if instructions is None or responses is None:
        raise TypeError("instructions and responses must be str or lists of str, got None")
    single = isinstance(instructions, str) and isinstance(responses, str)
    if single:
        return [instructions], [responses], True
    if isinstance(instructions, str):
        if not isinstance(responses, Sequence):
            raise TypeError(f"responses must be a str or a list of str, got {type(responses).__name__}")
        instructions = [instructions] * len(responses)
    if isinstance(responses, str):
        if not isinstance(instructions, Sequence):
            raise TypeError(f"instructions must be a str or a list of str, got {type(instructions).__name__}")
        responses = [responses] * len(instructions)
    for name, seq in (("instructions", instructions), ("responses", responses)):
        if not isinstance(seq, Sequence) or isinstance(seq, bytes | bytearray):
            raise TypeError(f"{name} must be a str or a list of str, got {type(seq).__name__}")
    if len(instructions) != len(responses):
        raise ValueError(
            f"instructions and responses must have the same length, got {len(instructions)} and {len(responses)}"
        )
    instructions, responses = list(instructions), list(responses)
    _check_texts("instructions", instructions)
    _check_texts("responses", responses)
    return instructions, responses, False


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def _precut(tokenizer: Any, texts: list[str], max_length: int) -> list[str]:
    """Cut very long texts a little past ``max_length`` tokens before pair encoding.

    Pair truncation in `tokenizers` is quadratic in the overflow (a 1 MB text takes minutes); tokens past
    ``max_length`` are dropped anyway, so cutting 16 tokens beyond it leaves the encoding unchanged.
    """
    keep = max_length + 16
    long_idx = [i for i, t in enumerate(texts) if len(t) > 8 * max_length]
    if not long_idx or not getattr(tokenizer, "is_fast", False):
        return texts
    enc = tokenizer(
        [texts[i] for i in long_idx],
        add_special_tokens=False,
        truncation=True,
        max_length=keep,
        return_offsets_mapping=True,
    )
    out = list(texts)
    for i, ids, offsets in zip(long_idx, enc["input_ids"], enc["offset_mapping"]):
        if len(ids) >= keep:
            out[i] = texts[i][: offsets[-1][1]]
    return out


INSTRUCTION_TRUNCATION = ("right", "left")


def _check_instruction_truncation(side: str) -> str:
    if side not in INSTRUCTION_TRUNCATION:
        raise ValueError(f"instruction_truncation must be 'right' or 'left', got {side!r}")
    return side


def _kept_lengths(n_instruction: int, n_response: int, budget: int) -> tuple[int, int]:
    """Token counts longest-first truncation keeps of each side, as `tokenizers` computes them: the shorter side
    is kept whole if the longer can fill the rest; otherwise each keeps half (the longer one the odd token, the
    response on a tie)."""
    if n_instruction + n_response <= budget:
        return n_instruction, n_response
    n1, n2 = n_instruction, n_response
    swap = n1 > n2
    if swap:
        n1, n2 = n2, n1
    n2 = n1 if n1 > budget else max(n1, budget - n1)
    if n1 + n2 > budget:
        n1 = budget // 2
        n2 = n1 + budget % 2
    if swap:
        n1, n2 = n2, n1
    return min(n_instruction, n1), min(n_response, n2)


def _encode_left(tokenizer: Any, instructions: list[str], responses: list[str], max_length: int) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("instruction_truncation='left' needs a fast (tokenizers-backed) tokenizer")
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    if budget < 2:
        raise ValueError(f"max_length {max_length} leaves no room for a pair after the special tokens")
    # through the tokenizer call, not backend.encode_batch: the backend keeps the last call's truncation setting
    ins = tokenizer(instructions, add_special_tokens=False, truncation=False).encodings
    res = tokenizer(responses, add_special_tokens=False, truncation=False).encodings
    ids, types = [], []

    def counted(text: str, n: int) -> int:  # the length the right-side path sees after its pre-cut (_precut)
        return min(n, max_length + 16) if len(text) > 8 * max_length else n

    for text_a, text_b, a, b in zip(instructions, responses, ins, res):
        keep_a, keep_b = _kept_lengths(counted(text_a, len(a.ids)), counted(text_b, len(b.ids)), budget)
        if keep_a < len(a.ids):
            a.truncate(keep_a, direction="left")
        if keep_b < len(b.ids):
            b.truncate(keep_b, direction="right")
        enc = backend.post_processor.process(a, b, add_special_tokens=True)  # the template only, no re-truncation
        ids.append(enc.ids)
        types.append(enc.type_ids)
    out = {"input_ids": ids}
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ["token_type_ids"]):
        out["token_type_ids"] = types
    return out


def encode_pairs(
    tokenizer: Any,
    instructions: list[str],
    responses: list[str],
    max_length: int | None,
    instruction_truncation: str = "right",
) -> dict[str, list[list[int]]]:
    """The Cappy input format: the tokenizer's text-pair encoding of (instruction, response), unpadded.

    ``max_length`` truncates longest-first (what scoring and training use); None encodes the whole pairs (to
    measure them). ``instruction_truncation="left"`` cuts a too-long instruction from its start (keeping its end);
    the response is always cut from its end, and the token counts kept on each side are the same either way.
    Example: ``encode_pairs(tok, ["What is 2+2?"], ["4"], 512)["input_ids"]`` -> ``[[101, ...]]``
    """
    _check_instruction_truncation(instruction_truncation)
    if max_length is None:
        # nothing is cut, so no pre-cut either: it would shorten what is being measured
        enc = tokenizer(instructions, responses, truncation=False, padding=False, return_attention_mask=False)
    elif instruction_truncation == "left":
        return _encode_left(tokenizer, instructions, responses, max_length)
    else:
        enc = tokenizer(
            _precut(tokenizer, instructions, max_length),
            _precut(tokenizer, responses, max_length),
            truncation="longest_first",
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
        )
    return {k: v for k, v in enc.items() if k in ("input_ids", "token_type_ids")}


def collate_pairs(
    enc: dict[str, list[list[int]]], tokenizer: Any, pad_to: int | None = None, rows: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded CPU tensors (input_ids, attention_mask, token_type_ids if encoded) of encoded pairs.

    Pads with the tokenizer's pad_token_id (0 without one) and pad_token_type_id, to the longest row or to
    ``pad_to`` if that is wider; ``rows`` picks and orders rows of ``enc`` (default: all).
    Example: ``collate_pairs(encode_pairs(tok, ["q"], ["a"], 512), tok)["input_ids"].shape`` -> ``(1, 5)``
    """
    ids = enc["input_ids"] if rows is None else [enc["input_ids"][i] for i in rows]
    if not ids:
        raise ValueError("collate_pairs needs at least one encoded pair")
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    width = max(int(lengths.max()), pad_to or 0)
    mask = np.arange(width)[None, :] < lengths[:, None]
    total = int(lengths.sum())

    def fill(seqs: Sequence[list[int]], pad: int) -> torch.Tensor:
        # a boolean mask assigns in row-major order, which is the order of the concatenated rows
        out = np.full((len(seqs), width), pad, dtype=np.int64)
        out[mask] = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=total)
        return torch.from_numpy(out)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = {"input_ids": fill(ids, pad_id), "attention_mask": torch.from_numpy(mask.astype(np.int64))}
    if "token_type_ids" in enc:
        tt = enc["token_type_ids"] if rows is None else [enc["token_type_ids"][i] for i in rows]
        batch["token_type_ids"] = fill(tt, getattr(tokenizer, "pad_token_type_id", 0) or 0)
    return batch


def load_scorer_model(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    dropout: float | None = None,
    replace_head: bool = False,
    trust_remote_code: bool = False,
    revision: str | None = None,
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, Any]:
    """Load ``(model, tokenizer)`` as a one-output regression scorer, for :meth:`Cappy.from_pretrained` and training.

    ``dtype`` None keeps the checkpoint's; ``dropout`` sets every dropout rate the config has. A classifier with
    several outputs is an error, or with ``replace_head`` gets a fresh one-output head (with a warning); an
    encoder without a head always gets a fresh one.
    Example: ``model, tok = load_scorer_model("cappy-mini", dtype=torch.float32)``
    """
    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except OSError as err:
        raise OSError(
            f"cannot load model {str(name_or_path)!r}: it is not a local checkpoint directory, not an embedded "
            f"model, and could not be fetched as a hub id ({err})"
        ) from err
    is_classifier = any("ForSequenceClassification" in a for a in (config.architectures or []))
    several = getattr(config, "num_labels", 1) != 1
    if several and not replace_head:
        raise ValueError(
            f"{str(name_or_path)!r} has num_labels={config.num_labels}; "
            "a Cappy scorer needs a one-output regression head"
        )
    mismatched = replace_head and is_classifier and several
    config.num_labels = 1
    config.problem_type = "regression"
    if dropout is not None:
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "pooler_dropout"):
            if hasattr(config, name):
                setattr(config, name, dropout)
    kwargs: dict[str, Any] = dict(model_kwargs)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if mismatched:
        kwargs["ignore_mismatched_sizes"] = True
    model = AutoModelForSequenceClassification.from_pretrained(
        path, config=config, trust_remote_code=trust_remote_code, revision=revision, **kwargs
    )
    if mismatched:
        logger.warning("%s had a head with several outputs; it was replaced by a fresh one-output head", name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    return model, tokenizer


class Cappy:
    """A scorer of (instruction, response) pairs: higher means a more correct response.

    Example:
        >>> scorer = Cappy.from_pretrained("btan2/cappy-large")  # or a local directory, or "cappy-mini"
        >>> scorer.score("What is 2+2?", "4")
        0.93
        >>> scorer.choose("Is the sky blue? Yes or no.", ["yes", "no"])
        0
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        max_length: int = 512,
        batch_size: int = 64,
        max_tokens_per_batch: int = 16384,
        device: str | torch.device | None = None,
        name_or_path: str | None = None,
        autocast_dtype: torch.dtype | None = None,
        instruction_truncation: str | None = None,
    ) -> None:
        if getattr(model.config, "num_labels", 1) != 1:
            raise ValueError(
                f"a Cappy model has exactly one output, this one has num_labels={model.config.num_labels}"
            )
        if batch_size < 1 or max_tokens_per_batch < 1:
            raise ValueError("batch_size and max_tokens_per_batch must be positive")
        self.model = model
        self.tokenizer = tokenizer
        self.device = resolve_device(device) if device is not None else next(model.parameters()).device
        if next(model.parameters()).device != self.device:
            self.model.to(self.device)
        self.model.eval()
        self.max_length = self._clamp_max_length(max_length)
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch
        self.name_or_path = name_or_path or getattr(model.config, "_name_or_path", None)
        self.autocast_dtype = autocast_dtype
        if instruction_truncation is None:  # what the checkpoint was trained with
            instruction_truncation = (getattr(model.config, "cappy", None) or {}).get(
                "instruction_truncation", "right"
            )
        self.instruction_truncation = _check_instruction_truncation(instruction_truncation)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        max_length: int | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        batch_size: int = 64,
        max_tokens_per_batch: int = 16384,
        instruction_truncation: str | None = None,
        **model_kwargs: Any,
    ) -> Cappy:
        """Load any one-output sequence-classification checkpoint (RoBERTa, BERT/MiniLM, DeBERTa-v2, ...).

        ``dtype="auto"`` computes in bfloat16 autocast over float32 weights on CPUs with native bf16, in float32 on
        other CPUs, and in the checkpoint's dtype on GPUs (see :func:`resolve_precision`). ``max_length`` and
        ``instruction_truncation`` ("right"/"left", see :func:`encode_pairs`) default to what the checkpoint declares.
        Example: ``Cappy.from_pretrained("btan2/cappy-large", device="cuda", dtype="bfloat16")``
        """
        torch_dtype, autocast_dtype = resolve_precision(dtype, device)
        model, tokenizer = load_scorer_model(
            name_or_path, torch_dtype, trust_remote_code=trust_remote_code, revision=revision, **model_kwargs
        )
        config = model.config
        if max_length is None:
            max_length = int((getattr(config, "cappy", None) or {}).get("max_length", 512))
        return cls(
            model,
            tokenizer,
            max_length=max_length,
            batch_size=batch_size,
            max_tokens_per_batch=max_tokens_per_batch,
            device=device,
            name_or_path=str(name_or_path),
            autocast_dtype=autocast_dtype,
            instruction_truncation=instruction_truncation,
        )

    @property
    def precision(self) -> str:
        """What scoring computes in: "float32", "bfloat16-autocast" (float32 weights), "bfloat16" or "float16".

        Example: ``Cappy.from_pretrained("cappy-mini", device="cpu", dtype="float32").precision`` -> "float32"
        """
        if self.autocast_dtype is not None:
            return f"{str(self.autocast_dtype).replace('torch.', '')}-autocast"
        return str(next(self.model.parameters()).dtype).replace("torch.", "")

    def save_pretrained(self, save_directory: str | os.PathLike, model_card: str | None = None) -> Path:
        """Write a Hugging Face checkpoint that transformers and sentence-transformers read as a raw-score regressor.

        Files are written to a temporary directory first and moved in one by one, so an interrupted save never
        leaves a half-written file. Example: ``scorer.save_pretrained("out/my-cappy")``
        """
        out = Path(save_directory)
        out.parent.mkdir(parents=True, exist_ok=True)
        config = self.model.config
        config.num_labels = 1
        config.problem_type = "regression"
        config.cappy = {"max_length": self.max_length, "instruction_truncation": self.instruction_truncation}
        # sentence-transformers < 5 reads these two keys of config.json; >= 5 reads config_sentence_transformers.json.
        config.sentence_transformers = {"activation_fn": IDENTITY_ACTIVATION}
        config.sbert_ce_default_activation_function = IDENTITY_ACTIVATION
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            st_config = {
                "model_type": "CrossEncoder",
                "activation_fn": IDENTITY_ACTIVATION,
                "max_length": self.max_length,
            }
            (tmp / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n")
            (tmp / "README.md").write_text(model_card or self._model_card())
            out.mkdir(exist_ok=True)
            mode = default_file_mode()
            for f in sorted(tmp.iterdir()):
                # some writers (safetensors through a temporary file) leave 0600; a checkpoint is meant to be shared
                os.chmod(f, mode)
                os.replace(f, out / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    def _model_card(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        arch = (self.model.config.architectures or [type(self.model).__name__])[0]
        return (
            "---\nlibrary_name: transformers\npipeline_tag: text-classification\ntags: [cappy, cross-encoder, "
            "reranker, regression]\n---\n\n"
            "# Cappy scorer\n\n"
            f"A Cappy scorer ({arch}, {n_params / 1e6:.1f}M parameters): it reads an (instruction, response) pair "
            "and returns one number, an estimate of how correct the response is (trained towards [0, 1]).\n\n"
            "Input: the tokenizer's text-pair encoding of (instruction, response), truncated longest-first to "
            f"{self.max_length} tokens"
            + (
                ", a too-long instruction losing its start, not its end"
                if self.instruction_truncation == "left"
                else ""
            )
            + ". Output: the raw regression value; no sigmoid.\n\n"
            "```python\nfrom cappy import Cappy\n"
            'scorer = Cappy.from_pretrained("path/to/this/folder")\n'
            'scorer.choose("Is the sky blue? Yes or no.", ["yes", "no"])\n```\n\n'
            "The config declares `problem_type: regression` and an Identity activation for sentence-transformers, "
            "so `CrossEncoder(path).predict(pairs)` returns the same raw scores.\n"
        )

    # ------------------------------------------------------------------ scoring
    def _clamp_max_length(self, max_length: int) -> int:
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and limit > 0:
            if getattr(self.model.config, "model_type", "") in _OFFSET_POSITION_MODELS:
                limit -= 2
            if max_length > limit:
                logger.info("max_length %d exceeds the model's %d positions; using %d", max_length, limit, limit)
                max_length = limit
        return max_length

    def encode(self, instructions: list[str], responses: list[str]) -> dict[str, list[list[int]]]:
        """Tokenize pairs exactly as the model was trained on them (no padding); see :func:`encode_pairs`.

        Example: ``scorer.encode(["What is 2+2?"], ["4"])["input_ids"]``
        """
        return encode_pairs(self.tokenizer, instructions, responses, self.max_length, self.instruction_truncation)

    def _batches(self, lengths: np.ndarray, order: np.ndarray) -> Iterator[np.ndarray]:
        """Consecutive runs of ``order`` (longest first) bounded by batch_size and the token budget, cut early where
        the rest would be padded by more than a fifth of the batch's longest pair."""
        start = 0
        n = len(order)
        while start < n:
            longest = int(lengths[order[start]])
            limit = min(n, start + max(1, min(self.batch_size, self.max_tokens_per_batch // max(longest, 1))))
            end = start + 1
            while end < limit and (end - start < _MIN_SPLIT or lengths[order[end]] >= _PAD_CUT * longest):
                end += 1
            yield order[start:end]
            start = end

    def _collate(self, enc: dict[str, list[list[int]]], idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in collate_pairs(enc, self.tokenizer, rows=idx).items()}

    def _forward(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        if self.autocast_dtype is None:
            cast = contextlib.nullcontext()
        else:
            cast = torch.autocast(self.device.type, dtype=self.autocast_dtype)
        with cast:
            logits = self.model(**batch).logits
        return logits.reshape(-1).float().cpu().numpy()

    def _score_chunk(
        self,
        instructions: list[str],
        responses: list[str],
        out: np.ndarray,
        pbar: Any,
        shard: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Fill ``out`` with the chunk's scores (with ``shard=(rank, world)`` only those of every world-th forward
        batch from rank on; the rest stay NaN); returns the encoded length of each pair."""
        enc = self.encode(instructions, responses)
        lengths = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(instructions))
        order = np.argsort(-lengths, kind="stable")
        pending = list(self._batches(lengths, order))
        if shard is not None:
            out[:] = np.nan
            pending = pending[shard[0] :: shard[1]]
        while pending:
            idx = pending.pop(0)
            try:
                out[idx] = self._forward(self._collate(enc, idx))
            except Exception as err:  # halve and retry on out-of-memory; anything else is a real error
                if not _is_oom(err) or len(idx) == 1:
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                half = len(idx) // 2
                self.batch_size = max(1, min(self.batch_size, half))
                logger.warning("out of memory on a batch of %d pairs; retrying as two of %d", len(idx), half)
                pending[:0] = [idx[:half], idx[half:]]
                continue
            if pbar is not None:
                pbar.update(len(idx))
        return lengths

    @torch.inference_mode()
    def score(
        self,
        instructions: str | Sequence[str],
        responses: str | Sequence[str],
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        return_lengths: bool = False,
        shard: tuple[int, int] | None = None,
    ) -> float | np.ndarray | tuple[float | np.ndarray, int | np.ndarray]:
        """Score pairs. Two strings give a float; lists (or one str and a list) give a float32 array in input order.

        ``return_lengths=True`` also gives each pair's token count as scored (after truncation, without padding):
        ``(scores, lengths)``, an int64 array beside the array (an int beside the float).
        ``shard=(rank, world)`` runs only this process's share of the forward batches that one process would run
        (every world-th from ``rank``) and leaves the other scores NaN: merging the shares of all ranks gives the
        one-process scores exactly (see :func:`cappy.batch.score_jsonl` under accelerate or torchrun).

        Example:
            >>> scorer.score("What is 2+2?", "4")
            0.91
            >>> scorer.score(["What is 2+2?"] * 2, ["4", "5"])
            array([0.91, 0.12], dtype=float32)
            >>> scorer.score(["What is 2+2?"] * 2, ["4", "5"], return_lengths=True)
            (array([0.91, 0.12], dtype=float32), array([9, 9]))
        """
        instr, resp, single = _as_pairs(instructions, responses)
        if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
            raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard!r}")
        if batch_size is not None:
            if batch_size < 1:
                raise ValueError(f"batch_size must be positive, got {batch_size}")
            saved, self.batch_size = self.batch_size, batch_size
        out = np.empty(len(instr), dtype=np.float32)
        lengths = np.empty(len(instr), dtype=np.int64)
        show = show_progress_bar if show_progress_bar is not None else len(instr) > 10 * _CHUNK
        pbar = None
        if show:
            from tqdm.auto import tqdm

            pbar = tqdm(total=len(instr), desc="scoring", unit="pair")
        try:
            for s in range(0, len(instr), _CHUNK):
                view = out[s : s + _CHUNK]
                chunk = (instr[s : s + _CHUNK], resp[s : s + _CHUNK])
                lengths[s : s + _CHUNK] = self._score_chunk(*chunk, view, pbar, shard)
        finally:
            if pbar is not None:
                pbar.close()
            if batch_size is not None:
                self.batch_size = saved
        if single:
            return (float(out[0]), int(lengths[0])) if return_lengths else float(out[0])
        return (out, lengths) if return_lengths else out

    def score_groups(
        self,
        instructions: Sequence[str],
        groups_of_responses: Sequence[Sequence[str]],
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        shard: tuple[int, int] | None = None,
    ) -> list[np.ndarray]:
        """Score every response of every group against its instruction in one batched :meth:`score` call.

        Returns one float32 array per instruction, in the order given (the groups may differ in size); a length
        mismatch, an empty group or a non-str text is a ValueError naming its index.
        Example: ``scorer.score_groups(["2+2?", "Sky colour?"], [["4", "5"], ["blue", "red", "green"]])``
        -> ``[array([0.9, 0.1], dtype=float32), array([0.8, 0.2, 0.1], dtype=float32)]``
        """
        for name, seq in (("instructions", instructions), ("groups_of_responses", groups_of_responses)):
            if isinstance(seq, str | bytes) or not isinstance(seq, Sequence):
                raise ValueError(f"{name} must be a list, got {type(seq).__name__}")
        if len(instructions) != len(groups_of_responses):
            raise ValueError(
                f"instructions and groups_of_responses must have the same length, got {len(instructions)} and "
                f"{len(groups_of_responses)}"
            )
        for i, (instruction, group) in enumerate(zip(instructions, groups_of_responses)):
            if not isinstance(instruction, str):
                raise ValueError(f"instructions[{i}] must be a str, got {type(instruction).__name__}")
            if isinstance(group, str | bytes) or not isinstance(group, Sequence):
                raise ValueError(f"groups_of_responses[{i}] must be a list of str, got {type(group).__name__}")
            if len(group) == 0:
                raise ValueError(f"groups_of_responses[{i}] is empty; every instruction needs a response")
            for j, r in enumerate(group):
                if not isinstance(r, str):
                    raise ValueError(f"groups_of_responses[{i}][{j}] must be a str, got {type(r).__name__}")
        if not instructions:
            return []
        flat_instr = [s for s, group in zip(instructions, groups_of_responses) for _ in group]
        flat_resp = [r for group in groups_of_responses for r in group]
        flat = self.score(
            flat_instr, flat_resp, batch_size=batch_size, show_progress_bar=show_progress_bar, shard=shard
        )
        bounds = np.cumsum([len(group) for group in groups_of_responses])[:-1]
        return np.split(flat, bounds)

    def choose(self, instruction: str, choices: Sequence[str]) -> int:
        """Index of the highest-scoring choice (ties go to the first).

        Example: ``scorer.choose("Is the sky blue? Yes or no.", ["yes", "no"])`` -> 0
        """
        scores = self._choice_scores(instruction, choices, "choices")
        return int(np.argmax(scores))

    def rank(self, instruction: str, candidates: Sequence[str], top_k: int | None = None) -> list[dict[str, Any]]:
        """Candidates best first as ``{"index", "score", "text"}``; ``top_k`` keeps the first k.

        Example: ``scorer.rank("Name a prime.", ["4", "7", "9"], top_k=1)``
        -> ``[{"index": 1, "score": 0.8, "text": "7"}]``
        """
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        scores = self._choice_scores(instruction, candidates, "candidates")
        order = np.argsort(-scores, kind="stable")
        if top_k is not None:
            order = order[:top_k]
        return [{"index": int(i), "score": float(scores[i]), "text": candidates[i]} for i in order]

    def _choice_scores(self, instruction: str, options: Sequence[str], name: str) -> np.ndarray:
        if not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
        if options is None or isinstance(options, str) or not isinstance(options, Sequence):
            raise TypeError(f"{name} must be a list of str, got {type(options).__name__}")
        if len(options) == 0:
            raise ValueError(f"{name} is empty; give at least one")
        _check_texts(name, options)
        return self.score(instruction, list(options))

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (
            f"Cappy({self.name_or_path!r}, {type(self.model).__name__}, {n / 1e6:.1f}M params, "
            f"device={self.device}, precision={self.precision}, max_length={self.max_length})"
        )


def export_checkpoint(
    checkpoint: str | os.PathLike, out: str | os.PathLike, dtype: str | None = None, model_card: str | None = None
) -> Path:
    """Re-save a checkpoint (optionally cast to ``dtype``, e.g. "float16") with its training-data record, which the
    contamination guard reads. Example: ``export_checkpoint("runs/mini/best", "src/cappy/models/cappy-mini")``
    """
    import shutil

    scorer = Cappy.from_pretrained(checkpoint, device="cpu")
    if dtype is not None:
        scorer.model.to(DTYPES[dtype])
    saved = scorer.save_pretrained(out, model_card=model_card)
    record = Path(resolve_model_path(checkpoint)) / "training_data.json"
    if record.is_file():
        shutil.copy(record, saved / "training_data.json")
    return saved


def merge_checkpoints(
    checkpoints: Sequence[str | os.PathLike],
    weights: Sequence[float],
    out: str | os.PathLike,
    dtype: str | None = None,
    model_card: str | None = None,
) -> Path:
    """Save the weighted average of checkpoints of one architecture (a linear merge, as in WiSE-FT: interpolating
    a model and its fine-tuned descendant). The first checkpoint gives the config and tokenizer; the training
    records are united, so the contamination guard sees every task any of them was trained on.

    Weights must be non-negative and sum to 1. Example:
    ``merge_checkpoints(["cappy-mini", "runs/mini_v2/best"], [0.5, 0.5], "runs/merged")``
    """
    from cappy.train.record import RECORD_FILE, unite_records, write_record

    if len(checkpoints) < 2 or len(checkpoints) != len(weights):
        raise ValueError(
            f"need two or more checkpoints and one weight each, got {len(checkpoints)} and {len(weights)}"
        )
    if any(not np.isfinite(w) or w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"merge weights must be non-negative and sum to 1, got {list(weights)}")
    base = Cappy.from_pretrained(checkpoints[0], device="cpu", dtype="float32")
    target = base.model.state_dict()
    merged = {k: v * weights[0] if v.is_floating_point() else v for k, v in target.items()}
    for ck, w in zip(checkpoints[1:], weights[1:]):
        other = Cappy.from_pretrained(ck, device="cpu", dtype="float32").model.state_dict()
        missing, extra = sorted(set(target) - set(other)), sorted(set(other) - set(target))
        if missing or extra:
            raise ValueError(
                f"cannot merge {str(ck)!r} into {str(checkpoints[0])!r}: different parameters "
                f"(missing {missing[:3]}, extra {extra[:3]})"
            )
        for k, v in other.items():
            if v.shape != target[k].shape:
                raise ValueError(
                    f"cannot merge {str(ck)!r} into {str(checkpoints[0])!r}: {k} has shape {tuple(v.shape)}, "
                    f"not {tuple(target[k].shape)}"
                )
            if v.is_floating_point():
                merged[k] += v * w
            elif not torch.equal(v, target[k]):  # integer buffers (position ids) are not averaged
                raise ValueError(f"cannot merge {str(ck)!r} into {str(checkpoints[0])!r}: {k} differs")
    base.model.load_state_dict(merged)
    if dtype is not None:
        base.model.to(DTYPES[dtype])
    saved = base.save_pretrained(out, model_card=model_card)
    records = [Path(resolve_model_path(ck)) / RECORD_FILE for ck in checkpoints]
    records = [json.loads(r.read_text()) for r in records if r.is_file()]
    if records:
        write_record(saved, unite_records(records))
    return saved
