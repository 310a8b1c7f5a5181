"""Interleaved engine-level A/B: speculation off, n-gram and the hybrid
(DSpark head) as in-process engines sharing one loaded model, 2 x C prompts
of a dataset at concurrency C, rounds in rotating order (the host's speed
drifts between rounds; medians of interleaved rounds are steadier than a
one-after-another sweep). A diagnostic beside bench.spec_sweep, not a
replacement: no HTTP.

    OMP_NUM_THREADS=1 python -m tools.engine_ab mt-bench 8,32 3
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from bench.datasets import DATASETS, sample
from engine.config import EngineConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.models.default import default_model_path
from scheduler.request import SamplingParams


def main() -> None:
    torch.set_num_threads(1)
    model = default_model_path()
    dataset, concs, rounds = sys.argv[1], [int(c) for c in sys.argv[2].split(",")], int(sys.argv[3])
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    specs = {"off": SpeculativeConfig(method="none"),
             "ngram": SpeculativeConfig(method="ngram", policy="adaptive", num_speculative_tokens=8),
             "hybrid": SpeculativeConfig(method="hybrid", draft_model="checkpoints/dspark-smollm2", policy="adaptive", num_speculative_tokens=7)}
    engines, loaded = {}, None
    for name, spec in specs.items():
        engines[name] = LLMEngine(EngineConfig(model=model, speculative=spec, machine_counters=False), loaded=loaded)
        loaded = engines[name].loaded
    tok = loaded.tokenizer
    prompts = sample(DATASETS[dataset](), 2 * max(concs), 0)
    ids = [tok.encode(tok.apply_chat_template(list(p.messages), add_generation_prompt=True)) for p in prompts]
    for e in engines.values():
        e.generate(ids[:2], params)
    names = list(specs)
    results = {c: {n: [] for n in names} for c in concs}
    for r in range(rounds):
        order = names[r % 3:] + names[:r % 3]
        for c in concs:
            for n in order:
                t = time.perf_counter()
                for i in range(0, 2 * c, c):
                    engines[n].generate(ids[i:i + c], params)
                results[c][n].append(2 * c * 64 / (time.perf_counter() - t))
        print("round", r, {c: {n: round(v[-1], 1) for n, v in d.items()} for c, d in results.items()}, flush=True)
    for c in concs:
        med = {n: statistics.median(v) for n, v in results[c].items()}
        print(f"c{c}", {n: round(m, 1) for n, m in med.items()}, "ratio to off", {n: round(m / med["off"], 3) for n, m in med.items()})
    print(json.dumps({str(c): d for c, d in results.items()}))


if __name__ == "__main__":
    main()
