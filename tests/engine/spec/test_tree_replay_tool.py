"""tools.tree_replay: the engine walks the path a token tree would at T=0,
every output token after the prefill's is counted once, the head's branch
is credited only where it accepts more, and records that are not this
engine's greedy outputs fail the run."""
from __future__ import annotations

import pytest
import torch

from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.spec.datastore import build_datastore
from engine.spec.heads.config import HeadConfig
from engine.spec.training.recipes import build_head
from scheduler.load import StepCostModel
from scheduler.request import SamplingParams
from tools import tree_replay as tool

PROMPTS = ["def add(a, b):\n    return a + b\n\ndef add(a, b):", "one two three one two three one", "Hello there"]
BLOCK = 4


def engine_for(model_dir, loaded, drafter=None):
    config = EngineConfig(
        model=str(model_dir), dtype="float32", cache=CacheConfig(block_size=8, num_blocks=256),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=512),
        speculative=SpeculativeConfig(num_speculative_tokens=BLOCK, policy="static"))
    return LLMEngine(config, loaded=loaded, step_cost=StepCostModel.flat(), drafter=drafter)


@pytest.fixture(scope="module")
def records(tiny_dir, tiny_target):
    engine = engine_for(tiny_dir, tiny_target)
    prompts = [engine.tokenizer.encode(p) for p in PROMPTS]
    outputs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=24))
    return [{"prompt": p, "output": o} for p, o in zip(prompts, outputs)]


def head(tiny_target, seed=0):
    torch.manual_seed(seed)
    return build_head(HeadConfig.for_target("dspark", tiny_target.config, block_size=BLOCK), tiny_target.model)


def replay(tiny_dir, tiny_target, records, datastore=None, continuations=3, head_drafts=0):
    return tool.replay_tree(lambda drafter: engine_for(tiny_dir, tiny_target, drafter), head(tiny_target),
                            records, datastore, continuations, head_drafts)


def test_decode_steps_are_the_engines_own(tiny_dir, tiny_target, records):
    """One record at a time: the steps the report derives from the accepted
    drafts are the engine's steps after the prefill's."""
    for record in records:
        engines = []

        def remember(drafter):
            engines.append(engine_for(tiny_dir, tiny_target, drafter))
            return engines[-1]

        report = tool.replay_tree(remember, head(tiny_target), [record], None, 3, 0)
        assert report["decode_steps"] == engines[0].stats.num_steps - 1
        assert report["tokens_per_step"] == round((len(record["output"]) - 1) / report["decode_steps"], 3)
    assert sum(replay(tiny_dir, tiny_target, records)["kept_by_source"].values()) > 0


def test_a_kept_branch_the_engine_does_not_accept_whole_fails_the_run(tiny_dir, tiny_target, records, monkeypatch):
    kept_branch = tool.TreeOracle._kept_branch

    def one_draft_too_many(self, item, head_block):
        block = kept_branch(self, item, head_block)
        if block is None or item.max_tokens <= len(block):
            return block
        wrong = (block.token_ids[-1] + 1) % tiny_target.config.vocab_size
        return type(block)(block.token_ids + [wrong], block.confidences + [1.0], None, block.source)

    monkeypatch.setattr(tool.TreeOracle, "_kept_branch", one_draft_too_many)
    with pytest.raises(RuntimeError, match="should all have survived"):
        replay(tiny_dir, tiny_target, records)


def test_the_tree_keeps_the_branch_that_goes_furthest(tiny_dir, tiny_target, records):
    """A datastore of the outputs themselves beside prompt lookup: the tree
    keeps its branch where it goes further, whatever the branches' order."""
    datastore = build_datastore([r["output"] for r in records] * 4, max_n=3, min_count=2, tokenizer="t")
    lookup_only = replay(tiny_dir, tiny_target, records, continuations=1)
    datastore_only = replay(tiny_dir, tiny_target, records, datastore=datastore, continuations=0)
    both = replay(tiny_dir, tiny_target, records, datastore=datastore, continuations=3)
    assert "prompt lookup" not in datastore_only["kept_by_source"]
    assert both["decode_steps"] < lookup_only["decode_steps"] and both["kept_by_source"].get("datastore", 0) > 0
    # The datastore knows these very outputs: lookup's branches, offered first,
    # are kept only where they go at least as far.
    assert both["decode_steps"] <= datastore_only["decode_steps"]


def test_the_head_branch_is_offered_only_when_asked(tiny_dir, tiny_target, records):
    without = replay(tiny_dir, tiny_target, records, head_drafts=0)
    assert "head" not in without["kept_by_source"]
    with_head = replay(tiny_dir, tiny_target, records, head_drafts=BLOCK)
    assert with_head["decode_steps"] <= without["decode_steps"]
    kept = with_head["kept_by_source"].get("head", 0)
    assert with_head["decode_steps"] == without["decode_steps"] or kept > 0  # fewer only through head branches


def test_records_that_are_not_this_engines_outputs_fail_the_run(tiny_dir, tiny_target, records):
    wrong = [dict(records[0], output=[t + 1 for t in records[0]["output"]])] + records[1:]
    with pytest.raises(RuntimeError, match="not be exact"):
        replay(tiny_dir, tiny_target, wrong)
