"""Helpers for the training tests: small real pair files in the fixed pair-row schema."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WORDS = (
    "apple banana cherry river mountain blue green seven eleven house garden music sky water stone light "
    "paper window yellow orange"
).split()


PAIR_SCHEMA = pa.schema(
    [
        ("instruction", pa.string()),
        ("response", pa.string()),
        ("label", pa.float32()),
        ("task", pa.string()),
        ("template", pa.string()),
        ("source", pa.string()),
    ]
)


def make_rows(n_instructions: int, per_instruction: int = 4, seed: int = 0, task: str = "toy/colors") -> list[dict]:
    """Instructions of varied length, each with one right response (label 1), wrong ones (0) and a partial (0.5)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_instructions):
        key = rng.choice(WORDS)
        filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 40)))
        instruction = f"Item {i}. {filler} Repeat the word: {key}"
        for j in range(per_instruction):
            if j == 0:
                response, label, source = key, 1.0, "gold"
            elif j == per_instruction - 1 and per_instruction > 2:
                response, label, source = f"{key} {rng.choice(WORDS)}", 0.5, "llm"
            else:
                response, label, source = rng.choice([w for w in WORDS if w != key]), 0.0, "wrong_choice"
            rows.append(
                {
                    "instruction": instruction,
                    "response": response,
                    "label": label,
                    "task": task,
                    "template": "repeat",
                    "source": source,
                }
            )
    return rows


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 64) -> Path:
    table = pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_shards(folder: Path, rows: list[dict], shard_rows: int, row_group_size: int = 64) -> Path:
    """A `cappy data build`-style folder: shard-00000.parquet, ... and manifest.json."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, s in enumerate(range(0, len(rows), shard_rows)):
        name = f"shard-{k:05d}.parquet"
        part = rows[s : s + shard_rows]
        write_parquet(folder / name, part, row_group_size)
        shards.append({"path": name, "rows": len(part), "sha256": ""})
    manifest = {"rows": len(rows), "shards": shards, "tasks": {}, "label_histogram": {}, "seed": 0, "inputs": []}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------- data tests
import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cappy.train.data import PairSource, Plan  # noqa: E402


def test_source_reads_manifest_folder_and_jsonl(tmp_path):
    rows = make_rows(30)  # 120 pairs
    folder = write_shards(tmp_path / "pairs", rows[:100], shard_rows=40, row_group_size=16)
    jl = write_jsonl(tmp_path / "more.jsonl", rows[100:])
    src = PairSource([str(folder), str(jl)], jsonl_block_rows=8)
    assert src.rows == 120
    assert sum(b.rows for b in src.blocks) == 120
    everything = src.read_all()
    assert everything.instructions == [r["instruction"] for r in rows]
    assert everything.responses == [r["response"] for r in rows]
    np.testing.assert_array_equal(everything.labels, np.array([r["label"] for r in rows], dtype=np.float32))
    np.testing.assert_array_equal(everything.row_ids, np.arange(120))
    # Blocks read out of order give the same rows for the same ids.
    part = src.read([len(src.blocks) - 1, 0])
    assert part.row_ids[0] == src.blocks[-1].start
    assert part.instructions[0] == rows[src.blocks[-1].start]["instruction"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("nan_label_parquet", r"shard-00000\.parquet: row 5: label is nan"),
        ("inf_label_jsonl", r"bad\.jsonl:3: label is inf"),
        ("label_above_one", r"bad\.jsonl:2: label is 1\.5"),
        ("missing_field_jsonl", r"bad\.jsonl:4: missing field\(s\) response"),
        ("missing_column_parquet", r"bad\.parquet: missing column\(s\) label"),
        ("empty_shard", r"shard-00001\.parquet: empty shard \(0 rows\)"),
        ("manifest_rows_mismatch", r"the manifest says 41 rows, the file has 40"),
        ("missing_shard", r"shard-00001\.parquet is missing"),
        ("null_instruction", r"bad\.parquet: row 2: instruction is null"),
        ("empty_jsonl", r"bad\.jsonl: empty file"),
    ],
)
def test_bad_input_is_named(tmp_path, case, message):
    rows = make_rows(20)
    if case == "nan_label_parquet":
        rows[5]["label"] = float("nan")
        target = write_shards(tmp_path / "pairs", rows, shard_rows=40)
    elif case == "inf_label_jsonl":
        rows[2]["label"] = float("inf")
        target = tmp_path / "bad.jsonl"
        target.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json writes Infinity
    elif case == "label_above_one":
        rows[1]["label"] = 1.5
        target = write_jsonl(tmp_path / "bad.jsonl", rows)
    elif case == "missing_field_jsonl":
        del rows[3]["response"]
        target = write_jsonl(tmp_path / "bad.jsonl", rows)
    elif case == "missing_column_parquet":
        target = tmp_path / "bad.parquet"
        pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "label"} for r in rows]), target)
    elif case == "empty_shard":
        target = write_shards(tmp_path / "pairs", rows[:40], shard_rows=40)
        write_parquet(target / "shard-00001.parquet", [])  # a shard with the schema and no rows
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["shards"].append({"path": "shard-00001.parquet", "rows": 0, "sha256": ""})
        (target / "manifest.json").write_text(json.dumps(manifest))
    elif case == "manifest_rows_mismatch":
        target = write_shards(tmp_path / "pairs", rows[:40], shard_rows=40)
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["shards"][0]["rows"] = 41
        manifest["rows"] = 41
        (target / "manifest.json").write_text(json.dumps(manifest))
    elif case == "missing_shard":
        target = write_shards(tmp_path / "pairs", rows, shard_rows=40)
        (target / "shard-00001.parquet").unlink()
    elif case == "null_instruction":
        rows[2]["instruction"] = None
        target = tmp_path / "bad.parquet"
        pq.write_table(pa.Table.from_pylist(rows), target)
    elif case == "empty_jsonl":
        target = tmp_path / "bad.jsonl"
        target.write_text("\n\n")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        PairSource([str(target)])


def _plan(src, **kw):
    args = dict(batch_size=16, seed=3, window_rows=50, num_pairs=None, epochs=1, shuffle=True)
    args.update(kw)
    return Plan(src, **args)


def test_plan_covers_each_epoch_once_and_is_deterministic(tmp_path):
    rows = make_rows(50)  # 200 pairs
    src = PairSource([str(write_shards(tmp_path / "p", rows, shard_rows=64, row_group_size=20))])
    plan = _plan(src, epochs=2)
    assert plan.total_updates == sum(math.ceil(w.rows / 16) for w in plan.windows)
    seen = {0: [], 1: []}
    sizes = []
    for w in range(len(plan.windows)):
        for batch in plan.batches(w, grouped=False, length_cap=4096):
            seen[plan.windows[w].epoch].extend(batch.row_ids.tolist())
            sizes.append(len(batch))
            for i, rid in enumerate(batch.row_ids):  # texts and labels travel with their row id
                assert batch.instructions[i] == rows[rid]["instruction"]
                assert batch.labels[i] == np.float32(rows[rid]["label"])
    assert sorted(seen[0]) == list(range(200)) and sorted(seen[1]) == list(range(200))
    assert seen[0] != seen[1], "the second epoch must be reshuffled"
    assert len(sizes) == plan.total_updates and max(sizes) == 16
    again = _plan(src, epochs=2)
    assert [b.row_ids.tolist() for b in again.batches(1, False, 4096)] == [
        b.row_ids.tolist() for b in plan.batches(1, False, 4096)
    ]
    other_seed = _plan(src, epochs=2, seed=4)
    assert [b.row_ids.tolist() for b in other_seed.batches(0, False, 4096)] != [
        b.row_ids.tolist() for b in plan.batches(0, False, 4096)
    ]


def test_plan_repeats_or_truncates_to_num_pairs(tmp_path):
    src = PairSource([str(write_jsonl(tmp_path / "p.jsonl", make_rows(25)))], jsonl_block_rows=10)  # 100 pairs
    for num_pairs in (37, 100, 250):
        plan = _plan(src, num_pairs=num_pairs)
        total = sum(len(b) for w in range(len(plan.windows)) for b in plan.batches(w, False, 4096))
        assert total == num_pairs
        assert plan.total_updates == sum(w.batches for w in plan.windows)
    assert max(w.epoch for w in _plan(src, num_pairs=250).windows) == 2


def test_length_grouping_cuts_padding(tmp_path):
    src = PairSource([str(write_jsonl(tmp_path / "p.jsonl", make_rows(100)))])
    plan = _plan(src, window_rows=400)
    lengths = lambda b: np.array([len(a) + len(r) for a, r in zip(b.instructions, b.responses)])  # noqa: E731
    batches = plan.batches(0, grouped=False, length_cap=4096)
    padded_sorted = sum(len(b) * lengths(b).max() for b in batches)
    allpairs = src.read_all()
    random_order = np.random.default_rng(0).permutation(len(allpairs))
    padded_random = sum(
        len(idx) * lengths(allpairs.take(idx)).max() for idx in np.array_split(random_order, len(batches))
    )
    assert padded_sorted < 0.8 * padded_random


def test_grouped_batches_keep_instructions_together(tmp_path):
    src = PairSource([str(write_jsonl(tmp_path / "p.jsonl", make_rows(40, per_instruction=4)))])
    plan = _plan(src, window_rows=160, batch_size=16)
    runs = 0
    for batch in plan.batches(0, grouped=True, length_cap=4096):
        # Each instruction appears as one contiguous run, and 16 = 4 x 4 so no group is split.
        seen = []
        for s in batch.instructions:
            if not seen or seen[-1] != s:
                assert s not in seen
                seen.append(s)
        runs += len(seen)
        assert all(batch.instructions.count(s) == 4 for s in seen)
    assert runs == 40
