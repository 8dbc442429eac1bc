"""`cappy data build` and `cappy data templates` through the real argument parser, in process."""

from __future__ import annotations

import json

from cappy.cli import main


def test_templates_lists_keys_and_templates(capsys):
    assert main(["data", "templates"]) == 0
    keys = capsys.readouterr().out.split()
    assert "super_glue/boolq" in keys and "trivia_qa/unfiltered" in keys
    assert main(["data", "templates", "tau/commonsense_qa"]) == 0  # alias resolved
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and all("original_task=" in line for line in lines)


def test_build_from_cli_with_overrides(tmp_path, capsys):
    rows = [{"sentence": f"film number {i} was fine", "label": i % 2, "idx": i} for i in range(30)]
    (tmp_path / "sst2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    mix = {"name": "m", "datasets": [{"name": "glue/sst2", "path": "sst2.jsonl", "templates": ["review"]}]}
    (tmp_path / "m.yaml").write_text(json.dumps(mix), encoding="utf-8")
    out = tmp_path / "out"
    code = main(["data", "build", str(tmp_path / "m.yaml"), "--out", str(out), "--seed", "9", "--no-progress"])
    assert code == 0
    assert "60 pairs in 1 shards" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 9 and manifest["rows"] == 60 and manifest["templates_used"] == {"glue/sst2": ["review"]}
    assert manifest["mismatched_shortfall"] == {"glue/sst2": {"review": 30}}  # binary: every other answer is taken


def test_build_errors_are_reported(tmp_path, capsys):
    (tmp_path / "x.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": 0}\n', encoding="utf-8")
    mix = {"datasets": [{"name": "super_glue/rte", "path": "x.jsonl"}]}
    (tmp_path / "m.yaml").write_text(json.dumps(mix), encoding="utf-8")
    assert main(["data", "build", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "held out for evaluation" in err and "super_glue/rte" in err
    mix = {"datasets": [{"name": "no/such_dataset", "path": "x.jsonl"}]}
    (tmp_path / "m.yaml").write_text(json.dumps(mix), encoding="utf-8")
    assert main(["data", "build", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "no templates for 'no/such_dataset'" in capsys.readouterr().err
