"""OpenAI-shaped request and response types (pydantic v2, strict).

Requests are strict so that `"temperature": false` or `"n": "2"` is a 400
rather than silently coerced; unknown fields are ignored because official
clients send some we do not use. Responses and streamed chunks are built
from the models below (server/rendering.py) and dumped as they are: fields
are explicit nulls as in OpenAI's API, except those a model lists in
`_OMIT_IF_NONE`, which OpenAI leaves out. A chunk's `usage` is left out by the caller unless
`stream_options.include_usage` asked for it.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

Role = Literal["system", "user", "assistant", "tool", "developer"]
FinishReason = Literal["stop", "length", "abort"]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        # Some SDKs send explicit nulls for options they leave unset.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


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


class GenerationRequest(_Request):
    """Fields shared by chat and text completions (OpenAI + vLLM extras)."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    # vLLM extensions.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    # specserve: set false to opt this request out of speculative decoding.
    speculative: bool = True


class ChatCompletionRequest(GenerationRequest):
    """POST /v1/chat/completions body."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(GenerationRequest):
    """POST /v1/completions body; prompt is text, texts, token ids or lists of ids."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=20)
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
