"""Request and response bodies of the HTTP service (pydantic models; FastAPI writes the OpenAPI schema from them).

Requests are strict: a request's types are the schema's (no ``0`` for false, no ``"3"`` for 3), so what the
schema rejects the server rejects too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from annotated_types import Ge
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


# What the schema tells clients (and fuzzers) about inputs that the endpoints reject with 400 empty_input: a text
# with no visible character, an empty list. Only documented here; the endpoints check them, so the error stays 400.
_NOT_BLANK: dict[str, Any] = {"json_schema_extra": {"pattern": r"\S"}}
_NOT_EMPTY: dict[str, Any] = {"json_schema_extra": {"minItems": 1}}

# Request fields bounded by ServeConfig.max_items_per_request (written into the served schema, see openapi.py).
LIMITED_FIELDS = [
    ("ScoreRequest", "pairs"),
    ("TeiRerankRequest", "texts"),
    ("RerankRequest", "documents"),
    ("RerankV2Request", "documents"),
    ("BestOfNRequest", "n"),
    ("ChatCompletionRequest", "n"),
    ("ChatCompletionRequest", "best_of"),
    ("CompletionRequest", "n"),
    ("CompletionRequest", "best_of"),
]


def _json_int(value: Any) -> Any:
    """JSON Schema's integer: an int or a float without a fraction (2.0); never a string or a bool (strict)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_json_int)]
# Text Embeddings Inference's truncation_direction (TEI writes "Right"/"Left"; both spellings are taken).
TruncationDirection = Literal["right", "left", "Right", "Left"]
TRUNCATION_HELP = (
    "which end of a too-long instruction (query) is cut to fit the model: 'right' cuts its end, 'left' its start "
    "(keeping a question at the end of a long few-shot prompt); absent: the server's setting"
)


def direction_of(value: str | None) -> str | None:
    """A request's truncation direction as the scorer spells it ("right"/"left"), or None for the server's."""
    return value.lower() if value is not None else None


PositiveJsonInt = Annotated[int, Ge(1), BeforeValidator(_json_int)]  # Ge first, so the schema shows "minimum"


class Pair(_Body):
    instruction: str
    response: str


class ScoreRequest(_Body):
    pairs: list[Pair] = Field(description="the (instruction, response) pairs to score", **_NOT_EMPTY)
    truncation_direction: TruncationDirection | None = Field(None, description=TRUNCATION_HELP)


class ScoreResponse(BaseModel):
    scores: list[float] = Field(description="one raw Cappy score per pair, in input order; higher is better")


class TeiRerankRequest(_Body):
    """Hugging Face Text Embeddings Inference's /rerank request."""

    query: str = Field(**_NOT_BLANK)
    texts: list[str] = Field(**_NOT_EMPTY)
    raw_scores: bool = Field(False, description="accepted for compatibility; Cappy scores are always raw")
    return_text: bool = False
    truncate: bool | None = Field(
        None,
        description="false: a pair longer than the model's max input length is a 413 error; "
        "true or absent: cut longest-first (Cappy's training format)",
    )
    truncation_direction: TruncationDirection | None = Field(None, description=TRUNCATION_HELP)


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


class Document(_Body):
    text: str


class RerankRequest(_Body):
    """Cohere/Jina /v1/rerank request; ``model`` is accepted and ignored (one model is served)."""

    model: str | None = None
    query: str = Field(**_NOT_BLANK)
    documents: list[str | Document] = Field(**_NOT_EMPTY)
    top_n: PositiveJsonInt | None = None
    return_documents: bool = False


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: Document | None = None


class RerankV2Request(_Body):
    """Cohere v2 /v2/rerank request (``cohere.ClientV2.rerank``): documents are strings; ``model`` and
    ``priority`` are accepted and ignored (one model, one queue)."""

    model: str | None = None
    query: str = Field(**_NOT_BLANK)
    documents: list[str] = Field(**_NOT_EMPTY)
    top_n: PositiveJsonInt | None = None
    max_tokens_per_doc: PositiveJsonInt | None = Field(None, description="cut each document to this many tokens first")
    priority: JsonInt | None = None


class RerankV2Result(BaseModel):
    index: int
    relevance_score: float


class RerankV2Response(BaseModel):
    id: str
    results: list[RerankV2Result]
    meta: dict[str, Any]


class RerankResponse(BaseModel):
    results: list[RerankResult]
    model: str
    usage: dict[str, int]


class BestOfNRequest(_Body):
    prompt: str = Field(**_NOT_BLANK)
    n: PositiveJsonInt | None = Field(None, description="how many candidates (default: all the recipe makes)")
    recipe: str | None = Field(None, description="the generator's recipe name (its default when absent)")


class Candidate(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int
    text: str
    score: float
    decoding: str | None = None


class BestOfNResponse(BaseModel):
    prompt: str
    candidates: list[Candidate]
    chosen: Candidate
    model: str
    generator: str


class ErrorBody(BaseModel):
    error: str
    error_type: str


# The error answers every scoring endpoint documents (their bodies are ErrorBody).
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in [
        (400, "empty input"),
        (401, "missing or wrong API key"),
        (413, "too many items, too long an input, or too large a body"),
        (422, "malformed request"),
        (429, "queue full; retry later"),
        (503, "shutting down"),
    ]
}
GENERATION_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    501: {"model": ErrorBody, "description": "no generator configured"},
    502: {"model": ErrorBody, "description": "the generator failed"},
}
