"""cappy's own errors share one base and keep their built-in one; `cappy` reports a usage or input error in one
line with exit status 2, and lets a bug out with its traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import cappy.cli.report
from cappy.cli import main
from cappy.config import ConfigError
from cappy.data.bigbench import BigBenchError
from cappy.data.builder import BuildError
from cappy.data.mixture import HeldOutError, MixtureError
from cappy.data.readers import ReaderError
from cappy.data.templates import TemplateError
from cappy.errors import CappyError, InputError, InputTypeError
from cappy.evaluate.guard import ContaminationError
from cappy.generate.base import GenerationError, Recipe
from cappy.integrations.lm_eval import CappyTaskError
from cappy.io import BadLineError, iter_jsonl
from cappy.model.checkpoint import ModelNotFoundError, NotACheckpointError
from cappy.train.loop import TrainingError

KINDS = [
    (InputError, ValueError),
    (InputTypeError, TypeError),
    (BadLineError, ValueError),
    (ConfigError, ValueError),
    (ReaderError, ValueError),
    (BigBenchError, ValueError),
    (MixtureError, ValueError),
    (HeldOutError, MixtureError),
    (TemplateError, ValueError),
    (BuildError, ValueError),
    (ContaminationError, ValueError),
    (NotACheckpointError, ValueError),
    (ModelNotFoundError, FileNotFoundError),
    (GenerationError, RuntimeError),
    (TrainingError, RuntimeError),
    (CappyTaskError, NotImplementedError),
]


@pytest.mark.parametrize("cls,base", KINDS, ids=[c.__name__ for c, _ in KINDS])
def test_every_error_is_a_cappy_error_and_keeps_its_builtin_base(cls, base):
    assert issubclass(cls, CappyError) and issubclass(cls, base)


def test_bad_input_is_an_input_error_that_callers_catching_value_error_still_catch(tmp_path):
    with pytest.raises(ValueError, match="temperature must be > 0") as caught:
        Recipe.from_dict({"name": "r", "decodings": [{"name": "s", "method": "sample", "temperature": 0}]})
    assert isinstance(caught.value, InputError)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(BadLineError, match=r"bad.jsonl:2: malformed JSONL line"):
        list(iter_jsonl(bad))


def _results_dir(tmp_path, name, text):
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(text)
    return d


def test_usage_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2  # a FileNotFoundError
    err = capsys.readouterr().err
    assert err.startswith("cappy report: error: ") and "no results.json" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    broken = _results_dir(tmp_path, "broken", "{not json")
    assert main(["report", str(broken)]) == 2  # an InputError naming the file
    err = capsys.readouterr().err
    assert err.startswith(f"cappy report: error: {broken / 'results.json'}: not a cappy results file (malformed JSON")
    assert err.count("\n") == 1


def test_bad_yaml_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "job.yaml"
    bad.write_text("tasks: [a, b\n")
    assert main(["eval", "mc", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cappy eval mc: error: {bad}:") and "not valid YAML" in err and "Traceback" not in err


def test_debug_shows_the_traceback_of_a_usage_error(tmp_path, capsys, monkeypatch):
    missing = str(tmp_path / "missing")
    assert main(["--debug", "report", missing]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().endswith("is it a `cappy eval` output folder?)")
    monkeypatch.setenv("CAPPY_DEBUG", "1")
    assert main(["report", missing]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.setenv("CAPPY_DEBUG", "0")
    assert main(["report", missing]) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("bug", [KeyError("methods"), TypeError("unsupported operand"), AttributeError("x")])
def test_a_bug_is_not_a_usage_error(bug, monkeypatch, tmp_path):
    def broken(args):
        raise bug

    monkeypatch.setattr(cappy.cli.report, "run_report", broken)
    with pytest.raises(type(bug)):
        main(["report", str(tmp_path)])


def test_the_exit_status_of_each_kind(monkeypatch, tmp_path, capsys):
    def raising(err):
        def run(args):
            raise err

        return run

    for err, code in [
        (GenerationError("server at http://x/v1 unreachable"), 1),
        (TrainingError("update 3: the loss is nan"), 3),
        (InputError("--cap x: each must be TASK=ROWS"), 2),
        (KeyboardInterrupt(), 130),
    ]:
        monkeypatch.setattr(cappy.cli.report, "run_report", raising(err))
        assert main(["report", str(tmp_path)]) == code
        said = capsys.readouterr().err
        assert said == ("" if code == 130 else f"cappy report: error: {err}\n")


def test_the_console_command_prints_a_bugs_traceback_and_exits_1(tmp_path):
    code = (
        "import sys, cappy.cli.report as r\n"
        "def broken(args):\n    return {}['no such key']\n"
        "r.run_report = broken\n"
        "from cappy.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, "report", str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "KeyError: 'no such key'" in proc.stderr
    assert "cappy report: error:" not in proc.stderr
