"""Schemathesis against the real app (tiny model, real engine, real HTTP).

Every operation of the served OpenAPI document gets schema-valid
(positive) and schema-invalid (negative) requests; each response must pass
schemathesis' checks: no 5xx, status codes, content types and bodies
(streamed events included) as documented, schema-invalid requests refused.

Its `positive_data_acceptance` check is replaced by a stricter-where-it-
matters one: a schema-valid request may be refused (400) only for what no
static schema can say, the model's limits (the prompt against the context
and the KV cache, token ids against the vocabulary, the chat template, the
per-request fan-out against the queue). Anything else is a disagreement
between the document and the server.

Bounded to a few minutes on one core: a small context (max_model_len) caps
every generation, and examples per operation are fixed (derandomized, so a
run is reproducible).
"""
from __future__ import annotations

from typing import Any, Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from server.limits import RequestLimits  # noqa: E402
from tests.server.helpers import LiveServer, live_server  # noqa: E402

EXAMPLES = {GenerationMode.POSITIVE: 100, GenerationMode.NEGATIVE: 100}
# Request fields whose 400 can depend on the model rather than on the schema
# (and, for completions, n: prompts x n against --max-choices-per-request).
# logit_bias: its ids must be in the vocabulary; response_format: a schema the
# grammar engine cannot enforce (what it can is no JSON Schema of its own).
MODEL_DEPENDENT = {"max_tokens", "max_completion_tokens", "messages", "prompt", "stop_token_ids",
                   "logit_bias", "response_format"}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    from engine.client import AsyncEngineClient
    from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
    from engine.engine import LLMEngine
    from scheduler.load import StepCostModel
    from tests.tiny_model import make_tiny_model_dir

    config = EngineConfig(
        model=make_tiny_model_dir(tmp_path_factory.mktemp("tiny-st"), seed=2),
        served_model_name="tiny", machine_counters=False, cache=CacheConfig(block_size=16, num_blocks=256),
        scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256, max_model_len=96),
        speculative=SpeculativeConfig(method="ngram", num_speculative_tokens=4))
    client = AsyncEngineClient(LLMEngine(config, step_cost=StepCostModel.flat()), "tiny")
    with live_server(client, limits=RequestLimits(max_prompts=4, max_choices=8)) as srv:
        yield srv


def refused_only_for_model_limits(ctx: Any, response: Any, case: Any) -> None:
    """A schema-valid request may get 400 only for a model-dependent reason."""
    positive = case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
    if positive and response.status_code == 400:
        param = (response.json()["error"]["param"] or "").split(".")[0]
        allowed = MODEL_DEPENDENT | ({"n"} if case.path == "/v1/completions" else set())
        assert param in allowed, f"schema-valid request refused: {response.text}"


def _operations(server: LiveServer) -> list:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=lambda m: m.name.lower())
def test_every_operation_conforms(server, mode):
    failures: list[str] = []
    for operation in _operations(server):
        try:
            _fuzz(server, operation, mode, failures)
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE  # nothing in it can be made invalid
    assert not failures, "\n\n".join(failures[:5])
    assert server.app.state.engine.is_healthy


def _fuzz(server: LiveServer, operation: Any, mode: GenerationMode, failures: list[str]) -> None:
    @settings(max_examples=EXAMPLES[mode], deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        try:
            case.call_and_validate(base_url=server.url, timeout=60,
                                   excluded_checks=[positive_data_acceptance],
                                   additional_checks=[refused_only_for_model_limits])
        except Exception as exc:  # collected: one report for the whole operation
            failures.append(f"{operation.label} ({mode.name}): {str(exc)[:2000]}")

    check()
