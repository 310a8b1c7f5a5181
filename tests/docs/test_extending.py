"""docs/extending.md: every worked example is quoted verbatim from
docs/examples/, and each one, imported as its one registration line would
import it, works for real: the drafter and the policy speculate losslessly
through LLMEngine, the architecture loads from a model directory and runs,
the endpoint answers over HTTP."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.models import registry as architectures
from engine.models.loader import load_model
from engine.spec import registry as drafters
from engine.spec.registry import method_names
from scheduler.drafts import DraftBlock
from scheduler.load import StepCostModel
from scheduler.policies import registry as policies
from scheduler.policies.registry import policy_names
from scheduler.request import Request, SamplingParams
from server.app import create_app
from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import LiveServer, assert_error
from tests.tiny_model import make_tiny_model_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "docs", "examples")
GUIDE = os.path.join(ROOT, "docs", "extending.md")
REGISTRIES = (drafters.DRAFTERS, policies.POLICIES, architectures.ARCHITECTURES)

PROMPTS = [
    "one two three four one two three four one two",
    "def add(a, b):\n    return a + b\n\ndef add(a, b):",
    "The quick brown fox jumps over the lazy dog. The quick brown",
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


# --- the page quotes the files ---------------------------------------------------

def quoted_examples() -> dict[str, str]:
    """{path: code} for each `<!-- example: path -->` + python block of the guide."""
    with open(GUIDE, encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"<!-- example: (\S+) -->\n```python\n(.*?)```", text, flags=re.S)
    return dict(blocks)


def test_the_guide_quotes_every_example_verbatim():
    quoted = quoted_examples()
    files = sorted(f"docs/examples/{n}" for n in os.listdir(EXAMPLES) if n.endswith(".py"))
    assert sorted(quoted) == files
    for path, code in quoted.items():
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            assert f.read() == code, f"docs/extending.md quotes an outdated {path}"


# --- importing an example registers it (and the registries are restored) ---------

@pytest.fixture()
def load_example():
    """Import docs/examples/<name>.py afresh, as its registration line would;
    afterwards the registries hold only the built-ins again."""
    import engine.models, engine.spec.builtin  # noqa: F401, E401  (the built-ins register first)

    saved = [dict(registry) for registry in REGISTRIES]

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"docs_example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    yield load
    for registry, before in zip(REGISTRIES, saved):
        registry.clear()
        registry.update(before)
    for name in [n for n in sys.modules if n.startswith("docs_example_")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"), seed=3)


def make_engine(model, method="none", policy="static"):
    config = EngineConfig(model=str(model), dtype="float32", cache=CacheConfig(block_size=8, num_blocks=256),
                          scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256),
                          speculative=SpeculativeConfig(method=method, num_speculative_tokens=4, policy=policy))
    return LLMEngine(config, step_cost=StepCostModel.flat())


def generate(engine) -> list[list[int]]:
    """Greedy outputs of the prompts, run as one concurrent batch."""
    return engine.generate([engine.tokenizer.encode(p) for p in PROMPTS], GREEDY)


def generate_one_by_one(engine) -> list[list[int]]:
    return [engine.generate([engine.tokenizer.encode(p)], GREEDY)[0] for p in PROMPTS]


@pytest.fixture(scope="module")
def reference(model_dir):
    """Plain decoding, one request at a time: what every speculative run must reproduce."""
    return generate_one_by_one(make_engine(model_dir))


# --- (a) a drafter -------------------------------------------------------------------

def test_the_bigram_drafter_speculates_losslessly(load_example, model_dir, reference):
    load_example("bigram_drafter")
    assert "bigram" in method_names()
    engine = make_engine(model_dir, method="bigram")
    assert type(engine.drafter).__name__ == "BigramDrafter"
    assert generate(engine) == reference
    stats = engine.stats
    assert stats.num_draft_tokens > 0 and stats.num_accepted_tokens > 0, "the drafter never drafted"


def test_the_drafter_chains_the_latest_followers(load_example):
    drafter = load_example("bigram_drafter").BigramDrafter()
    request = Request("r", [5, 6, 7, 5, 8, 9, 5], SamplingParams(max_tokens=4))
    from engine.spec.base import DraftInput

    proposal = drafter.propose([DraftInput(request, 3, torch.Generator(), [])])["r"]
    assert proposal.token_ids == [8, 9, 5]  # after 5 came 8 last time, after 8 came 9, then 5
    drafter.forget(["r"])
    assert drafter.followers == {}


def test_a_drafter_name_registers_once(load_example):
    module = load_example("bigram_drafter")
    with pytest.raises(ValueError, match="already registered"):
        drafters.register_drafter("bigram")(module.build_bigram)


# --- (b) a verification policy -------------------------------------------------------

def test_the_threshold_policy_keeps_speculation_lossless(load_example, model_dir, reference):
    load_example("threshold_policy")
    assert "threshold" in policy_names()
    engine = make_engine(model_dir, method="ngram", policy="threshold")
    assert type(engine.verify_policy).__name__ == "ThresholdPolicy"
    assert generate(engine) == reference
    counts = engine.verify_policy.stats().verify_length_counts
    assert sum(counts[1:]) > 0, "the policy never verified a draft"


def test_the_threshold_policy_verifies_the_confident_prefix_within_budget(load_example):
    policy = load_example("threshold_policy").ThresholdPolicy(threshold=0.3, max_draft=4)
    first, second = (Request(rid, [1, 2], SamplingParams()) for rid in "ab")
    first.drafts = DraftBlock([7, 8, 9, 7], [0.9, 0.5, 0.2, 0.9])
    second.drafts = DraftBlock([4, 4], [0.8, 0.8])
    assert policy.choose_lengths([first, second], budget_left=10) == {"a": 2, "b": 2}
    assert policy.choose_lengths([first, second], budget_left=3) == {"a": 2, "b": 1}
    assert policy.stats().verify_length_counts == [0, 1, 3, 0, 0]


# --- (c) a model architecture --------------------------------------------------------

def with_scaled_embeddings(source: str, dest: str) -> str:
    """The same checkpoint as a plain Llama whose embedding table holds the
    scaled lookups (its LM head is untied, so only lookups change)."""
    shutil.copytree(source, dest)
    weights = load_file(os.path.join(dest, "model.safetensors"))
    with open(os.path.join(dest, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"] * config["hidden_size"] ** 0.5
    save_file(weights, os.path.join(dest, "model.safetensors"))
    config["model_type"], config["rms_norm_eps"] = "llama", config["layer_norm_epsilon"]
    with open(os.path.join(dest, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return dest


def test_the_scaled_llama_loads_and_runs_through_the_engine(load_example, tmp_path):
    module = load_example("scaled_llama")
    scaled = make_tiny_model_dir(tmp_path / "scaled", seed=4, tie_word_embeddings=False,
                                 model_type="scaled_llama", layer_norm_epsilon=1e-3)
    loaded = load_model(scaled)
    assert type(loaded.model) is module.ScaledLlamaForCausalLM
    assert loaded.config.rms_norm_eps == 1e-3  # adapt_config read the family's own key
    equivalent = with_scaled_embeddings(scaled, str(tmp_path / "plain"))
    expected = generate_one_by_one(make_engine(equivalent))
    assert generate(make_engine(scaled)) == expected
    assert generate(make_engine(scaled, method="ngram")) == expected


def test_an_unregistered_model_type_fails_loudly(tmp_path):
    with pytest.raises(ValueError, match="not supported"):
        load_model(make_tiny_model_dir(tmp_path, model_type="scaled_llama"))


# --- (d) an HTTP endpoint ------------------------------------------------------------

def test_the_tokenize_endpoint_answers_over_http(load_example):
    module = load_example("tokenize_endpoint")
    engine = FakeEngineClient(model_name="tiny")
    app = create_app(engine, api_key="secret")
    app.include_router(module.router)  # the line server/routes.py would hold
    server = LiveServer(app).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            auth = {"Authorization": "Bearer secret"}
            response = http.post("/v1/tokenize", json={"text": "héllo"}, headers=auth)
            assert response.status_code == 200
            expected = engine.tokenizer.encode("héllo")
            assert response.json() == {"token_ids": expected, "count": len(expected)}
            assert_error(http.post("/v1/tokenize", json={"text": "x"}), 401)
            assert_error(http.post("/v1/tokenize", json={"txt": "x"}, headers=auth), 400)
            assert "/v1/tokenize" in http.get("/openapi.json").json()["paths"]
    finally:
        server.stop()
