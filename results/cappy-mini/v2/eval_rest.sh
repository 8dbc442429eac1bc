#!/bin/bash
# The two long-prompt tasks at max length 256 (as v1's run), each started as soon as a core is free.
cd /work/main
B=.venv/bin; OUT=~/.cache/cappy/runs/eval_v2bb; T=../shared/data/bigbench
export OMP_NUM_THREADS=1
common="--max-examples 50 --max-train 100 --gens $OUT/bb_gens.jsonl --recipe cpu8_stop --seed 0 --model /root/.cache/cappy/runs/mini_v2/best --adapt --scorer-dtype float32 --no-progress --adapt-override mixed_precision=no --adapt-override max_length=256"
while [ ! -f $OUT/bb_a/results.json ]; do sleep 10; done
$B/cappy eval bigbench --task $T/bridging_anaphora_resolution_barqa $common --out $OUT/bb_bridging > $OUT/bb_bridging.log 2>&1
while [ ! -f $OUT/bb_b/results.json ]; do sleep 10; done
echo bridging_done
