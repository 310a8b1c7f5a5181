"""GGUF -> HF-layout directory, converted once and cached.

Reading a GGUF means parsing ~50k tokenizer strings and dequantizing every
tensor (seconds). The converted copy (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, generation_config.json) lives in
$SPECSERVE_CACHE_DIR (default ~/.cache/specserve)/<name>-<hash>, keyed by
the file's name, size and mtime, and is written to a temporary directory
then renamed, so a crash never leaves a half-written cache behind.

Two GGUF conventions are undone here:
- tensor names (`blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`);
- for the `llama` architecture, llama.cpp's converter reorders the rows of
  q and k per head from HF's rotate-half RoPE layout to interleaved pairs;
  `unpermute_rope_rows` reverses it (qwen2/qwen3 files are not permuted).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

logger = logging.getLogger(__name__)

GGUF_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
}

GLOBAL_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

LAYER_TENSOR_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

# Token types in tokenizer.ggml.token_type (llama.cpp's enum).
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# Pre-tokenizer split patterns by tokenizer.ggml.pre (the published regexes).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_BY_PRE = {
    "llama3": LLAMA3_SPLIT,
    "llama-bpe": LLAMA3_SPLIT,
    "llama-v3": LLAMA3_SPLIT,
    "smaug-bpe": LLAMA3_SPLIT,
    "qwen2": QWEN2_SPLIT,
    "deepseek-r1-qwen": QWEN2_SPLIT,
}
# These split every digit off first, then apply the GPT-2 pattern.
DIGIT_SPLIT_PRES = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone"}
GPT2_PRES = {None, "default", "gpt-2", "gpt2", "mpt", "olmo", "jais"}


def cache_root() -> str:
    return os.environ.get("SPECSERVE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "specserve")


def cache_dir_for(gguf_path: str) -> str:
    """The cache directory of this exact file (name, size, mtime)."""
    stat = os.stat(gguf_path)
    name = os.path.basename(gguf_path)
    key = hashlib.sha256(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return os.path.join(cache_root(), f"{name.removesuffix('.gguf')}-{key}")


def convert_gguf_to_hf_dir(gguf_path: str) -> str:
    """Return an HF-layout directory for this GGUF, converting on first use."""
    target = cache_dir_for(gguf_path)
    if os.path.isfile(os.path.join(target, "model.safetensors")):
        return target
    os.makedirs(cache_root(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=cache_root())
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is a plain directory
    try:
        logger.info("converting %s into %s (once)", gguf_path, target)
        write_hf_dir(gguf_path, tmp)
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _publish(tmp: str, target: str) -> None:
    """Atomic rename; if another process won the race, keep its copy."""
    try:
        os.rename(tmp, target)
    except OSError:
        if not os.path.isfile(os.path.join(target, "model.safetensors")):
            raise


def write_hf_dir(gguf_path: str, out_dir: str) -> None:
    """Convert one GGUF file into HF files inside out_dir."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    meta = read_metadata(reader)
    config = hf_config_from_gguf(meta, {t.name for t in reader.tensors})
    tensors = hf_state_dict_from_gguf(reader, config)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    tokenizer, tokenizer_config = build_tokenizer(meta)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    _write_json(out_dir, "tokenizer_config.json", tokenizer_config)
    _write_json(out_dir, "generation_config.json", _generation_config(meta))
    _write_json(out_dir, "config.json", config)


def read_metadata(reader) -> dict:
    """All key/value fields of the file as plain Python values."""
    return {name: field.contents() for name, field in reader.fields.items()}


def hf_config_from_gguf(meta: dict, tensor_names: set[str]) -> dict:
    """GGUF metadata -> an HF config.json dict."""
    arch = meta["general.architecture"]
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: {sorted(GGUF_ARCHITECTURES)}")
    if "rope_freqs.weight" in tensor_names:
        raise NotImplementedError("GGUF files with a rope_freqs tensor (Llama 3.1 RoPE) are not supported yet")

    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    hidden, heads = get("embedding_length"), get("attention.head_count")
    cls_name, model_type = GGUF_ARCHITECTURES[arch]
    config = {
        "architectures": [cls_name],
        "model_type": model_type,
        "vocab_size": get("vocab_size") or len(meta["tokenizer.ggml.tokens"]),
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "head_dim": get("attention.key_length") or hidden // heads,
        "hidden_act": "silu",
        "rms_norm_eps": _float32_value(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": _float32_value(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": get("context_length", 2048),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
    }
    scaling = _rope_scaling(get)
    if scaling:
        config["rope_scaling"] = scaling
    return config


def _float32_value(value) -> float:
    """GGUF stores float32: 1e-5 reads back as 9.9999997e-06; keep the short decimal."""
    return float(str(np.float32(value)))


def _rope_scaling(get) -> dict | None:
    kind = get("rope.scaling.type")
    if kind in (None, "none"):
        return None
    if kind not in ("linear", "yarn"):
        raise NotImplementedError(f"GGUF rope scaling {kind!r} is not supported")
    scaling = {"rope_type": kind, "factor": float(get("rope.scaling.factor"))}
    if get("rope.scaling.original_context_length"):
        scaling["original_max_position_embeddings"] = get("rope.scaling.original_context_length")
    return scaling


def hf_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    if gguf_name in GLOBAL_TENSOR_NAMES:
        return GLOBAL_TENSOR_NAMES[gguf_name]
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if not match or match.group(2) not in LAYER_TENSOR_NAMES:
        raise ValueError(f"unknown GGUF tensor {gguf_name!r}")
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{LAYER_TENSOR_NAMES[part]}.{kind}"


def hf_state_dict_from_gguf(reader, config: dict) -> dict[str, torch.Tensor]:
    """Dequantized tensors under HF names, q/k rows back in HF order."""
    from gguf.quants import dequantize

    permuted = config["model_type"] == "llama"
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        array = np.ascontiguousarray(dequantize(tensor.data, tensor.tensor_type))
        array = array.reshape([int(d) for d in reversed(tensor.shape)])  # GGUF lists dims fastest-first
        if permuted and ".attn_q." in tensor.name:
            array = unpermute_rope_rows(array, heads)
        elif permuted and ".attn_k." in tensor.name:
            array = unpermute_rope_rows(array, kv_heads)
        # The reader memory-maps the file: copy whatever is still a read-only view.
        state[hf_name(tensor.name)] = torch.from_numpy(np.require(array, requirements=["C", "W"]))
    return state


def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation: per head, rows were reordered from
    [first half | second half] (HF rotate-half) to interleaved pairs.

    weight [num_heads * head_dim, ...] -> same shape, HF row order.
    """
    head_dim = weight.shape[0] // num_heads
    rest = weight.shape[1:]
    interleaved = weight.reshape(num_heads, head_dim // 2, 2, *rest)
    return interleaved.swapaxes(1, 2).reshape(weight.shape)


def build_tokenizer(meta: dict) -> tuple[HFTokenizer, dict]:
    """A `tokenizers` byte-level BPE and tokenizer_config from tokenizer.ggml.*."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise NotImplementedError(f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE 'gpt2')")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    tokenizer.decoder = decoders.ByteLevel()
    _add_special_tokens(tokenizer, tokens, meta.get("tokenizer.ggml.token_type") or [])
    bos = _token_or_none(tokens, meta.get("tokenizer.ggml.bos_token_id"))
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    tokenizer.post_processor = _post_processor(bos, vocab.get(bos), add_bos)
    return tokenizer, _tokenizer_config(meta, tokens, add_bos)


def _pre_tokenizer(pre: str | None):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in SPLIT_BY_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT_BY_PRE[pre]), "isolated"), byte_level])
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in DIGIT_SPLIT_PRES:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2])
    if pre not in GPT2_PRES:
        logger.warning("unknown GGUF pre-tokenizer %r: using the GPT-2 split; tokenization may differ", pre)
    return gpt2


def _add_special_tokens(tokenizer: HFTokenizer, tokens: list[str], token_types: list[int]) -> None:
    """Control tokens become special added tokens (matched whole, skipped on
    decode); user-defined ones plain added tokens (matched whole, kept)."""
    control = [tokens[i] for i, t in enumerate(token_types) if t == TOKEN_TYPE_CONTROL]
    user = [tokens[i] for i, t in enumerate(token_types) if t == TOKEN_TYPE_USER_DEFINED]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])


def _post_processor(bos: str | None, bos_id: int | None, add_bos: bool):
    if add_bos:
        return processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return processors.ByteLevel(trim_offsets=False)


def _token_or_none(tokens: list[str], index) -> str | None:
    return tokens[index] if index is not None and 0 <= index < len(tokens) else None


def _tokenizer_config(meta: dict, tokens: list[str], add_bos: bool) -> dict:
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "model_max_length": meta.get(f"{meta['general.architecture']}.context_length", 2048),
        "chat_template": meta.get("tokenizer.chat_template"),
    }
    names = {"bos_token": "bos", "eos_token": "eos", "unk_token": "unknown", "pad_token": "padding"}
    for name, key in names.items():
        config[name] = _token_or_none(tokens, meta.get(f"tokenizer.ggml.{key}_token_id"))
    return config


def _generation_config(meta: dict) -> dict:
    """eos plus the end-of-turn token, when the file names one."""
    stops = [meta.get("tokenizer.ggml.eos_token_id"), meta.get("tokenizer.ggml.eot_token_id")]
    stops = list(dict.fromkeys(s for s in stops if s is not None))
    return {"bos_token_id": meta.get("tokenizer.ggml.bos_token_id"), "eos_token_id": stops}


def _write_json(path: str, name: str, data: dict) -> None:
    with open(os.path.join(path, name), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
