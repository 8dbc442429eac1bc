"""Serving: an HTTP scoring and reranking service with micro-batching and a web playground.

Example:
    >>> from cappy import Cappy
    >>> from cappy.serve import ServeConfig, create_app
    >>> app = create_app(Cappy.from_pretrained("cappy-mini"), ServeConfig(max_wait_ms=2))
    >>> # uvicorn.run(app, host="127.0.0.1", port=8080), or `cappy serve --model cappy-mini`
    >>> # best-of-n for any OpenAI-compatible LLM server, at /v1/chat/completions and /v1/completions:
    >>> app = create_app(Cappy.from_pretrained("cappy-mini"), upstream=UpstreamConfig("http://127.0.0.1:8000/v1"))
"""

from cappy.serve.app import ServeConfig, UpstreamConfig, create_app
from cappy.serve.batcher import MicroBatcher, Overloaded, ShuttingDown
from cappy.serve.server import serve

__all__ = ["MicroBatcher", "Overloaded", "ServeConfig", "ShuttingDown", "UpstreamConfig", "create_app", "serve"]
