"""llama-cpp-python's OpenAI-compatible server with cappy's llama.cpp workarounds applied first (the AMX one of
:func:`cappy.generate.llamacpp.llama_extra_buffers_safe`): ``python -m cappy.generate.llama_server ARGS`` takes
the arguments of ``python -m llama_cpp.server``.

Example:
    python -m cappy.generate.llama_server --model gemma.gguf --host 127.0.0.1 --port 8080
"""

from __future__ import annotations

import runpy

from cappy.generate.llamacpp import apply_llama_cpp_workarounds


def main() -> None:
    """Apply the workarounds, then run ``llama_cpp.server`` as ``__main__`` with this process's arguments."""
    apply_llama_cpp_workarounds()
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
