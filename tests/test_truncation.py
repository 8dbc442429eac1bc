"""Left truncation of long instructions: the same token counts per side as longest-first, the instruction's end
kept, the setting saved with a checkpoint and used by training. Real tokenizers (WordPiece and byte-level BPE)."""

from __future__ import annotations

import json
import random

import pytest
from transformers import AutoTokenizer

from cappy import Cappy
from cappy.model import encode_pairs
from cappy.train import TrainConfig, train
from test_train import _cfg
from test_train_data import make_rows, write_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = "the cat sat on a mat with unbelievable antidisestablishment 42 , . question answer Ünïcode".split()


def _random_texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 70))) for _ in range(n)]


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_left_keeps_the_same_counts_per_side_and_the_instruction_end(tiny_model_dir, arch):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir(arch))
    ins, res = _random_texts(0, 200), _random_texts(1, 200)
    ins.append("x " * 3000)  # long enough for the right-side pre-cut (more than 8 x max_length characters)
    res.append("y")
    for max_length in (8, 9, 17, 64):
        right = encode_pairs(tok, ins, res, max_length)
        left = encode_pairs(tok, ins, res, max_length, "left")
        assert set(left) == set(right)
        for i in range(len(ins)):
            a, b = right["input_ids"][i], left["input_ids"][i]
            assert len(a) == len(b) <= max_length
            # instruction tokens = position of the first separator; exact for WordPiece; byte-level BPE may move the
            # odd token of a tie, because the right side's pre-cut re-tokenizes a cut text (one token either way)
            diff = abs(a.index(tok.sep_token_id) - b.index(tok.sep_token_id))
            assert diff == 0 if arch == "bert" else diff <= 1
            if "token_type_ids" in right:
                assert right["token_type_ids"][i] == left["token_type_ids"][i]
    # the end of a long instruction survives on the left, its start on the right
    long = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    half = len(tok(long, add_special_tokens=False)["input_ids"]) // 2 + 5  # room for about half the instruction
    kept_left = tok.decode(encode_pairs(tok, [long], ["yes"], half, "left")["input_ids"][0], skip_special_tokens=True)
    kept_right = tok.decode(encode_pairs(tok, [long], ["yes"], half)["input_ids"][0], skip_special_tokens=True)
    assert "kappa" in kept_left and "alpha" not in kept_left
    assert "alpha" in kept_right and "kappa" not in kept_right
    # nothing is cut when the pair fits: both sides give the tokenizer's own encoding
    short = encode_pairs(tok, ["What is 2+2?"], ["4"], 64, "left")["input_ids"]
    assert short == tok(["What is 2+2?"], ["4"])["input_ids"]


def test_bad_side_is_an_error(tiny_scorer):
    with pytest.raises(ValueError, match="instruction_truncation must be 'right' or 'left'"):
        encode_pairs(tiny_scorer.tokenizer, ["a"], ["b"], 16, "middle")
    with pytest.raises(ValueError, match="instruction_truncation"):
        TrainConfig.from_dict({"model": "m", "train": ["x"], "output_dir": "o", "instruction_truncation": "up"})


def test_checkpoint_declares_left_and_scores_the_end(tiny_model_dir, tmp_path):
    right = Cappy.from_pretrained(tiny_model_dir("bert"), device="cpu", dtype="float32", max_length=12)
    assert right.instruction_truncation == "right"
    left = Cappy.from_pretrained(
        tiny_model_dir("bert"), device="cpu", dtype="float32", max_length=12, instruction_truncation="left"
    )
    left.save_pretrained(tmp_path / "left")
    cfg = json.loads((tmp_path / "left" / "config.json").read_text())
    assert cfg["cappy"] == {"max_length": 12, "instruction_truncation": "left"}
    back = Cappy.from_pretrained(tmp_path / "left", device="cpu", dtype="float32")
    assert back.instruction_truncation == "left"
    # two instructions that differ only at the start: right truncation tells them apart, left (end kept) does not
    a = "red blue green " + "same words here " * 10
    b = "one two three " + "same words here " * 10
    assert back.score(a, "ok") == back.score(b, "ok")  # equal inputs give the bit-identical score
    assert right.score(a, "ok") != right.score(b, "ok")


def test_training_encodes_and_saves_left_truncation(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", make_rows(32))
    out = tmp_path / "run"
    train(_cfg(tiny_model_dir("bert"), data, out, max_length=16, instruction_truncation="left"))
    saved = json.loads((out / "config.json").read_text())["cappy"]
    assert saved["instruction_truncation"] == "left"
    # adapting that checkpoint again keeps its setting unless the config says otherwise
    again = tmp_path / "again"
    train(_cfg(out, data, again, max_length=16, num_pairs=16))
    assert json.loads((again / "config.json").read_text())["cappy"]["instruction_truncation"] == "left"
