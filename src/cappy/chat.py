"""How a chat conversation becomes the (instruction, response) text pair Cappy scores: one rule, used by the TRL
reward (:mod:`cappy.integrations.trl`) and the OpenAI-compatible endpoints of ``cappy serve``.

The flattening rule is plain text and ignores any tokenizer or chat template, so the same conversation gets the same
score whatever model produced it:

* a string is used as it is;
* a prompt that is a single user message becomes that message's content;
* any other prompt becomes one ``"{role}: {content}"`` line per message, joined by newlines
  (``"system: Be brief.\\nuser: What is 2+2?"``);
* a completion becomes the non-empty contents of its assistant messages, joined by newlines; messages of other
  roles in it (the results of tool calls) are left out.

A content is a string or a list of text parts (``{"type": "text", "text": ...}``, joined by newlines); an assistant
message that only calls tools may have no content and contributes an empty string. Anything else (a message without
role or content, an image part) is a :class:`ValueError`.

Example:
    >>> flatten_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}])
    'system: Be brief.\\nuser: 2+2?'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cappy.errors import InputError

#: a prompt or completion: a string, or a list of ``{"role", "content"}`` messages
TextOrMessages = str | Sequence[Mapping[str, Any]]


def _content(message: Any, where: str) -> str:
    if not isinstance(message, Mapping):
        raise InputError(f"{where} must be a {{'role', 'content'}} message dict, got {type(message).__name__}")
    if not isinstance(message.get("role"), str) or not message["role"]:
        raise InputError(f"{where} has no 'role' (a message is a {{'role', 'content'}} dict): {str(message)[:200]}")
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and message.get("tool_calls"):
        return ""  # an assistant turn that only calls tools
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise InputError(f"{where} content part {j} is {kind!r}, not text: Cappy scores text only")
        return "\n".join(texts)
    if content is None:
        raise InputError(f"{where} has no 'content': {str(message)[:200]}")
    raise InputError(f"{where} content must be a str or a list of text parts, got {type(content).__name__}")


def _messages(value: Any, where: str) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping) or not isinstance(value, Sequence) or isinstance(value, bytes | bytearray):
        raise InputError(f"{where} must be a str or a list of messages, got {type(value).__name__}")
    if not value:
        raise InputError(f"{where} is an empty list of messages")
    return list(value)


def flatten_prompt(prompt: TextOrMessages) -> str:
    """The instruction Cappy sees for a prompt or conversation (the rule is in the module docstring).

    Example:
        >>> flatten_prompt([{"role": "user", "content": "What is 2+2?"}])
        'What is 2+2?'
        >>> flatten_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}])
        'system: Be brief.\\nuser: 2+2?'
    """
    if isinstance(prompt, str):
        return prompt
    messages = _messages(prompt, "a prompt")
    contents = [_content(m, f"prompt message {i}") for i, m in enumerate(messages)]
    if len(messages) == 1 and messages[0]["role"] == "user":
        return contents[0]
    return "\n".join(f"{m['role']}: {c}" for m, c in zip(messages, contents))


def flatten_completion(completion: TextOrMessages) -> str:
    """The response Cappy sees for a completion: the text, or its assistant messages' contents by newlines.

    Empty contents (an assistant turn that only calls tools) are skipped.

    Example: ``flatten_completion([{"role": "assistant", "content": "4"}])`` -> ``"4"``
    """
    if isinstance(completion, str):
        return completion
    messages = _messages(completion, "a completion")
    contents = [_content(m, f"completion message {i}") for i, m in enumerate(messages)]
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise InputError(f"a completion has no assistant message (roles {roles}); Cappy scores the assistant's text")
    return "\n".join(c for r, c in zip(roles, contents) if r == "assistant" and c)
