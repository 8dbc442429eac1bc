#!/bin/bash
# usage: v2sel.sh OUTNAME MODEL TASK...  (held-aside protocol of sessions 7-12, the adapt_cpu preset, a given base)
cd /work/main
B=../shared/data/bigbench
out=$1; model=$2; shift 2
T=""; for t in "$@"; do T="$T --task $B/$t"; done
OMP_NUM_THREADS=1 .venv/bin/python scripts/bigbench_adapt_select.py --gens results/gemma-270m/bigbench-adapt-train/gens.jsonl \
  $T --setting "preset:" --model $model --out ~/.cache/cappy/runs/sel13/$out
