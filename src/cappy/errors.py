"""The errors cappy raises on purpose, all under :class:`CappyError`.

A :class:`CappyError` says what the caller gave wrong (an argument, a setting, a file's content: the message names
it, and the file and line for files) or what failed on the way (a generation server, a training run). Anything
else that escapes cappy is a bug. Each error also keeps the built-in base it had before the common one
(:class:`InputError` is a ``ValueError``, :class:`cappy.model.ModelNotFoundError` a ``FileNotFoundError``, ...), so
``except ValueError`` goes on catching bad input.

``exit_code`` is the status `cappy <command>` exits with when the error ends the command (2: usage or input, as
argparse's own errors; see :func:`cappy.cli.main`).

Example:
    >>> try:
    ...     Cappy.from_pretrained("no/such-model")
    ... except CappyError as err:
    ...     print(err)
"""

from __future__ import annotations


class CappyError(Exception):
    """Base of the errors cappy raises on purpose (bad input, or a failure the user can act on)."""

    exit_code = 2


class InputError(CappyError, ValueError):
    """A value given to cappy is wrong: an argument, a setting, a file's content; the message names it."""


class InputTypeError(CappyError, TypeError):
    """A value given to cappy has the wrong type (a str where a list is needed, ...); the message names it."""
