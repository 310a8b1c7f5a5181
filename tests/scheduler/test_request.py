"""scheduler/request.py: sampling parameters are validated where they are
made, and a request's token views agree with its whole sequence."""
from __future__ import annotations

import pytest

from scheduler.request import InvalidSamplingParams, Request, RequestStatus, SamplingParams


@pytest.mark.parametrize("field, value", [("temperature", -0.1), ("top_p", 0.0), ("min_p", 1.5),
                                          ("presence_penalty", 3.0), ("repetition_penalty", 0.0),
                                          ("max_tokens", 0), ("logprobs", 21)])
def test_an_out_of_range_parameter_is_named(field, value):
    with pytest.raises(InvalidSamplingParams) as raised:
        SamplingParams(**{field: value})
    assert raised.value.param == field


def test_greedy_and_penalties():
    assert SamplingParams(temperature=0.0).greedy and not SamplingParams().greedy
    assert not SamplingParams().has_penalties and SamplingParams(repetition_penalty=1.2).has_penalties


def test_token_views_slice_the_prompt_and_output_together():
    request = Request("r", [1, 2, 3], SamplingParams())
    for token in (4, 5):
        request.append_output_token(token)
    assert request.all_token_ids == [1, 2, 3, 4, 5] and request.num_tokens == 5
    for start in range(6):
        for end in range(start, 7):
            assert request.token_ids(start, end) == request.all_token_ids[start:end]
    assert request.last_token_id == 5


def test_statuses_say_whether_and_why_a_request_finished():
    assert RequestStatus.FINISHED_LENGTH.finish_reason == "length"
    assert RequestStatus.RUNNING.finish_reason is None and not RequestStatus.PREEMPTED.is_finished
    request = Request("r", [1], SamplingParams(), status=RequestStatus.FINISHED_ABORTED)
    assert request.is_finished and request.status.finish_reason == "abort"
