"""Token counts travel with the scores: /v1/rerank's usage from the encoding that was scored, through the batcher."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from cappy import Cappy
from cappy.model import encode_pairs
from cappy.serve import MicroBatcher, ServeConfig, create_app
from test_serve import INSTR, RESP, running
from tolerances import assert_scores_close

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def scorer(tiny_model_dir):
    return Cappy.from_pretrained(tiny_model_dir("bert"), device="cpu")


def test_v1_rerank_usage_comes_from_the_scored_encoding(scorer, monkeypatch):
    encodes: list[int] = []
    real = scorer.encode
    monkeypatch.setattr(scorer, "encode", lambda i, r: (encodes.append(len(i)), real(i, r))[1])
    long_doc = " ".join(["guitar music"] * 200)  # past the tiny model's 128 positions: counted as truncated
    texts = ["yes", "no", long_doc]
    with running(create_app(scorer, ServeConfig(max_wait_ms=0))) as (base, _):
        r = httpx.post(f"{base}/v1/rerank", json={"query": INSTR[2], "documents": texts}, timeout=60)
        assert r.status_code == 200, r.text
        assert encodes == [3]  # one encoding of the three pairs: the one that was scored
        lengths = [len(x) for x in real([INSTR[2]] * 3, texts)["input_ids"]]
        assert lengths[2] == scorer.max_length
        assert r.json()["usage"] == {"total_tokens": sum(lengths)}
        # the other endpoints answer as before on the same batcher
        s = httpx.post(f"{base}/score", json={"pairs": [{"instruction": "q", "response": "a"}]}).json()["scores"]
        assert_scores_close(s, [scorer.score("q", "a")])  # micro-batched: float32 rounding


def test_tei_truncate_false_reports_the_whole_pair_length(scorer):
    long_text = " ".join(["guitar music"] * 200)
    whole = len(encode_pairs(scorer.tokenizer, ["q"], [long_text], None)["input_ids"][0])
    assert whole > scorer.max_length
    with running(create_app(scorer)) as (base, _):
        r = httpx.post(f"{base}/rerank", json={"query": "q", "texts": ["short", long_text], "truncate": False})
    assert r.status_code == 413 and f"texts[1] with the query is {whole} tokens" in r.json()["error"]


def test_batcher_hands_each_job_its_own_lengths(scorer):
    calls: list[int] = []

    def score_fn(i, r):
        calls.append(len(i))
        return scorer.score(i, r, return_lengths=True)

    async def main():
        b = MicroBatcher(score_fn, max_batch_pairs=64, max_wait_ms=50, returns_lengths=True)
        await b.start()
        jobs = [([INSTR[k % 3]] * (k + 1), RESP[: k + 1]) for k in range(4)]
        results = await asyncio.gather(*(b.score_with_lengths(i, r) for i, r in jobs))
        plain = await b.score(["q"], ["a"])  # score() still gives the scores alone
        empty = await b.score_with_lengths([], [])
        await b.close()
        return jobs, results, plain, empty

    jobs, results, plain, empty = asyncio.run(main())
    assert calls[0] == 10  # the four jobs shared one call
    for (i, r), (scores, lengths) in zip(jobs, results):
        assert_scores_close(scores, scorer.score(i, r))  # micro-batched: float32 rounding
        assert lengths.dtype == np.int64 and lengths.tolist() == [len(x) for x in scorer.encode(i, r)["input_ids"]]
    assert isinstance(plain, np.ndarray) and plain.shape == (1,)
    assert empty[0].shape == empty[1].shape == (0,)


def test_batcher_without_lengths_says_so_and_checks_counts(scorer):
    async def main():
        b = MicroBatcher(lambda i, r: scorer.score(i, r), max_wait_ms=0)
        bad = MicroBatcher(lambda i, r: (scorer.score(i, r), [1]), max_wait_ms=0, returns_lengths=True)
        await b.start()
        await bad.start()
        with pytest.raises(RuntimeError, match="without returns_lengths"):
            await b.score_with_lengths(["q"], ["a"])
        with pytest.raises(RuntimeError, match="returned 1 token counts for 2 pairs"):
            await bad.score(["q", "q"], ["a", "b"])
        await b.close()
        await bad.close()

    asyncio.run(main())
