"""engine/models/gguf_loader.py: GGUF metadata and tensor names map onto
the HF layout (the whole conversion against a real file is in
test_loader.py)."""
from __future__ import annotations

import os

import pytest

from engine.models.gguf_loader import cache_dir_for, hf_config_from_gguf, hf_name

META = {
    "general.architecture": "llama",
    "llama.embedding_length": 64, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
    "llama.feed_forward_length": 128, "llama.block_count": 2, "llama.context_length": 512,
    "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.freq_base": 10000.0,
    "tokenizer.ggml.tokens": ["a"] * 100, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
}


def test_metadata_becomes_an_hf_config():
    config = hf_config_from_gguf(META, {"blk.0.attn_q.weight"})
    assert (config["model_type"], config["vocab_size"], config["head_dim"]) == ("llama", 100, 16)
    assert config["rms_norm_eps"] == 1e-5  # float32 storage read back as the short decimal
    assert config["tie_word_embeddings"] and not config["attention_bias"]
    assert "rope_scaling" not in config
    untied = hf_config_from_gguf(META, {"output.weight", "blk.0.attn_q.bias"})
    assert not untied["tie_word_embeddings"] and untied["attention_bias"]


def test_rope_scaling_and_unsupported_files_are_named():
    scaled = hf_config_from_gguf({**META, "llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0},
                                 set())
    assert scaled["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    with pytest.raises(ValueError, match="not supported"):
        hf_config_from_gguf({**META, "general.architecture": "gpt2"}, set())
    with pytest.raises(NotImplementedError, match="rope_freqs"):
        hf_config_from_gguf(META, {"rope_freqs.weight"})


def test_tensor_names():
    assert hf_name("blk.3.attn_q.weight") == "model.layers.3.self_attn.q_proj.weight"
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    with pytest.raises(ValueError, match="unknown GGUF tensor"):
        hf_name("blk.0.mystery.weight")


def test_the_cache_directory_follows_the_file_s_content(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECSERVE_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "m.Q4_1.gguf"
    model.write_bytes(b"one")
    first = cache_dir_for(str(model))
    assert first.startswith(str(tmp_path / "cache")) and os.path.basename(first).startswith("m.Q4_1-")
    model.write_bytes(b"other content")
    assert cache_dir_for(str(model)) != first
