"""Rendering: engine outputs -> the OpenAI response and chunk models.

Each choice folds the outputs of its engine request into a `ChoiceState`;
a renderer turns states and increments into the pydantic models of
protocol.py (chat.completion / chat.completion.chunk, or the legacy
text_completion, whose chunks look like its responses). Nothing here knows
about HTTP or asyncio.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from pydantic import BaseModel

from engine.interface import PromptTokenizer
from engine.outputs import RequestOutput
from scheduler.output import TokenLogprob
from server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    DeltaMessage,
    SpeculativeUsage,
    TokenLogprobEntry,
    TopLogprob,
    Usage,
)


class TokenText:
    """Token id -> its text, cached (logprobs need one decode per token)."""

    def __init__(self, tokenizer: PromptTokenizer):
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = self._tokenizer.decode([token_id])
        return text


@dataclass(frozen=True)
class ResponseHead:
    """Fields every response and chunk of one request carries."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class ChoiceState:
    """What one choice has produced so far."""

    index: int
    prompt_text: str = ""  # echoed by legacy completions with echo=true
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[Any] = field(default_factory=list)
    last: RequestOutput | None = None
    text_offset: int = 0  # legacy completions logprobs: next token's offset


def usage(states: Sequence[ChoiceState], prompt_tokens: int) -> Usage:
    """Token accounting over all choices, with speculation figures if any ran."""
    lasts = [s.last for s in states if s.last]
    completion = sum(out.num_output_tokens for out in lasts)
    steps = sum(out.num_spec_steps for out in lasts)
    speculative = None
    if steps:
        accepted = sum(out.num_accepted_tokens for out in lasts)
        speculative = SpeculativeUsage(
            draft_tokens=sum(out.num_draft_tokens for out in lasts), accepted_tokens=accepted,
            steps=steps, mean_accepted_length=round(1.0 + accepted / steps, 4))
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion,
                 total_tokens=prompt_tokens + completion, speculative=speculative)


class Renderer(ABC):
    """Folds outputs into choice states and renders them; subclasses give the shapes."""

    response_model: ClassVar[type[BaseModel]]
    chunk_model: ClassVar[type[BaseModel]]

    @abstractmethod
    def logprob_entries(self, out: RequestOutput, state: ChoiceState) -> list[Any]:
        """One output's logprobs in this format (may advance the state's offsets)."""

    @abstractmethod
    def opening(self, state: ChoiceState) -> BaseModel | None:
        """The choice's first chunk, sent before any token (None: no such chunk)."""

    @abstractmethod
    def delta(self, index: int, text: str, entries: list[Any]) -> BaseModel | None:
        """A streamed increment (None when it carries neither text nor logprobs)."""

    @abstractmethod
    def closing(self, index: int, reason: str | None) -> BaseModel:
        """The streamed choice that carries its finish_reason."""

    @abstractmethod
    def choice(self, state: ChoiceState) -> BaseModel:
        """The finished choice of a non-streamed response."""

    def fold(self, state: ChoiceState, out: RequestOutput) -> list[Any]:
        """Fold one output increment into a choice; return its logprob entries."""
        entries = self.logprob_entries(out, state)
        state.text += out.new_text
        state.logprobs.extend(entries)
        state.last = out
        if out.finished:
            state.finish_reason = out.finish_reason
        return entries

    def increment(self, state: ChoiceState, out: RequestOutput) -> list[BaseModel]:
        """Fold one output and return the streamed choices it makes (0 to 2)."""
        entries = self.fold(state, out)
        choices = []
        delta = self.delta(state.index, out.new_text, entries)
        if delta is not None:
            choices.append(delta)
        if out.finished:
            choices.append(self.closing(state.index, out.finish_reason))
        return choices

    def response(self, head: ResponseHead, states: Sequence[ChoiceState],
                 prompt_tokens: int) -> BaseModel:
        return self.response_model(id=head.id, created=head.created, model=head.model,
                                   choices=[self.choice(s) for s in states],
                                   usage=usage(states, prompt_tokens))

    def chunk(self, head: ResponseHead, choices: list[BaseModel],
              usage: Usage | None = None) -> BaseModel:
        return self.chunk_model(id=head.id, created=head.created, model=head.model,
                                choices=choices, usage=usage)


class ChatRenderer(Renderer):
    """OpenAI chat.completion / chat.completion.chunk shapes."""

    response_model = ChatCompletionResponse
    chunk_model = ChatCompletionChunk

    def __init__(self, token_text: TokenText, want_logprobs: bool):
        self._text = token_text
        self._want_logprobs = want_logprobs

    def logprob_entries(self, out: RequestOutput, state: ChoiceState) -> list[TokenLogprobEntry]:
        return [self._entry(lp) for lp in out.logprobs or ()]

    def _entry(self, lp: TokenLogprob) -> TokenLogprobEntry:
        token = self._text(lp.token_id)
        return TokenLogprobEntry(token=token, logprob=lp.logprob, bytes=list(token.encode()),
                                 top_logprobs=[self._top(tid, val) for tid, val in lp.top])

    def _top(self, token_id: int, logprob: float) -> TopLogprob:
        token = self._text(token_id)
        return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode()))

    def _logprobs(self, entries: list[TokenLogprobEntry]) -> ChatLogprobs | None:
        return ChatLogprobs(content=entries) if self._want_logprobs else None

    def opening(self, state: ChoiceState) -> ChatChunkChoice:
        return ChatChunkChoice(index=state.index,
                               delta=DeltaMessage(role="assistant", content=""))

    def delta(self, index: int, text: str, entries: list) -> ChatChunkChoice | None:
        if not text and not entries:
            return None
        return ChatChunkChoice(index=index, delta=DeltaMessage(content=text),
                               logprobs=self._logprobs(entries))

    def closing(self, index: int, reason: str | None) -> ChatChunkChoice:
        return ChatChunkChoice(index=index, delta=DeltaMessage(), finish_reason=reason)

    def choice(self, state: ChoiceState) -> ChatChoice:
        return ChatChoice(index=state.index, message=AssistantMessage(content=state.text),
                          logprobs=self._logprobs(state.logprobs),
                          finish_reason=state.finish_reason)


_LegacyEntry = tuple[str, float, "dict[str, float] | None", int]  # token, logprob, top, offset


class CompletionRenderer(Renderer):
    """Legacy text_completion shapes (responses and chunks look alike)."""

    response_model = CompletionResponse
    chunk_model = CompletionResponse

    def __init__(self, token_text: TokenText, logprobs: int | None, echo: bool):
        self._text = token_text
        self._k = logprobs
        self._echo = echo

    def logprob_entries(self, out: RequestOutput, state: ChoiceState) -> list[_LegacyEntry]:
        entries = []
        for lp in out.logprobs or ():
            token = self._text(lp.token_id)
            top = {self._text(tid): val for tid, val in lp.top[: self._k]} if self._k else None
            entries.append((token, lp.logprob, top, state.text_offset))
            state.text_offset += len(token)
        return entries

    def _legacy(self, entries: list[_LegacyEntry]) -> CompletionLogprobs | None:
        if self._k is None:
            return None
        return CompletionLogprobs(tokens=[e[0] for e in entries],
                                  token_logprobs=[e[1] for e in entries],
                                  top_logprobs=[e[2] for e in entries],
                                  text_offset=[e[3] for e in entries])

    def opening(self, state: ChoiceState) -> CompletionChoice | None:
        if not self._echo:
            return None
        return CompletionChoice(index=state.index, text=state.prompt_text)

    def delta(self, index: int, text: str, entries: list) -> CompletionChoice | None:
        if not text and not entries:
            return None
        return CompletionChoice(index=index, text=text, logprobs=self._legacy(entries))

    def closing(self, index: int, reason: str | None) -> CompletionChoice:
        return CompletionChoice(index=index, text="", finish_reason=reason)

    def choice(self, state: ChoiceState) -> CompletionChoice:
        text = (state.prompt_text + state.text) if self._echo else state.text
        return CompletionChoice(index=state.index, text=text,
                                logprobs=self._legacy(state.logprobs),
                                finish_reason=state.finish_reason)
