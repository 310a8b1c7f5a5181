"""Load a model: HF directory (safetensors), GGUF file, or the default model.

A GGUF file is converted once into an HF-layout cache directory (see
gguf_loader); from then on every load is the same fast directory load.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file

from engine.config import ModelConfig
from engine.models.registry import architecture
from engine.tokenizer import Tokenizer


@dataclass
class LoadedModel:
    """A ready model with its config and tokenizer."""

    config: ModelConfig
    model: torch.nn.Module  # the architecture's module (engine/models/llama.py)
    tokenizer: Tokenizer
    path: str  # the directory weights were read from (the converted cache dir for GGUF)


def load_model(path: str | None, dtype: torch.dtype = torch.float32, device: str = "cpu") -> LoadedModel:
    """Load weights, config and tokenizer; `path` None means the default model."""
    return load_hf_dir(resolve_model_dir(path), dtype, device)


def resolve_model_dir(path: str | None) -> str:
    """The HF-layout directory a model path names (None: the default model;
    a .gguf, or a directory holding only one, is converted on first use)."""
    if path is None:
        from engine.models.default import default_model_path

        path = default_model_path()
    path = _single_gguf_in_dir(os.path.expanduser(str(path)))
    if os.path.isfile(path) and path.endswith(".gguf"):
        from engine.models.gguf_loader import convert_gguf_to_hf_dir

        path = convert_gguf_to_hf_dir(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model path {path!r} is neither an HF model directory nor a .gguf file")
    return path


def _single_gguf_in_dir(path: str) -> str:
    """A directory holding one .gguf and no config.json means that file."""
    if not os.path.isdir(path) or os.path.exists(os.path.join(path, "config.json")):
        return path
    ggufs = glob.glob(os.path.join(path, "*.gguf"))
    return ggufs[0] if len(ggufs) == 1 else path


def load_hf_dir(path: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> LoadedModel:
    """HF layout: config.json, *.safetensors (sharded too), tokenizer files."""
    config = model_config_from_hf(_read_config(path))
    with torch.device("meta"):  # no random init: every weight is about to be replaced
        model = architecture(config.architecture).model_class(config)
    model.to(dtype=dtype)
    model.load_hf_state_dict(read_safetensors_dir(path))
    model.to(device=device).eval()
    if model.model.embed_tokens.weight.device.type == "cpu":
        model.use_column_major_weights()
    model.use_inference_kernels(batch_invariant=True)  # the engine may switch it off
    return LoadedModel(config=config, model=model, tokenizer=Tokenizer.from_dir(path), path=path)


def _read_config(path: str) -> dict:
    config_file = os.path.join(path, "config.json")
    if not os.path.exists(config_file):
        raise FileNotFoundError(f"{path} has no config.json")
    with open(config_file, encoding="utf-8") as f:
        return json.load(f)


def read_safetensors_dir(path: str) -> dict[str, torch.Tensor]:
    """All tensors of the directory's safetensors files (one or many shards)."""
    index_file = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index_file):
        with open(index_file, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(path, s) for s in shards]
    else:
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(file, device="cpu"))
    return tensors


def model_config_from_hf(config_json: dict) -> ModelConfig:
    """HF config.json (transformers 4.x or 5.x style) -> ModelConfig."""
    c = config_json
    model_type = c.get("model_type", "llama")
    family = architecture(model_type)  # raises for an unsupported model_type
    _reject_unsupported_features(c)
    num_heads = c["num_attention_heads"]
    rope_theta, rope_scaling = _rope_settings(c)
    fields = dict(
        vocab_size=c["vocab_size"],
        hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_layers=c["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=c.get("num_key_value_heads") or num_heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // num_heads,
        rms_norm_eps=c.get("rms_norm_eps", 1e-6),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=c.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
        architecture=model_type,
    )
    fields.update(family.adapt_config(c))  # the family's quirks override the generic reading
    return ModelConfig(**fields)


def _reject_unsupported_features(c: dict) -> None:
    if c.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {c['hidden_act']!r} is not supported (only silu)")
    if c.get("mlp_bias"):
        raise ValueError("mlp_bias is not supported")
    if c.get("use_sliding_window"):
        raise ValueError("sliding-window attention is not supported")
    rope = c.get("rope_parameters") or {}
    if (rope.get("partial_rotary_factor") or c.get("partial_rotary_factor") or 1.0) != 1.0:
        raise ValueError("partial rotary embeddings are not supported")


def _rope_settings(c: dict) -> tuple[float, dict | None]:
    """(rope_theta, scaling dict or None) from `rope_parameters` (transformers 5)
    or the older `rope_theta` + `rope_scaling` pair."""
    params = dict(c.get("rope_parameters") or {})
    legacy = dict(c.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", c.get("rope_theta", 10000.0)))
    scaling = params if params.get("rope_type", "default") != "default" else legacy
    if not scaling:
        return theta, None
    scaling = dict(scaling)
    scaling["rope_type"] = scaling.get("rope_type") or scaling.pop("type", "default")
    scaling.pop("type", None)
    return theta, (None if scaling["rope_type"] == "default" else scaling)
