"""CUDA-graph buckets (engine/cuda_graphs.py), as far as a CPU can test them:
which steps get which bucket, and that padding a step to its bucket leaves
every real row bitwise unchanged with batch-invariant kernels (the padded
forward runs eagerly here; tests/gpu/gpu_check.py replays real graphs on CUDA).
"""
from __future__ import annotations

import pytest
import torch

from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.cuda_graphs import GRAPH_MAX_QUERY, CudaGraphRunner, choose_bucket
from engine.engine import LLMEngine
from engine.kv_cache import allocate_kv_caches
from kernels.attention import AttentionMetadata
from scheduler.load import StepCostModel
from scheduler.request import SamplingParams
from tests.tiny_model import make_tiny_model_dir

PROMPTS = ["def add(a, b):\n    return a + b\n\ndef add(a, b):",
           "one two three four one two three four one two",
           "The quick brown fox jumps over the lazy dog. The quick brown", "Hello"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
NUM_BLOCKS, BLOCK_SIZE = 96, 16


def test_bucket_choice():
    assert choose_bucket([1]) == 1
    assert choose_bucket([1, 1, 1]) == 4
    assert choose_bucket([5, 1, 3]) == 16
    assert choose_bucket([GRAPH_MAX_QUERY] * 2) == 32
    assert choose_bucket([GRAPH_MAX_QUERY + 1]) is None  # a prefill chunk: eager
    assert choose_bucket([16] * 17) is None  # more tokens than the largest bucket
    assert choose_bucket([]) is None
    assert choose_bucket([3], buckets=(2, 8)) == 8


def test_cuda_graphs_flag_fails_loudly_on_cpu(tmp_path):
    model_dir = make_tiny_model_dir(tmp_path / "m", seed=3)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        LLMEngine(EngineConfig(model=model_dir, dtype="float32", cuda_graphs=True))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("graphs"), hidden_size=128, seed=3)


def make_engine(model_dir, dtype, method):
    config = EngineConfig(
        model=str(model_dir), dtype=dtype, cache=CacheConfig(block_size=BLOCK_SIZE, num_blocks=NUM_BLOCKS),
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256),
        speculative=SpeculativeConfig(method=method, num_speculative_tokens=4))
    return LLMEngine(config, step_cost=StepCostModel.linear(0.01, 0.0005))


def install_eager_padding(engine) -> list[int]:
    """Give the runner a graph runner whose replay is the padded forward run
    eagerly, checked row by row against the unpadded forward."""
    runner, model = engine.runner, engine.loaded.model
    dtype = runner.kv_caches[0][0].dtype
    runner.kv_caches = allocate_kv_caches(engine.model_config, NUM_BLOCKS + 1, BLOCK_SIZE, dtype, "cpu")
    runner.graphs = CudaGraphRunner(model, runner.kv_caches, BLOCK_SIZE, 256, NUM_BLOCKS, "cpu")
    padded_steps = []

    def eager_replay(input_ids, positions, meta, aux_layers):
        """The padded step run eagerly, its real rows checked against the step unpadded."""
        tables = meta.block_tables_list
        real = next((r for r, table in enumerate(tables) if table == [NUM_BLOCKS]), len(tables))
        tokens = sum(meta.query_lens[:real])
        unpadded = AttentionMetadata.build(meta.query_lens[:real], meta.seq_lens_list[:real],
                                           meta.block_tables_list[:real], BLOCK_SIZE, "cpu")
        alone, _ = model(input_ids[:tokens], positions[:tokens], runner.kv_caches, unpadded)
        hidden, aux = model(input_ids, positions, runner.kv_caches, meta, aux_layers=aux_layers)
        assert torch.equal(hidden[:tokens], alone)
        padded_steps.append(meta.num_tokens - tokens)
        return hidden, aux

    runner.graphs.replay = eager_replay
    return padded_steps


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_padding_to_a_bucket_leaves_real_rows_bitwise_unchanged(model_dir, dtype):
    plain = make_engine(model_dir, dtype, "none")
    prompts = [plain.tokenizer.encode(p) for p in PROMPTS]
    expected = plain.generate(prompts, GREEDY)
    engine = make_engine(model_dir, dtype, "ngram")
    padding = install_eager_padding(engine)
    assert engine.generate(prompts, GREEDY) == expected
    assert engine.stats.num_drafts > 0
    assert padding and any(padding), "no step was padded: the test checked nothing"
