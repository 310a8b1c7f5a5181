"""server/protocol.py: the request models refuse what the server cannot
serve, read explicit nulls as defaults, and responses leave out what is
absent."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.protocol import ChatCompletionRequest, CompletionRequest, SpeculativeUsage, Usage

MESSAGES = [{"role": "user", "content": "hi"}]


def test_explicit_nulls_mean_the_defaults():
    body = ChatCompletionRequest.model_validate({"messages": MESSAGES, "n": None, "temperature": None})
    assert body.n == 1 and body.temperature is None and body.stream is False


@pytest.mark.parametrize("extra", [{"n": 0}, {"temperature": 2.5}, {"top_p": 0}, {"stop": ["a"] * 5},
                                   {"max_tokens": "5"}, {"messages": []}, {"seed": 2**63}])
def test_out_of_range_or_mistyped_fields_are_refused(extra):
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"messages": MESSAGES, **extra})


def test_a_prompt_is_text_texts_ids_or_lists_of_ids():
    for prompt in ("text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]):
        assert CompletionRequest.model_validate({"prompt": prompt}).prompt == prompt
    for prompt in ("", [], [[]], [-1]):
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate({"prompt": prompt})


def test_usage_leaves_out_speculation_when_none_ran():
    assert "speculative" not in Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3).model_dump()
    spec = SpeculativeUsage(draft_tokens=4, accepted_tokens=2, steps=2, mean_accepted_length=2.0)
    assert Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3, speculative=spec).model_dump()["speculative"]
