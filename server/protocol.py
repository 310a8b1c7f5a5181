"""OpenAI-shaped request and response types (pydantic v2, strict).

Requests are strict so that `"temperature": false` or `"n": "2"` is a 400
rather than silently coerced, and every field is range-checked here, at the
protocol boundary: OpenAI's limits where OpenAI has them (temperature 0-2,
up to 4 stop strings, a 64-bit signed seed, n up to 128), explicit limits
of ours elsewhere (constants below; the per-server ones are in
server/limits.py). Non-finite numbers (`NaN`, `Infinity`, which Python's
JSON parser accepts) and strings with lone UTF-16 surrogates are rejected.
Unknown fields are kept (`model_extra`) so that server/unsupported.py can
refuse the OpenAI fields we do not implement instead of ignoring them.

Responses and streamed chunks are built from the models below
(server/rendering.py) and dumped as they are: fields are explicit nulls as
in OpenAI's API, except those a model lists in `_OMIT_IF_NONE`, which
OpenAI leaves out. A chunk's `usage` is left out by the caller unless
`stream_options.include_usage` asked for it.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_serializer,
    model_validator,
)

from server.request_schema import chat_schema, completion_schema, nullable_optionals

Role = Literal["system", "user", "assistant", "tool", "developer"]
FinishReason = Literal["stop", "length", "abort"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MAX = 2**31 - 1
MAX_N = 128  # OpenAI's limit on choices per prompt
MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_STOP_STRING_CHARS = 256  # ours: long stop strings slow every decoding step
MAX_STOP_TOKEN_IDS = 64  # ours (a vLLM extension without a limit of its own)
MAX_LOGPROBS = 20  # OpenAI's top_logprobs limit
MAX_REPETITION_PENALTY = 2.0  # ours: beyond it the penalty only garbles text
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries

def _integral_float(value: Any) -> Any:
    # In JSON (and JSON Schema) 2.0 is the integer 2; 2.5 and "2" stay errors.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def integer(**bounds: int) -> Any:
    """An integer field: strict (no "2", no true), but 2.0 is 2 as in JSON.
    The bounds go before the validator, or they vanish from the JSON schema."""
    return Annotated[int, Field(**bounds), BeforeValidator(_integral_float)]

_SURROGATE = re.compile("[\ud800-\udfff]")

StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_STRING_CHARS)]
TokenId = integer(ge=0, le=INT32_MAX)
NonEmptyText = Annotated[str, StringConstraints(min_length=1)]


def _has_lone_surrogate(value: Any) -> bool:
    """True if any string in `value` holds a lone UTF-16 surrogate (from a
    `\\ud800` JSON escape): such text cannot be encoded, tokenized or echoed."""
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, (list, tuple)):
        return any(_has_lone_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    return False


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False,
                              json_schema_extra=nullable_optionals)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        # Some SDKs send explicit nulls for options they leave unset.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        if _has_lone_surrogate(value):
            raise ValueError("text must be valid Unicode (it holds a lone UTF-16 surrogate)")
        return value


class TextPart(_Request):
    """One `{"type": "text", "text": ...}` element of a message's content list."""

    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    """One conversation turn; content may be a string or a list of text parts."""

    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(_Request):
    """`stream_options`; include_usage adds a final usage-only chunk."""

    include_usage: bool = False


class SpecserveOptions(_Request):
    """`specserve`: options of ours that no OpenAI client sends. Unknown keys
    here are a 400 (a typo must not silently turn an option off)."""

    model_config = ConfigDict(extra="forbid")

    trace: bool = Field(False, description=(
        "Stream how each token was produced (accepted draft, corrected, bonus, "
        "plain), by which drafter, and the engine's load, in an extra top-level "
        "`specserve` key of each chunk. Needs `stream: true`."))


class JsonSchemaFormat(_Request):
    """`response_format.json_schema`: OpenAI's named schema; `strict` forbids
    properties the schema does not list."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class TextFormat(_Request):
    """`response_format: {"type": "text"}`: free text (the default)."""

    type: Literal["text"]


class JsonObjectFormat(_Request):
    """`response_format: {"type": "json_object"}`: any JSON object."""

    type: Literal["json_object"]


class JsonSchemaResponseFormat(_Request):
    """`response_format: {"type": "json_schema", "json_schema": {...}}`."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaResponseFormat, Field(discriminator="type")]
LogitBias = Annotated[dict[Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")],
                           Annotated[float, Field(ge=-100, le=100)]],
                      Field(max_length=MAX_LOGIT_BIAS, json_schema_extra={"additionalProperties": False},
                            description="Token id (as a string) -> bias in [-100, 100], added to "
                                        "the logits before sampling, drafts included")]


class GenerationRequest(_Request):
    """Fields shared by chat and text completions (OpenAI + vLLM extras).

    OpenAI fields that would change the output but are not implemented
    (tools, ...) are refused with a 400 naming them: see server/unsupported.py.
    """

    model: str | None = None
    max_tokens: integer(ge=1) | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: integer(ge=1, le=MAX_N) = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    seed: integer(ge=INT64_MIN, le=INT64_MAX) | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    user: str | None = None
    logit_bias: LogitBias | None = None
    response_format: ResponseFormat | None = None
    # vLLM extensions.
    top_k: integer(ge=-1, le=INT32_MAX) | None = Field(None, description="0 or -1: no top-k")
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=MAX_REPETITION_PENALTY)
    ignore_eos: bool = False
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    # specserve: set false to opt this request out of speculative decoding.
    speculative: bool = True
    specserve: SpecserveOptions | None = None


class ChatCompletionRequest(GenerationRequest):
    """POST /v1/chat/completions body."""

    model_config = ConfigDict(json_schema_extra=chat_schema)

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: integer(ge=1) | None = None
    logprobs: bool = False
    top_logprobs: integer(ge=0, le=MAX_LOGPROBS) | None = None


TokenIds = Annotated[list[TokenId], Field(min_length=1)]


class CompletionRequest(GenerationRequest):
    """POST /v1/completions body; prompt is text, texts, token ids or lists of ids.

    How many prompts one request may hold is a server limit
    (--max-prompts-per-request); the served document states it.
    """

    model_config = ConfigDict(json_schema_extra=completion_schema)

    prompt: (NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1)] | TokenIds
             | Annotated[list[TokenIds], Field(min_length=1)])
    logprobs: integer(ge=0, le=MAX_LOGPROBS) | None = None
    echo: bool = False


# ---------------------------------------------------------------- responses


class _OmitsNone(BaseModel):
    """A response part whose `_OMIT_IF_NONE` fields are left out, not sent as null."""

    _OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ()

    # Field(exclude_if=...) would say this per field, but needs pydantic >= 2.12.
    # No return annotation: one would replace the model's schema in /openapi.json.
    @model_serializer(mode="wrap")
    def _leave_out_nones(self, handler: Any):
        data = handler(self)
        for name in self._OMIT_IF_NONE:
            if name in data and data[name] is None:
                del data[name]
        return data


class SpeculativeUsage(BaseModel):
    """Speculation figures for one response (present only if speculation ran)."""

    draft_tokens: int
    accepted_tokens: int
    steps: int
    mean_accepted_length: float


class Usage(_OmitsNone):
    """Token accounting; prompt tokens are counted once per prompt, not per choice."""

    _OMIT_IF_NONE = ("speculative",)

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    speculative: SpeculativeUsage | None = None


class TopLogprob(BaseModel):
    """One alternative token at a position (chat format)."""

    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobEntry(TopLogprob):
    """The chosen token at a position and its top alternatives (chat format)."""

    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    """`choices[].logprobs` of a chat completion."""

    content: list[TokenLogprobEntry] | None = None


class CompletionLogprobs(BaseModel):
    """Legacy `choices[].logprobs` of a text completion."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class AssistantMessage(BaseModel):
    """The generated message of a non-streaming chat choice."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    """One choice of a chat completion."""

    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionResponse(BaseModel):
    """Non-streaming chat completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaMessage(_OmitsNone):
    """Increment of a streamed chat choice (role only in the first chunk)."""

    _OMIT_IF_NONE = ("role", "content")

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    """One choice inside a streamed chat chunk."""

    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    """One choice of a text completion (also the streamed chunk's choice)."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class CompletionResponse(BaseModel):
    """Text completion; streamed chunks have the same shape."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """An entry of GET /v1/models."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "specserve"
    max_model_len: int | None = None


class ModelList(BaseModel):
    """GET /v1/models."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class HealthResponse(BaseModel):
    """GET /health when the engine is up."""

    status: Literal["ok"] = "ok"
