#!/bin/bash
# Guards and held-out MC for one checkpoint CK (arg 1) into OUT (arg 2).
set -uo pipefail
cd /work/main
B=.venv/bin
CK=$1; OUT=$2; mkdir -p $OUT
$B/python - "$CK" > $OUT/guards.txt 2>$OUT/guards.err <<'PY'
import json, sys
sys.path.insert(0, "tests")
from cappy import Cappy
from test_cappy_mini import EASY
ck = sys.argv[1]
for dtype in ("float32", "auto"):
    s = Cappy.from_pretrained(ck, device="cpu", dtype=dtype)
    easy = [s.choose(q, c) == g for q, c, g in EASY]
    rows = [json.loads(x) for x in open("tests/data/obvious_questions.jsonl")]
    obv = [s.choose(f"Question: {r['question']}\nAnswer:", r["choices"]) == r["answer"] for r in rows]
    print(f"{ck} {dtype} easy {sum(easy)} of {len(easy)} {easy}")
    print(f"{ck} {dtype} obvious {sum(obv)} of {len(obv)}")
PY
$B/cappy eval mc --model $CK --methods cappy,llm_sum,llm_mean,chance --max-examples 100 --max-templates 5 --seed 0 \
  --llm-cache results/gemma-270m/mc/loglik_cache.jsonl --dtype float32 --out $OUT/mc > $OUT/mc.log 2>&1
echo QUICK_DONE
