"""The data a head trains on, prepared once in a work directory and reused.

- train: the target's own responses to ShareGPT train-split prompts
  (regenerated through LLMEngine: alignment with what the target writes)
  plus whole ShareGPT train-split conversations teacher-forced as they
  are (real text in volume: labels and soft labels come from the
  target's distribution there);
- heldout: the target's greedy responses to ShareGPT test-split prompts
  (exact greedy tau by teacher forcing; picks best/ and fits STS);
- eval sets (e.g. MT-Bench, HumanEval): the target's greedy responses,
  only logged during training, never trained on or fitted to.
Each role has its own feature directory and fingerprint, so changing the
eval sets never recomputes the training features. The train/test split is
by prompt id (data.split_of), the same for prompts and conversations.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from itertools import islice

import torch

from engine.device import fast_dtype_name
from engine.spec.training.data import Prompt, evaluation_split, load_prompts, parse_sources, sharegpt_conversations
from engine.spec.training.features import FeatureSet, collect_features
from engine.spec.training.generate import Sample, conversation_sample, dataset_samples

log = logging.getLogger("specserve.train_draft")


@dataclass
class TrainingData:
    """Feature sets by role, and the held-out prompts (for T=1 calibration).
    `train` joins the feature directories in `train_dirs`."""

    train: FeatureSet
    heldout: FeatureSet
    eval_sets: dict[str, FeatureSet] = field(default_factory=dict)
    heldout_prompts: list[Prompt] = field(default_factory=list)
    train_dirs: list[str] = field(default_factory=list)


def native_bf16(device: str) -> bool:
    """Whether `device` multiplies bfloat16 natively (engine/device.py's
    rule: CUDA with bf16 support; a CPU with AMX-BF16 or AVX512-BF16).
    Elsewhere bf16 is emulated and several times slower than float32."""
    return fast_dtype_name(device) == "bfloat16"


def prepare_data(args, loaded, work: str, aux_layers) -> TrainingData:
    """Responses, conversations and features for every role (cached in `work`).

    Roles with nothing to compute leave their directory alone, so two
    processes can prepare disjoint roles at once (e.g. the conversations'
    features while the other one regenerates responses)."""
    engine = engine_for_generation(loaded, args)
    threads = torch.get_num_threads()
    # Decoding is latency-bound: on a shared CPU a second thread mostly waits
    # for the busy other core (facts.md), so generation runs on one.
    torch.set_num_threads(args.gen_threads)
    responses = _train_responses(args, loaded, engine, work)
    heldout_prompts = load_prompts(args.heldout_data, split="test") if args.heldout_data else []
    heldout = _generate(engine, heldout_prompts, work, "heldout", args, temperature=0.0)
    eval_samples = {name: _generate(engine, prompts, work, f"eval-{name}", args, 0.0)
                    for name, prompts in evaluation_prompts(args.eval_data).items()}
    torch.set_num_threads(threads)
    role = lambda name, samples: _features(loaded, samples, aux_layers, os.path.join(work, f"features-{name}"),  # noqa: E731
                                           args)
    # The small held-out and evaluation sets first: usable while the
    # training features are still being computed.
    heldout_features = role("heldout", heldout)
    eval_sets = {name: role(f"eval-{name}", samples) for name, samples in eval_samples.items()}
    parts = {"train-responses": responses, "train-conversations": _conversations(args, loaded)}
    train = {name: role(name, samples) for name, samples in parts.items()}
    data = TrainingData(FeatureSet.concat(list(train.values())) if any(map(len, train.values())) else
                        _empty(loaded, aux_layers), heldout_features, eval_sets,
                        [p for p in heldout_prompts if p.id in {s.id for s in heldout}],
                        [os.path.join(work, f"features-{name}") for name, part in train.items() if len(part)])
    log.info("features: %d train sequences (%d tokens, %d trained), %d held-out, eval sets %s",
             len(data.train), data.train.num_tokens, data.train.num_trainable_tokens, len(data.heldout),
             {k: len(v) for k, v in data.eval_sets.items()})
    return data


def _features(loaded, samples: list[Sample], aux_layers, directory: str, args) -> FeatureSet:
    if not samples:
        return _empty(loaded, aux_layers)
    return collect_features(loaded, samples, aux_layers, directory, max_len=args.max_len, top_k=args.top_k,
                            progress=not args.no_progress)


def _empty(loaded, aux_layers) -> FeatureSet:
    return FeatureSet(tuple(aux_layers), loaded.config.hidden_size, [])


def evaluation_prompts(spec: str) -> dict[str, list[Prompt]]:
    """Evaluation-only sets: MT-Bench and HumanEval are never trained on, so
    any of their prompts will do; ShareGPT's come from the test split."""
    sources = parse_sources(spec) if spec else []
    return {name: load_prompts(f"{name}:{count}" if count else name, split=evaluation_split(name))
            for name, count in sources}


def engine_for_generation(loaded, args):
    """An LLMEngine over the loaded target for regenerating responses."""
    from engine.config import CacheConfig, SchedulerConfig
    from engine.spec.training.generate import engine_for

    batch, max_len = args.gen_batch, args.max_prompt_tokens + args.max_new_tokens
    blocks = batch * (max_len // 16 + 2) + 16
    return engine_for(loaded, CacheConfig(block_size=16, num_blocks=blocks),
                      SchedulerConfig(max_num_seqs=batch, max_num_batched_tokens=2048, max_model_len=max_len + 1))


def _train_responses(args, loaded, engine, work: str) -> list[Sample]:
    """Regenerated (or the dataset's) responses to train-split prompts."""
    if not args.data:
        return []
    prompts = load_prompts(args.data, split="train")
    if args.responses == "target":
        return _generate(engine, prompts, work, "train", args)
    return dataset_samples(loaded.tokenizer, prompts, args.max_new_tokens, args.max_prompt_tokens)


def _conversations(args, loaded) -> list[Sample]:
    """Whole train-split conversations, teacher-forced as they are: the
    `conversations` after the first `skip_conversations`."""
    if not args.conversations:
        return []
    skip = args.skip_conversations
    chosen = islice(sharegpt_conversations(skip + args.conversations, split="train"), skip, None)
    samples = (conversation_sample(loaded.tokenizer, c, args.max_len) for c in chosen)
    return [s for s in samples if s is not None]


def _generate(engine, prompts, work: str, name: str, args, temperature: float | None = None) -> list[Sample]:
    from engine.spec.training.generate import generate_responses

    temperature = args.gen_temperature if temperature is None else temperature
    path = os.path.join(work, f"responses-{name}-t{temperature:g}-n{args.max_new_tokens}.jsonl")
    wanted = {p.id for p in prompts}
    samples = generate_responses(engine, prompts, path, max_tokens=args.max_new_tokens, temperature=temperature,
                                 seed=args.seed, batch_size=args.gen_batch,
                                 max_prompt_tokens=args.max_prompt_tokens, progress=not args.no_progress)
    return [s for s in samples if s.id in wanted]
