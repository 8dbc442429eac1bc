"""``cappy.integrations.lm_eval``: lm-eval's ``acc`` on a local multiple-choice task equals Cappy's own argmax over
the same pairs; generation and perplexity are clear errors; ``--model cappy`` resolves by import, by entry point and
through ``python -m cappy.integrations.lm_eval``. No hub: the task reads tests/data/lm_eval/questions.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read by datasets when imported: set before lm_eval loads it

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import Registry, get_model, model_registry  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from cappy import Cappy  # noqa: E402
from cappy.integrations.lm_eval import CappyLM, CappyTaskError, _rows_per_batch, cappy_pair  # noqa: E402
from conftest import REPO  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASKS = REPO / "tests" / "data" / "lm_eval"
QUESTIONS = json.loads((TASKS / "questions.json").read_text(encoding="utf-8"))
TASK = "cappy_mc"


@pytest.fixture(autouse=True)
def _offline_from_repo_root(monkeypatch):
    """The task's data_files path is relative to the repository root; nothing may reach the hub."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _tasks() -> TaskManager:
    """Our task only: indexing lm-eval's thousands of built-in task files takes most of a run's time."""
    return TaskManager(include_path=str(TASKS), include_defaults=False)


def _direct(scorer: Cappy) -> tuple[list[np.ndarray], float]:
    """Cappy's own scores of every (question, choice) as the task's doc_to_text writes it, and its argmax accuracy."""
    instructions = [f"Question: {q['question']}\nAnswer:" for q in QUESTIONS]
    groups = [q["choices"] for q in QUESTIONS]
    scores = scorer.score_groups(instructions, groups)
    acc = float(np.mean([int(np.argmax(s)) == q["answer"] for s, q in zip(scores, QUESTIONS)]))
    return scores, acc


def _evaluate(model_dir, **kwargs):
    return lm_eval.simple_evaluate(
        model="cappy",
        model_args=f"pretrained={model_dir},device=cpu,dtype=float32",
        tasks=[TASK],
        task_manager=_tasks(),
        bootstrap_iters=0,
        **kwargs,
    )


def test_acc_equals_cappy_argmax_over_the_same_pairs(tiny_model_dir):
    model_dir = tiny_model_dir("bert")
    out = _evaluate(model_dir, log_samples=True, batch_size="auto")
    scores, acc = _direct(Cappy.from_pretrained(model_dir, device="cpu", dtype="float32"))
    # a random tiny scorer gets some right and some wrong: an acc of 0 or 1 could hide a constant prediction
    assert 0 < acc < 1
    assert out["results"][TASK]["acc,none"] == acc
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    assert len(samples) == len(QUESTIONS)
    for sample, want in zip(samples, scores):
        # lm-eval's continuation carries its target delimiter (" four"); Cappy scores the pair without it
        assert [cappy_pair(*a) for a in sample["arguments"]] == [
            (f"Question: {QUESTIONS[sample['doc_id']]['question']}\nAnswer:", c)
            for c in QUESTIONS[sample["doc_id"]]["choices"]
        ]
        got = [r[0] for r in sample["filtered_resps"]]
        # the same pairs in the same order in one score call: the same batches and padding, so the same bits
        assert got == want.tolist()
        assert all(r[1] is False for r in sample["filtered_resps"])
    assert out["config"]["model_name"] == str(model_dir)
    assert out["config"]["model_precision"] == "float32"


def test_a_loaded_scorer_and_a_fixed_batch_size_give_the_same_acc(tiny_scorer):
    out = lm_eval.simple_evaluate(
        model=CappyLM(tiny_scorer, batch_size=2),
        tasks=[TASK],
        task_manager=_tasks(),
        bootstrap_iters=0,
    )
    assert out["results"][TASK]["acc,none"] == _direct(tiny_scorer)[1]


def _instances(request_type, args, task="some_task"):
    return [Instance(request_type, {}, a, i, (task, i, 1)) for i, a in enumerate(args)]


def test_generation_and_perplexity_are_clear_errors(tiny_scorer):
    lm = CappyLM(tiny_scorer)
    with pytest.raises(CappyTaskError, match=r"scorer for multiple-choice tasks.*cannot generate.*gsm8k"):
        lm.generate_until(_instances("generate_until", [("2+2=", {"until": ["\n"]})], task="gsm8k"))
    with pytest.raises(CappyTaskError, match=r"scorer for multiple-choice tasks.*perplexity.*wikitext"):
        lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [("Some text.",)], task="wikitext"))
    assert issubclass(CappyTaskError, NotImplementedError)


def test_one_continuation_per_document_warns(tiny_scorer, caplog):
    lm = CappyLM(tiny_scorer)
    got = lm.loglikelihood(_instances("loglikelihood", [("The sky is", " blue"), ("Two plus two is", " four")]))
    assert got == [(s, False) for s in tiny_scorer.score(["The sky is", "Two plus two is"], ["blue", "four"]).tolist()]
    assert "task some_task asks one continuation per document" in caplog.text
    caplog.clear()
    lm.loglikelihood([*_instances("loglikelihood", [("Q", " a")]), *_instances("loglikelihood", [("Q", " b")])])
    assert "one continuation" not in caplog.text  # two choices of one document: a multiple-choice question


def test_model_args_are_checked(tiny_model_dir, tiny_scorer):
    with pytest.raises(ValueError, match="unknown model_args for --model cappy: temperature; known: pretrained"):
        CappyLM.create_from_arg_string(f"pretrained={tiny_model_dir('bert')},temperature=0.5")
    with pytest.raises(ValueError, match="apply when loading"):
        CappyLM(tiny_scorer, dtype="bfloat16")
    with pytest.raises(ValueError, match="pretrained must be a name, a path or a loaded Cappy"):
        CappyLM(pretrained=3)
    lm = CappyLM.create_from_arg_string(
        f"pretrained={tiny_model_dir('bert')},device=cpu,dtype=float32,max_length=64,instruction_truncation=left",
        {"batch_size": "8", "max_batch_size": None, "device": None},
    )
    assert (lm.rows, lm.scorer.max_length, lm.scorer.instruction_truncation) == (8, 64, "left")


@pytest.mark.parametrize(
    ("batch_size", "max_batch_size", "rows"),
    [("auto", None, None), ("auto:4", 16, 16), (None, None, None), ("8", None, 8), (2, 32, 2)],
)
def test_batch_size(batch_size, max_batch_size, rows):
    assert _rows_per_batch(batch_size, max_batch_size) == rows


@pytest.mark.parametrize("bad", ["0", "eight", -1])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size"):
        _rows_per_batch(bad, None)


def test_registered_on_import_beside_lm_evals_own_models():
    assert get_model("cappy") is CappyLM
    assert "hf" in model_registry and "dummy" in model_registry  # registering Cappy did not hide lm-eval's models


def test_entry_point_resolves_as_plugin_discovery_registers_it():
    (ep,) = [ep for ep in entry_points(group="lm_eval.models") if ep.name == "cappy"]
    assert ep.value == "cappy.integrations.lm_eval:CappyLM"
    # what lm-eval's entry-point discovery does: the EntryPoint as a lazy placeholder, loaded when asked for
    registry: Registry[type[LM]] = Registry("model", base_cls=LM)
    registry.register("cappy", target=ep)
    assert registry.get("cappy") is CappyLM


def test_command_line_runs_the_task(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("bert")
    cmd = [
        sys.executable,
        "-m",
        "cappy.integrations.lm_eval",
        "--model",
        "cappy",
        "--model_args",
        f"pretrained={model_dir},device=cpu,dtype=float32",
        "--tasks",
        TASK,
        "--include_path",
        str(TASKS),
        "--batch_size",
        "auto",
        "--output_path",
        str(tmp_path / "out"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (result_file,) = (tmp_path / "out").rglob("results_*.json")
    acc = json.loads(result_file.read_text(encoding="utf-8"))["results"][TASK]["acc,none"]
    assert acc == _direct(Cappy.from_pretrained(model_dir, device="cpu", dtype="float32"))[1]
    assert "cappy_mc" in done.stdout and "acc" in done.stdout  # lm-eval's own results table
