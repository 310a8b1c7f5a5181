"""engine/model_runner.py: one packed forward per step; drafts are verified
against the target and the features of exactly the tokens whose KV counts
go out for the drafter."""
from __future__ import annotations

import pytest
import torch

from engine.model_runner import ModelRunner, pack_batch
from engine.models.loader import load_model
from scheduler.drafts import DraftBlock
from scheduler.output import ScheduledRequest, SchedulerOutput
from scheduler.request import Request, SamplingParams
from tests.tiny_model import make_tiny_model_dir

GREEDY = SamplingParams(temperature=0.0, max_tokens=16)
PROMPT = [5, 6, 7, 8]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_model(make_tiny_model_dir(tmp_path_factory.mktemp("tiny"), seed=2))


def make_runner(loaded, aux_layers=()):
    return ModelRunner(loaded.model, loaded.config, num_blocks=4, block_size=8, dtype=torch.float32,
                       device="cpu", aux_layers=aux_layers)


def step(runner, request, start, num_query, drafts=None):
    item = ScheduledRequest(request, start, num_query, [0], drafts or DraftBlock())
    return runner.execute(SchedulerOutput([item]))


@pytest.fixture(scope="module")
def greedy_tokens(loaded):
    """The target's next four greedy tokens after PROMPT, one decode step each."""
    runner, request = make_runner(loaded), Request("g", list(PROMPT), GREEDY)
    out = step(runner, request, 0, len(PROMPT))
    for _ in range(4):
        token = out.sampled_token_ids["g"][0]
        request.append_output_token(token)
        out = step(runner, request, request.num_tokens - 1, 1)
    return request.output_token_ids


def test_pack_batch_flattens_real_tokens_then_drafts():
    chunk = Request("chunk", [1, 2, 3, 4, 5], GREEDY)  # a partial prefill: no sampling
    decode = Request("decode", [7, 8], GREEDY)
    decode.append_output_token(9)
    batch = pack_batch([ScheduledRequest(chunk, 0, 3, [0]),
                        ScheduledRequest(decode, 2, 1, [1], DraftBlock([10, 11], [1.0, 1.0]))], 8, "cpu")
    assert batch.input_ids.tolist() == [1, 2, 3, 9, 10, 11]
    assert batch.positions.tolist() == [0, 1, 2, 2, 3, 4]
    assert batch.offsets == [0, 3] and batch.sample_rows == [3, 4, 5]
    assert [item.request.request_id for item in batch.sampling] == ["decode"]


def test_the_target_s_own_tokens_as_drafts_are_all_accepted(loaded, greedy_tokens):
    runner, request = make_runner(loaded), Request("r", list(PROMPT), GREEDY)
    assert step(runner, request, 0, len(PROMPT)).sampled_token_ids["r"] == greedy_tokens[:1]
    request.append_output_token(greedy_tokens[0])
    out = step(runner, request, len(PROMPT), 1, DraftBlock(greedy_tokens[1:3], [0.9, 0.9]))
    assert out.num_accepted["r"] == 2 and out.sampled_token_ids["r"] == greedy_tokens[1:4]


def test_a_wrong_draft_is_replaced_by_the_target_s_token(loaded, greedy_tokens):
    runner, request = make_runner(loaded), Request("r", list(PROMPT), GREEDY)
    step(runner, request, 0, len(PROMPT))
    request.append_output_token(greedy_tokens[0])
    wrong = (greedy_tokens[1] + 1) % loaded.config.vocab_size
    out = step(runner, request, len(PROMPT), 1, DraftBlock([wrong, greedy_tokens[2]], [0.9, 0.9]))
    assert out.num_accepted["r"] == 0 and out.sampled_token_ids["r"] == greedy_tokens[1:2]


def test_features_go_out_for_real_tokens_and_accepted_drafts_only(loaded, greedy_tokens):
    runner, request = make_runner(loaded, aux_layers=(0, 1)), Request("r", list(PROMPT), GREEDY)
    out = step(runner, request, 0, len(PROMPT))
    hidden = loaded.config.hidden_size
    assert out.hidden_states["r"].shape == (len(PROMPT), 2 * hidden)
    request.append_output_token(greedy_tokens[0])
    wrong = (greedy_tokens[2] + 1) % loaded.config.vocab_size
    out = step(runner, request, len(PROMPT), 1, DraftBlock([greedy_tokens[1], wrong], [0.9, 0.9]))
    assert out.num_accepted["r"] == 1 and out.hidden_states["r"].shape == (2, 2 * hidden)


def test_a_request_s_generator_lives_until_it_is_forgotten(loaded):
    runner, request = make_runner(loaded), Request("s", [1], SamplingParams(seed=3))
    assert runner.generator_for(request) is runner.generator_for(request)
    runner.forget("s")
    assert "s" not in runner.generators
