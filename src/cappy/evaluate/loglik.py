"""LLM rank classification: the log-likelihood of each answer choice given the prompt.

The baseline that Cappy is compared with on multiple-choice tasks. Each backend returns, per choice, the summed
log-probability of the choice's tokens and their count (so per-token means follow). Results are cached on disk
(JSONL keyed by model, prompt and choice), so reruns and several methods over the same prompts cost nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cappy.errors import InputError
from cappy.generate.llamacpp import LlamaCppGenerator

#: prompt and choice are joined with this separator (a choice is a continuation of the prompt).
SEPARATOR = " "


class LogLikelihood(ABC):
    """``loglik(prompt, choices) -> [(sum_logprob, n_tokens)]`` for one prompt and its choices."""

    model_id: str = "llm"

    @abstractmethod
    def _loglik(self, prompt: str, choices: Sequence[str]) -> list[tuple[float, int]]: ...

    def loglik(self, prompt: str, choices: Sequence[str]) -> list[tuple[float, int]]:
        """Example: ``LlamaCppLogLik().loglik("Is the sky blue?", ["yes", "no"])`` -> ``[(-1.2, 1), (-3.4, 1)]``"""
        if not choices:
            raise InputError("loglik needs at least one choice")
        return self._loglik(prompt, choices)


class CachedLogLik(LogLikelihood):
    """Wrap a backend with an append-only JSONL cache; a torn last line (after a kill) is ignored."""

    def __init__(self, inner: LogLikelihood, path: str | os.PathLike) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.path = Path(path)
        self.cache: dict[str, tuple[float, int]] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        self.cache[row["key"]] = (float(row["sum"]), int(row["n"]))
                    except (ValueError, KeyError):
                        continue
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.hits = 0

    def _key(self, prompt: str, choice: str) -> str:
        return hashlib.sha1(json.dumps([self.model_id, prompt, choice]).encode()).hexdigest()

    def _loglik(self, prompt: str, choices: Sequence[str]) -> list[tuple[float, int]]:
        keys = [self._key(prompt, c) for c in choices]
        if all(k in self.cache for k in keys):
            self.hits += len(keys)
            return [self.cache[k] for k in keys]
        values = self.inner.loglik(prompt, choices)
        with open(self.path, "a", encoding="utf-8") as f:
            for k, (s, n) in zip(keys, values):
                self.cache[k] = (s, n)
                f.write(json.dumps({"key": k, "sum": s, "n": n}) + "\n")
        return values


def _log_softmax_at(logits: np.ndarray, token: int) -> float:
    row = logits.astype(np.float64)
    m = row.max()
    return float(row[token] - m - np.log(np.exp(row - m).sum()))


class LlamaCppLogLik(LogLikelihood):
    """Log-likelihoods from a GGUF model through llama.cpp (default: the packaged Gemma 3 270M).

    The prompt is evaluated once per example with only its last logits computed (Gemma's vocabulary has 262k
    entries, so logits for every prompt position would cost more than the model itself); each choice then rolls
    the KV cache back to the end of the prompt and feeds its tokens one at a time.
    Example: ``LlamaCppLogLik(n_threads=2).loglik("Q: 2+2? A:", ["4", "5"])``
    """

    def __init__(
        self, model_path: str | os.PathLike | None = None, n_ctx: int = 1024, n_threads: int | None = None, **kw: Any
    ) -> None:
        # the generator owns loading (packaged Gemma by default) and reading the last logits; reuse both
        self.gen = LlamaCppGenerator(model_path, n_ctx=n_ctx, n_threads=n_threads, **kw)
        self.llm = self.gen.llm
        self.model_id = self.gen.model_id
        self.n_ctx = self.gen.n_ctx

    def _tok(self, text: str, bos: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False)

    def _loglik(self, prompt: str, choices: Sequence[str]) -> list[tuple[float, int]]:
        ctx = self._tok(prompt, True)
        conts = []
        for c in choices:
            whole = self._tok(prompt + SEPARATOR + c, True)
            cont = whole[len(ctx) :] if whole[: len(ctx)] == ctx else self._tok(SEPARATOR + c, False)
            conts.append(cont or self._tok(SEPARATOR, False))
        longest = max(len(c) for c in conts)
        if len(ctx) + longest > self.n_ctx:  # keep the end of the prompt (where the question usually is)
            ctx = ctx[:1] + ctx[len(ctx) + longest - self.n_ctx + 1 :]
        llm = self.llm
        llm.reset()
        llm.eval(ctx)
        after_prompt = self.gen._logits()
        out = []
        for cont in conts:
            llm.n_tokens = len(ctx)
            total = _log_softmax_at(after_prompt, cont[0])
            for j in range(1, len(cont)):
                llm.eval([cont[j - 1]])
                total += _log_softmax_at(self.gen._logits(), cont[j])
            out.append((total, len(cont)))
        return out


class HFLogLik(LogLikelihood):
    """Log-likelihoods from a transformers causal or seq2seq LM (a local directory or hub id).

    Example: ``HFLogLik("google/flan-t5-small").loglik("Is the sky blue?", ["yes", "no"])``
    """

    def __init__(self, model: Any, tokenizer: Any = None, device: str = "cpu", max_length: int = 1024) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        if isinstance(model, str | os.PathLike):
            name = str(model)
            cfg = AutoConfig.from_pretrained(name)
            cls = AutoModelForSeq2SeqLM if cfg.is_encoder_decoder else AutoModelForCausalLM
            model = cls.from_pretrained(name)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(name)
            self.model_id = name
        else:
            self.model_id = getattr(model.config, "_name_or_path", None) or type(model).__name__
        if tokenizer is None:
            raise InputError("HFLogLik needs a tokenizer when given a model object")
        self.model = model.to(device).eval()
        self.tok = tokenizer
        self.device = device
        self.max_length = max_length
        self.seq2seq = bool(model.config.is_encoder_decoder)
        self._torch = torch

    def _ids(self, text: str, special: bool) -> list[int]:
        return self.tok(text, add_special_tokens=special)["input_ids"]

    def _loglik(self, prompt: str, choices: Sequence[str]) -> list[tuple[float, int]]:
        torch = self._torch
        out = []
        with torch.inference_mode():
            if self.seq2seq:
                enc = self.tok(prompt, return_tensors="pt", truncation=True, max_length=self.max_length).to(
                    self.device
                )
                encoder_out = self.model.get_encoder()(**enc)
                for c in choices:
                    labels = torch.tensor([self._ids(c, True)], device=self.device)
                    logits = self.model(
                        encoder_outputs=encoder_out, attention_mask=enc["attention_mask"], labels=labels
                    ).logits
                    logp = torch.log_softmax(logits.float(), -1)[0].gather(-1, labels[0][:, None])
                    out.append((float(logp.sum()), labels.shape[1]))
                return out
            ctx = self._ids(prompt, True)
            for c in choices:
                whole = self._ids(prompt + SEPARATOR + c, True)
                cont = whole[len(ctx) :] if whole[: len(ctx)] == ctx else self._ids(SEPARATOR + c, False)
                ids = (ctx + cont)[-self.max_length :]
                n = min(len(cont), len(ids) - 1)
                x = torch.tensor([ids], device=self.device)
                logp = torch.log_softmax(self.model(input_ids=x).logits.float()[0, :-1], -1)
                target = x[0, 1:]
                token_lp = logp.gather(-1, target[:, None])[:, 0]
                out.append((float(token_lp[-n:].sum()), n))
        return out
