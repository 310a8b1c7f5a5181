"""logit_bias and response_format grammars through the engine, with and
without speculation (greedy: identical tokens; every output follows the
grammar; forbidden drafts are cut before verification)."""
from __future__ import annotations

import json

import jsonschema_rs
import pytest

from engine.spec.base import Drafter
from scheduler.drafts import DraftBlock
from scheduler.request import InvalidSamplingParams, SamplingParams, StructuredOutput
from tests.engine.test_speculative import (  # noqa: F401 (fixtures)
    PROMPTS, StatelessDrafter, draft_dir, make_engine, model_dir)

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok", "color", "n"],
          "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]},
                         "n": {"type": "integer", "minimum": 0, "maximum": 99}}}
SCHEMA_SPEC = StructuredOutput("json_schema", json.dumps(SCHEMA), strict=True)
METHODS = [("ngram", None), ("draft-model", "draft"), ("self-draft", None), ("dspark", "dspark")]


@pytest.fixture(scope="module")
def dspark_dir(model_dir, tmp_path_factory):
    """A randomly initialised DSpark head (block 4) on the tiny target."""
    import torch

    from engine.models.loader import load_model
    from engine.spec.heads.checkpoint import save_head
    from engine.spec.heads.config import HeadConfig
    from engine.spec.training.recipes import build_head
    target = load_model(str(model_dir))
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("dspark"))
    save_head(build_head(HeadConfig.for_target("dspark", target.config, block_size=4), target.model), path,
              dtype=torch.float32)
    return path


def engine_for(model_dir, draft_dir, method="none", **kwargs):
    draft = kwargs.pop("draft", None)
    draft = draft_dir if draft == "draft" else draft
    return make_engine(model_dir, method, draft_model=draft, **kwargs)


def structured(**kwargs) -> SamplingParams:
    return SamplingParams(**({"temperature": 0.0, "max_tokens": 64, "structured": SCHEMA_SPEC} | kwargs))


def prompts(engine):
    return [engine.tokenizer.encode(p) for p in PROMPTS]


def decode(engine, tokens: list[int]) -> str:
    return engine.tokenizer.decode(tokens)


@pytest.fixture(scope="module")
def plain_structured(model_dir, draft_dir):
    engine = engine_for(model_dir, draft_dir)
    return engine.generate(prompts(engine), structured())


def test_schema_outputs_validate_and_end_with_stop(model_dir, draft_dir, plain_structured):
    engine = engine_for(model_dir, draft_dir)
    validator = jsonschema_rs.validator_for(SCHEMA)
    for tokens in plain_structured:
        assert tokens[-1] in engine.outputs.eos_ids, "the output did not end where the grammar ends"
        validator.validate(json.loads(decode(engine, tokens)))


@pytest.mark.parametrize("method, draft", METHODS)
def test_greedy_schema_tokens_identical_with_speculation(model_dir, draft_dir, dspark_dir, plain_structured,
                                                         method, draft):
    engine = engine_for(model_dir, draft_dir, method, draft=dspark_dir if draft == "dspark" else draft)
    assert engine.generate(prompts(engine), structured()) == plain_structured
    assert engine.stats.num_draft_tokens > 0


def test_ngram_drafts_the_grammar_forbids_are_cut(model_dir, draft_dir):
    """The prompt repeats text the grammar never allows: the n-gram drafter
    proposes it, the cut drops it and nothing forbidden is verified."""
    engine = engine_for(model_dir, draft_dir, "ngram")
    plain = engine_for(model_dir, draft_dir)
    prompt = engine.tokenizer.encode('{"ok":true,"color":"red","n":1} xyz {"ok":true,"color":"red","n":1} xyz {')
    params = structured()
    assert engine.generate([prompt], params) == plain.generate([prompt], params)
    assert engine.stats.num_grammar_cut_draft_tokens > 0


class ForbiddenDrafter(StatelessDrafter):
    """Drafts a token no JSON value can start with, as a sampled spread q would."""

    name = "forbidden"
    costs_compute = False

    def __init__(self, token: int, vocab: int, spread: bool):
        self.token, self.vocab, self.spread = token, vocab, spread

    def propose(self, inputs):
        import torch
        probs = torch.full((2, self.vocab), 1.0 / self.vocab) if self.spread else None
        return {item.request.request_id: DraftBlock([self.token] * 2, [0.9, 0.9], probs, self.name)
                for item in inputs if item.max_tokens >= 2}


def forbidden_engine(model_dir, spread: bool):
    from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
    from engine.engine import LLMEngine
    from engine.models.loader import load_model
    from scheduler.load import StepCostModel
    loaded = load_model(str(model_dir))
    bad = loaded.tokenizer.encode("xyz")[0]
    config = EngineConfig(model=str(model_dir), dtype="float32", cache=CacheConfig(block_size=8, num_blocks=256),
                          scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=64, max_model_len=512),
                          speculative=SpeculativeConfig(method="ngram", num_speculative_tokens=2, policy="static"))
    drafter = ForbiddenDrafter(bad, loaded.config.vocab_size, spread)
    return LLMEngine(config, loaded=loaded, step_cost=StepCostModel.flat(), drafter=drafter)


def test_a_sampled_spread_draft_the_grammar_forbids_fails_loudly(model_dir):
    """Cutting it and sampling the row from p would be biased (the residual
    max(p - q, 0) is not p): the engine refuses instead."""
    engine = forbidden_engine(model_dir, spread=True)
    with pytest.raises(Exception, match="not masked"):
        engine.generate(prompts(engine)[:1], structured(temperature=1.0))


@pytest.mark.parametrize("spread", [False, True])
def test_greedy_cut_of_forbidden_drafts_is_exact(model_dir, draft_dir, plain_structured, spread):
    engine = forbidden_engine(model_dir, spread)
    assert engine.generate(prompts(engine), structured()) == plain_structured
    assert engine.stats.num_grammar_cut_draft_tokens > 0
    assert engine.stats.num_draft_tokens == 0, "a forbidden draft was verified"


def test_logit_bias_plus_100_forces_a_token_minus_100_bans_it(model_dir, draft_dir):
    engine = engine_for(model_dir, draft_dir)
    prompt = prompts(engine)[:3]
    forced = engine.tokenizer.encode(" fox")[0]
    out = engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True,
                                                 logit_bias=((forced, 100.0),)))
    assert all(tokens == [forced] * 8 for tokens in out)
    plain = engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    banned = plain[0][0]
    out = engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True,
                                                 logit_bias=((banned, -100.0),)))
    assert all(banned not in tokens for tokens in out)


BIASED = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True,
                        logit_bias=((10, 3.0), (11, -100.0), (40, 5.0), (97, 2.5)))


@pytest.mark.parametrize("method, draft", METHODS)
def test_logit_bias_greedy_identical_with_speculation(model_dir, draft_dir, dspark_dir, method, draft):
    plain = engine_for(model_dir, draft_dir)
    engine = engine_for(model_dir, draft_dir, method, draft=dspark_dir if draft == "dspark" else draft)
    expected = plain.generate(prompts(plain), BIASED)
    assert engine.generate(prompts(engine), BIASED) == expected
    assert engine.stats.num_draft_tokens > 0


def test_logit_bias_out_of_range_is_refused():
    with pytest.raises(InvalidSamplingParams) as info:
        SamplingParams(logit_bias=((3, 101.0),))
    assert info.value.param == "logit_bias"
    with pytest.raises(InvalidSamplingParams):
        SamplingParams(logit_bias=tuple((i, 1.0) for i in range(301)))


def test_ignore_eos_with_a_grammar_is_refused():
    with pytest.raises(InvalidSamplingParams) as info:
        SamplingParams(ignore_eos=True, structured=SCHEMA_SPEC)
    assert info.value.param == "ignore_eos"

