"""A tiny random Llama-family model in HF layout, for fast tests.

`make_tiny_model_dir` writes config.json, model.safetensors, a byte-level
BPE tokenizer trained on the spot on the text below (ChatML special tokens)
and a tokenizer_config.json with a ChatML template. Same seed, same files.
"""
from __future__ import annotations

import functools
import json
import os

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.",
    "Once upon a time there was a small model that wanted to learn how to speak. It read every book it could find.",
    "The weather today is sunny with a chance of rain in the afternoon. Remember to bring an umbrella.",
    "Speculative decoding drafts several tokens cheaply and verifies them with the target model in one pass.",
    "What is the capital of France? The capital of France is Paris. What is two plus two? It is four.",
    "Hello, how are you? I am fine, thank you. Can you help me write a poem about the sea and the stars?",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "for i in range(10):\n    print(i * i)\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    'import json\nwith open("data.json") as f:\n    data = json.load(f)\nprint(data["name"])\n',
    "SELECT name, count(*) FROM users WHERE age > 21 GROUP BY name ORDER BY count(*) DESC;",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 2.71828 -42 +7 50%",
    "Punctuation and symbols: ( ) [ ] { } < > = + - * / \\ | & ^ % $ # @ ! ? ; : , . ' \" ` ~ _",
    "Café, naïve, résumé, jalapeño, 日本語のテキスト, 中文文本, Привет мир, 🙂🚀🎉 emoji.",
]

ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
}


@functools.lru_cache(maxsize=4)
def train_tiny_tokenizer(vocab_size: int = 512) -> str:
    """A byte-level BPE (any text encodes) as tokenizer.json text."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT * 4, trainer)
    return tokenizer.to_str()


def make_tiny_model_dir(
    path,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    seed: int = 0,
    architecture: str = "llama",
    tie_word_embeddings: bool = True,
    **overrides,
) -> str:
    """Write a tiny random model in HF layout into `path` and return it.

    `overrides` go into config.json (e.g. rope_scaling, head_dim,
    intermediate_size, attention_bias, max_position_embeddings).
    """
    tokenizer = Tokenizer.from_str(train_tiny_tokenizer(vocab_size))
    config = _hf_config(
        tokenizer, hidden_size, num_layers, num_heads, num_kv_heads, architecture, tie_word_embeddings, overrides
    )
    return _write_model_dir(path, config, _random_weights(config, seed), tokenizer, eos_token_ids=[2, 0])


def _write_model_dir(path, config: dict, weights: dict[str, torch.Tensor], tokenizer, eos_token_ids: list[int]) -> str:
    """config.json, model.safetensors, tokenizer files and generation_config.json into `path`."""
    path = str(path)
    os.makedirs(path, exist_ok=True)
    _write_json(path, "config.json", config)
    save_file(weights, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    _write_json(path, "tokenizer_config.json", _tokenizer_config())
    _write_json(path, "generation_config.json", {"eos_token_id": eos_token_ids, "bos_token_id": 1})
    return path


def _hf_config(tokenizer, hidden, layers, heads, kv_heads, architecture, tied, overrides) -> dict:
    cls_name, model_type = ARCHITECTURES[architecture]
    config = {
        "architectures": [cls_name],
        "model_type": model_type,
        "vocab_size": tokenizer.get_vocab_size(),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    config.update(overrides)
    return config


def _random_weights(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic random weights under HF names; std chosen so logits vary."""
    gen = torch.Generator().manual_seed(seed)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]

    def normal(*shape, std=0.15):
        return torch.randn(*shape, generator=gen) * std

    def norm_weight(dim):
        return 1.0 + normal(dim, std=0.1)

    weights = {"model.embed_tokens.weight": normal(config["vocab_size"], hidden, std=0.2)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        weights[p + "input_layernorm.weight"] = norm_weight(hidden)
        weights[p + "post_attention_layernorm.weight"] = norm_weight(hidden)
        weights[p + "self_attn.q_proj.weight"] = normal(heads * head_dim, hidden)
        weights[p + "self_attn.k_proj.weight"] = normal(kv_heads * head_dim, hidden)
        weights[p + "self_attn.v_proj.weight"] = normal(kv_heads * head_dim, hidden)
        weights[p + "self_attn.o_proj.weight"] = normal(hidden, heads * head_dim)
        weights.update(_attention_extras(config, p, normal, norm_weight))
        weights[p + "mlp.gate_proj.weight"] = normal(inter, hidden)
        weights[p + "mlp.up_proj.weight"] = normal(inter, hidden)
        weights[p + "mlp.down_proj.weight"] = normal(hidden, inter)
    weights["model.norm.weight"] = norm_weight(hidden)
    if not config["tie_word_embeddings"]:
        weights["lm_head.weight"] = normal(config["vocab_size"], hidden, std=0.2)
    return {k: v.contiguous() for k, v in weights.items()}


def _attention_extras(config, prefix, normal, norm_weight) -> dict[str, torch.Tensor]:
    """Qwen2's q/k/v biases, Qwen3's q/k norms, Llama's optional attention_bias."""
    q_rows = config["num_attention_heads"] * config["head_dim"]
    kv_rows = config["num_key_value_heads"] * config["head_dim"]
    extras = {}
    model_type = config["model_type"]
    if model_type == "qwen2" or config.get("attention_bias"):
        extras[prefix + "self_attn.q_proj.bias"] = normal(q_rows, std=0.1)
        extras[prefix + "self_attn.k_proj.bias"] = normal(kv_rows, std=0.1)
        extras[prefix + "self_attn.v_proj.bias"] = normal(kv_rows, std=0.1)
    if model_type != "qwen2" and config.get("attention_bias"):
        extras[prefix + "self_attn.o_proj.bias"] = normal(config["hidden_size"], std=0.1)
    if model_type == "qwen3":
        extras[prefix + "self_attn.q_norm.weight"] = norm_weight(config["head_dim"])
        extras[prefix + "self_attn.k_norm.weight"] = norm_weight(config["head_dim"])
    return extras


def _tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "model_max_length": 1024,
        "chat_template": CHATML_TEMPLATE,
        "added_tokens_decoder": {
            str(i): {"content": t, "special": True, "normalized": False, "lstrip": False, "rstrip": False, "single_word": False}
            for i, t in enumerate(SPECIAL_TOKENS)
        },
    }


def _write_json(path: str, name: str, data: dict) -> None:
    with open(os.path.join(path, name), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)


# --- a model over a handful of tokens (statistical tests) --------------------

def make_tiny_vocab_model_dir(
    path,
    words: tuple[str, ...] = ("a",),
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    seed: int = 0,
    perturb: float = 0.0,
    perturb_seed: int = 1,
    embedding_std: float = 0.07,
) -> str:
    """A tiny random model whose vocabulary is the ChatML specials plus `words`
    (a WordLevel tokenizer: ids 0-2 are the specials, then the words).

    With 4 tokens the joint distribution of a few output tokens has few
    cells, so it can be computed exactly and estimated by sampling.
    `embedding_std` sets how peaked the distributions are (the tied LM head
    is the embedding; the default 0.07 keeps them flat). `perturb > 0`
    adds Gaussian noise of that standard deviation to every weight: with
    the same `seed`, a perturbed copy of the model, i.e. a draft model that
    agrees with it often.
    """
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS[0]))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    config = _hf_config(tokenizer, hidden_size, num_layers, num_heads, num_kv_heads, "llama", True,
                        {"max_position_embeddings": 256})
    weights = _random_weights(config, seed)
    weights["model.embed_tokens.weight"] *= embedding_std / 0.2
    if perturb:
        gen = torch.Generator().manual_seed(perturb_seed)
        weights = {k: (w + torch.randn(w.shape, generator=gen) * perturb).contiguous() for k, w in weights.items()}
    return _write_model_dir(path, config, weights, tokenizer, eos_token_ids=[2])
