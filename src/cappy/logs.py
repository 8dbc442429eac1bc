"""Quiet third-party output: what the CLI and the demo show on stderr unless asked to be verbose."""

from __future__ import annotations


def quiet_libraries(verbose: bool = False) -> None:
    """Unless ``verbose``: no weight-loading bars or info lines from transformers and the Hugging Face hub.
    (llama.cpp's own lines are kept to errors by ``LlamaCppGenerator(verbose=False)`` itself.)

    Example: ``quiet_libraries()`` before ``Cappy.from_pretrained("cappy-mini")``
    """
    if verbose:
        return
    import huggingface_hub.utils
    import transformers.utils.logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
