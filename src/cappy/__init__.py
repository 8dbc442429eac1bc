"""Cappy: a small pretrained scorer for (instruction, response) pairs.

Example:
    >>> from cappy import Cappy
    >>> scorer = Cappy.from_pretrained("cappy-mini")
    >>> scorer.choose("Is the sky blue? Yes or no.", ["yes", "no"])
    0
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Cappy", "adapt", "best_of_n", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `import cappy.io` (and every CLI start) should not pay for importing torch and transformers.
    if name == "Cappy":
        from cappy.model import Cappy

        return Cappy
    if name == "adapt":  # the function; its module is cappy.adaptation
        from cappy.adaptation import adapt

        return adapt
    if name == "best_of_n":
        from cappy.boost import best_of_n

        return best_of_n
    raise AttributeError(f"module 'cappy' has no attribute {name!r}")
