"""The pretraining-pair builder's public names in one place. They live in :mod:`cappy.data.mixture` (the mixture
and the held-out list), :mod:`cappy.data.builder` (the build), :mod:`cappy.data.state` (its resume state),
:mod:`cappy.data.nearest` (hard mismatched responses) and :mod:`cappy.data.shards` (its output folder).

Example: ``from cappy.data.pairs import Mixture, build_pairs``
"""

from cappy.data.builder import (
    FORMAT_VERSION,
    SOURCES,
    BuildError,
    BuildOptions,
    PairBuilder,
    Unit,
    build_pairs,
    export_prompts,
)
from cappy.data.mixture import (
    DEFAULT_HELDOUT,
    HELDOUT_ALIASES,
    DatasetSpec,
    HeldOutError,
    Mixture,
    MixtureError,
    heldout_hits,
)
from cappy.data.shards import COLUMNS, iter_pairs

__all__ = [
    "COLUMNS",
    "DEFAULT_HELDOUT",
    "FORMAT_VERSION",
    "HELDOUT_ALIASES",
    "SOURCES",
    "BuildError",
    "BuildOptions",
    "DatasetSpec",
    "HeldOutError",
    "Mixture",
    "MixtureError",
    "PairBuilder",
    "Unit",
    "build_pairs",
    "export_prompts",
    "heldout_hits",
    "iter_pairs",
]
