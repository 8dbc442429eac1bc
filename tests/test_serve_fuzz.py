"""Property-based fuzzing of the HTTP API from its own /openapi.json (schemathesis), against 127.0.0.1 only.

Bounded: a fixed seed, at most ``EXAMPLES`` generated requests per operation, a time cap. Every check runs: no
5xx, every response matching the schema, schema-valid requests accepted, schema-violating ones rejected.
Run with ``make fuzz`` (the slow suite includes it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cappy.serve import ServeConfig, create_app
from test_serve import TinyGenerator, running

EXAMPLES = 400  # per operation: 7 operations give over 1,000 requests


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_schemathesis_finds_nothing(tiny_scorer, tmp_path):
    if shutil.which("schemathesis") is None and shutil.which("st") is None:
        pytest.importorskip("schemathesis", reason="schemathesis is in the dev extras")
    app = create_app(tiny_scorer, ServeConfig(max_items_per_request=64), generator=TinyGenerator(), generator_name="t")
    with running(app) as (base, _):
        config = Path(__file__).parent / "schemathesis.toml"
        cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{base}/openapi.json"]
        cmd += ["-n", str(EXAMPLES)]
        cmd += ["--seed", "1", "-c", "all", "--request-timeout", "30", "--no-color"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=800)
    out = run.stdout + run.stderr
    generated = re.search(r"(\d+) generated", out)
    assert generated and int(generated.group(1)) >= 1000, out[-3000:]
    assert run.returncode == 0, out[-6000:]
