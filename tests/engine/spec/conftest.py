"""Shared fixtures for the draft-head tests: a tiny random target, its
teacher-forced hidden states, heads built on it, and the training
pipeline's data (responses, cached features) made once per session."""
from __future__ import annotations

import pytest
import torch

from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.engine import LLMEngine
from engine.kv_cache import allocate_kv_caches
from engine.models.loader import load_model
from engine.spec.base import DraftInput
from engine.spec.head_drafter import HeadDrafter
from engine.spec.heads.config import HeadConfig
from engine.spec.training.blocks import blocks_for_anchors
from engine.spec.training.data import Prompt
from engine.spec.training.features import collect_features
from engine.spec.training.generate import generate_responses
from engine.spec.training.recipes import build_head
from engine.spec.training.train import TrainConfig, Trainer
from kernels.attention import AttentionMetadata
from scheduler.request import Request, SamplingParams
from tests.tiny_model import make_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_target"), seed=5, num_layers=4)


@pytest.fixture(scope="session")
def tiny_target(tiny_dir):
    return load_model(tiny_dir)


def target_features(loaded, tokens: torch.Tensor, aux_layers) -> tuple[torch.Tensor, torch.Tensor]:
    """One teacher-forced pass: (feats [T, A*H], final normed hidden [T, H])."""
    length, block = tokens.shape[0], 16
    blocks = list(range((length + block - 1) // block))
    caches = allocate_kv_caches(loaded.config, len(blocks), block, torch.float32, "cpu")
    meta = AttentionMetadata.build([length], [length], [blocks], block, "cpu")
    final, aux = loaded.model(tokens, torch.arange(length), caches, meta, aux_layers=tuple(aux_layers))
    return torch.cat(aux, dim=-1), final


# ---------------------------------------------------------------- heads

def make_head(method, loaded, block_size, seed=0):
    """A fresh head of `method` attached to `loaded` (seeded)."""
    torch.manual_seed(seed)
    return build_head(HeadConfig.for_target(method, loaded.config, block_size=block_size), loaded.model)


def random_sequence(length=40, seed=0, vocab=500):
    return torch.randint(3, vocab, (length,), generator=torch.Generator().manual_seed(seed))


def serve_one(head, feats, tokens, anchor: int, max_tokens: int):
    """HeadDrafter's proposal for one request whose last token is
    tokens[anchor]; sampling at T=1 with no filters, so probs[k] is the
    head's plain softmax."""
    params = SamplingParams(temperature=1.0, max_tokens=64)
    request = Request("r", tokens[: anchor + 1].tolist(), params)
    request.num_computed_tokens = anchor
    return absorb_and_propose(HeadDrafter(head), request, feats[:anchor], max_tokens)["r"]


def absorb_and_propose(drafter, request, feats, max_tokens, seed=0):
    """What the engine does for one request: the drafter absorbs the target
    features of the tokens that got KV (None: nothing new), then proposes."""
    if feats is not None:
        drafter.absorb(request, feats)
    item = DraftInput(request, max_tokens, torch.Generator().manual_seed(seed), [])
    return drafter.propose([item])


def check_block_pass_matches_serving(head, loaded, expected_logits):
    """The batched training pass over several anchors gives the draft
    distributions serving gives, position by position; `expected_logits
    (base [V], prev token [])` adds the family's per-position term."""
    tokens = random_sequence(seed=2)
    feats, _ = target_features(loaded, tokens, head.config.aux_layers)
    anchors = torch.tensor([7, 21, 33])
    block = head.config.block_size
    with torch.no_grad():
        hidden = blocks_for_anchors(head, feats, tokens, anchors)[:, head.prediction_rows]
        base = head.logits(hidden)
    for row, anchor in enumerate(anchors.tolist()):
        proposal = serve_one(head, feats, tokens, anchor, block)
        prev = [tokens[anchor].item()] + proposal.token_ids[:-1]
        for k in range(block):
            with torch.no_grad():
                logits = expected_logits(base[row, k], torch.tensor(prev[k]))
            torch.testing.assert_close(proposal.probs[k], torch.softmax(logits, -1), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- the training pipeline on the tiny target

@pytest.fixture(scope="session")
def engine(tiny_dir, tiny_target):
    config = EngineConfig(model=str(tiny_dir), cache=CacheConfig(block_size=16, num_blocks=256),
                          scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=1024))
    return LLMEngine(config, loaded=tiny_target)


@pytest.fixture(scope="session")
def samples(engine, tmp_path_factory):
    """The target's greedy responses to 20 toy prompts (generated in two runs: the second resumes)."""
    prompts = [Prompt("toy", f"toy/{i}", f"Tell me about the fox number {i} and {i * 7} dogs.") for i in range(20)]
    path = str(tmp_path_factory.mktemp("responses") / "responses.jsonl")
    generate_responses(engine, prompts[:8], path, max_tokens=40, progress=False)
    return generate_responses(engine, prompts, path, max_tokens=40, progress=False)  # resumes


@pytest.fixture(scope="session")
def feature_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="session")
def feature_set(tiny_target, samples, feature_dir):
    return collect_features(tiny_target, samples, (1, 2, 3), feature_dir, progress=False)


def split(features):
    """(train, held-out): prompts 0..3 are held out."""
    held, train = features.split_by(lambda sid: int(sid.split("/")[1]) < 4)
    return train, held


def make_trainer(tiny_target, feature_set, method, block_size, out_dir=None, steps=30, seed=0):
    train, held = split(feature_set)
    head = make_head(method, tiny_target, block_size, seed=seed)
    config = TrainConfig(steps=steps, lr=3e-3, warmup_steps=3, sequences_per_step=4, anchors_per_sequence=8,
                         checkpoint_every=10, seed=seed)
    return Trainer(head, train, config, out_dir, held, log=lambda *_: None, progress=False)
