"""Load test of `cappy serve --upstream`: best-of-n through the OpenAI-compatible proxy against the same calls sent
straight to the upstream, with a real llama.cpp server (Gemma 3 270M, ``python -m cappy.generate.llama_server``)
on 127.0.0.1.

N asyncio clients (the official ``openai`` SDK, ``AsyncOpenAI``) run for a bounded time; each one alternates two
kinds of request on the same questions, so both see the same machine load:

- direct: the ``best_of`` calls the proxy would make (n=1 each, seeds seed..seed+best_of-1, same sampling
  parameters), sent in parallel straight to the upstream; the time until the last one answers is the upstream's
  own time for a best-of-n request;
- proxy: one ``/v1/chat/completions`` request with ``best_of`` to ``cappy serve``; its ``Server-Timing`` header
  splits its time into sampling (the upstream calls) and scoring (Cappy, through the micro-batcher).

Every request that fails counts as an error. The last line is
``errors=<n> direct_p50_ms=<x> proxy_p50_ms=<y> score_p50_ms=<z> added_p50_ms=<y-x> proxy_vs_direct=<y/x>``.

    python benchmarks/openai_proxy_load.py                         # 4 clients, best_of 4, 60 s
    python benchmarks/openai_proxy_load.py --clients 2 --duration 30 --best-of 8
    python benchmarks/openai_proxy_load.py --upstream http://127.0.0.1:8000/v1 --upstream-model m  # a running one
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

QUESTIONS = [
    "What is the capital of France?",
    "Name a planet of the solar system.",
    "What is two plus two?",
    "Which animal says moo?",
    "What colour is the sky on a clear day?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
    "How many legs does a spider have?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{what} did not start within {timeout:.0f} s")
        time.sleep(0.3)


def start_llama(port: int, threads: int, log: Path) -> subprocess.Popen:
    from cappy.generate.llamacpp import gemma_gguf_path

    cmd = [sys.executable, "-m", "cappy.generate.llama_server", "--model", str(gemma_gguf_path())]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads)]
    cmd += ["--model_alias", "gemma"]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    wait_up(f"http://127.0.0.1:{port}/v1/models", proc, "the llama.cpp server")
    return proc


def start_cappy(port: int, upstream: str, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cappy", "serve", "--model", args.model, "--device", "cpu", "--port", str(port)]
    cmd += ["--upstream", upstream, "--best-of", str(args.best_of), "--log-level", "warning"]
    cmd += ["--upstream-retries", "0", "--num-threads", str(args.scorer_threads)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("CAPPY_API_KEY", None)
    proc = subprocess.Popen(cmd, env=env)
    wait_up(f"http://127.0.0.1:{port}/health", proc, "cappy serve")
    return proc


def server_timing(header: str | None) -> dict[str, float]:
    """``{"sample": ms, "score": ms}`` from a ``Server-Timing`` header."""
    out = {}
    for part in (header or "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


async def load(proxy: str, upstream: str, model: str, args: argparse.Namespace) -> dict:
    from openai import AsyncOpenAI

    limits = httpx.Limits(max_connections=4 * args.clients * args.best_of)
    direct = AsyncOpenAI(
        base_url=upstream, api_key="none", max_retries=0, timeout=600, http_client=httpx.AsyncClient(limits=limits)
    )
    via = AsyncOpenAI(base_url=f"{proxy}/v1", api_key="none", max_retries=0, timeout=600)
    res: dict[str, list] = {"direct": [], "proxy": [], "sample": [], "score": [], "errors": []}
    start = time.perf_counter()
    measure_from, stop = start + args.warmup, start + args.warmup + args.duration
    counter = 0

    def params(k: int) -> dict:
        messages = [{"role": "user", "content": QUESTIONS[k % len(QUESTIONS)]}]
        return {"model": model, "messages": messages, "max_tokens": args.max_tokens, "temperature": 0.8}

    async def one_direct(k: int) -> None:
        await asyncio.gather(
            *(direct.chat.completions.create(**params(k), seed=k * 100 + i, n=1) for i in range(args.best_of))
        )

    async def one_proxy(k: int) -> dict[str, float]:
        raw = await via.chat.completions.with_raw_response.create(
            **params(k), seed=k * 100, extra_body={"best_of": args.best_of}
        )
        out = raw.parse()
        if out.cappy_candidates_received != args.best_of:
            raise RuntimeError(f"{out.cappy_candidates_received} of {args.best_of} candidates: {out.cappy_errors}")
        return server_timing(raw.headers.get("server-timing"))

    async def client(c: int) -> None:
        nonlocal counter
        turn = c % 2  # half the clients start with the direct kind
        while time.perf_counter() < stop:
            k = counter
            counter += 1
            kind = "direct" if turn == 0 else "proxy"
            turn = 1 - turn
            t0 = time.perf_counter()
            try:
                timing = await (one_direct(k) if kind == "direct" else one_proxy(k))
            except Exception as err:  # every failure counts, in the window or not
                res["errors"].append(f"{kind}: {type(err).__name__}: {err}")
                continue
            t1 = time.perf_counter()
            if measure_from <= t0 and t1 <= stop:
                res[kind].append(t1 - t0)
                if timing:
                    res["sample"].append(timing.get("sample", float("nan")) / 1000)
                    res["score"].append(timing.get("score", float("nan")) / 1000)

    await asyncio.gather(*(client(c) for c in range(args.clients)))
    await direct.close()
    await via.close()
    return res


def ms(values: list[float], q: float) -> float:
    return 1000 * float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of load before measuring")
    p.add_argument("--best-of", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--model", default="cappy-mini", help="the scorer cappy serve loads")
    p.add_argument("--scorer-threads", type=int, default=1, help="cappy serve's torch threads")
    p.add_argument("--llama-threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--upstream", default=None, help="a running OpenAI-compatible server (default: start Gemma)")
    p.add_argument("--upstream-model", default="gemma")
    args = p.parse_args()

    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="cappy-proxy-load-") as tmp:
        try:
            upstream = args.upstream
            if upstream is None:
                port = free_port()
                procs.append(start_llama(port, args.llama_threads, Path(tmp) / "llama.log"))
                upstream = f"http://127.0.0.1:{port}/v1"
            port = free_port()
            procs.append(start_cappy(port, upstream, args))
            proxy = f"http://127.0.0.1:{port}"
            print(
                f"upstream {upstream} ({args.upstream_model}, llama.cpp threads {args.llama_threads}); cappy serve "
                f"--model {args.model} --num-threads {args.scorer_threads}; {os.cpu_count()} CPUs",
                flush=True,
            )
            print("load average at start: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()), flush=True)
            res = asyncio.run(load(proxy, upstream, args.upstream_model, args))
            stats = httpx.get(f"{proxy}/info", timeout=10).json()["stats"]
        finally:
            for proc in reversed(procs):
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print("load average at end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    d, x = res["direct"], res["proxy"]
    print(
        f"{args.clients} clients x {args.duration:.0f} s, best_of {args.best_of}, max_tokens {args.max_tokens}: "
        f"{len(d)} direct and {len(x)} proxy requests measured, {len(res['errors'])} errors"
    )
    print(f"direct to the upstream ({args.best_of} parallel calls): p50 {ms(d, 50):.0f} ms, p99 {ms(d, 99):.0f} ms")
    print(f"through cappy serve: p50 {ms(x, 50):.0f} ms, p99 {ms(x, 99):.0f} ms")
    score_mean = 1000 * float(np.mean(res["score"])) if res["score"] else float("nan")
    print(
        f"  of which sampling (upstream) p50 {ms(res['sample'], 50):.0f} ms, "
        f"scoring p50 {ms(res['score'], 50):.0f} ms (mean {score_mean:.0f} ms, p99 {ms(res['score'], 99):.0f} ms)"
    )
    mean_batch = stats["pairs"] / stats["batches"] if stats.get("batches") else float("nan")
    print(f"scorer: {stats['pairs']} pairs in {stats['batches']} batches (mean {mean_batch:.1f} pairs)")
    if res["errors"]:
        print(f"first error: {res['errors'][0]}")
    added = ms(x, 50) - ms(d, 50)
    print(
        f"errors={len(res['errors'])} direct_p50_ms={ms(d, 50):.0f} proxy_p50_ms={ms(x, 50):.0f} "
        f"score_p50_ms={ms(res['score'], 50):.0f} added_p50_ms={added:.0f} proxy_vs_direct={ms(x, 50) / ms(d, 50):.3f}"
    )


if __name__ == "__main__":
    main()
