#!/bin/bash
# usage: sel.sh OUTNAME EXTRA_REFS SETTING [TASK...]  (held-aside protocol of sessions 7-12; reference-only extra train examples)
cd /work/main
B=../shared/data/bigbench
out=$1; extra=$2; setting=$3; shift 3
T=""; for t in "$@"; do T="$T --task $B/$t"; done
OMP_NUM_THREADS=1 .venv/bin/python scripts/bigbench_adapt_select.py --gens results/gemma-270m/bigbench-adapt-train/gens.jsonl \
  $T --extra-refs $extra --setting "$setting" --out ~/.cache/cappy/runs/sel13/$out
