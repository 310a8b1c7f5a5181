"""scheduler/output.py: the scheduler -> runner -> engine contract."""
from __future__ import annotations

from scheduler.drafts import DraftBlock
from scheduler.output import ScheduledRequest, SchedulerOutput
from scheduler.request import Request, SamplingParams


def test_a_scheduled_request_counts_real_tokens_and_drafts():
    request = Request("r", [1, 2, 3], SamplingParams())
    request.append_output_token(4)
    item = ScheduledRequest(request, start_position=3, num_query_tokens=1, block_ids=[0],
                            drafts=DraftBlock([5, 6], [0.5, 0.5]))
    assert item.samples and item.num_spec_tokens == 2 and item.spec_token_ids == [5, 6]
    assert item.num_new_tokens == 3


def test_a_partial_prefill_chunk_does_not_sample():
    request = Request("p", [1, 2, 3, 4], SamplingParams())
    assert not ScheduledRequest(request, 0, 2, [0]).samples
    assert ScheduledRequest(request, 2, 2, [0]).samples


def test_the_step_totals_its_tokens():
    request = Request("p", [1, 2, 3, 4], SamplingParams())
    out = SchedulerOutput([ScheduledRequest(request, 0, 4, [0]),
                           ScheduledRequest(Request("q", [1], SamplingParams()), 0, 1, [1])])
    assert out.total_num_tokens == 5 and not out.is_empty and SchedulerOutput().is_empty
