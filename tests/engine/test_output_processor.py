"""engine/output_processor.py: stop conditions token by token, and text
held back while a stop string may still be forming."""
from __future__ import annotations

import pytest

from engine.output_processor import OutputProcessor
from engine.tokenizer import Tokenizer
from scheduler.request import Request, RequestStatus, SamplingParams
from tests.tiny_model import make_tiny_model_dir


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer.from_dir(make_tiny_model_dir(tmp_path_factory.mktemp("tok")))


def emit(processor, request, text_or_ids):
    """Append tokens one by one as the engine does; the statuses and the
    streamed text."""
    ids = processor.tokenizer.encode(text_or_ids) if isinstance(text_or_ids, str) else text_or_ids
    statuses, streamed = [], ""
    for token in ids:
        request.append_output_token(token)
        status = processor.check_stop(request, token)
        statuses.append(status)
        if status is not None:
            request.status = status
        streamed += processor.make_output(request, [token], None).new_text
        if status is not None:
            break
    return statuses, streamed


def make(tok, max_model_len=256, **params):
    processor = OutputProcessor(tok, max_model_len)
    request = Request("r", [5, 6, 7], SamplingParams(**params))
    processor.add_request(request)
    return processor, request


def test_a_stop_string_cuts_the_text_and_the_stream_never_shows_it(tok):
    processor, request = make(tok, stop=("fox",), max_tokens=64)
    statuses, streamed = emit(processor, request, "The quick brown fox jumps")
    assert statuses[-1] is RequestStatus.FINISHED_STOPPED
    assert streamed == "The quick brown "


def test_eos_stops_unless_ignored_and_stop_token_ids_always(tok):
    processor, request = make(tok, max_tokens=64)
    assert emit(processor, request, [40, tok.eos_token_id])[0][-1] is RequestStatus.FINISHED_STOPPED
    processor, request = make(tok, max_tokens=64, ignore_eos=True)
    assert emit(processor, request, [40, tok.eos_token_id])[0] == [None, None]
    processor, request = make(tok, max_tokens=64, ignore_eos=True, stop_token_ids=(40,))
    assert emit(processor, request, [41, 40])[0][-1] is RequestStatus.FINISHED_STOPPED


def test_max_tokens_and_the_context_end_finish_with_length(tok):
    processor, request = make(tok, max_tokens=2, ignore_eos=True)
    assert emit(processor, request, [40, 41, 42])[0] == [None, RequestStatus.FINISHED_LENGTH]
    processor, request = make(tok, max_model_len=5, max_tokens=64, ignore_eos=True)
    assert emit(processor, request, [40, 41, 42])[0] == [None, RequestStatus.FINISHED_LENGTH]


def test_the_output_carries_counts_and_the_finish_reason(tok):
    processor, request = make(tok, max_tokens=1, ignore_eos=True)
    request.append_output_token(40)
    request.status = processor.check_stop(request, 40)
    output = processor.make_output(request, [40], None)
    assert output.finished and output.finish_reason == "length"
    assert (output.num_prompt_tokens, output.num_output_tokens, output.new_token_ids) == (3, 1, [40])
