"""HeadDrafter: valid proposals, per-request state, and lossless greedy
decoding through the real engine with each head swapped in."""
from __future__ import annotations

import pytest
import torch

from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.spec.base import DraftInput
from engine.spec.head_drafter import HeadDrafter
from engine.spec.heads.config import HeadConfig
from engine.spec.heads.registry import HEAD_METHODS
from engine.spec.training.recipes import build_head
from scheduler.load import StepCostModel
from scheduler.request import Request, SamplingParams
from tests.engine.spec.conftest import absorb_and_propose, target_features

BLOCK = 5
PROMPTS = ["def add(a, b):\n    return a + b\n\ndef add(a, b):", "Hello", "The quick brown fox jumps over"]


def make_drafter(loaded, method, seed=0, calibration=None):
    torch.manual_seed(seed)
    config = HeadConfig.for_target(method, loaded.config, block_size=BLOCK, calibration=calibration)
    return HeadDrafter(build_head(config, loaded.model))


def request_at(rid, tokens, anchor, params):
    """A request whose last token is tokens[anchor], with KV for the ones before."""
    request = Request(rid, tokens[: anchor + 1].tolist(), params)
    request.num_computed_tokens = anchor
    return request


@pytest.mark.parametrize("method", HEAD_METHODS)
def test_proposals_have_valid_distributions_and_confidences(tiny_target, method):
    drafter = make_drafter(tiny_target, method, calibration=[1.0, 2.0, 0.5, 1.0, 1.0])
    tokens = torch.randint(3, 500, (30,), generator=torch.Generator().manual_seed(1))
    feats, _ = target_features(tiny_target, tokens, drafter.aux_layers)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.8, top_k=20),
              SamplingParams(temperature=1.0, top_p=0.9, repetition_penalty=1.3)]
    inputs = []
    for i, p in enumerate(params):
        request = request_at(f"r{i}", tokens, 10 + 5 * i, p)
        drafter.absorb(request, feats[: 10 + 5 * i])
        inputs.append(DraftInput(request, BLOCK - i, torch.Generator().manual_seed(0), []))
    proposals = drafter.propose(inputs)
    for i, p in enumerate(params):
        proposal = proposals[f"r{i}"]
        k = BLOCK - i
        assert len(proposal.token_ids) == len(proposal.confidences) == k
        assert proposal.probs.shape == (k, tiny_target.config.vocab_size)
        torch.testing.assert_close(proposal.probs.sum(-1), torch.ones(k))
        assert (proposal.probs >= 0).all()
        chosen = proposal.probs[torch.arange(k), proposal.token_ids]
        assert (chosen > 0).all()
        if p.greedy:
            assert (chosen == 1).all()
        if p.top_k:
            assert ((proposal.probs > 0).sum(-1) <= 20).all()
        assert all(0.0 <= c <= 1.0 for c in proposal.confidences)


def test_state_grows_with_features_and_is_forgotten(tiny_target):
    drafter = make_drafter(tiny_target, "dspark")
    tokens = torch.randint(3, 500, (30,), generator=torch.Generator().manual_seed(2))
    feats, _ = target_features(tiny_target, tokens, drafter.aux_layers)
    greedy = SamplingParams(temperature=0.0)
    assert drafter.backlog(request_at("a", tokens, 10, greedy)) == 10  # never drafted: all to fold
    absorb_and_propose(drafter, request_at("a", tokens, 10, greedy), feats[:10], BLOCK)
    assert drafter.states["a"].num_context == 10
    # Three more tokens got KV: only their features arrive.
    request = request_at("a", tokens, 13, greedy)
    assert drafter.backlog(request) == 3
    absorb_and_propose(drafter, request, feats[10:13], BLOCK)
    assert drafter.states["a"].num_context == 13 and drafter.backlog(request) == 0
    # Incremental state gives the same drafts as starting from scratch.
    fresh = make_drafter(tiny_target, "dspark")
    again = absorb_and_propose(fresh, request_at("a", tokens, 13, greedy), feats[:13], BLOCK)["a"]
    assert absorb_and_propose(drafter, request, None, BLOCK)["a"].token_ids == again.token_ids
    drafter.forget(["a"])
    assert "a" not in drafter.states and "a" not in drafter.pending_hidden


def test_missing_features_fail_loudly(tiny_target):
    drafter = make_drafter(tiny_target, "eagle3")
    tokens = torch.randint(3, 500, (20,))
    feats, _ = target_features(tiny_target, tokens, drafter.aux_layers)
    request = request_at("a", tokens, 10, SamplingParams(temperature=0.0))
    with pytest.raises(RuntimeError, match="features"):
        absorb_and_propose(drafter, request, feats[:7], BLOCK)
    with pytest.raises(RuntimeError, match="features"):
        drafter.absorb(request, None)


def make_engine(model_dir, loaded=None, drafter=None):
    config = EngineConfig(
        model=str(model_dir), dtype="float32", cache=CacheConfig(block_size=8, num_blocks=256),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=512),
        speculative=SpeculativeConfig(num_speculative_tokens=BLOCK, policy="static"))
    return LLMEngine(config, loaded=loaded, step_cost=StepCostModel.flat(), drafter=drafter)


@pytest.mark.parametrize("method", HEAD_METHODS)
def test_greedy_through_engine_equals_plain_decoding(tiny_dir, tiny_target, method):
    plain_engine = make_engine(tiny_dir)
    prompts = [plain_engine.tokenizer.encode(p) for p in PROMPTS]
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    plain = plain_engine.generate(prompts, params)
    engine = make_engine(tiny_dir, plain_engine.loaded, make_drafter(plain_engine.loaded, method))
    alone = [engine.generate([p], params)[0] for p in prompts]
    batched = engine.generate(prompts, params)
    assert alone == plain and batched == plain
    assert engine.stats.num_draft_tokens > 0
    engine.step()  # finished requests are reported freed at the next schedule
    assert engine.drafter.states == {}
    sampled = engine.generate(prompts, SamplingParams(temperature=1.0, max_tokens=12, seed=3))
    assert all(len(out) == 12 or out[-1] in engine.tokenizer.stop_token_ids for out in sampled)


def test_a_prefix_cache_hit_gives_the_head_the_features_it_would_compute(tiny_dir, tiny_target):
    """A request admitted with a prefix-cache hit gets the cached tokens'
    features from the runner's feature cache: the same features, drafts and
    output as when the whole prompt is computed."""
    def run(warm: bool):
        drafter = make_drafter(tiny_target, "dspark")
        absorbed, absorb = [], drafter.absorb
        drafter.absorb = lambda request, hidden: (absorbed.append((request.request_id, hidden)),
                                                  absorb(request, hidden))
        engine = make_engine(tiny_dir, tiny_target, drafter)
        shared = engine.tokenizer.encode(PROMPTS[0] * 3)
        params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
        if warm:
            engine.generate([shared + [5]], params)
        hits = engine.snapshot_stats().prefix_cache_hits
        out = engine.generate([shared + [7, 8]], params)[0]
        last = absorbed[-1][0]
        features = torch.cat([hidden for rid, hidden in absorbed if rid == last])
        stats = engine.snapshot_stats()
        return out, features, stats.prefix_cache_hits - hits, stats.num_draft_tokens

    cold_out, cold_features, cold_hits, _ = run(warm=False)
    warm_out, warm_features, warm_hits, drafted = run(warm=True)
    assert cold_hits == 0 and warm_hits >= 2 * 8  # whole blocks of the shared prompt
    assert drafted > 0
    torch.testing.assert_close(warm_features, cold_features, rtol=1e-4, atol=1e-5)
    assert warm_out == cold_out


@pytest.mark.parametrize("method", HEAD_METHODS)
def test_a_served_head_runs_packed_kernels_and_drafts_as_the_plain_one(tmp_path, tiny_target, method):
    """from_checkpoint packs every linear (but DSpark's one-output
    confidence head, a dot product) and the restricted LM head for
    inference (free mode), and DSpark's Markov output W2; its drafts,
    distributions and confidences are
    the unpacked head's up to float rounding. With gradients on, the plain
    path runs (the packed copies would not train)."""
    from engine.models.inference_kernels import Linear
    from engine.models.llama import LlamaMLP
    from engine.spec.heads.checkpoint import load_head, save_head

    save_head(make_drafter(tiny_target, method).head, str(tmp_path / "ckpt"))
    served = HeadDrafter.from_checkpoint(str(tmp_path / "ckpt"), tiny_target.model)
    plain = HeadDrafter(load_head(str(tmp_path / "ckpt"), tiny_target.model))
    confidence = getattr(served.head, "confidence", None)
    linears = [m for m in served.head.modules() if isinstance(m, Linear) and m is not confidence]
    assert linears and all(m.kernel is not None for m in linears) and served.head._head_kernel is not None
    if method == "dspark":
        assert confidence.kernel is None and served.head._markov_kernel is not None
    assert all(m.kernel is None for m in plain.head.modules() if isinstance(m, Linear))
    tokens = torch.randint(3, 500, (40,), generator=torch.Generator().manual_seed(2))
    feats, _ = target_features(tiny_target, tokens, served.aux_layers)
    for i, params in enumerate([SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)]):
        blocks = [absorb_and_propose(drafter, request_at(f"r{i}", tokens, 30, params), feats[:30], BLOCK, seed=i)
                  [f"r{i}"] for drafter in (served, plain)]
        assert blocks[0].token_ids == blocks[1].token_ids
        torch.testing.assert_close(blocks[0].probs, blocks[1].probs, rtol=1e-4, atol=1e-5)
        assert blocks[0].confidences == pytest.approx(blocks[1].confidences, abs=1e-5)
    mlp = next(m for m in served.head.modules() if isinstance(m, LlamaMLP))
    served.head.logits(mlp(torch.randn(3, tiny_target.config.hidden_size))).sum().backward()
    assert mlp.gate_up_proj.weight.grad is not None and served.head.norm.weight.grad is not None


@pytest.mark.parametrize("method", HEAD_METHODS)
def test_checkpoint_served_by_method_flag_is_lossless(tmp_path, tiny_dir, tiny_target, method):
    """--speculative-method METHOD --draft-model CHECKPOINT, adaptive policy,
    with prefix caching on: repeated prompts hit it, and the head gets the
    cached tokens' features from the runner's feature cache."""
    from engine.spec.heads.checkpoint import save_head

    save_head(make_drafter(tiny_target, method).head, str(tmp_path / "ckpt"))
    spec = SpeculativeConfig(method=method, draft_model=str(tmp_path / "ckpt"),
                             num_speculative_tokens=BLOCK, policy="adaptive")
    config = EngineConfig(model=str(tiny_dir), dtype="float32", cache=CacheConfig(block_size=8, num_blocks=256),
                          scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64,
                                                    max_model_len=512), speculative=spec,
                          machine_counters=False)
    engine = LLMEngine(config, step_cost=StepCostModel.flat())
    prompts = [engine.tokenizer.encode(p) for p in PROMPTS]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    got = engine.generate(prompts, params) + engine.generate(prompts, params)  # the repeats hit the cache
    assert engine.snapshot_stats().prefix_cache_hits > 0
    assert got == make_engine(tiny_dir, engine.loaded).generate(prompts * 2, params)
    wrong = "dspark" if method != "dspark" else "eagle3"
    with pytest.raises(ValueError, match="holds a"):
        LLMEngine(EngineConfig(model=str(tiny_dir), speculative=SpeculativeConfig(
            method=wrong, draft_model=str(tmp_path / "ckpt"), policy="static")))
