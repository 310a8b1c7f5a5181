"""`specserve build-datastore`: the corpus datastore n-gram drafts from where
prompt lookup finds nothing (engine/spec/datastore.py), built from the
assistant replies of ShareGPT's train split, tokenized by the target's
tokenizer. Deterministic: the same flags give the same arrays and metadata
(safetensors may write the metadata's keys in another order).

    specserve build-datastore --conversations 20000 --max-n 4 --min-count 4 \\
        --out engine/spec/datastores/smollm2.safetensors
"""
from __future__ import annotations

import argparse
import os
import time

from engine.spec.datastore import build_datastore, tokenizer_fingerprint
from engine.spec.training.data import sharegpt_conversations


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="target whose tokenizer is used (default: the bundled model)")
    parser.add_argument("--conversations", type=int, default=20000,
                        help="ShareGPT train-split conversations whose assistant replies are counted "
                             "(the first N; the package holds 9,989)")
    parser.add_argument("--max-n", type=int, default=4, help="longest context, in tokens")
    parser.add_argument("--min-count", type=int, default=4, help="contexts seen fewer times are dropped")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")


def run_from_args(args: argparse.Namespace) -> int:
    started = time.time()
    tokenizer = target_tokenizer(args.model)
    replies = assistant_replies(args.conversations)
    sequences = (encoding.ids for start in range(0, len(replies), 1000)
                 for encoding in tokenizer.backend.encode_batch(replies[start:start + 1000],
                                                                 add_special_tokens=False))
    description = (f"assistant replies of the first {args.conversations} ShareGPT train-split conversations, "
                   f"contexts of 1..{args.max_n} tokens seen >= {args.min_count} times")
    datastore = build_datastore(sequences, args.max_n, args.min_count,
                                tokenizer_fingerprint(tokenizer.backend.get_vocab()), description)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    datastore.save(args.out)
    print(f"{len(replies)} replies, {len(datastore)} contexts, {os.path.getsize(args.out) / 1e6:.1f} MB "
          f"-> {args.out} ({time.time() - started:.0f} s)")
    return 0


def assistant_replies(conversations: int) -> list[str]:
    """The assistant turns of the first `conversations` train-split conversations
    (MT-Bench and HumanEval stay evaluation-only; ShareGPT's test split is never read)."""
    return [message["content"] for conversation in sharegpt_conversations(conversations, split="train")
            for message in conversation.messages if message["role"] == "assistant"]


def target_tokenizer(model: str | None):
    """The target's tokenizer, without loading its weights."""
    from engine.models.default import default_model_path
    from engine.models.gguf_loader import convert_gguf_to_hf_dir
    from engine.tokenizer import Tokenizer

    path = os.path.expanduser(model or default_model_path())
    if os.path.isfile(path) and path.endswith(".gguf"):
        path = convert_gguf_to_hf_dir(path)
    return Tokenizer.from_dir(path)
