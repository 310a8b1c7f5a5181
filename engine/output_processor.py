"""Per-request detokenization and stop conditions.

Stop checks run token by token, right after each emitted token is appended,
so that a stop token, stop string or max_tokens falling inside an accepted
speculative block cuts the output exactly where plain decoding would.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from engine.detokenizer import IncrementalDetokenizer
from engine.outputs import RequestOutput
from engine.trace import StepTrace
from scheduler.output import TokenLogprob
from scheduler.request import Request, RequestStatus


@dataclass
class RequestTextState:
    """Text produced so far for one request and how much was already sent."""

    detokenizer: IncrementalDetokenizer
    stop_strings: tuple[str, ...]
    text: str = ""
    sent_chars: int = 0
    cut_by_stop_string: bool = False
    # The text each token added since the last output (its trace's token_texts).
    token_texts: list[str] = field(default_factory=list)

    @property
    def holdback(self) -> int:
        """Characters kept back while streaming: they may start a stop string."""
        return max((len(s) for s in self.stop_strings), default=1) - 1


class OutputProcessor:
    """Owns detokenizers; decides when a request stops; builds RequestOutputs."""

    def __init__(self, tokenizer, max_model_len: int):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.eos_ids = set(tokenizer.stop_token_ids)
        if tokenizer.eos_token_id is not None:
            self.eos_ids.add(tokenizer.eos_token_id)
        self.states: dict[str, RequestTextState] = {}

    def add_request(self, request: Request) -> None:
        detok = IncrementalDetokenizer(self.tokenizer)
        self.states[request.request_id] = RequestTextState(detok, request.sampling_params.stop)

    def remove(self, request_id: str) -> None:
        self.states.pop(request_id, None)

    def check_stop(self, request: Request, token_id: int) -> RequestStatus | None:
        """Called after `token_id` was appended to the request's output."""
        params = request.sampling_params
        state = self.states[request.request_id]
        if token_id in params.stop_token_ids or (not params.ignore_eos and token_id in self.eos_ids):
            state.token_texts.append("")  # a stop token adds no text
            return RequestStatus.FINISHED_STOPPED
        if self._append_text_and_find_stop(state, token_id):
            return RequestStatus.FINISHED_STOPPED
        if request.num_output_tokens >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _append_text_and_find_stop(self, state: RequestTextState, token_id: int) -> bool:
        previous_len = len(state.text)
        piece = state.detokenizer.add_token(token_id)
        state.text += piece
        state.token_texts.append(piece)
        if not state.stop_strings:
            return False
        # Only a stop string that ends in the new text can be new.
        search_from = max(0, previous_len - state.holdback)
        hits = [i for s in state.stop_strings if (i := state.text.find(s, search_from)) >= 0]
        if not hits:
            return False
        state.text = state.text[: min(hits)]
        state.cut_by_stop_string = True
        return True

    def make_output(self, request: Request, new_token_ids: list[int],
                    logprobs: list[TokenLogprob] | None,
                    trace: StepTrace | None = None) -> RequestOutput:
        """The increment since the last output, with text held back while a
        stop string could still be forming; `trace` (the step's, if it
        sampled) gets the new tokens' texts."""
        state = self.states[request.request_id]
        finished = request.is_finished
        if finished and not state.cut_by_stop_string:
            # A character still incomplete at the end is emitted as decode() would.
            tail = state.detokenizer.flush()
            state.text += tail
            if tail and state.token_texts:
                state.token_texts[-1] += tail
        texts, state.token_texts = tuple(state.token_texts), []
        if trace is not None:
            trace = replace(trace, token_texts=texts)
        visible = len(state.text) if finished else max(state.sent_chars, len(state.text) - state.holdback)
        delta = state.text[state.sent_chars: visible]
        state.sent_chars = max(state.sent_chars, visible)
        return RequestOutput(
            request_id=request.request_id,
            new_token_ids=list(new_token_ids),
            new_text=delta,
            finished=finished,
            finish_reason=request.status.finish_reason,
            num_prompt_tokens=request.num_prompt_tokens,
            num_output_tokens=request.num_output_tokens,
            logprobs=logprobs,
            num_spec_steps=request.num_spec_steps,
            num_draft_tokens=request.num_draft_tokens,
            num_accepted_tokens=request.num_accepted_tokens,
            trace=trace,
        )
