"""`cappy data split`: dev by instruction, caps, grouped shuffle, on real Parquet files."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cappy.cli import main
from cappy.data.split import SplitConfig, split_pairs


def make_pairs(path, n_instr=300):
    rows = []
    for i in range(n_instr):
        task = "big" if i % 2 else "small"
        for j, lab in enumerate((1.0, 0.0, 0.0)):
            rows.append(
                {
                    "instruction": f"{task} question {i}",
                    "response": f"answer {j}",
                    "label": lab,
                    "task": task,
                    "template": "t",
                    "source": "gold" if lab else "wrong_choice",
                }
            )
    path.mkdir()
    half = len(rows) // 2
    pq.write_table(pa.Table.from_pylist(rows[:half]), path / "shard-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[half:]), path / "shard-00001.parquet")
    return rows


def test_split_groups_caps_and_determinism(tmp_path):
    rows = make_pairs(tmp_path / "pairs")
    s = split_pairs(tmp_path / "pairs", tmp_path / "a", SplitConfig(dev_fraction=0.1, caps={"big": 150}))
    train = pq.read_table(tmp_path / "a" / "train.parquet").to_pylist()
    dev = [json.loads(x) for x in open(tmp_path / "a" / "dev.jsonl")]
    assert s["train_rows"] == len(train) and s["dev_rows"] == len(dev)
    tr_i, dev_i = {r["instruction"] for r in train}, {r["instruction"] for r in dev}
    assert not tr_i & dev_i and 10 < len(dev_i) < 60
    assert sum(r["task"] == "big" for r in train) == 150
    small = {r["instruction"] for r in rows if r["task"] == "small"} - dev_i
    assert small <= tr_i  # uncapped task fully kept
    # every instruction's rows are contiguous in train
    seen, last = set(), None
    for r in train:
        if r["instruction"] != last:
            assert r["instruction"] not in seen
            seen.add(r["instruction"])
            last = r["instruction"]
    # tasks are interleaved, not one block after the other
    assert len({r["task"] for r in train[:30]}) == 2
    split_pairs(tmp_path / "pairs", tmp_path / "b", SplitConfig(dev_fraction=0.1, caps={"big": 150}))
    assert (tmp_path / "a" / "train.parquet").read_bytes() == (tmp_path / "b" / "train.parquet").read_bytes()


def test_split_errors(tmp_path, capsys):
    make_pairs(tmp_path / "pairs", 10)
    with pytest.raises(ValueError, match="not in the data"):
        split_pairs(tmp_path / "pairs", tmp_path / "o", SplitConfig(caps={"nope": 1}))
    assert main(["data", "split", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert main(["data", "split", str(tmp_path / "pairs"), "--out", str(tmp_path / "o"), "--cap", "big"]) == 2
    assert "TASK=ROWS" in capsys.readouterr().err
