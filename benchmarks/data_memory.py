"""Memory of the pair builder: peak RSS growth for a small slice of the offline mixture vs the whole of it.

Run: .venv/bin/python benchmarks/data_memory.py [--small 100]
Builds configs/mixtures/offline.yaml twice in one process, first capped at --small examples per dataset,
then whole, into temporary folders, and reports how much the process's peak RSS grew in each build. A
streaming builder's peak does not grow with the mixture. Last line: growth_ratio=<whole / small pairs>:<peak growth>
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

from cappy.data.pairs import BuildOptions, Mixture, PairBuilder

MIX = Path(__file__).resolve().parents[1] / "configs" / "mixtures" / "offline.yaml"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(mix: Mixture) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        return PairBuilder(mix, tmp, BuildOptions(progress=False)).build()["rows"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=100, help="examples per dataset in the small build")
    args = ap.parse_args()
    small = Mixture.from_yaml(MIX)
    for d in small.datasets:
        d.max_examples = args.small
    base = peak_mb()
    n_small = build(small)
    after_small = peak_mb()
    n_whole = build(Mixture.from_yaml(MIX))
    after_whole = peak_mb()
    grow_small, grow_whole = after_small - base, after_whole - after_small
    print(f"baseline peak RSS {base:.0f} MB (interpreter, torch imported by the cappy package)")
    print(f"small build: {n_small} pairs, peak grew {grow_small:.1f} MB")
    print(f"whole build: {n_whole} pairs, peak grew a further {grow_whole:.1f} MB (total peak {after_whole:.0f} MB)")
    print(f"growth_ratio={n_whole / n_small:.0f}x pairs : +{grow_whole:.1f} MB peak")


if __name__ == "__main__":
    sys.exit(main())
