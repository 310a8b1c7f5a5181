"""The greedy final-token fast path against the old vocabulary-wide inverse CDF
(every request's rows through it, as before 3f86602: the same tokens), interleaved."""
import statistics, sys, torch
from bench.datasets import DATASETS, sample
from engine.config import EngineConfig
from engine.engine import LLMEngine
from engine.models.default import default_model_path
from engine.spec import rejection
from scheduler.request import SamplingParams
from tools.engine_ab import run_streams, speculative_configs

torch.set_num_threads(1)
fast = rejection._sample_final_tokens
def old_path(drafts, draft_probs, target_probs, layout, num_accepted, uniform, needs_draws):
    return fast(drafts, draft_probs, target_probs, layout, num_accepted, uniform, [True] * len(needs_draws))
configs = speculative_configs("checkpoints/dspark-smollm2")
engines, loaded = {}, None
for name in ("off", "ngram"):
    engines[name] = LLMEngine(EngineConfig(model=default_model_path(), speculative=configs[name], machine_counters=False), loaded=loaded)
    loaded = engines[name].loaded
tok = loaded.tokenizer
prompts = [tok.encode(tok.apply_chat_template(list(p.messages), add_generation_prompt=True)) for p in sample(DATASETS["mt-bench"](), 64, 0)]
params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
for e in engines.values():
    e.generate(prompts[:2], params)
results = {}
outputs = {}
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2):
    for c in (8, 32):
        for name in engines:
            for variant in (("old", "new") if r % 2 == 0 else ("new", "old")):
                rejection._sample_final_tokens = old_path if variant == "old" else fast
                run = run_streams(engines[name], prompts, c, params)
                results.setdefault((c, name, variant), []).append(run.steady_tok_s)
    print("round", r, {k: round(v[-1], 1) for k, v in results.items()}, flush=True)
rejection._sample_final_tokens = fast
for c in (8, 32):
    for name in engines:
        old, new = statistics.median(results[(c, name, "old")]), statistics.median(results[(c, name, "new")])
        print(f"c{c} {name}: old {old:.1f} new {new:.1f} tok/s  new/old {new / old:.3f}")
# Same tokens either way (greedy): one batch through both paths.
outs = []
for variant in (old_path, fast):
    rejection._sample_final_tokens = variant
    outs.append(engines["ngram"].generate(prompts[:16], params))
print("identical outputs:", outs[0] == outs[1])
