#!/bin/bash
# v1/v2 interpolation sweep (pre-registered rule in docs/RESULTS.md, session 6): merge, then hard dev + transfer dev.
set -euo pipefail
cd /work/main
B=.venv/bin
S=~/.cache/cappy/runs/sweep
mkdir -p $S
V2=~/.cache/cappy/runs/mini_v2/best
[ -f ~/.cache/cappy/data/transfer_dev/manifest.json ] || \
  $B/cappy data build configs/mixtures/transfer_dev.yaml --out ~/.cache/cappy/data/transfer_dev > $S/transfer_build.log 2>&1
models="cappy-mini"
for w in 0.3 0.5 0.7 0.85; do
  out=$S/w$w
  [ -f $out/model.safetensors ] || $B/cappy merge cappy-mini $V2 --weights $(python3 -c "print(round(1-$w,4))") $w --out $out
  models="$models $out"
done
models="$models $V2"
args=""; for m in $models; do args="$args --model $m"; done
$B/cappy eval pairs --dev results/cappy-mini/dev/hard_dev.jsonl $args --out $S/hard_dev.json > $S/hard_dev.log 2>&1
$B/cappy eval pairs --dev ~/.cache/cappy/data/transfer_dev $args --out $S/transfer_dev.json > $S/transfer_dev.log 2>&1
echo SWEEP_DONE
