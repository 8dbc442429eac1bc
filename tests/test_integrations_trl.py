"""``cappy.integrations.trl``: the reward equals ``Cappy.score`` on the flattened pairs, and a real ``GRPOTrainer``
trains with it and logs it under the function's name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cappy.integrations.trl import CappyReward, flatten_completion, flatten_prompt, reward_function
from conftest import build_tiny_lm
from tolerances import FP32_EPS, score_scale

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models on two shared cores

SYSTEM = {"role": "system", "content": "Answer in one word."}


def _user(text):
    return [{"role": "user", "content": text}]


def _assistant(text):
    return [{"role": "assistant", "content": text}]


def test_string_rewards_equal_cappy_score_exactly(tiny_scorer):
    reward = reward_function(tiny_scorer)
    prompts = ["What is two plus two?", "Is the sky blue?", "What is two plus two?"]
    completions = ["four", "yes, on a clear day", "five"]
    got = reward(prompts=prompts, completions=completions, completion_ids=[[1], [2], [3]], trainer_state=None)
    assert isinstance(got, list) and all(type(x) is float for x in got)
    assert got == tiny_scorer.score(prompts, completions).tolist()
    # the scores depend on the completion: a reward that ignored it would give pairs 0 and 2 the same value
    assert got[0] != got[2]


def test_conversational_rewards_follow_the_flattening_rule(tiny_scorer):
    reward = reward_function(tiny_scorer, batch_size=2)
    prompts = [
        _user("What is two plus two?"),
        [SYSTEM, *_user("Is the sky blue?")],
        [*_user("Translate to French: good morning."), *_assistant("Bonjour."), *_user("And good night?")],
        [{"role": "user", "content": [{"type": "text", "text": "Choose the best"}, {"type": "text", "text": "end"}]}],
    ]
    completions = [
        _assistant("four"),
        _assistant("Yes"),
        [
            {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "t"}}]},
            {"role": "tool", "name": "t", "content": "bonne nuit"},
            {"role": "assistant", "content": "Bonne nuit."},
        ],
        _assistant("She walked outside."),
    ]
    instructions = [
        "What is two plus two?",
        "system: Answer in one word.\nuser: Is the sky blue?",
        "user: Translate to French: good morning.\nassistant: Bonjour.\nuser: And good night?",
        "Choose the best\nend",
    ]
    responses = ["four", "Yes", "Bonne nuit.", "She walked outside."]
    assert reward.pairs(prompts, completions) == (instructions, responses)
    # the same batch size, so the same batches and padding: equal to the last bit
    assert reward(prompts, completions) == tiny_scorer.score(instructions, responses, batch_size=2).tolist()
    # the same pair as plain strings scores the same as its conversational form
    assert reward(["What is two plus two?"], ["four"]) == reward(prompts[:1], completions[:1])


def test_flattening_examples():
    assert flatten_prompt("The sky is") == "The sky is"
    assert flatten_prompt([SYSTEM, *_user("2+2?")]) == "system: Answer in one word.\nuser: 2+2?"
    assert flatten_prompt(_assistant("a lone assistant turn")) == "assistant: a lone assistant turn"
    assert flatten_completion(" blue") == " blue"
    assert flatten_completion([*_assistant("a"), *_assistant(""), *_assistant("b")]) == "a\nb"


@pytest.mark.parametrize(
    ("prompts", "completions", "match"),
    [
        (["a", "b"], ["x"], "2 prompts and 1 completions"),
        ("a", ["x"], "prompts must be a list"),
        ([[{"role": "user"}]], ["x"], "pair 0: prompt message 0 has no 'content'"),
        ([[{"content": "hi"}]], ["x"], "has no 'role'"),
        (["a"], [[{"role": "assistant", "content": None}]], "completion message 0 has no 'content'"),
        (["a"], [[{"role": "tool", "content": "42"}]], "no assistant message"),
        (["a"], [[]], "empty list of messages"),
        (["a"], [42], "must be a str or a list of messages"),
        ([[{"role": "user", "content": 3}]], ["x"], "content must be a str or a list of text parts"),
        ([[{"role": "user", "content": [{"type": "image"}]}]], ["x"], "'image', not text"),
    ],
)
def test_bad_input_is_a_clear_value_error(tiny_scorer, prompts, completions, match):
    with pytest.raises(ValueError, match=match):
        reward_function(tiny_scorer)(prompts, completions)


def test_construction(tiny_scorer, tiny_model_dir):
    assert reward_function(tiny_scorer).__name__ == "cappy_reward"
    assert reward_function(tiny_scorer, name="cappy_mini").__name__ == "cappy_mini"
    assert reward_function(tiny_scorer)([], []) == []
    with pytest.raises(ValueError, match="apply when loading"):
        reward_function(tiny_scorer, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        reward_function(tiny_scorer, batch_size=0)
    with pytest.raises(ValueError, match="model must be"):
        reward_function(3)
    # loading by path (as the fixture does: cpu, dtype auto) gives the scores of the loaded scorer
    loaded = reward_function(tiny_model_dir("bert"), device="cpu")
    assert isinstance(loaded, CappyReward)
    pair = (["What is two plus two?"], ["four"])
    assert loaded(*pair) == reward_function(tiny_scorer)(*pair)


# ---------------------------------------------------------------------- a real GRPOTrainer


def _tiny_causal_lm():
    """The suite's tiny random GPT-2, long enough for GRPO's prompts, with a minimal chat template."""
    model, tok = build_tiny_lm("causal", n_positions=64)
    tok.eos_token = tok.sep_token
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    return model, tok


def test_grpo_trainer_trains_with_the_cappy_reward(tiny_scorer, tmp_path, monkeypatch):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tok = _tiny_causal_lm()
    reward = reward_function(tiny_scorer)
    calls = []
    real_score = tiny_scorer.score

    def spy(instructions, responses, **kw):
        out = real_score(instructions, responses, **kw)
        calls.append((list(instructions), list(responses), out))
        return out

    questions = ["What is two plus two?", "Is the sky blue?", "Translate to French: good morning.", "Name a prime."]
    data = Dataset.from_dict({"prompt": [_user(q) for q in questions]})
    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=4,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        seed=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tok)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    monkeypatch.setattr(tiny_scorer, "score", spy)
    trainer.train()
    monkeypatch.undo()
    steps = [h for h in trainer.state.log_history if "rewards/cappy_reward/mean" in h]
    assert len(steps) == 2 and len(calls) == 2, (trainer.state.log_history, len(calls))
    for logged, (instructions, responses, scores) in zip(steps, calls):
        # one Cappy.score call per generation batch: 2 prompts x 2 generations, flattened by the documented rule
        assert len(instructions) == 4 and set(instructions) <= set(questions)
        assert all(isinstance(r, str) for r in responses)
        # TRL averages the same 4 float32 rewards in float32: the sum's rounding is at most ~4 eps of the largest
        # |reward| away from the float64 mean; 8 eps leaves a margin of 2, while another batch's rewards differ by ~1
        bound = 8 * FP32_EPS * score_scale(scores)
        assert math.isclose(logged["rewards/cappy_reward/mean"], float(np.mean(scores)), rel_tol=0, abs_tol=bound)
    # the policy was updated (GRPO's loss is 0 only when all rewards of a group tie)
    assert any(not torch.equal(before[k], v.detach()) for k, v in model.named_parameters())
