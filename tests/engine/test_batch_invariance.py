"""Batch invariance of the whole forward, bitwise.

A token's logits must be identical whether it is decoded alone, verified as
row j of a draft block, or computed in a packed batch with other requests'
prefill chunks, decode rows and drafts: that is what lets speculation stay
lossless in bfloat16. Each random schedule below is compared with
`torch.equal` against decoding every sequence one token per forward.
"""
from __future__ import annotations

import random

import pytest
import torch

from engine.kv_cache import allocate_kv_caches
from engine.models.loader import load_model
from kernels.attention import AttentionMetadata
from tests.tiny_model import make_tiny_model_dir

BLOCK_SIZE = 8
NUM_BLOCKS = 160
# Long enough for several 64-key attention chunks and 256-row linear tiles.
SEQ_LENS = (150, 97, 64, 33, 180, 12, 71)
MAX_BATCH_TOKENS = 300


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # head_dim 32, GQA 2:1, an intermediate size that is no multiple of the
    # vector width (elementwise tails), an untied LM head.
    return make_tiny_model_dir(tmp_path_factory.mktemp("invariant"), hidden_size=128, num_heads=4,
                               num_kv_heads=2, num_layers=2, intermediate_size=200,
                               tie_word_embeddings=False, seed=5)


class Driver:
    """Feeds token spans through the model like the runner does: block tables,
    one packed forward per step, logits for every row."""

    def __init__(self, loaded, dtype):
        self.model = loaded.model
        self.kv = allocate_kv_caches(loaded.config, NUM_BLOCKS, BLOCK_SIZE, dtype, "cpu")
        self.free = list(range(NUM_BLOCKS))
        random.Random(1).shuffle(self.free)
        self.tables: dict[int, list[int]] = {}

    def step(self, spans: list[tuple[int, int, list[int]]]) -> list[torch.Tensor]:
        """spans: (request, first position, tokens) -> logits [len(tokens), V] each."""
        ids, positions, query_lens, seq_lens, tables = [], [], [], [], []
        for rid, start, tokens in spans:
            table = self.tables.setdefault(rid, [])
            while len(table) * BLOCK_SIZE < start + len(tokens):
                table.append(self.free.pop())
            ids += tokens
            positions += range(start, start + len(tokens))
            query_lens.append(len(tokens))
            seq_lens.append(start + len(tokens))
            tables.append(table)
        meta = AttentionMetadata.build(query_lens, seq_lens, tables, BLOCK_SIZE, "cpu")
        hidden, _ = self.model(torch.tensor(ids), torch.tensor(positions), self.kv, meta)
        return list(self.model.compute_logits(hidden).split(query_lens))


def sequences(vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(n)] for n in SEQ_LENS]


def decode_alone(loaded, dtype, seqs) -> list[list[torch.Tensor]]:
    """Logits of every position, each token alone in its forward."""
    driver = Driver(loaded, dtype)
    return [[driver.step([(rid, pos, [token])])[0][0] for pos, token in enumerate(seq)]
            for rid, seq in enumerate(seqs)]


def packed_schedule(loaded, dtype, seqs, seed: int):
    """Random packed steps until every sequence is fed. Each step mixes
    prefill chunks, decode rows and draft blocks whose tail is wrong (then
    rolled back and re-fed, as a rejected draft is). Yields (request,
    position, logits row) for every row whose context is the true sequence."""
    rng = random.Random(seed)
    driver = Driver(loaded, dtype)
    done = [0] * len(seqs)
    while any(d < len(s) for d, s in zip(done, seqs)):
        spans, budget, kept = [], rng.randint(1, MAX_BATCH_TOKENS), []
        for rid in rng.sample(range(len(seqs)), len(seqs)):
            span = _random_span(rng, seqs[rid], done[rid], budget, loaded.config.vocab_size)
            if span is None:
                continue
            tokens, true_count = span
            spans.append((rid, done[rid], tokens))
            kept.append(true_count)
            budget -= len(tokens)
        for (rid, start, _), logits, true_count in zip(spans, driver.step(spans), kept):
            for j in range(true_count):
                yield rid, start + j, logits[j]
            done[rid] = start + true_count


def _random_span(rng, seq, start, budget, vocab):
    """(tokens, how many lead the true sequence) or None."""
    left = len(seq) - start
    if left <= 0 or budget <= 0:
        return None
    kind = rng.choice(["prefill", "decode", "draft"])
    if kind == "decode":
        return seq[start:start + 1], 1
    if kind == "prefill":
        n = min(left, budget, rng.randint(2, 120))
        return seq[start:start + n], n
    accepted = min(left, budget, rng.randint(1, 6))
    wrong = min(budget - accepted, rng.randint(0, 5))
    return seq[start:start + accepted] + [rng.randrange(vocab) for _ in range(wrong)], accepted


def mismatches(loaded, dtype, seed: int) -> tuple[int, int]:
    seqs = sequences(loaded.config.vocab_size, seed)
    alone = decode_alone(loaded, dtype, seqs)
    rows = list(packed_schedule(loaded, dtype, seqs, seed))
    bad = sum(not torch.equal(logits, alone[rid][pos]) for rid, pos, logits in rows)
    assert len(rows) == sum(SEQ_LENS)
    return bad, len(rows)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("seed", [0, 1])
def test_packed_logits_equal_decoding_alone_bitwise(model_dir, dtype, seed):
    loaded = load_model(model_dir, dtype)  # batch-invariant kernels by default
    assert loaded.model.batch_invariant
    bad, total = mismatches(loaded, dtype, seed)
    assert bad == 0, f"{bad} of {total} tokens' logits changed with the batch"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_free_kernels_do_change_logits_with_the_batch(model_dir, dtype):
    """The property above is not vacuous: the fast free-running kernels
    (SDPA, an unpadded single-row GEMM) fail it on this CPU."""
    loaded = load_model(model_dir, dtype)
    loaded.model.use_inference_kernels(batch_invariant=False)
    bad, total = mismatches(loaded, dtype, seed=0)
    assert bad > 0


def test_invariant_logits_stay_close_to_free_ones(model_dir):
    """Invariance changes summation order, not the model: logits agree with
    the free kernels to float32 rounding."""
    invariant, free = load_model(model_dir), load_model(model_dir)
    free.model.use_inference_kernels(batch_invariant=False)
    seqs = sequences(invariant.config.vocab_size)[:2]
    a = Driver(invariant, torch.float32).step([(i, 0, s) for i, s in enumerate(seqs)])
    b = Driver(free, torch.float32).step([(i, 0, s) for i, s in enumerate(seqs)])
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
