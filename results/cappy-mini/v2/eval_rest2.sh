#!/bin/bash
cd /work/main
B=.venv/bin; OUT=~/.cache/cappy/runs/eval_v2bb; T=../shared/data/bigbench
export OMP_NUM_THREADS=1
common="--max-examples 50 --max-train 100 --gens $OUT/bb_gens.jsonl --recipe cpu8_stop --seed 0 --model /root/.cache/cappy/runs/mini_v2/best --adapt --scorer-dtype float32 --no-progress --adapt-override mixed_precision=no --adapt-override max_length=256"
# chess waits for whichever of the first two runs ends second... start it when bb_a and bridging are done or bb_b is done
while [ ! -f $OUT/bb_b/results.json ] && [ ! -f $OUT/bb_bridging/results.json ]; do sleep 10; done
$B/cappy eval bigbench --task $T/chess_state_tracking $common --out $OUT/bb_chess > $OUT/bb_chess.log 2>&1
echo chess_done
