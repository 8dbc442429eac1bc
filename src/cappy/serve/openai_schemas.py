"""Bodies of the OpenAI-compatible endpoints (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``).

OpenAI's request fields that sampling uses are read (``model``, ``messages``/``prompt``, ``max_tokens``,
``temperature``, ``top_p``, ``n``, ``stop``, ``seed``, ``presence_penalty``, ``frequency_penalty``, ``stream``,
``stream_options``); other OpenAI fields (``logprobs``, ``tools``, ``user``, ...) are accepted and not used. Cappy's
own: ``best_of``, ``recipe``, ``return_candidates``, ``truncation_direction`` (the SDK sends them in
``extra_body``; ``best_of`` is a keyword of ``client.completions.create`` itself). Requests are strict like the rest of
the service (no ``"3"`` for 3), and everything the schema accepts is served: what it rejects is a 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from annotated_types import Ge, Le, Len
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from cappy.serve.schemas import TRUNCATION_HELP, PositiveJsonInt, TruncationDirection, _json_int

SEED_MAX = 2**31 - 1
# candidate i is sampled with seed (seed + i) mod 2**31
Seed = Annotated[int, Ge(0), Le(SEED_MAX), BeforeValidator(_json_int)]
StopText = Annotated[str, StringConstraints(min_length=1)]
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """A message as OpenAI's API takes it; fields besides role and content (``name``, ``tool_calls``, ...) are kept
    and passed on to an upstream server as they came. A message without content counts as empty text."""

    model_config = ConfigDict(extra="allow", strict=True)
    role: Role
    content: str | list[TextPart] | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class _SamplingRequest(_Body):
    model: str | None = Field(
        None, description="the upstream's model name (see /v1/models); with a local generator, ignored"
    )
    max_tokens: PositiveJsonInt | None = Field(None, description="new tokens per candidate at most")
    temperature: float | None = Field(None, ge=0, le=2, description="default 1; 0 samples greedily")
    top_p: float | None = Field(None, gt=0, le=1)
    n: PositiveJsonInt | None = Field(None, description="the best n candidates are returned, best first (default 1)")
    stop: StopText | Annotated[list[StopText], Len(0, 4)] | None = None
    seed: Seed | None = Field(None, description="candidate i is sampled with seed + i (default: a random seed)")
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="passed on to an upstream server")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="passed on to an upstream server")
    stream: bool | None = Field(
        False, description="send the chosen answer as server-sent events, once every candidate is in and scored"
    )
    stream_options: StreamOptions | None = None
    user: str | None = None
    best_of: PositiveJsonInt | None = Field(
        None,
        description="candidates to sample and score (default: the server's --best-of, or all a recipe makes); "
        "raised to n when smaller",
    )
    recipe: str | None = Field(
        None,
        description="sample the candidates with this named recipe's decodings instead of the request's temperature "
        "and top_p (max_tokens and stop, when given, still apply)",
    )
    return_candidates: bool = Field(False, description="add every candidate with its score as cappy_candidates")
    truncation_direction: TruncationDirection | None = Field(None, description=TRUNCATION_HELP)


class ChatCompletionRequest(_SamplingRequest):
    """OpenAI's chat completion request with Cappy's best-of-n fields."""

    messages: Annotated[list[ChatMessage], Len(1)] = Field(
        description="the conversation; Cappy scores each candidate against all of it, flattened by cappy.chat's rule"
    )
    max_completion_tokens: PositiveJsonInt | None = Field(None, description="OpenAI's newer name of max_tokens")


class CompletionRequest(_SamplingRequest):
    """OpenAI's (legacy) completion request with Cappy's fields; one prompt per request."""

    prompt: str | Annotated[list[str], Len(1, 1)] = Field(description="the prompt (a list holds exactly one)")


# ---------------------------------------------------------------------- answers
class Usage(BaseModel):
    prompt_tokens: int = Field(description="summed over every call that sampled a candidate")
    completion_tokens: int = Field(description="summed over every candidate, chosen or not")
    total_tokens: int


class CappyCandidate(BaseModel):
    index: int = Field(description="its place among the candidates received, in sampling order")
    text: str
    score: float
    finish_reason: str


class _CappyFields(BaseModel):
    cappy_best_of: int = Field(description="candidates asked for")
    cappy_candidates_received: int = Field(description="candidates that came (fewer when some calls failed)")
    cappy_errors: list[str] | None = Field(None, description="why the missing candidates failed, when some did")
    cappy_candidates: list[CappyCandidate] | None = Field(None, description="with return_candidates: every one")


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None
    cappy_score: float = Field(description="Cappy's score of this answer to the conversation")
    cappy_candidate: int = Field(description="the chosen candidate's index in cappy_candidates")


class ChatCompletionResponse(_CappyFields):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str
    logprobs: None = None
    cappy_score: float
    cappy_candidate: int


class CompletionResponse(_CappyFields):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    error: OpenAIError


# With stream=true the 200 answer is server-sent events; before OpenAPI 3.2's itemSchema, "schema" describes one event.
STREAM_CONTENT: dict[str, Any] = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "description": "with stream=true, one server-sent event: its data is a chunk as JSON "
            "(chat.completion.chunk or text_completion), and [DONE] after the last",
            "properties": {"data": {"type": "string"}},
            "required": ["data"],
        }
    }
}
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorBody, "description": text}
    for code, text in [
        (400, "a recipe this server does not offer, or one the generator rejects"),
        (401, "missing or wrong API key"),
        (413, "best_of or n above this server's limit, or too large a body"),
        (422, "malformed request"),
        (429, "the scorer's queue is full; retry later"),
        (502, "the upstream server or the generator failed, or answered an error (its message is quoted)"),
        (503, "no upstream or generator configured, the upstream cannot be reached, or shutting down"),
        (504, "the upstream server did not answer in time"),
    ]
}
