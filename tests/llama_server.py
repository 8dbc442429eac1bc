"""A real ``python -m cappy.generate.llama_server`` (llama-cpp-python's OpenAI-compatible server with cappy's fixes)
serving the packaged Gemma 3 270M GGUF on 127.0.0.1, for tests of OpenAI-compatible clients and proxies."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_server(
    log_dir: Path, extra_args: Sequence[str] = (), start_timeout: float = 120
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start the server (model alias "gemma"), wait until it accepts connections; yields ``(url ending in /v1,
    process)`` and stops it afterwards (a test may kill it first). Skips when llama-cpp-python[server] is missing."""
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")
    from cappy.generate.llamacpp import gemma_gguf_path

    port = free_port()
    cmd = [sys.executable, "-m", "cappy.generate.llama_server", "--model", str(gemma_gguf_path())]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "2"]
    cmd += ["--model_alias", "gemma", *extra_args]
    log = Path(log_dir) / f"llama-server-{port}.log"
    # The server logs a lot while loading: a pipe nobody reads would fill up and block it, so log to a file.
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ})
    deadline = time.monotonic() + start_timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the llama.cpp server did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
    try:
        yield f"http://127.0.0.1:{port}/v1", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
