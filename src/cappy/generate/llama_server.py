"""llama-cpp-python's OpenAI-compatible server with cappy's llama.cpp fixes applied first: ``python -m
cappy.generate.llama_server ARGS`` takes the arguments of ``python -m llama_cpp.server``.

- The AMX workaround of :func:`cappy.generate.llamacpp.llama_extra_buffers_safe`.
- Chat for Gemma 3 GGUFs without a chat template. The packaged Gemma 3 270M GGUF carries no
  ``tokenizer.chat_template``, so llama-cpp-python falls back to its "llama-2" format (``[INST] ... [/INST]``), and
  Gemma ends its turn at once: every chat request got an empty message. llama-cpp-python's own "gemma" format drops
  system messages and the ``<bos>`` token. When ``--chat_format`` is not given and the model is a Gemma 3 GGUF
  without a template, the server uses :data:`GEMMA3_CHAT_FORMAT`: Gemma 3's turn format (``<start_of_turn>user``
  ... ``<end_of_turn>``, the assistant's role named ``model``, a system message put before the first user turn).

Example:
    python -m cappy.generate.llama_server --model gemma.gguf --host 127.0.0.1 --port 8080
"""

from __future__ import annotations

import logging
import runpy
import sys
from collections.abc import Sequence

from cappy.generate.llamacpp import apply_llama_cpp_workarounds, llama_log_errors_only

logger = logging.getLogger(__name__)

GEMMA3_CHAT_FORMAT = "gemma3"
# Gemma 3's chat format as a Jinja template over OpenAI messages (string content, or a list of text parts).
GEMMA3_TEMPLATE = """{{ bos_token }}
{%- set ns = namespace(prefix="") -%}
{%- set turns = messages -%}
{%- if messages and messages[0]["role"] == "system" -%}
  {%- set ns.prefix = (messages[0]["content"] if messages[0]["content"] is string
                       else messages[0]["content"] | map(attribute="text") | join("")) + "\\n\\n" -%}
  {%- set turns = messages[1:] -%}
{%- endif -%}
{%- for m in turns -%}
  {%- set text = m["content"] if m["content"] is string
                 else (m["content"] or []) | map(attribute="text") | join("") -%}
  {{ "<start_of_turn>" + ("model" if m["role"] == "assistant" else "user") + "\\n" }}
  {%- if m["role"] != "assistant" and ns.prefix -%}{{ ns.prefix }}{%- set ns.prefix = "" -%}{%- endif -%}
  {{ (text or "") | trim }}{{ "<end_of_turn>\\n" }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ "<start_of_turn>model\\n" }}{%- endif -%}"""


def register_gemma3_chat_format() -> None:
    """Register :data:`GEMMA3_CHAT_FORMAT` with llama-cpp-python (``Llama(chat_format="gemma3")``); idempotent.

    Example: ``register_gemma3_chat_format(); Llama(path, chat_format="gemma3").create_chat_completion(messages)``
    """
    from llama_cpp import llama_chat_format as fmt

    if GEMMA3_CHAT_FORMAT in fmt.LlamaChatCompletionHandlerRegistry()._chat_handlers:
        return
    formatter = fmt.Jinja2ChatFormatter(GEMMA3_TEMPLATE, eos_token="<end_of_turn>", bos_token="<bos>")
    fmt.register_chat_format(GEMMA3_CHAT_FORMAT)(lambda messages, **kw: formatter(messages=messages, **kw))


def needs_gemma3_chat_format(model_path: str) -> bool:
    """Whether a GGUF is a Gemma 3 model without a chat template of its own (read from its metadata only)."""
    from llama_cpp import Llama

    llama_log_errors_only()
    meta = Llama(model_path=model_path, vocab_only=True, verbose=False).metadata
    return meta.get("general.architecture", "").startswith("gemma3") and not meta.get("tokenizer.chat_template")


def server_args(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--chat_format gemma3`` added where the model needs it (see the module docstring)."""
    args = list(argv)
    if any(a.split("=")[0] in ("--chat_format", "--config_file") for a in args):
        return args
    model = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--model"), None)
    model = model or next((a.split("=", 1)[1] for a in args if a.startswith("--model=")), None)
    if model and needs_gemma3_chat_format(model):
        logger.warning("%s is Gemma 3 without a chat template: serving chat with --chat_format gemma3", model)
        args += ["--chat_format", GEMMA3_CHAT_FORMAT]
    return args


def main() -> None:
    """Apply the fixes, then run ``llama_cpp.server`` as ``__main__`` with this process's arguments."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    apply_llama_cpp_workarounds()
    register_gemma3_chat_format()
    sys.argv = [sys.argv[0], *server_args(sys.argv[1:])]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
