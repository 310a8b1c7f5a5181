"""The paged, packed Llama-family model against transformers on tiny random weights."""
import random

import pytest
import torch

from engine.kv_cache import allocate_kv_caches, kv_bytes_per_token
from engine.models.loader import load_model
from kernels.attention import AttentionMetadata
from tests.tiny_model import make_tiny_model_dir

transformers = pytest.importorskip("transformers")

BLOCK_SIZE = 4
NUM_BLOCKS = 64
ATOL = 2e-4

VARIANTS = {
    "llama_tied_gqa": dict(architecture="llama"),
    "llama_untied_mha_bias": dict(architecture="llama", tie_word_embeddings=False, num_kv_heads=4, attention_bias=True),
    "qwen2": dict(architecture="qwen2", tie_word_embeddings=False),
    "qwen3": dict(architecture="qwen3", num_layers=3, num_kv_heads=1),
    "llama3_rope": dict(
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
    ),
    "linear_rope": dict(rope_scaling={"type": "linear", "factor": 3.0}),
    # Within max_position_embeddings dynamic NTK is plain RoPE, in HF and here.
    "dynamic_rope": dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    "yarn_rope": dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256}),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (our LoadedModel, transformers model), built lazily."""
    cache = {}

    def get(name):
        if name not in cache:
            path = make_tiny_model_dir(tmp_path_factory.mktemp(name), seed=len(cache), **VARIANTS[name])
            ours = load_model(path)
            ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
            cache[name] = (ours, ref.eval())
        return cache[name]

    return get


def reference_logits(ref, ids: list[int]) -> torch.Tensor:
    """[len(ids), V] logits of the full sequence, computed by transformers."""
    with torch.no_grad():
        return ref(torch.tensor([ids])).logits[0].float()


class PagedRunner:
    """Drives our model like the engine does: block tables, packed steps."""

    def __init__(self, loaded, seed=0):
        self.model, self.config = loaded.model, loaded.config
        self.kv = allocate_kv_caches(self.config, NUM_BLOCKS, BLOCK_SIZE, torch.float32, "cpu")
        self.free = list(range(NUM_BLOCKS))
        random.Random(seed).shuffle(self.free)
        self.tables: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}

    def step(self, new_tokens: dict[int, list[int]], **kwargs):
        """Feed each request's new tokens in one packed forward; logits per request."""
        ids, positions, query_lens, seq_lens, tables = [], [], [], [], []
        for rid, tokens in new_tokens.items():
            start = self.lengths.get(rid, 0)
            end = start + len(tokens)
            table = self.tables.setdefault(rid, [])
            while len(table) * BLOCK_SIZE < end:
                table.append(self.free.pop())
            ids += tokens
            positions += range(start, end)
            query_lens.append(len(tokens))
            seq_lens.append(end)
            tables.append(table)
            self.lengths[rid] = end
        meta = AttentionMetadata.build(query_lens, seq_lens, tables, BLOCK_SIZE, "cpu")
        hidden, aux = self.model(torch.tensor(ids), torch.tensor(positions), self.kv, meta, **kwargs)
        logits = self.model.compute_logits(hidden)
        return dict(zip(new_tokens, logits.split(query_lens))), aux


PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def fibonacci(n):\n    return n",
    "Hi",
    "Once upon a time there was a small model that wanted to learn how to speak.",
]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_packed_prefill_matches_transformers(models, name):
    ours, ref = models(name)
    prompts = {i: ours.tokenizer.encode(p) for i, p in enumerate(PROMPTS)}
    logits, _ = PagedRunner(ours).step(prompts)
    for rid, ids in prompts.items():
        torch.testing.assert_close(logits[rid], reference_logits(ref, ids), atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("name", ["llama_tied_gqa", "qwen2", "qwen3", "llama3_rope"])
def test_chunked_prefill_then_decode_matches_transformers(models, name):
    ours, ref = models(name)
    prompts = [ours.tokenizer.encode(p) for p in PROMPTS[:3]]
    runner = PagedRunner(ours, seed=1)
    sequences = {rid: [] for rid in range(len(prompts))}
    fed = {rid: 0 for rid in sequences}
    last_logits = {}
    # Chunks of 5 prompt tokens per step, requests joining as they are ready,
    # then greedy decode one token per step, all requests in one packed batch.
    for _ in range(12):
        batch = {}
        for rid, prompt in enumerate(prompts):
            if fed[rid] < len(prompt):
                batch[rid] = prompt[fed[rid] : fed[rid] + 5]
            else:
                token = int(last_logits[rid][-1].argmax())
                sequences[rid].append(token)
                batch[rid] = [token]
            fed[rid] += len(batch[rid])
        step_logits, _ = runner.step(batch)
        for rid, logits in step_logits.items():
            full = prompts[rid] + sequences[rid]
            expected = reference_logits(ref, full[: fed[rid]])[-len(batch[rid]) :]
            torch.testing.assert_close(logits, expected, atol=ATOL, rtol=1e-4)
            last_logits[rid] = logits
    assert all(len(s) > 0 for s in sequences.values())


def test_aux_layers_and_self_draft_prefix(models):
    ours, ref = models("qwen3")  # 3 layers
    ids = ours.tokenizer.encode(PROMPTS[0])
    with torch.no_grad():
        hf = ref(torch.tensor([ids]), output_hidden_states=True).hidden_states  # embeddings, layer outputs
    _, aux = PagedRunner(ours).step({0: ids}, aux_layers=(0, 1))
    torch.testing.assert_close(aux[0], hf[1][0], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(aux[1], hf[2][0], atol=ATOL, rtol=1e-4)
    # A 2-layer self-draft: the first two layers, then the final norm.
    runner = PagedRunner(ours)
    runner.kv = runner.kv[:2]
    logits, aux = runner.step({0: ids}, num_layers=2, aux_layers=(1,))
    with torch.no_grad():
        expected = ref.lm_head(ref.model.norm(hf[2]))[0]
    torch.testing.assert_close(logits[0], expected, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(aux[0], hf[2][0], atol=ATOL, rtol=1e-4)


def test_forward_rejects_bad_layer_arguments(models):
    ours, _ = models("llama_tied_gqa")
    runner = PagedRunner(ours)
    with pytest.raises(ValueError):
        runner.step({0: [5, 6]}, aux_layers=(2,))
    runner.kv = runner.kv[:1]
    with pytest.raises(ValueError):
        runner.step({0: [5, 6]})


def test_different_prompts_give_different_greedy_tokens(models):
    ours, _ = models("llama_tied_gqa")
    prompts = {i: ours.tokenizer.encode(p) for i, p in enumerate(PROMPTS)}
    logits, _ = PagedRunner(ours).step(prompts)
    assert len({int(l[-1].argmax()) for l in logits.values()}) >= 3


def test_bfloat16_runs_close_to_float32(tmp_path):
    path = make_tiny_model_dir(tmp_path)
    ours32, ours16 = load_model(path), load_model(path, dtype=torch.bfloat16)
    ids = ours32.tokenizer.encode(PROMPTS[0])
    runner16 = PagedRunner(ours16)
    runner16.kv = allocate_kv_caches(ours16.config, NUM_BLOCKS, BLOCK_SIZE, torch.bfloat16, "cpu")
    logits16, _ = runner16.step({0: ids})
    logits32, _ = PagedRunner(ours32).step({0: ids})
    assert logits16[0].dtype == torch.float32
    assert (logits16[0] - logits32[0]).abs().max() < 0.3  # bf16 keeps ~3 significant digits


def test_dynamic_rope_stretches_only_beyond_the_trained_length(models):
    ours, _ = models("dynamic_rope")
    rotary = ours.model.rotary
    inside = torch.tensor([5, 1023])
    beyond = torch.tensor([4000])
    plain = rotary.inv_freq
    assert torch.allclose(rotary._dynamic_inv_freq(inside), plain.expand(2, -1))
    stretched = rotary._dynamic_inv_freq(beyond)[0]
    assert stretched[0] == plain[0] and (stretched[1:] < plain[1:]).all()


def test_kv_cache_geometry(models):
    ours, _ = models("llama_tied_gqa")
    cfg = ours.config
    caches = allocate_kv_caches(cfg, 8, 16, torch.float16, "cpu", num_layers=1)
    assert len(caches) == 1 and caches[0][0].shape == (8, 16, cfg.num_kv_heads, cfg.head_dim)
    assert kv_bytes_per_token(cfg, torch.float16) == 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2
