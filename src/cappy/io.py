"""Small file helpers shared by every stage: JSONL reading with line numbers, atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from cappy.errors import InputError


class BadLineError(InputError):
    """A JSONL line that is not a JSON object; the message names the file and line."""


def iter_jsonl(
    path: str | os.PathLike | IO[str], skip_bad_lines: bool = False, stats: dict[str, int] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; ``"-"`` reads stdin.

    A line that is not valid UTF-8 or not a JSON object raises :class:`BadLineError` naming the file and line, or,
    with ``skip_bad_lines``, is counted in ``stats["bad_lines"]`` and skipped.
    Example: ``for lineno, row in iter_jsonl("pairs.jsonl"): ...``
    """
    stats = stats if stats is not None else {}
    stats.setdefault("bad_lines", 0)
    # files and stdin are read as bytes and decoded line by line, so a bad byte names its line
    if isinstance(path, str | os.PathLike) and str(path) == "-":
        handle, name, close = getattr(sys.stdin, "buffer", sys.stdin), "<stdin>", False
    elif isinstance(path, str | os.PathLike):
        handle, name, close = open(path, "rb"), str(path), True
    else:
        handle, name, close = path, getattr(path, "name", "<stream>"), False
    try:
        for lineno, line in enumerate(handle, start=1):
            if isinstance(line, bytes):
                try:
                    line = line.decode("utf-8")
                except UnicodeDecodeError as err:
                    if skip_bad_lines:
                        stats["bad_lines"] += 1
                        continue
                    raise BadLineError(
                        f"{name}:{lineno}: not valid UTF-8 (byte {line[err.start]:#04x} at byte {err.start + 1} "
                        "of the line)"
                    ) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            except ValueError as err:
                if skip_bad_lines:
                    stats["bad_lines"] += 1
                    continue
                raise BadLineError(f"{name}:{lineno}: malformed JSONL line ({err})") from None
            yield lineno, obj
    finally:
        if close:
            handle.close()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success it replaces ``path``, on error it is removed.

    ``"-"`` writes to stdout (nothing to make atomic). Example: ``with atomic_write("out.jsonl") as f: f.write(..)``
    """
    if str(path) == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file under the current umask, e.g. ``0o644``."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def dumps(obj: Any) -> str:
    """One JSONL line (no trailing newline), UTF-8 kept readable."""
    return json.dumps(obj, ensure_ascii=False)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks. Example: ``sha256_file("pairs.jsonl")``"""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
