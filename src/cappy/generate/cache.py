"""The generation cache: a JSONL file with one line per (prompt, candidate), appended as prompts finish.

The file is an append log rather than a temp-and-rename write, so a long run that is killed keeps its work. On
reopening, a torn last line (a write cut by SIGKILL or a full disk) is cut off; every complete line counts, and
rows already present for the same (model, recipe, seed) are never generated or written again.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cappy.errors import InputError
from cappy.generate.base import Candidate, GenerationError, Generator, Recipe, load_recipe, prompt_id_of
from cappy.io import dumps

logger = logging.getLogger(__name__)

FIELDS: dict[str, tuple[type, ...]] = {
    "prompt_id": (str,),
    "prompt": (str,),
    "text": (str,),
    "decoding": (str,),
    "sample_index": (int,),
    "logprob_sum": (float, int, type(None)),
    "logprob_mean": (float, int, type(None)),
    "num_tokens": (int,),
    "model": (str,),
    "recipe": (str,),
    "seed": (int,),
}


def candidate_row(prompt_id: str, prompt: str, cand: Candidate, model: str, recipe: str, seed: int) -> dict[str, Any]:
    """One cache line as a dict, in the shared field order."""
    return {
        "prompt_id": prompt_id,
        "prompt": prompt,
        "text": cand.text,
        "decoding": cand.decoding,
        "sample_index": cand.sample_index,
        "logprob_sum": cand.logprob_sum,
        "logprob_mean": cand.logprob_mean,
        "num_tokens": cand.num_tokens,
        "model": model,
        "recipe": recipe,
        "seed": seed,
    }


def _check_row(row: dict[str, Any], where: str) -> None:
    for name, kinds in FIELDS.items():
        if name not in row:
            raise InputError(f"{where}: missing field {name!r}")
        value = row[name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise InputError(f"{where}: field {name!r} has type {type(value).__name__}")


def repair_torn_tail(path: str | os.PathLike) -> int:
    """Cut a last line that has no newline (a torn write); returns the number of bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Walk back to the last newline; the file is usually huge, the torn tail small.
        pos, block = size, 1 << 16
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    logger.warning("%s: removed a torn last line (%d bytes); it will be generated again", path, size - keep)
    return size - keep


def iter_generations(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_number, row)`` for each row of a cache file, checking every field; a torn last line is ignored.

    Example: ``for lineno, row in iter_generations("gens.jsonl"): print(row["text"])``
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                logger.warning("%s:%d: ignoring a torn last line", path, lineno)
                return
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(raw)
            except ValueError as err:
                raise InputError(f"{where}: malformed JSONL line ({err})") from None
            if not isinstance(row, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
            _check_row(row, where)
            yield lineno, row


def read_generations(
    path: str | os.PathLike, model: str | None = None, recipe: str | None = None, seed: int | None = None
) -> dict[str, list[Candidate]]:
    """Candidates per prompt text from a cache file, optionally only one (model, recipe, seed).

    Within a prompt they are ordered as written; duplicates of one (model, recipe, seed, decoding, sample_index)
    raise. Example: ``read_generations("gens.jsonl")["Q: 2+2?\\nA:"][0].text``
    """
    out: dict[str, list[Candidate]] = defaultdict(list)
    seen: set[tuple] = set()
    for lineno, row in iter_generations(path):
        if (model is not None and row["model"] != model) or (recipe is not None and row["recipe"] != recipe):
            continue
        if seed is not None and row["seed"] != seed:
            continue
        key = (row["prompt_id"], row["model"], row["recipe"], row["seed"], row["decoding"], row["sample_index"])
        if key in seen:
            raise InputError(f"{path}:{lineno}: duplicate candidate {key[4]}#{key[5]} for prompt {key[0]}")
        seen.add(key)
        out[row["prompt"]].append(
            Candidate(
                text=row["text"],
                decoding=row["decoding"],
                sample_index=row["sample_index"],
                logprob_sum=row["logprob_sum"],
                logprob_mean=row["logprob_mean"],
                num_tokens=row["num_tokens"],
                extra={"model": row["model"], "recipe": row["recipe"], "seed": row["seed"]},
            )
        )
    return dict(out)


@dataclass
class CacheStats:
    prompts: int = 0
    prompts_skipped: int = 0
    rows_written: int = 0
    rows_existing: int = 0


def generate_to_cache(
    generator: Generator,
    prompts: Iterable[tuple[str, str | None]],
    recipe: Recipe | str,
    out: str | os.PathLike,
    seed: int = 0,
    show_progress: bool = True,
    total: int | None = None,
) -> CacheStats:
    """Generate candidates for ``(prompt, id or None)`` pairs and append them to ``out``, resuming a previous run.

    A prompt whose candidates are all in ``out`` already (same model, recipe name and seed) is skipped; a prompt
    cut short by a kill is generated again and only its missing rows are appended. Prompts go to the backend in
    chunks of its ``prompts_in_flight`` (so a batching backend decodes them together); each prompt's rows go out in
    one write followed by fsync, in input order. Example:
        >>> generate_to_cache(LlamaCppGenerator(), [("Q: 2+2?\\nA:", None)], "paper17", "gens.jsonl")
    """
    recipe = load_recipe(recipe)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(out)
    model = generator.model_id
    plan = generator.plan(recipe)
    expected = {(d.name, i) for d in plan for i in range(d.n)}
    done: dict[str, set[tuple[str, int]]] = defaultdict(set)
    text_of: dict[str, str] = {}
    stats = CacheStats()
    if out.exists():
        for lineno, row in iter_generations(out):
            if row["model"] != model or row["recipe"] != recipe.name or row["seed"] != seed:
                continue
            pid = row["prompt_id"]
            if text_of.setdefault(pid, row["prompt"]) != row["prompt"]:
                raise InputError(f"{out}:{lineno}: prompt_id {pid!r} appears with two different prompts")
            done[pid].add((row["decoding"], row["sample_index"]))
            stats.rows_existing += 1

    pbar = None
    if show_progress:
        from tqdm.auto import tqdm

        pbar = tqdm(total=total, desc="generating", unit="prompt")
    step = max(1, int(getattr(generator, "prompts_in_flight", 1)))
    queue: list[tuple[str, str, set[tuple[str, int]]]] = []

    def flush(f: Any) -> None:
        """Generate the queued prompts together (the backend may decode them in one batch); append each one's rows."""
        if not queue:
            return
        results = generator.generate([q[0] for q in queue], recipe, seed=seed, prompt_ids=[q[1] for q in queue])
        for (prompt, pid, missing), cands in zip(queue, results):
            got = {(c.decoding, c.sample_index) for c in cands}
            if missing - got:
                raise GenerationError(
                    f"{type(generator).__name__} gave no candidate {sorted(missing - got)} for prompt {pid}"
                )
            lines = [
                dumps(candidate_row(pid, prompt, c, model, recipe.name, seed)) + "\n"
                for c in cands
                if (c.decoding, c.sample_index) in missing
            ]
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
            done[pid] |= missing
            stats.rows_written += len(lines)
        if pbar is not None:
            pbar.update(len(queue))
        queue.clear()

    try:
        with open(out, "a", encoding="utf-8") as f:
            for prompt, given_id in prompts:
                pid = given_id if given_id is not None else prompt_id_of(prompt)
                if text_of.setdefault(pid, prompt) != prompt:
                    raise InputError(f"prompt id {pid!r} is used for two different prompts")
                stats.prompts += 1
                missing = expected - done[pid]
                if not missing or any(q[1] == pid for q in queue):
                    stats.prompts_skipped += 1
                    if pbar is not None:
                        pbar.update(1)
                    continue
                queue.append((prompt, pid, missing))
                if len(queue) >= step:
                    flush(f)
            flush(f)
    finally:
        if pbar is not None:
            pbar.close()
    return stats
