#!/bin/bash
# Evaluate one chosen checkpoint CK (arg 1) into OUT (arg 2): guards, held-out MC, BIG-Bench zero-shot + adapted.
# Two processes of one torch thread each where they can run side by side.
set -uo pipefail
cd /work/main
B=.venv/bin
CK=$1; OUT=$2; mkdir -p $OUT
export OMP_NUM_THREADS=1
T=../shared/data/bigbench
cat results/gemma-270m/bigbench-adapt-val/gens.jsonl results/gemma-270m/bigbench-adapt-train/gens.jsonl > $OUT/bb_gens.jsonl
A="simp_turing_concept physics_questions repeat_copy_logic sufficient_information few_shot_nlg unnatural_in_context_learning"
Bt="list_functions linguistics_puzzles matrixshapes semantic_parsing_spider"
targs() { for t in "$@"; do echo -n " --task $T/$t"; done; }
common="--max-examples 50 --max-train 100 --gens $OUT/bb_gens.jsonl --recipe cpu8_stop --seed 0 --model $CK --adapt --scorer-dtype float32 --no-progress --adapt-override mixed_precision=no"
date
$B/cappy eval bigbench $(targs $A) $common --out $OUT/bb_a > $OUT/bb_a.log 2>&1 &
$B/cappy eval bigbench $(targs $Bt) $common --out $OUT/bb_b > $OUT/bb_b.log 2>&1 &
wait
date
$B/cappy eval bigbench $(targs bridging_anaphora_resolution_barqa) $common --adapt-override max_length=256 --out $OUT/bb_bridging > $OUT/bb_bridging.log 2>&1 &
$B/cappy eval bigbench $(targs chess_state_tracking) $common --adapt-override max_length=256 --out $OUT/bb_chess > $OUT/bb_chess.log 2>&1 &
wait
date
$B/python scripts/bigbench_merge.py $OUT/bb_a $OUT/bb_b $OUT/bb_bridging $OUT/bb_chess --out $OUT/bigbench > $OUT/bb_merge.log 2>&1
date
echo EVAL_DONE
