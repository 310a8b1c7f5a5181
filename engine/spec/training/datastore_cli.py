"""`specserve build-datastore`: the corpus datastore n-gram drafts from beside
prompt lookup (engine/spec/datastore.py), built from the
assistant replies of ShareGPT's train split, tokenized by the target's
tokenizer. Deterministic: the same flags give the same arrays and metadata
(safetensors may write the metadata's keys in another order).

    specserve build-datastore --conversations 20000 --max-n 4 --min-count 4 \\
        --out engine/spec/datastores/smollm2.safetensors.xz

`--responses FILE` counts the target's own greedy replies too (the
training toolkit's JSONL, engine/spec/training/generate.py), each
`--responses-weight` times: per token the target's text predicts its
drafts far better than ShareGPT's. `--generate N` first generates the
replies to the first N ShareGPT train-split prompts into FILE (resumable:
a rerun generates only what is missing; `--generate-from S` starts at
prompt S, so that processes can split the range).
"""
from __future__ import annotations

import argparse
import itertools
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
    parser.add_argument("--responses", default=None, metavar="JSONL",
                        help="the target's own replies (engine/spec/training/generate.py's format), counted too")
    parser.add_argument("--responses-weight", type=int, default=4, help="times each of those replies is counted")
    parser.add_argument("--generate", type=int, default=0, metavar="N",
                        help="first generate the target's greedy replies to the first N ShareGPT train-split "
                             "prompts into --responses (only those missing)")
    parser.add_argument("--generate-from", type=int, default=0, metavar="S",
                        help="with --generate N: only prompts S..N-1 (processes in parallel over disjoint "
                             "ranges, each into its own file; concatenate the files)")
    parser.add_argument("--max-new-tokens", type=int, default=192, help="length of each generated reply")
    parser.add_argument("--gen-batch", type=int, default=32, help="replies generated at once")
    parser.add_argument("--max-prompt-tokens", type=int, default=512, help="longer prompts get no reply")


def run_from_args(args: argparse.Namespace) -> int:
    started = time.time()
    if args.generate and not args.responses:
        raise SystemExit("--generate N needs --responses FILE to write the replies to")
    if not 0 <= args.generate_from < max(args.generate, 1):
        raise SystemExit(f"--generate-from {args.generate_from} must lie in 0..{args.generate - 1} (--generate N)")
    if args.generate:
        generate_target_replies(args)
    tokenizer = target_tokenizer(args.model)
    replies = assistant_replies(args.conversations)
    sequences = itertools.chain(
        (encoding.ids for start in range(0, len(replies), 1000)
         for encoding in tokenizer.backend.encode_batch(replies[start:start + 1000], add_special_tokens=False)),
        target_replies(args.responses, args.responses_weight))
    description = (f"assistant replies of the first {args.conversations} ShareGPT train-split conversations"
                   + (f", the target's replies in {os.path.basename(args.responses)} x{args.responses_weight}"
                      if args.responses else "")
                   + f", contexts of 1..{args.max_n} tokens seen >= {args.min_count} times")
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


def target_replies(path: str | None, weight: int):
    """The response token ids in `path`, each `weight` times (none for no path)."""
    from engine.spec.training.generate import read_samples

    if not path:
        return []
    if not os.path.exists(path):
        raise SystemExit(f"--responses {path}: no such file (--generate N makes it)")
    return [sample.response_ids for sample in read_samples(path) for _ in range(weight)]


def generate_target_replies(args: argparse.Namespace) -> None:
    """The target's greedy replies to train-split ShareGPT prompts
    `args.generate_from`..`args.generate - 1`, appended to `args.responses`
    where missing."""
    from engine.models.loader import load_model
    from engine.spec.training.data import load_prompts
    from engine.spec.training.generate import generate_responses
    from engine.spec.training.pipeline import engine_for_generation

    engine = engine_for_generation(load_model(args.model), args)
    prompts = load_prompts(f"sharegpt:{args.generate}", split="train")[args.generate_from:]
    generate_responses(engine, prompts, args.responses,
                       max_tokens=args.max_new_tokens, batch_size=args.gen_batch,
                       max_prompt_tokens=args.max_prompt_tokens)


def target_tokenizer(model: str | None):
    """The target's tokenizer, without loading its weights."""
    from engine.models.loader import resolve_model_dir
    from engine.tokenizer import Tokenizer

    return Tokenizer.from_dir(resolve_model_dir(model))
