"""Generation with local transformers models: seq2seq (FLAN-T5, as in the paper) and causal LMs."""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import torch

from cappy.errors import InputError
from cappy.generate.base import Candidate, Decoding, Generator, Recipe, derive_seed, stop_cut
from cappy.model.precision import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)


class HFGenerator(Generator):
    """A transformers model as a generator. Encoder-decoder models are detected from the config.

    All samples of one decoding come from one ``generate`` call with ``num_return_sequences`` (a seq2seq model runs
    its encoder once for them). Log-probabilities are recomputed with one teacher-forced forward pass over the
    candidates, under the model's own distribution.
    Example: ``HFGenerator("google/flan-t5-base", device="cuda").generate(["Translate to German: hi"], "paper17")``
    """

    supports_beam = True

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = None,
        model_id: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        if isinstance(model, str | os.PathLike):
            path = str(model)
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            cls = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
            kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
            if resolve_dtype(dtype) is not None:
                kwargs["dtype"] = resolve_dtype(dtype)
            model = cls.from_pretrained(path, **kwargs)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model_id = model_id or path
        if tokenizer is None:
            raise InputError("a tokenizer is needed when the model is given as an object")
        self.device = resolve_device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        self.model_id = model_id or getattr(model.config, "_name_or_path", "") or type(model).__name__
        gc = copy.deepcopy(model.generation_config)
        self.eos_ids = _as_set(gc.eos_token_id if gc.eos_token_id is not None else tokenizer.eos_token_id)
        if not self.eos_ids and tokenizer.sep_token_id is not None:
            self.eos_ids = {tokenizer.sep_token_id}
        pad = gc.pad_token_id if gc.pad_token_id is not None else tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids or {0})
        gc.eos_token_id = sorted(self.eos_ids) or None
        gc.pad_token_id = self.pad_id
        self._base_config = gc

    def _prompt_ids(self, prompt: str, recipe: Recipe) -> list[int]:
        self.tokenizer.truncation_side = recipe.truncation_side
        return self.tokenizer(prompt, truncation=True, max_length=recipe.max_prompt_tokens)["input_ids"]

    def _config(self, d: Decoding, recipe: Recipe):
        gc = copy.deepcopy(self._base_config)
        # Every sampler knob is set explicitly: model defaults (e.g. top_k=50) would change the decoding.
        gc.update(
            max_new_tokens=recipe.max_new_tokens,
            min_new_tokens=recipe.min_new_tokens,
            max_length=None,
            do_sample=d.method == "sample",
            num_beams=d.num_beams if d.method == "beam" else 1,
            num_return_sequences=d.n,
            temperature=d.temperature if d.method == "sample" else None,
            top_k=d.top_k if d.method == "sample" else None,
            top_p=d.top_p if d.method == "sample" else None,
        )
        return gc

    @torch.inference_mode()
    def _generate_prompt(
        self, prompt: str, prompt_id: str, recipe: Recipe, plan: list[Decoding], seed: int
    ) -> list[Candidate]:
        ids = self._prompt_ids(prompt, recipe)
        input_ids = torch.tensor([ids], device=self.device)
        attention = torch.ones_like(input_ids)
        out: list[Candidate] = []
        for d in plan:
            torch.manual_seed(derive_seed(seed, prompt_id, d.name))
            seqs = self.model.generate(
                input_ids=input_ids, attention_mask=attention, generation_config=self._config(d, recipe)
            )
            start = 1 if self.is_seq2seq else len(ids)
            gens = [self._cut(row[start:].tolist()) for row in seqs]
            logprobs = self._logprobs(ids, gens)
            for i, (toks, lps) in enumerate(zip(gens, logprobs)):
                text = self.tokenizer.decode(toks, skip_special_tokens=True)
                cut = self._stop(toks, recipe)
                if cut is not None:
                    text, kept = cut
                    toks, lps = toks[:kept], lps[:kept]
                out.append(Candidate.from_logprobs(text.strip(), d.name, i, lps, len(toks)))
        return out

    def _stop(self, toks: list[int], recipe: Recipe) -> tuple[str, int] | None:
        if not recipe.stop:
            return None
        pieces, prev = [], ""
        for j in range(len(toks)):
            cur = self.tokenizer.decode(toks[: j + 1], skip_special_tokens=True)
            pieces.append(cur[len(prev) :])
            prev = cur
        return stop_cut(pieces, recipe.stop, recipe.min_new_tokens)

    def _cut(self, toks: list[int]) -> list[int]:
        for j, t in enumerate(toks):
            if t in self.eos_ids:
                return toks[:j]
        return toks

    def _logprobs(self, prompt: list[int], gens: list[list[int]]) -> list[list[float]]:
        """Log-probability of each generated token given the prompt and the tokens before it."""
        width = max((len(g) for g in gens), default=0)
        if width == 0:
            return [[] for _ in gens]
        n = len(gens)
        if self.is_seq2seq:
            start = self.model.config.decoder_start_token_id
            start = self.pad_id if start is None else start
            dec = torch.full((n, width + 1), self.pad_id, dtype=torch.long)
            dec[:, 0] = start
            for r, g in enumerate(gens):
                dec[r, 1 : 1 + len(g)] = torch.tensor(g, dtype=torch.long)
            enc = torch.tensor([prompt] * n, device=self.device)
            logits = self.model(input_ids=enc, decoder_input_ids=dec.to(self.device)).logits[:, :width]
        else:
            p = len(prompt)
            seq = torch.full((n, p + width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((n, p + width), dtype=torch.long)
            for r, g in enumerate(gens):
                seq[r, :p] = torch.tensor(prompt, dtype=torch.long)
                seq[r, p : p + len(g)] = torch.tensor(g, dtype=torch.long)
                mask[r, : p + len(g)] = 1
            logits = self.model(input_ids=seq.to(self.device), attention_mask=mask.to(self.device)).logits
            logits = logits[:, p - 1 : p - 1 + width]
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        out = []
        for r, g in enumerate(gens):
            idx = torch.tensor(g, dtype=torch.long)
            out.append(logp[r, torch.arange(len(g)), idx].tolist())
        return out


def _as_set(x: Any) -> set[int]:
    if x is None:
        return set()
    if isinstance(x, int):
        return {x}
    return {int(v) for v in x}
