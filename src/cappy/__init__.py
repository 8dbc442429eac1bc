"""Cappy: a small pretrained scorer for (instruction, response) pairs.

Example:
    >>> from cappy import Cappy
    >>> scorer = Cappy.from_pretrained("cappy-mini")
    >>> scorer.choose("Is the sky blue? Yes or no.", ["yes", "no"])
    0
"""

from cappy.model import Cappy

__version__ = "0.1.0"
__all__ = ["Cappy", "__version__"]
