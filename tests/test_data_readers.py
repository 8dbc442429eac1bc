"""Readers: JSONL/CSV/Parquet/save_to_disk/shard folders, with file-and-line errors; real shared data."""

from __future__ import annotations

import json

import pytest

from cappy.data.readers import ReaderError, iter_examples, read_examples
from conftest import SHARED_DATA


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [{"question": f"q{i}", "label": i % 2, "nested": {"a": [i, i + 1]}} for i in range(5)]


def test_jsonl_rows_and_locations(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", ROWS)
    got = list(iter_examples(path))
    assert [ex for _, ex in got] == ROWS
    assert got[2][0] == f"{path}:3"


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n{"a": 2\n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"d\.jsonl:2"):
        list(read_examples(path))
    stats: dict[str, int] = {}
    assert [r["a"] for r in read_examples(path, skip_bad_lines=True, stats=stats)] == [1, 3]
    assert stats["bad_lines"] == 1


def test_json_list_and_csv(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps(ROWS), encoding="utf-8")
    assert list(read_examples(tmp_path / "l.json")) == ROWS
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('text,label\n"hello, world",1\n"two\nlines",0\n', encoding="utf-8")
    expected = [{"text": "hello, world", "label": "1"}, {"text": "two\nlines", "label": "0"}]
    assert list(read_examples(csv_path)) == expected
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,4,5\n", encoding="utf-8")
    with pytest.raises(ReaderError, match=r"bad\.csv:3: row has 3 fields, the header has 2"):
        list(read_examples(bad))


def test_parquet_and_shard_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "shards"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS[:3]), folder / "shard-00000.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[3:]), folder / "shard-00001.parquet")
    assert list(read_examples(folder / "shard-00001.parquet")) == ROWS[3:]
    assert list(read_examples(folder)) == ROWS


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "one"))
    assert list(read_examples(tmp_path / "one")) == ROWS
    dd = datasets.DatasetDict({"train": ds, "validation": datasets.Dataset.from_list(ROWS[:2])})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert list(read_examples(tmp_path / "dict", split="validation")) == ROWS[:2]
    with pytest.raises(ReaderError, match="choose one with split"):
        list(read_examples(tmp_path / "dict"))
    with pytest.raises(ReaderError, match="no split 'test'"):
        list(read_examples(tmp_path / "dict", split="test"))


def test_unknown_and_missing_sources(tmp_path):
    (tmp_path / "x.xml").write_text("<a/>", encoding="utf-8")
    with pytest.raises(ReaderError, match="unknown file type"):
        list(read_examples(tmp_path / "x.xml"))
    with pytest.raises(FileNotFoundError, match="hub:NAME"):
        list(read_examples(tmp_path / "nope.jsonl"))


@pytest.mark.skipif(not (SHARED_DATA / "pretrain").exists(), reason="shared data not present")
def test_real_boolq_file():
    rows = list(read_examples(SHARED_DATA / "pretrain" / "super_glue_boolq_val.jsonl"))
    assert len(rows) == 3270
    assert set(rows[0]) >= {"question", "passage", "label"}
    assert {r["label"] for r in rows} == {0, 1}
