"""The scorer: exact agreement with a plain transformers forward pass, API shapes, bad input, saving."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from cappy import Cappy
from tolerances import assert_scores_close

PAIRS = [
    ("What is 2+2?", "4"),
    ("What is 2+2?", "5"),
    ("Is the sky blue? Yes or no.", "yes"),
    ("Premise: a man plays a guitar. Does a person make music? " * 6, "Yes, the man is making music."),
    ("", "empty instruction"),
    ("empty response", ""),
    ("Translate to French: good morning.", "Bonjour " * 80),
]


def reference_scores(model_dir, pairs, max_length=512):
    """Each pair alone through transformers: the ground truth that batching must not change."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    limit = model.config.max_position_embeddings - (2 if model.config.model_type == "roberta" else 0)
    out = []
    with torch.no_grad():
        for a, b in pairs:
            # list form: a single-call `tok(a, "")` would drop an empty text_pair and encode one sequence
            enc = tok([a], [b], truncation="longest_first", max_length=min(max_length, limit), return_tensors="pt")
            out.append(model(**enc).logits.item())
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("arch", ["roberta", "bert", "deberta-v2"])
def test_score_equals_one_at_a_time_forward(tiny_model_dir, arch):
    path = tiny_model_dir(arch)
    scorer = Cappy.from_pretrained(path, device="cpu", batch_size=3, max_tokens_per_batch=200)
    got = scorer.score([a for a, _ in PAIRS], [b for _, b in PAIRS])
    want = reference_scores(path, PAIRS)
    assert got.dtype == np.float32 and got.shape == (len(PAIRS),)
    assert_scores_close(got, want)  # batched and padded vs one pair at a time: float32 rounding only
    # scores differ between pairs, so an order mix-up could not pass
    assert len(set(np.round(want, 6))) == len(PAIRS)


def test_roberta_pair_format_is_the_released_one(tiny_model_dir):
    scorer = Cappy.from_pretrained(tiny_model_dir("roberta"), device="cpu")
    ids = scorer.encode(["What is 2+2?"], ["4"])["input_ids"][0]
    tok = scorer.tokenizer
    s, e = tok.bos_token_id, tok.eos_token_id
    # <s> instruction </s></s> response </s>
    assert ids[0] == s and ids[-1] == e
    assert [i for i, t in enumerate(ids) if t == e][:2] == [ids.index(e), ids.index(e) + 1]


def test_single_pair_returns_float_and_broadcast(tiny_scorer):
    one = tiny_scorer.score("What is 2+2?", "4")
    assert isinstance(one, float)
    many = tiny_scorer.score("What is 2+2?", ["4", "5"])
    assert isinstance(many, np.ndarray) and many.shape == (2,)
    assert_scores_close([many[0]], [one])  # the same pair in a batch of two: rounding of another batch width


def test_choose_and_rank_follow_scores(tiny_scorer):
    instr, cands = "Name a prime number.", ["4", "7", "nine", "a prime: 11", ""]
    scores = tiny_scorer.score(instr, cands)
    assert tiny_scorer.choose(instr, cands) == int(np.argmax(scores))
    ranked = tiny_scorer.rank(instr, cands)
    assert [r["index"] for r in ranked] == list(np.argsort(-scores, kind="stable"))
    assert [r["text"] for r in ranked] == [cands[r["index"]] for r in ranked]
    assert all(a["score"] >= b["score"] for a, b in zip(ranked, ranked[1:]))
    top = tiny_scorer.rank(instr, cands, top_k=2)
    assert top == ranked[:2]


def test_order_restored_with_varied_lengths(tiny_scorer):
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat while seven dogs ran past quickly".split()
    instr = [" ".join(rng.choice(words, rng.integers(1, 60))) for _ in range(40)]
    resp = [" ".join(rng.choice(words, rng.integers(0, 30))) for _ in range(40)]
    batched = tiny_scorer.score(instr, resp, batch_size=7)
    single = np.array([tiny_scorer.score(a, b) for a, b in zip(instr, resp)], dtype=np.float32)
    assert_scores_close(batched, single)  # other batch widths: float32 rounding only


def test_precut_keeps_the_encoding(tiny_scorer):
    rng = np.random.default_rng(1)
    words = "alpha beta gamma delta epsilon unbelievably ##x 12345 ,.;".split()
    long_text = " ".join(rng.choice(words, 2000))
    instr = [long_text, "short question", long_text]
    resp = ["short answer", long_text, long_text[::-1]]
    plain = tiny_scorer.tokenizer(instr, resp, truncation="longest_first", max_length=tiny_scorer.max_length)
    assert tiny_scorer.encode(instr, resp)["input_ids"] == plain["input_ids"]


def test_huge_and_empty_strings_are_truncated(tiny_scorer):
    big = "word " * 200_000  # 1 MB
    s = tiny_scorer.score([big, "", big], ["", big, big])
    assert np.isfinite(s).all()
    ids = tiny_scorer.encode([big], [big])["input_ids"][0]
    assert len(ids) == tiny_scorer.max_length


@pytest.mark.parametrize(
    "args,exc,match",
    [
        ((["a", "b"], ["x"]), ValueError, "same length"),
        ((["a", 3], ["x", "y"]), TypeError, r"instructions\[1\]"),
        ((None, "x"), TypeError, "None"),
        ((["a"], [None]), TypeError, r"responses\[0\]"),
        ((["a"], 5), TypeError, "responses"),
    ],
)
def test_score_bad_input(tiny_scorer, args, exc, match):
    with pytest.raises(exc, match=match):
        tiny_scorer.score(*args)


def test_choose_rank_bad_input(tiny_scorer):
    with pytest.raises(ValueError, match="empty"):
        tiny_scorer.choose("q", [])
    with pytest.raises(TypeError, match="list"):
        tiny_scorer.choose("q", "yes")
    with pytest.raises(TypeError, match=r"candidates\[1\]"):
        tiny_scorer.rank("q", ["a", None])
    with pytest.raises(ValueError, match="top_k"):
        tiny_scorer.rank("q", ["a"], top_k=0)
    with pytest.raises(TypeError, match="instruction"):
        tiny_scorer.choose(None, ["a"])


def test_from_pretrained_rejects_multi_label(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    BertForSequenceClassification(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            num_labels=3,
        )
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=3"):
        Cappy.from_pretrained(tmp_path, device="cpu")


def test_bad_dtype_and_missing_embedded_model():
    with pytest.raises(ValueError, match="dtype"):
        Cappy.from_pretrained("anything", dtype="float8")


def test_dtype_bfloat16_close_to_float32(tiny_model_dir):
    path = tiny_model_dir("bert")
    a = Cappy.from_pretrained(path, device="cpu").score([p[0] for p in PAIRS], [p[1] for p in PAIRS])
    m = Cappy.from_pretrained(path, device="cpu", dtype="bfloat16")
    assert next(m.model.parameters()).dtype == torch.bfloat16
    b = m.score([p[0] for p in PAIRS], [p[1] for p in PAIRS])
    assert b.dtype == np.float32
    # bf16 keeps 8 mantissa bits (relative error 2**-8 per operation); through 2 layers of a tiny model with
    # large random weights that is a few % of the score range, so 10% of it, and a correlation of 0.98, hold
    # while a broken path (wrong weights, no cast back) would be far off both.
    assert np.corrcoef(a, b)[0, 1] > 0.98
    assert np.abs(a - b).max() < 0.1 * np.ptp(a)


def test_oom_halves_batch_and_keeps_order(tiny_scorer, monkeypatch):
    instr = [f"question {i} " * (12 + i % 3) for i in range(12)]  # close lengths: one forward batch of 12 first
    resp = [f"answer {i}" for i in range(12)]
    want = tiny_scorer.score(instr, resp)
    real = tiny_scorer._forward
    sizes = []

    def flaky(batch):
        n = batch["input_ids"].shape[0]
        sizes.append(n)
        if n > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(batch)

    monkeypatch.setattr(tiny_scorer, "_forward", flaky)
    saved = tiny_scorer.batch_size
    try:
        got = tiny_scorer.score(instr, resp, batch_size=12)
    finally:
        tiny_scorer.batch_size = saved
    assert_scores_close(got, want)  # halved batches pad differently: float32 rounding only
    assert sizes[0] == 12 and max(sizes[1:]) <= 6 and min(sizes) <= 3


def test_non_oom_errors_propagate(tiny_scorer, monkeypatch):
    def broken(batch):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(tiny_scorer, "_forward", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        tiny_scorer.score(["a", "b"], ["c", "d"])


def test_save_pretrained_round_trip(tiny_model_dir, tmp_path):
    scorer = Cappy.from_pretrained(tiny_model_dir("roberta"), device="cpu", max_length=100)
    out = scorer.save_pretrained(tmp_path / "saved")
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "config_sentence_transformers.json"} <= files
    assert not any(n.endswith(".bin") for n in files)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["problem_type"] == "regression"
    assert cfg["sentence_transformers"]["activation_fn"] == "torch.nn.modules.linear.Identity"
    assert json.loads((out / "config_sentence_transformers.json").read_text())["activation_fn"].endswith("Identity")
    again = Cappy.from_pretrained(out, device="cpu")
    assert again.max_length == 100
    instr, resp = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    # the same float32 weights, the same batches: only the save/load round trip differs, which is lossless
    np.testing.assert_array_equal(again.score(instr, resp), scorer.score(instr, resp))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".saved")]  # no temp dir left
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {n: 0o666 & ~umask for n in files}


def test_sentence_transformers_cross_encoder_reads_raw_scores(tiny_model_dir, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    scorer = Cappy.from_pretrained(tiny_model_dir("bert"), device="cpu")
    out = scorer.save_pretrained(tmp_path / "ce")
    ce = st.CrossEncoder(str(out), device="cpu")
    preds = ce.predict([list(p) for p in PAIRS], batch_size=4)
    want = scorer.score([a for a, _ in PAIRS], [b for _, b in PAIRS])
    assert_scores_close(preds, want)  # sentence-transformers batches and pads its own way: float32 rounding only
    assert (want < 0).any() or (want > 1).any() or np.ptp(want) > 0  # a sigmoid would squash these


def test_transformers_pipeline_sees_regression(tiny_model_dir, tmp_path):
    from transformers import AutoConfig

    out = Cappy.from_pretrained(tiny_model_dir("bert"), device="cpu").save_pretrained(tmp_path / "m")
    assert AutoConfig.from_pretrained(out).problem_type == "regression"


def test_half_checkpoint_loads_as_float32_on_cpu(tiny_model_dir, tmp_path):
    scorer = Cappy.from_pretrained(tiny_model_dir("bert"), device="cpu")
    scorer.model.half()
    out = scorer.save_pretrained(tmp_path / "half")
    again = Cappy.from_pretrained(out, device="cpu")
    assert next(again.model.parameters()).dtype == torch.float32
    assert next(Cappy.from_pretrained(out, device="cpu", dtype="float16").model.parameters()).dtype == torch.float16


def test_auto_precision_follows_the_cpu(tiny_model_dir, monkeypatch):
    path = tiny_model_dir("bert")
    instr, resp = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    monkeypatch.setenv("CAPPY_CPU_BF16", "0")
    plain = Cappy.from_pretrained(path, device="cpu", backend="torch")
    assert plain.precision == "float32" and plain.autocast_dtype is None
    monkeypatch.setenv("CAPPY_CPU_BF16", "1")
    auto = Cappy.from_pretrained(path, device="cpu", backend="torch")
    assert auto.precision == "bfloat16" and next(auto.model.parameters()).dtype == torch.bfloat16
    assert "precision=bfloat16" in repr(auto) and "backend=torch" in repr(auto)
    # an explicit dtype wins over the detection, either way
    assert Cappy.from_pretrained(path, device="cpu", dtype="float32").precision == "float32"
    assert Cappy.from_pretrained(path, device="cpu", dtype="bfloat16").precision == "bfloat16"
    monkeypatch.setenv("CAPPY_CPU_BF16", "0")
    autocast = Cappy.from_pretrained(path, device="cpu", dtype="bf16-autocast")
    assert autocast.precision == "bfloat16-autocast" and next(autocast.model.parameters()).dtype == torch.float32
    a, b, c = plain.score(instr, resp), auto.score(instr, resp), autocast.score(instr, resp)
    assert b.dtype == c.dtype == np.float32
    assert not np.array_equal(a, b) and not np.array_equal(a, c), "bf16 must be active"
    # bf16's 8 mantissa bits: a few % of the score range over 2 layers of large random weights (see the bf16 test)
    assert np.abs(a - b).max() < 0.1 * np.ptp(a) and np.abs(a - c).max() < 0.1 * np.ptp(a)
    monkeypatch.setenv("CAPPY_CPU_BF16", "maybe")
    with pytest.raises(ValueError, match="CAPPY_CPU_BF16 must be 0 or 1"):
        Cappy.from_pretrained(path, device="cpu")


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch):
    from cappy.model import precision as model

    monkeypatch.delenv("CAPPY_CPU_BF16", raising=False)
    for flags, native in [({"avx2", "fma"}, False), ({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True)]:
        monkeypatch.setattr(model, "_cpu_flags", lambda flags=flags: frozenset(flags))
        assert model.cpu_has_native_bf16() is native
        want = (torch.bfloat16 if native else torch.float32, None)
        assert model.resolve_precision("auto", "cpu") == model.resolve_precision(None, "cpu") == want
    assert model.resolve_precision("float16", "cpu") == (torch.float16, None)
    with pytest.raises(ValueError, match="bf16-autocast"):
        model.resolve_precision("float8", "cpu")


def test_forward_batches_cut_where_padding_would_grow(tiny_scorer):
    lengths = np.array([100, 95, 90, 85, 84, 70, 60, 50, 10, 10, 9, 30])
    order = np.argsort(-lengths, kind="stable")
    saved = tiny_scorer.batch_size, tiny_scorer.max_tokens_per_batch
    try:
        tiny_scorer.batch_size, tiny_scorer.max_tokens_per_batch = 64, 10_000
        got = [lengths[b].tolist() for b in tiny_scorer._batches(lengths, order)]
        # 84 >= 0.8 * 100 stays; 70 starts a batch; a batch takes at least 4 pairs before it may be cut
        assert got == [[100, 95, 90, 85, 84], [70, 60, 50, 30], [10, 10, 9]]
        tiny_scorer.max_tokens_per_batch = 300  # the token budget still bounds every batch: 300 // 100 = 3 pairs
        got = [lengths[b].tolist() for b in tiny_scorer._batches(lengths, order)]
        assert got[0] == [100, 95, 90] and all(len(b) * b[0] <= 300 for b in got)
        assert sorted(x for b in got for x in b) == sorted(lengths.tolist())
    finally:
        tiny_scorer.batch_size, tiny_scorer.max_tokens_per_batch = saved


# ---------------------------------------------------------------------- groups, lengths, encoding, collation, loading
def test_score_groups_is_one_flat_score_call_regrouped(tiny_scorer, monkeypatch):
    instr = ["What is 2+2?", "Name a prime number.", "Is the sky blue?", "Say hello."]
    groups = [["4"], ["4", "7", "nine", "a prime: 11"], ["yes", "no"], ["hello", "", "hi", "hey there", "bonjour"]]
    flat_i = [s for s, g in zip(instr, groups) for _ in g]
    flat_r = [r for g in groups for r in g]
    flat = tiny_scorer.score(flat_i, flat_r)
    assert len(set(flat.tolist())) == len(flat)  # distinct scores, so a regrouping slip could not pass
    calls = []
    real = tiny_scorer.score
    monkeypatch.setattr(tiny_scorer, "score", lambda *a, **k: (calls.append(len(a[0])), real(*a, **k))[1])
    got = tiny_scorer.score_groups(instr, groups)
    assert calls == [len(flat_r)]  # one batched call over every pair
    assert [len(g) for g in got] == [1, 4, 2, 5]
    assert all(g.dtype == np.float32 for g in got)
    start = 0
    for g, want in zip(got, groups):
        # the same single call on the same pairs: bit-identical
        assert np.array_equal(g, flat[start : start + len(want)])
        start += len(want)
    assert np.array_equal(np.concatenate(got), flat)
    assert tiny_scorer.score_groups([], []) == []


@pytest.mark.parametrize(
    "instr,groups,match",
    [
        (["a", "b"], [["x"]], "same length, got 2 and 1"),
        (["a", "b"], [["x"], []], r"groups_of_responses\[1\] is empty"),
        (["a"], ["xy"], r"groups_of_responses\[0\] must be a list of str"),
        (["a", "b"], [["x"], ["y", 3]], r"groups_of_responses\[1\]\[1\] must be a str"),
        (["a", None], [["x"], ["y"]], r"instructions\[1\] must be a str"),
        ("ab", [["x"], ["y"]], "instructions must be a list"),
    ],
)
def test_score_groups_bad_input(tiny_scorer, instr, groups, match):
    with pytest.raises(ValueError, match=match):
        tiny_scorer.score_groups(instr, groups)


def test_score_returns_the_lengths_it_scored(tiny_scorer):
    instr = [a for a, _ in PAIRS] + ["word " * 500]
    resp = [b for _, b in PAIRS] + ["answer"]
    scores, lengths = tiny_scorer.score(instr, resp, return_lengths=True)
    assert np.array_equal(scores, tiny_scorer.score(instr, resp))  # the same call: bit-identical
    assert lengths.dtype == np.int64
    assert lengths.tolist() == [len(x) for x in tiny_scorer.encode(instr, resp)["input_ids"]]
    assert lengths[-1] == tiny_scorer.max_length  # truncated: the count is of the pair as scored
    one, n = tiny_scorer.score("What is 2+2?", "4", return_lengths=True)
    assert isinstance(one, float) and isinstance(n, int) and n == lengths[0]


def test_encode_pairs_is_the_scorer_encoding(tiny_scorer):
    from cappy.model import encode_pairs

    long_text = "alpha beta gamma unbelievably " * 300  # past 8 x max_length characters: the pre-cut path
    instr, resp = ["short question", long_text, ""], [long_text, "short answer", "x"]
    enc = encode_pairs(tiny_scorer.tokenizer, instr, resp, tiny_scorer.max_length)
    assert enc == tiny_scorer.encode(instr, resp)
    assert set(enc) == {"input_ids", "token_type_ids"}  # BERT: segment ids, no attention mask (collate makes it)
    whole = encode_pairs(tiny_scorer.tokenizer, instr, resp, None)
    plain = tiny_scorer.tokenizer(instr, resp, truncation=False)["input_ids"]
    assert whole["input_ids"] == plain and len(whole["input_ids"][0]) > tiny_scorer.max_length


class _PadTokenizer:
    """Only what collation reads: pad ids that differ from 0, so a hard-coded 0 shows."""

    pad_token_id = 7
    pad_token_type_id = 3


def test_collate_pairs_pads_with_the_tokenizer_ids():
    from cappy.model import collate_pairs

    enc = {"input_ids": [[1, 2, 3], [4], [5, 6]], "token_type_ids": [[0, 0, 1], [0], [0, 1]]}
    batch = collate_pairs(enc, _PadTokenizer())
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7], [5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 3, 3], [0, 1, 3]]
    assert all(v.dtype == torch.long for v in batch.values())
    wide = collate_pairs(enc, _PadTokenizer(), pad_to=5, rows=[2, 1])
    assert wide["input_ids"].tolist() == [[5, 6, 7, 7, 7], [4, 7, 7, 7, 7]]
    assert wide["token_type_ids"].tolist() == [[0, 1, 3, 3, 3], [0, 3, 3, 3, 3]]
    assert collate_pairs(enc, _PadTokenizer(), pad_to=2)["input_ids"].shape == (3, 3)  # never cuts a pair
    assert "token_type_ids" not in collate_pairs({"input_ids": [[1]]}, _PadTokenizer())
    with pytest.raises(ValueError, match="at least one"):
        collate_pairs({"input_ids": []}, _PadTokenizer())


def test_scorer_collate_is_collate_pairs(tiny_scorer):
    from cappy.model import collate_pairs

    enc = tiny_scorer.encode([a for a, _ in PAIRS], [b for _, b in PAIRS])
    idx = np.array([3, 0, 6])
    got = tiny_scorer._collate(enc, idx)
    want = collate_pairs(enc, tiny_scorer.tokenizer, rows=idx)
    assert set(got) == set(want) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_load_scorer_model_head_rules(tmp_path, tiny_model_dir, caplog):
    from transformers import BertConfig, BertForSequenceClassification

    from cappy.model import load_scorer_model

    torch.manual_seed(0)
    three = BertForSequenceClassification(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    )
    three.config.num_labels = 3
    three.classifier = torch.nn.Linear(16, 3)
    three.save_pretrained(tmp_path / "three")
    AutoTokenizer.from_pretrained(tiny_model_dir("bert")).save_pretrained(tmp_path / "three")
    with pytest.raises(ValueError, match="num_labels=3"):
        load_scorer_model(tmp_path / "three")
    with caplog.at_level("WARNING", logger="cappy.model"):
        model, tok = load_scorer_model(tmp_path / "three", torch.float32, dropout=0.0, replace_head=True)
    assert "replaced by a fresh one-output head" in caplog.text
    assert model.classifier.out_features == 1 and model.config.problem_type == "regression"
    assert model.config.hidden_dropout_prob == 0.0 and tok.pad_token_id is not None
    # the encoder is loaded, only the head is new
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, three.bert.embeddings.word_embeddings.weight)
    half = Cappy.from_pretrained(tiny_model_dir("bert"), device="cpu", dtype="float16").save_pretrained(tmp_path / "h")
    assert next(load_scorer_model(half, torch.float32)[0].parameters()).dtype == torch.float32
    assert next(load_scorer_model(half)[0].parameters()).dtype == torch.float16  # None keeps the checkpoint's
