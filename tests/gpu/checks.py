"""The CUDA checks of issue 12, one function each (tests/gpu/gpu_check.py runs
them and writes the report). Each returns a dict of findings with an
"ok" entry (True, False, or None when skipped with a "reason").

Everything runs on models made on the spot (tests/tiny_model.py) or the
default model when it is installed on the machine; nothing is fetched.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.kv_cache import allocate_kv_caches
from engine.model_runner import ModelRunner
from engine.models.loader import load_model
from engine.profiler import decode_shaped_batch
from engine.spec.datastore import SHARE_BINS, build_datastore, tokenizer_fingerprint
from kernels.attention import AttentionMetadata
from scheduler.load import StepCostModel
from scheduler.request import SamplingParams
from tests.tiny_model import make_tiny_model_dir
from tools.step_costs import forked_verify_batch, verify_shaped_batch

DEVICE = "cuda"
TOPICS = ["caches", "trees", "rivers", "compilers", "tea", "maps", "clocks", "bees",
          "lamps", "boats", "codes", "stars", "roads", "bread", "wind", "glass"]
PROMPTS = [f"def {t}(x):\n    return x + 1\n\ndef {t}(x):" if i % 2 else
           f"Tell me about {t}. The {t} are {t} and the {t} are" for i, t in enumerate(TOPICS)]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
# SmolLM2-135M's shapes, random weights: step costs need shapes, not knowledge.
SMOLLM2_SHAPE = dict(hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, intermediate_size=1536,
                     head_dim=64, vocab_size=49152, max_position_embeddings=2048)


def environment() -> dict:
    import importlib.util
    triton_version = None
    if importlib.util.find_spec("triton"):
        import triton
        triton_version = triton.__version__
    return {"ok": torch.cuda.is_available(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "triton": triton_version, "flash_attn": importlib.util.find_spec("flash_attn") is not None}


def pytest_on_cuda(paths: list[str], timeout_s: int = 420) -> dict:
    """The CUDA-aware test files, compiled for real (no Triton interpreter)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.getcwd()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider", "-rs"],
                          env=env, capture_output=True, text=True, timeout=timeout_s)
    return {"ok": done.returncode == 0, "rc": done.returncode, "seconds": round(time.perf_counter() - started, 1),
            "tail": (done.stdout + done.stderr)[-3000:]}


def make_engine(model_dir, method="none", policy="static", draft_model=None, graphs=True, block_size=16,
                step_cost: StepCostModel | None = None, **speculative):
    config = EngineConfig(
        model=str(model_dir), dtype="bfloat16", device=DEVICE, cuda_graphs=graphs,
        cache=CacheConfig(block_size=block_size, num_blocks=600),
        scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=128, max_model_len=512),
        speculative=SpeculativeConfig(method=method, num_speculative_tokens=5, draft_model=draft_model,
                                      self_draft_layers=1 if method == "self-draft" else 0, policy=policy,
                                      **speculative))
    slope = 0.0005 if method == "draft-model" else 0.004
    return LLMEngine(config, step_cost=step_cost or StepCostModel.linear(0.01, slope))


def _count_syncs(fn) -> int:
    """CUDA syncs (torch's sync debug mode warnings) while fn runs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def step_syncs(model_dir, draft_dir) -> dict:
    """Real device syncs per engine step and inside forwards, with and
    without CUDA graphs, plain, n-gram and draft-model speculation."""
    found, ok = {}, True
    for graphs in (False, True):
        for method in ("none", "ngram", "draft-model"):
            engine = make_engine(model_dir, method, "static", str(draft_dir) if method == "draft-model" else None,
                                 graphs=graphs)
            for i, prompt in enumerate(PROMPTS[:6]):
                engine.add_request(f"r{i}", engine.tokenizer.encode(prompt), GREEDY)
            engine.step()  # prefill, compilation and capture happen here: not counted
            in_forward = [0]
            model = engine.loaded.model
            original = model.forward
            model.forward = lambda *a, **k: _counted_call(original, in_forward, *a, **k)
            per_step, capturing = [], []
            while engine.has_unfinished():
                captured = _num_graphs(engine)
                syncs = _count_syncs(engine.step)
                # A capture synchronises on purpose (once per bucket): counted apart.
                (capturing if _num_graphs(engine) > captured else per_step).append(syncs)
            model.forward = original
            key = f"{method}/{'graphs' if graphs else 'eager'}"
            found[key] = {"max_per_step": max(per_step, default=0), "steps": len(per_step),
                          "in_forward": in_forward[0], "capture_steps": capturing}
            ok &= max(per_step) <= 2 and in_forward[0] == 0
    return {"ok": ok, **found}


def _num_graphs(engine) -> int:
    return 0 if engine.runner.graphs is None else len(engine.runner.graphs.graphs)


def _counted_call(fn, counter: list, *args, **kwargs):
    result = []
    counter[0] += _count_syncs(lambda: result.append(fn(*args, **kwargs)))
    return result[0]


def bf16_invariance(model_dir) -> dict:
    """Hidden rows bitwise equal: each sequence alone, all packed together,
    and each split into a prefix plus a verification-sized block."""
    loaded = load_model(str(model_dir), torch.bfloat16, DEVICE)
    loaded.model.use_inference_kernels(True)
    gen = torch.Generator().manual_seed(0)
    lengths = [1, 3, 7, 12, 20, 33, 40, 5]
    seqs = [torch.randint(0, loaded.config.vocab_size, (n,), generator=gen).tolist() for n in lengths]
    alone = [_prefill(loaded, [s])[0] for s in seqs]
    packed = _prefill(loaded, seqs)
    split = [_prefill_in_two(loaded, s) for s in seqs]
    mismatches = sum(not torch.equal(a, p) for a, p in zip(alone, packed))
    mismatches += sum(not torch.equal(a, s) for a, s in zip(alone, split))
    return {"ok": mismatches == 0, "sequences": len(seqs), "mismatches": mismatches}


def _prefill(loaded, seqs: list[list[int]], block_size: int = 16) -> list[torch.Tensor]:
    caches = allocate_kv_caches(loaded.config, 64, block_size, torch.bfloat16, DEVICE)
    tables, next_block = [], 0
    for s in seqs:
        need = -(-len(s) // block_size)
        tables.append(list(range(next_block, next_block + need)))
        next_block += need
    meta = AttentionMetadata.build([len(s) for s in seqs], [len(s) for s in seqs], tables, block_size, DEVICE)
    ids = torch.tensor([t for s in seqs for t in s], device=DEVICE)
    positions = torch.tensor([p for s in seqs for p in range(len(s))], device=DEVICE)
    with torch.inference_mode():
        hidden, _ = loaded.model(ids, positions, caches, meta)
    starts = [sum(len(x) for x in seqs[:i]) for i in range(len(seqs))]
    return [hidden[a: a + len(s)] for a, s in zip(starts, seqs)]


def _prefill_in_two(loaded, seq: list[int], block_size: int = 16) -> torch.Tensor:
    """The prefix as one forward, the last <= 6 tokens as a second (a verify block)."""
    caches = allocate_kv_caches(loaded.config, 8, block_size, torch.bfloat16, DEVICE)
    cut = max(0, len(seq) - 6)
    table = list(range(-(-len(seq) // block_size)))
    parts = []
    with torch.inference_mode():
        for lo, hi in ((0, cut), (cut, len(seq))):
            if hi == lo:
                continue
            meta = AttentionMetadata.build([hi - lo], [hi], [table], block_size, DEVICE)
            hidden, _ = loaded.model(torch.tensor(seq[lo:hi], device=DEVICE),
                                     torch.arange(lo, hi, device=DEVICE), caches, meta)
            parts.append(hidden)
    return torch.cat(parts)


def greedy_speculation(model_dir, draft_dir) -> dict:
    """Greedy outputs with every drafter and policy (CUDA graphs on) equal
    plain decoding alone with graphs off, alone and 16 at once."""
    reference_engine = make_engine(model_dir, graphs=False)
    prompts = [reference_engine.tokenizer.encode(p) for p in PROMPTS]
    reference = [reference_engine.generate([p], GREEDY)[0] for p in prompts]
    results, ok = {}, True
    for method in ("none", "ngram", "self-draft", "draft-model"):
        for policy in (("static",) if method == "none" else ("static", "adaptive")):
            engine = make_engine(model_dir, method, policy, str(draft_dir) if method == "draft-model" else None)
            alone = [engine.generate([p], GREEDY)[0] for p in prompts]
            together = engine.generate(prompts, GREEDY)
            differ = sum(a != r for a, r in zip(alone, reference)) + sum(t != r for t, r in zip(together, reference))
            results[f"{method}/{policy}"] = {"differ": differ, "drafts": engine.stats.num_drafts,
                                             "accepted": engine.stats.num_accepted_tokens}
            ok &= differ == 0 and (method == "none" or engine.stats.num_drafts > 0)
    return {"ok": ok, **results}


def token_trees(model_dir, workdir: str, graphs: bool = True) -> dict:
    """n-gram + datastore with --ngram-alternatives (forks on scratch
    blocks, CUDA graphs on): greedy outputs equal plain decoding alone and
    16 at once, and alternatives are verified and win."""
    reference_engine = make_engine(model_dir, graphs=False)
    prompts = [reference_engine.tokenizer.encode(p) for p in PROMPTS]
    reference = [reference_engine.generate([p], GREEDY)[0] for p in prompts]
    path = os.path.join(workdir, "tiny-datastore.safetensors")
    fingerprint = tokenizer_fingerprint(reference_engine.tokenizer.backend.get_vocab())
    datastore = build_datastore(reference + [p[::-1] for p in prompts], max_n=3, min_count=1, tokenizer=fingerprint)
    datastore.survival = np.tile(np.linspace(0.05, 0.25, SHARE_BINS, dtype=np.float32), (3, 3, 1))
    datastore.save(path)
    # A flat step cost: alternatives verified whenever they might win.
    engine = make_engine(model_dir, "ngram", "adaptive", graphs=graphs, step_cost=StepCostModel.flat(),
                         ngram_datastore=path, ngram_alternatives=True)
    alone = [engine.generate([p], GREEDY)[0] for p in prompts]
    together = engine.generate(prompts, GREEDY)
    differ = sum(a != r for a, r in zip(alone, reference)) + sum(t != r for t, r in zip(together, reference))
    stats = engine.snapshot_stats()
    return {"ok": differ == 0 and stats.num_alternative_wins > 0, "differ": differ,
            "alternatives": stats.num_alternatives, "wins": stats.num_alternative_wins,
            "accepted_from_alternatives": stats.num_alternative_accepted_tokens}


def graphs_equal_eager(model_dir) -> dict:
    """Every replayed step's hidden rows bitwise equal the same padded step run eagerly."""
    engine = make_engine(model_dir, "ngram")
    graphs, model, runner = engine.runner.graphs, engine.loaded.model, engine.runner
    compared, mismatches = [0], [0]
    replay = graphs.replay

    def checked_replay(input_ids, positions, meta, aux_layers):
        eager, _ = model(input_ids, positions, runner.kv_caches, meta, aux_layers=aux_layers)
        eager = eager.clone()
        hidden, aux = replay(input_ids, positions, meta, aux_layers)
        compared[0] += 1
        mismatches[0] += not torch.equal(hidden, eager)
        return hidden, aux

    graphs.replay = checked_replay
    engine.generate([engine.tokenizer.encode(p) for p in PROMPTS], GREEDY)
    return {"ok": compared[0] > 0 and mismatches[0] == 0, "steps": compared[0], "mismatches": mismatches[0],
            "buckets_captured": sorted({key[0] for key in graphs.graphs})}


def default_model_speculation() -> dict:
    """Greedy n-gram speculation equals plain decoding on the default model, if it is here."""
    path = os.environ.get("SPECSERVE_GPU_MODEL")
    if path is None:
        try:
            from engine.models.default import default_model_path
            path = default_model_path()
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            return {"ok": None, "reason": f"default model not on this machine: {exc}"}
    plain = make_engine(path)
    prompts = [plain.tokenizer.encode(p) for p in PROMPTS[:8]]
    reference = plain.generate(prompts, GREEDY)
    found, ok = {}, True
    for policy in ("static", "adaptive"):
        engine = make_engine(path, "ngram", policy)
        differ = sum(o != r for o, r in zip(engine.generate(prompts, GREEDY), reference))
        found[policy] = differ
        ok &= differ == 0
    return {"ok": ok, "model": path, "differ": found}


def step_costs(model_dir, sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256), drafts=(0, 2, 4, 8), repeats=20) -> dict:
    """SPS(B) and verification cost, bf16 invariant, with and without CUDA graphs (ms, best of `repeats`)."""
    loaded = load_model(str(model_dir), torch.bfloat16, DEVICE)
    loaded.model.use_inference_kernels(True)
    table = {}
    for graphs in (False, True):
        runner = ModelRunner(loaded.model, loaded.config, 1024, 16, torch.bfloat16, DEVICE,
                             cuda_graph_len=2048 if graphs else None)
        shapes = {f"B={b}": decode_shaped_batch(b, 32, 16, 1024, DEVICE) for b in sizes}
        shapes.update({f"verify k={k}": verify_shaped_batch(k, DEVICE) for k in drafts})
        # A token tree's alternative as a fork (engine/spec/tree.py): does a
        # second sequence of k + 1 rows cost what k more rows in one would?
        shapes.update({f"verify k={k} + 1 fork": forked_verify_batch(k, 1, DEVICE) for k in drafts if k})
        shapes.update({f"verify k={2 * k + 1}": verify_shaped_batch(2 * k + 1, DEVICE) for k in drafts if k})
        table["graphs" if graphs else "eager"] = {label: _best_ms(runner, batch, repeats)
                                                  for label, batch in shapes.items()}
    return {"ok": True, "model": str(model_dir), "ms": table}


@torch.inference_mode()
def _best_ms(runner, batch, repeats: int) -> float:
    tokens, positions, meta = batch
    best = float("inf")
    for i in range(repeats + 3):  # 3 warm-ups: compilation, capture
        torch.cuda.synchronize()
        begin = time.perf_counter()
        hidden, _ = runner.forward(tokens, positions, meta)
        runner.model.compute_logits(hidden[:meta.num_tokens])
        torch.cuda.synchronize()
        if i >= 3:
            best = min(best, time.perf_counter() - begin)
    return round(best * 1000, 3)
