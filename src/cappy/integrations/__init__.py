"""Cappy inside other libraries' training and serving loops.

``cappy.integrations.trl``: :func:`~cappy.integrations.trl.reward_function`, a Cappy scorer as a reward function for
TRL's online trainers (GRPO, RLOO, Online DPO). It needs nothing from TRL itself to build or call.
Example:
    >>> from cappy.integrations.trl import reward_function
    >>> reward = reward_function("cappy-mini", device="cpu")
    >>> reward(prompts=["What is 2+2?"], completions=["4"])
    [0.87]

``cappy.integrations.lm_eval``: :class:`~cappy.integrations.lm_eval.CappyLM`, lm-evaluation-harness's
``--model cappy``: multiple-choice tasks scored by Cappy (needs ``pip install 'cappy[lm-eval]'``).
"""
