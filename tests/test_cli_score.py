"""`cappy score` / `cappy rank` on real JSONL files with a tiny checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cappy import Cappy
from cappy.cli import main
from tolerances import assert_scores_close

ROWS = [
    {"id": 1, "instruction": "What is 2+2?", "response": "4"},
    {"id": 2, "instruction": "What is 2+2?", "response": "five"},
    {"id": 3, "instruction": "Capital of France?", "response": "Paris", "extra": [1, 2]},
]


def write_jsonl(path, rows, raw_lines=()):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        for line in raw_lines:
            f.write(line + "\n")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_score_file_adds_scores_and_keeps_fields(tiny_model_dir, tmp_path):
    model = tiny_model_dir("bert")
    inp = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    assert main(["score", "--model", str(model), "--input", str(inp), "--output", str(out), "--device", "cpu"]) == 0
    got = read_jsonl(out)
    assert [{k: v for k, v in r.items() if k != "score"} for r in got] == ROWS
    want = Cappy.from_pretrained(model, device="cpu").score(
        [r["instruction"] for r in ROWS], [r["response"] for r in ROWS]
    )
    assert_scores_close([r["score"] for r in got], want)  # all rows in one call: rounding


def test_score_custom_fields(tiny_model_dir, tmp_path):
    rows = [{"q": "What is 2+2?", "a": "4"}, {"q": "Sky colour?", "a": "blue"}]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    args = ["score", "--model", str(tiny_model_dir("bert")), "--input", str(inp), "--output", str(out)]
    assert main(args + ["--instruction-field", "q", "--response-field", "a", "--batch-size", "1"]) == 0
    assert all(isinstance(r["score"], float) for r in read_jsonl(out))


def test_malformed_line_stops_with_line_number_and_leaves_no_output(tiny_model_dir, tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", ROWS[:2], raw_lines=['{"instruction": "x", "response": ', "[1, 2]"])
    out = tmp_path / "out.jsonl"
    rc = main(["score", "--model", str(tiny_model_dir("bert")), "--input", str(inp), "--output", str(out)])
    assert rc == 2
    assert "in.jsonl:3" in capsys.readouterr().err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [inp]  # no temp file either


def test_bad_utf8_byte_names_file_and_line(tiny_model_dir, tmp_path, capsys):
    from cappy.io import BadLineError, iter_jsonl

    good = json.dumps(ROWS[0]).encode()
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(good + b"\n" + b'{"instruction": "caf\xe9", "response": "x"}\n' + good + b"\n")
    with pytest.raises(BadLineError, match=r"in\.jsonl:2: not valid UTF-8 \(byte 0xe9 at byte 21"):
        list(iter_jsonl(inp))
    stats = {}
    assert [n for n, _ in iter_jsonl(inp, skip_bad_lines=True, stats=stats)] == [1, 3] and stats["bad_lines"] == 1
    out = tmp_path / "out.jsonl"
    rc = main(["score", "--model", str(tiny_model_dir("bert")), "--input", str(inp), "--output", str(out)])
    assert rc == 2 and "in.jsonl:2" in capsys.readouterr().err and not out.exists()


def test_missing_field_names_line(tiny_model_dir, tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", [ROWS[0], {"instruction": "no response here"}])
    rc = main(["score", "--model", str(tiny_model_dir("bert")), "--input", str(inp), "--output", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{inp}:2: missing field 'response'" in err  # file:line, like every other bad line


def test_skip_bad_lines_counts(tiny_model_dir, tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", ROWS, raw_lines=["not json", '{"instruction": 3, "response": "x"}'])
    out = tmp_path / "out.jsonl"
    args = ["score", "--model", str(tiny_model_dir("bert")), "--input", str(inp), "--output", str(out)]
    assert main(args + ["--skip-bad-lines"]) == 0
    assert len(read_jsonl(out)) == 3
    assert "2 bad lines skipped" in capsys.readouterr().err


def test_rank_adds_scores_and_best(tiny_model_dir, tmp_path):
    model = tiny_model_dir("bert")
    rows = [
        {"instruction": "Name a prime.", "candidates": ["4", "7", "nine"]},
        {"instruction": "Is the sky blue?", "candidates": ["yes"]},
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert main(["rank", "--model", str(model), "--input", str(inp), "--output", str(out)]) == 0
    got = read_jsonl(out)
    scorer = Cappy.from_pretrained(model, device="cpu")
    for row, r in zip(rows, got):
        want = scorer.score(row["instruction"], row["candidates"])
        assert_scores_close(r["scores"], want)  # all rows in one call: rounding
        assert r["best"] == int(np.argmax(want))
        assert r["candidates"] == row["candidates"]


def test_rank_rejects_empty_candidates(tiny_model_dir, tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "q", "candidates": []}])
    rc = main(["rank", "--model", str(tiny_model_dir("bert")), "--input", str(inp), "--output", str(tmp_path / "o")])
    assert rc == 2 and "empty" in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", ROWS)
    rc = main(
        ["score", "--model", "cappy-mini-does-not-exist/..", "--input", str(inp), "--output", str(tmp_path / "o")]
    )
    assert rc != 0


def test_console_script_reads_stdin_writes_stdout(tiny_model_dir):
    exe = [sys.executable, "-m", "cappy", "score", "--model", str(tiny_model_dir("bert"))]
    lines = "".join(json.dumps(r) + "\n" for r in ROWS)
    res = subprocess.run(exe, input=lines, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    got = [json.loads(x) for x in res.stdout.splitlines()]
    assert [r["id"] for r in got] == [1, 2, 3] and all("score" in r for r in got)
    assert "3 rows" in res.stderr


@pytest.mark.parametrize("pred,refs,lo,hi", [("the cat sat", ["a cat sat"], 0.66, 0.67), ("x", ["y", "x"], 1, 1)])
def test_rouge_l_is_stemmed_max_over_refs(pred, refs, lo, hi):
    from cappy.metrics import rouge_l

    assert lo <= rouge_l(pred, refs) <= hi


def test_rouge_l_stemming_and_errors():
    from cappy.metrics import accuracy, rouge_l

    assert rouge_l("running dogs", "run dog") == 1.0
    with pytest.raises(ValueError):
        rouge_l("a", [])
    with pytest.raises(TypeError):
        rouge_l(None, "a")
    assert accuracy([0, 1, 1], [0, 1, 0]) == pytest.approx(2 / 3)


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: what must fail before the model loads is checked that way."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Cappy, "from_pretrained", classmethod(refuse))


@pytest.mark.parametrize("command", ["score", "rank"])
def test_empty_input_is_an_error_naming_the_file_before_the_model_loads(command, tmp_path, capsys, no_model_load):
    inp = tmp_path / "empty.jsonl"
    inp.write_text("\n  \n")  # blank lines only: no rows
    out = tmp_path / "out.jsonl"
    assert main([command, "--model", "cappy-mini", "--input", str(inp), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{inp}: the input is empty" in err
    assert not out.exists()


def test_missing_or_broken_input_fails_before_the_model_loads(tmp_path, capsys, no_model_load):
    out = tmp_path / "out.jsonl"
    base = ["score", "--model", "cappy-mini", "--output", str(out)]
    assert main([*base, "--input", str(tmp_path / "nope.jsonl")]) == 2
    assert f"{tmp_path / 'nope.jsonl'}: no such input file" in capsys.readouterr().err
    assert main([*base, "--input", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "bad.jsonl", [], raw_lines=["{not json"])
    assert main([*base, "--input", str(bad)]) == 2
    assert f"{bad}:1: malformed JSONL line" in capsys.readouterr().err
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"instruction": "q", "answer": "a"}])
    assert main([*base, "--input", str(wrong)]) == 2
    assert f"{wrong}:1: missing field 'response'" in capsys.readouterr().err
    assert main(["rank", "--model", "cappy-mini", "--output", str(out), "--input", str(wrong)]) == 2
    assert f"{wrong}:1: missing field 'candidates'" in capsys.readouterr().err
    assert not out.exists()


def test_all_lines_skipped_or_empty_stdin_is_an_error(tiny_model_dir, tmp_path, capsys, monkeypatch):
    model = str(tiny_model_dir("bert"))
    inp = write_jsonl(tmp_path / "in.jsonl", [], raw_lines=["not json", '{"instruction": 3, "response": "x"}'])
    out = tmp_path / "out.jsonl"
    assert main(["score", "--model", model, "--input", str(inp), "--output", str(out), "--skip-bad-lines"]) == 2
    assert f"{inp}: no valid rows (2 bad lines skipped)" in capsys.readouterr().err and not out.exists()
    # stdin cannot be checked ahead without reading it: the run itself finds it empty and writes nothing
    import io

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert main(["score", "--model", model, "--output", str(out)]) == 2
    assert "<stdin>: the input is empty" in capsys.readouterr().err and not out.exists()


def test_progress_bar_on_a_terminal_only_and_off_with_no_progress(tiny_model_dir, tmp_path, capsys, monkeypatch):
    model = str(tiny_model_dir("bert"))
    inp = write_jsonl(tmp_path / "in.jsonl", ROWS)
    args = ["score", "--model", model, "--input", str(inp), "--output", str(tmp_path / "out.jsonl")]
    assert main(args) == 0
    assert "scoring" not in capsys.readouterr().err  # captured stderr is not a terminal: no bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "scoring: 100%" in err and "3/3" in err  # a bar over the file's rows, total counted ahead
    assert main([*args, "--no-progress"]) == 0
    assert "scoring" not in capsys.readouterr().err
    rank = write_jsonl(tmp_path / "rank.jsonl", [{"instruction": "q", "candidates": ["a", "b"]}] * 2)
    assert main(["rank", "--model", model, "--input", str(rank), "--output", str(tmp_path / "r.jsonl")]) == 0
    assert "ranking: 100%" in capsys.readouterr().err


def test_rank_sort_writes_candidates_best_first_with_their_scores(tiny_model_dir, tmp_path):
    model = tiny_model_dir("bert")
    rows = [
        {"id": "a", "instruction": "Name a prime.", "candidates": ["4", "7", "nine", "eleven", "4"]},
        {"id": "b", "instruction": "Is the sky blue?", "candidates": ["yes"]},
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    plain, ranked = tmp_path / "plain.jsonl", tmp_path / "sorted.jsonl"
    assert main(["rank", "--model", str(model), "--input", str(inp), "--output", str(plain)]) == 0
    assert main(["rank", "--model", str(model), "--input", str(inp), "--output", str(ranked), "--sort"]) == 0
    for row, p, s in zip(rows, read_jsonl(plain), read_jsonl(ranked)):
        assert s["id"] == row["id"] and s["best"] == 0
        assert sorted(s["order"]) == list(range(len(row["candidates"])))
        assert s["candidates"] == [row["candidates"][i] for i in s["order"]]
        assert s["scores"] == [p["scores"][i] for i in s["order"]]  # the same run's scores, permuted
        assert s["scores"] == sorted(s["scores"], reverse=True)
        assert s["order"][0] == p["best"]
    # the duplicate "4" scores the same: ties keep input order
    first = read_jsonl(ranked)[0]["order"]
    assert first.index(0) < first.index(4)


def test_library_loading_bars_and_logs_only_with_verbose(tiny_model_dir, tmp_path):
    """transformers' "Loading weights" bar is off on stderr unless --verbose (before or after the command)."""
    inp = write_jsonl(tmp_path / "in.jsonl", ROWS[:1])
    exe = [sys.executable, "-m", "cappy"]
    args = ["score", "--model", str(tiny_model_dir("bert")), "--input", str(inp), "--output", str(tmp_path / "o")]
    quiet = subprocess.run([*exe, *args], capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.strip() == "cappy score: 1 rows"  # nothing else: no bars, no library lines
    for verbose in ([*exe, "-v", *args], [*exe, *args, "--verbose"]):
        loud = subprocess.run(verbose, capture_output=True, text=True, timeout=120)
        assert loud.returncode == 0, loud.stderr
        assert "Loading weights" in loud.stderr
