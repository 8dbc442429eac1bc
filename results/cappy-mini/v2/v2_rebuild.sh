#!/bin/bash
# Rebuild the cappy-mini v2 candidate exactly as recorded in docs/RESULTS.md (session 5), then train it.
set -euo pipefail
cd /work/main
B=.venv/bin
date
if [ ! -f ~/.cache/cappy/data/v2/manifest.json ]; then
  $B/cappy data build configs/mixtures/v2.yaml --out ~/.cache/cappy/data/v2 \
    --generations results/gemma-270m/pretrain-candidates/gens.jsonl
fi
date
if [ ! -f ~/.cache/cappy/data/v2_split/train.parquet ]; then
  $B/cappy data split ~/.cache/cappy/data/v2 --out ~/.cache/cappy/data/v2_split --max-dev-rows 6000 --cap trec=30000
fi
date
$B/cappy train configs/pretrain_v2.yaml --train ~/.cache/cappy/data/v2_split/train.parquet \
  --dev results/cappy-mini/dev/hard_dev.jsonl --output-dir ~/.cache/cappy/runs/mini_v2 --progress false
date
echo FINISHED
