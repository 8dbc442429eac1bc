"""What training feeds the model: the scorer's pair encoding and collation (cappy.model.encoding), never a copy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cappy.model import Cappy, collate_pairs
from cappy.train import TrainConfig, Trainer
from cappy.train.data import Pairs
from test_train_data import make_rows, write_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trainer(model_dir, tmp_path, **kw) -> Trainer:
    data = write_jsonl(tmp_path / "p.jsonl", make_rows(4))
    cfg = dict(
        model=str(model_dir),
        train=[str(data)],
        output_dir=str(tmp_path / "run"),
        batch_size=4,
        per_device_batch_size=4,
        max_length=64,
        device="cpu",
        mixed_precision="no",
        progress=False,
    )
    return Trainer(TrainConfig.from_dict({**cfg, **kw}))


def _pairs() -> Pairs:
    long_text = "alpha beta gamma unbelievably " * 100  # past 8 x max_length characters: the pre-cut path
    instructions = ["What is 2+2?", long_text, "Name a colour.", ""]
    responses = ["4", "short", long_text, "red"]
    return Pairs(instructions, responses, np.zeros(4, dtype=np.float32), np.arange(4))


@pytest.mark.parametrize("pad_to_max_length", [False, True])
def test_training_inputs_are_the_scorer_encoding_and_collation(tiny_model_dir, tmp_path, pad_to_max_length):
    trainer = _trainer(tiny_model_dir("bert"), tmp_path, pad_to_max_length=pad_to_max_length)
    # a tokenizer whose padding segment id is not 0 (XLNet's is 3): a collate that pads with 0 would differ
    tok = copy.deepcopy(trainer.tokenizer)
    tok._pad_token_type_id = 3
    trainer.tokenizer = trainer.scorer.tokenizer = tok
    mb = _pairs()
    got = trainer._inputs(mb)
    enc = trainer.scorer.encode(mb.instructions, mb.responses)  # Cappy.encode: pre-cut, truncated longest-first
    assert max(len(x) for x in enc["input_ids"]) == trainer.max_length == 64
    want = collate_pairs(enc, tok, pad_to=64 if pad_to_max_length else None)
    assert set(got) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(torch.equal(got[k], want[k]) for k in want)
    scorer_batch = trainer.scorer._collate(enc, np.arange(4))  # what scoring feeds the model
    if not pad_to_max_length:
        assert all(torch.equal(got[k], scorer_batch[k]) for k in got)
    pad = got["attention_mask"] == 0
    assert pad.any() and bool((got["token_type_ids"][pad] == 3).all())
    assert bool((got["input_ids"][pad] == tok.pad_token_id).all())
    assert got["input_ids"].shape[1] == (64 if pad_to_max_length else max(len(x) for x in enc["input_ids"]))


def test_training_loads_float32_and_replaces_a_multi_output_head(tiny_model_dir, tmp_path, caplog):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    src = tiny_model_dir("bert")
    config = AutoConfig.from_pretrained(src)
    config.num_labels = 3
    three = AutoModelForSequenceClassification.from_config(config).half()
    three.save_pretrained(tmp_path / "three")
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp_path / "three")
    with pytest.raises(ValueError, match="num_labels=3"):
        Cappy.from_pretrained(tmp_path / "three", device="cpu")  # a scorer refuses it; training adapts it
    with caplog.at_level("WARNING", logger="cappy.model"):
        trainer = _trainer(tmp_path / "three", tmp_path, dropout=0.0)
    assert "replaced by a fresh one-output head" in caplog.text
    model = trainer.scorer.model
    assert model.config.num_labels == 1 and model.classifier.out_features == 1
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.config.hidden_dropout_prob == 0.0
