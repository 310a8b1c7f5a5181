"""The statistical harness behind the end-to-end losslessness tests.

A tiny random model over V = 4 tokens (tests/tiny_model.py) makes the
joint distribution of a few output tokens cheap to compute exactly: every
prefix is run through the target and `sampler.target_probs` (the same
transforms the engine applies). The engine's samples are then compared with
it by a Pearson chi-square goodness-of-fit test.

What is recorded: every request generates OUTPUT_LEN = 4 tokens; the first
is always sampled by the prefill step (no drafts exist yet), tokens 2..4
come from verification steps (drafts proposed after token 1). The test
statistic is over the V**3 = 64 joint values of tokens 2..4 (token 1
marginalised out), the positions speculation touches: accepted drafts,
recovered tokens and bonus tokens all land there.

Significance and power (see `power_against_shift`): each test rejects at
ALPHA = 1e-4; with about 40 such tests per suite run a correct engine fails
one with probability below 0.5%, and the runs are deterministic anyway
(`deterministic_streams`). Power is computed per test from the exact
distribution: a shift of SHIFT = 0.03 of probability into or out of any
single cell (the other cells scaled to compensate) gives a noncentral
chi-square with lambda = N * 0.03**2 / (p (1 - p)) for that cell; the test
asserts that even for the worst cell the rejection probability at ALPHA is
at least MIN_POWER = 0.9 for its sample size N.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.kv_cache import allocate_kv_caches
from engine.models.loader import load_model
from engine.sampler import RowContext, target_probs
from engine.spec.datastore import SHARE_BINS, build_datastore, tokenizer_fingerprint
from engine.spec.base import Drafter
from engine.spec.heads.checkpoint import save_head
from engine.spec.heads.config import HeadConfig
from engine.spec.heads.registry import HEAD_METHODS
from engine.spec.training.recipes import build_head
from kernels.attention import AttentionMetadata
from scheduler.drafts import DraftBlock
from scheduler.load import StepCostModel
from scheduler.request import SamplingParams
from tests.tiny_model import make_tiny_vocab_model_dir

VOCAB = 4
HEAD_BLOCK = 3  # block size of the heads built here
OUTPUT_LEN = 4
RECORDED = slice(1, OUTPUT_LEN)  # tokens 2..4: the positions verification produces
ALPHA = 1e-4
SHIFT = 0.03
MIN_POWER = 0.9
# The target (2 layers, hidden 32) has flat distributions (no cell above
# 0.04, so 3,500 samples give the power asked for); the draft model is the
# same model with Gaussian noise (std DRAFT_PERTURB) on every weight: drafts
# are accepted ~87% of the time, and the draft and target differ enough
# that a wrong rule (a confidence of the drawn token, a wrong residual or
# bonus) moves the output far beyond the test's threshold.
TARGET_SEED = 1
TARGET_LAYERS = 2
TARGET_EMBEDDING_STD = 0.07
DRAFT_PERTURB = 0.05


# --- models ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def vocab_target_dir(tmp_path_factory):
    return make_tiny_vocab_model_dir(tmp_path_factory.mktemp("v4_target"), seed=TARGET_SEED,
                                     num_layers=TARGET_LAYERS, embedding_std=TARGET_EMBEDDING_STD)


@pytest.fixture(scope="session")
def vocab_draft_dir(tmp_path_factory):
    """A perturbed copy of the target: drafts get accepted often."""
    return make_tiny_vocab_model_dir(tmp_path_factory.mktemp("v4_draft"), seed=TARGET_SEED,
                                     num_layers=TARGET_LAYERS, embedding_std=TARGET_EMBEDDING_STD,
                                     perturb=DRAFT_PERTURB)


@pytest.fixture(scope="session")
def vocab_target(vocab_target_dir):
    return load_model(vocab_target_dir)


@pytest.fixture(scope="session")
def head_checkpoints(vocab_target, tmp_path_factory) -> dict[str, str]:
    """A randomly initialised head of every family (block HEAD_BLOCK), saved
    as a checkpoint: {method: directory}."""
    paths = {}
    for method in HEAD_METHODS:
        torch.manual_seed(0)
        config = HeadConfig.for_target(method, vocab_target.config, block_size=HEAD_BLOCK)
        paths[method] = str(tmp_path_factory.mktemp(method))
        save_head(build_head(config, vocab_target.model), paths[method], dtype=torch.float32)
    return paths


# n-gram with a datastore (`draft_models` maps it to the file), prompt
# lookup kept to 4-token matches so that most blocks come from the datastore
DATASTORE_METHOD = "ngram-datastore"


@pytest.fixture(scope="session")
def vocab_datastore(vocab_target, tmp_path_factory) -> str:
    """A corpus datastore over the target's vocabulary, counted on random
    sequences: its drafts are often wrong, so both outcomes get verified."""
    generator = torch.Generator().manual_seed(0)
    sequences = torch.randint(0, VOCAB, (40, 30), generator=generator).tolist()
    fingerprint = tokenizer_fingerprint(vocab_target.tokenizer.backend.get_vocab())
    path = str(tmp_path_factory.mktemp("datastore") / "datastore.safetensors")
    datastore = build_datastore(sequences, max_n=3, min_count=2, tokenizer=fingerprint)
    # A fitted map, as the shipped one has: n-gram then drafts whichever of
    # lookup and datastore promises more, and that choice is verified too.
    datastore.survival = np.tile(np.linspace(0.1, 0.9, SHARE_BINS, dtype=np.float32), (3, 3, 1))
    datastore.save(path)
    return path


@pytest.fixture(scope="session")
def draft_models(vocab_draft_dir, head_checkpoints, vocab_datastore) -> dict[str, str]:
    """--draft-model of every method that needs one (the hybrid drafts from
    a DSpark head beside n-gram), and the datastore of `ngram-datastore`."""
    return {"draft-model": vocab_draft_dir, **head_checkpoints, "hybrid": head_checkpoints["dspark"],
            DATASTORE_METHOD: vocab_datastore}



def engine_config(target, method: str, policy: str, draft_model: str | None, num_speculative_tokens: int,
                  max_num_seqs: int) -> EngineConfig:
    """The engine setup of these tests: float32, self-draft from 1 of 2 layers,
    no machine counters (what is verified must not depend on what else runs
    on the machine)."""
    if method == DATASTORE_METHOD:
        spec = SpeculativeConfig(method="ngram", num_speculative_tokens=num_speculative_tokens, policy=policy,
                                 ngram_min=4, ngram_max=4, ngram_datastore=draft_model)
    else:
        spec = SpeculativeConfig(method=method, num_speculative_tokens=num_speculative_tokens,
                                 draft_model=draft_model, self_draft_layers=1, policy=policy)
    return EngineConfig(model=target.path, cache=CacheConfig(block_size=8, num_blocks=2048),
                        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=1024,
                                                  max_model_len=64),
                        speculative=spec, machine_counters=False)


class DrawnTokenConfidence(Drafter):
    """MUTATION (the bug of issue 10): wraps a drafter and reports c_k =
    q(x_k), the draft probability of the drawn token itself, so whether
    x_k is verified depends on x_k."""

    def __init__(self, inner: Drafter):
        self.inner = inner
        for attribute in ("name", "aux_layers", "num_lookahead_slots", "costs_compute", "max_draft_tokens"):
            setattr(self, attribute, getattr(inner, attribute))

    def absorb(self, request, hidden) -> None:
        self.inner.absorb(request, hidden)

    def forget(self, request_ids) -> None:
        self.inner.forget(request_ids)

    def propose(self, inputs) -> dict[str, DraftBlock]:
        return {rid: DraftBlock(block.token_ids, [float(block.probs[k, x]) for k, x in enumerate(block.token_ids)],
                                block.probs, block.source)
                for rid, block in self.inner.propose(inputs).items()}


class FrozenCost(StepCostModel):
    """A step-cost curve that ignores measured step times, so the adaptive
    policies decide the same way on every run."""

    def observe(self, num_tokens: int, seconds: float) -> None:
        pass


def knee_cost(knee: int) -> FrozenCost:
    """Flat up to `knee` query tokens, then each extra token costs 1/32 of a
    step: the policies admit about `knee` tokens per step minus those of
    the requests in decode, taking the drafts of highest survival first, so
    verification lengths follow the confidences."""
    return FrozenCost([1, knee, 2 * knee], [1.0, 1.0, 1.0 + knee / 32])


# --- requests -------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One kind of request in the mixed batches: a prompt and its sampling."""

    name: str
    prompt: tuple[int, ...]
    params: SamplingParams


PLAIN = Setting("temperature-1", (3, 1, 3, 0, 3),
                SamplingParams(temperature=1.0, max_tokens=OUTPUT_LEN, ignore_eos=True))
FILTERED = Setting("filters-and-penalties", (0, 3, 3, 1, 2),
                   SamplingParams(temperature=0.9, top_k=3, top_p=0.95, min_p=0.08, repetition_penalty=1.3,
                                  frequency_penalty=0.4, presence_penalty=0.2, max_tokens=OUTPUT_LEN,
                                  ignore_eos=True))
SETTINGS = (PLAIN, FILTERED)


@pytest.fixture
def deterministic_streams(monkeypatch):
    """Unseeded requests' sampling and drafting generators seeded from a
    counter instead of OS entropy, so a statistical test is a fixed sample
    (it cannot flicker between runs)."""
    import engine.engine
    import engine.model_runner

    counter = itertools.count(1)

    def seeded_by_counter(seed, device="cpu"):
        generator = torch.Generator(device=device)
        generator.manual_seed(seed if seed is not None else 1_000_003 * next(counter))
        return generator

    monkeypatch.setattr(engine.model_runner, "make_generator", seeded_by_counter)
    monkeypatch.setattr(engine.engine, "draft_generator", seeded_by_counter)


# --- the exact distribution of plain decoding ---------------------------------------

def exact_distribution(loaded, setting: Setting) -> torch.Tensor:
    """P(tokens 2..4) of plain decoding for `setting`: [VOCAB ** 3] float64,
    flattened like `cell_index`."""
    prompt = list(setting.prompt)
    rows = next_token_distributions(loaded, prompt, setting.params, OUTPUT_LEN - 1)
    joint = torch.zeros(VOCAB ** (OUTPUT_LEN - 1), dtype=torch.float64)
    for sequence in itertools.product(range(VOCAB), repeat=OUTPUT_LEN):
        probability = 1.0
        for n, token in enumerate(sequence):
            probability *= float(rows[sequence[:n]][token])
        joint[cell_index(sequence[RECORDED])] += probability
    return joint


def next_token_distributions(loaded, prompt: list[int], params: SamplingParams,
                             depth: int) -> dict[tuple[int, ...], torch.Tensor]:
    """target_probs after `prompt` + every prefix of up to `depth` tokens:
    {prefix: [VOCAB]}, from one forward over all VOCAB**depth continuations."""
    continuations = list(itertools.product(range(VOCAB), repeat=depth))
    logits = sequence_logits(loaded, [prompt + list(c) for c in continuations])
    rows: dict[tuple[int, ...], torch.Tensor] = {}
    for continuation, seq_logits in zip(continuations, logits):
        for n in range(depth + 1):
            rows.setdefault(continuation[:n], seq_logits[len(prompt) - 1 + n])
    contexts = [RowContext(params, prompt, list(prefix)) for prefix in rows]
    probs = target_probs(torch.stack(list(rows.values())), contexts).double()
    return dict(zip(rows, probs))


def sequence_logits(loaded, sequences: list[list[int]]) -> list[torch.Tensor]:
    """Logits at every position of each sequence, one packed forward: [len_i, V] each."""
    hidden, _ = _packed_forward(loaded, sequences, ())
    return list(loaded.model.compute_logits(hidden).float().split([len(s) for s in sequences]))


def sequence_features(loaded, tokens: list[int], aux_layers) -> torch.Tensor:
    """The target's features of `aux_layers` (concatenated) at every token: [n, A*H]."""
    _, aux = _packed_forward(loaded, [tokens], tuple(aux_layers))
    return torch.cat(aux, dim=-1)


@torch.inference_mode()
def _packed_forward(loaded, sequences: list[list[int]], aux_layers: tuple[int, ...], block_size: int = 16):
    lengths = [len(s) for s in sequences]
    blocks_each = math.ceil(max(lengths) / block_size)
    caches = allocate_kv_caches(loaded.config, blocks_each * len(sequences), block_size, torch.float32, "cpu")
    tables = [list(range(i * blocks_each, (i + 1) * blocks_each)) for i in range(len(sequences))]
    meta = AttentionMetadata.build(lengths, lengths, tables, block_size, "cpu")
    tokens = torch.tensor([t for s in sequences for t in s])
    positions = torch.tensor([p for n in lengths for p in range(n)])
    return loaded.model(tokens, positions, caches, meta, aux_layers=aux_layers)


def cell_index(tokens) -> int:
    """Index of a token tuple in the flattened joint (first token most significant)."""
    index = 0
    for token in tokens:
        index = index * VOCAB + token
    return index


def cell_counts(outputs: list[list[int]]) -> torch.Tensor:
    """Counts of the recorded tokens over the VOCAB**3 cells."""
    counts = torch.zeros(VOCAB ** (OUTPUT_LEN - 1), dtype=torch.float64)
    for tokens in outputs:
        assert len(tokens) == OUTPUT_LEN, f"a request produced {len(tokens)} tokens"
        counts[cell_index(tokens[RECORDED])] += 1
    return counts


# --- chi-square -------------------------------------------------------------------

@dataclass
class FitResult:
    """A goodness-of-fit test of observed counts against exact probabilities."""

    statistic: float
    df: int
    p_value: float
    power: float  # against a SHIFT in the worst cell, at ALPHA
    impossible: int  # observations in cells of probability 0

    def __str__(self) -> str:
        return (f"chi2 {self.statistic:.1f} on {self.df} df, p = {self.p_value:.2e} "
                f"(power {self.power:.3f}), impossible outputs {self.impossible}")

    @property
    def rejects(self) -> bool:
        return self.impossible > 0 or self.p_value < ALPHA


def goodness_of_fit(counts: torch.Tensor, probs: torch.Tensor) -> FitResult:
    """Pearson chi-square; cells expecting fewer than 5 are pooled into one."""
    total = float(counts.sum())
    impossible = int(counts[probs <= 0].sum())
    observed, expected = _pooled(counts[probs > 0], probs[probs > 0] * total)
    statistic = float(((observed - expected) ** 2 / expected).sum())
    df = len(expected) - 1
    return FitResult(statistic, df, chi2_sf(statistic, df), power_against_shift(probs, total), impossible)


def _pooled(observed: torch.Tensor, expected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    small = expected < 5
    if not small.any():
        return observed, expected
    return (torch.cat([observed[~small], observed[small].sum().reshape(1)]),
            torch.cat([expected[~small], expected[small].sum().reshape(1)]))


def chi2_sf(statistic: float, df: int) -> float:
    """P(chi-square(df) > statistic)."""
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(statistic / 2, dtype=torch.float64)))


def chi2_critical(df: int, alpha: float = ALPHA) -> float:
    """The upper-alpha quantile of chi-square(df), by bisection."""
    low, high = 0.0, df + 100.0 * math.sqrt(df) + 100.0
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if chi2_sf(middle, df) > alpha else (low, middle)
    return high


def noncentral_chi2_sf(x: float, df: int, noncentrality: float) -> float:
    """P(X > x) for X ~ noncentral chi-square: a Poisson(lambda/2) mixture of
    central chi-squares with df + 2j degrees of freedom."""
    half = noncentrality / 2
    if half <= 0:
        return chi2_sf(x, df)
    terms = range(int(half + 12 * math.sqrt(half) + 30))
    return sum(math.exp(j * math.log(half) - half - math.lgamma(j + 1)) * chi2_sf(x, df + 2 * j) for j in terms)


def power_against_shift(probs: torch.Tensor, total: float, shift: float = SHIFT,
                        alpha: float = ALPHA) -> float:
    """Worst-case power over cells against moving `shift` of probability into
    or out of one cell: lambda = total * shift**2 / (p (1 - p)), smallest
    where p(1-p) is largest. Degrees of freedom as the test would pool them."""
    expected = probs[probs > 0] * total
    df = len(_pooled(expected, expected)[1]) - 1
    worst = float((probs * (1 - probs)).max())
    return noncentral_chi2_sf(chi2_critical(df, alpha), df, total * shift ** 2 / worst)


# --- running the engine -------------------------------------------------------------

def mixed_requests(per_setting: int) -> tuple[list[list[int]], list[SamplingParams], list[str]]:
    """`per_setting` requests of each setting, interleaved (each batch mixes
    them): prompts, params and the setting name of each request."""
    prompts, params, names = [], [], []
    for _ in range(per_setting):
        for setting in SETTINGS:
            prompts.append(list(setting.prompt))
            params.append(setting.params)
            names.append(setting.name)
    return prompts, params, names


def serve(engine, prompts: list[list[int]], params: list[SamplingParams], window: int,
          arrivals_per_step: int | None = None) -> list[list[int]]:
    """Every request's output tokens; requests are added as earlier ones
    finish, at most `window` in the engine at a time (a steady stream, and
    the engine's per-step work stays proportional to what it holds) and at
    most `arrivals_per_step` before each step (None: as many as fit)."""
    outputs: dict[str, list[int]] = {}
    pending = iter(range(len(prompts)))
    live = 0
    while True:
        arriving = window - live if arrivals_per_step is None else min(window - live, arrivals_per_step)
        for i in itertools.islice(pending, arriving):
            engine.add_request(str(i), prompts[i], params[i])
            outputs[str(i)] = []
            live += 1
        if not live:
            return [outputs[str(i)] for i in range(len(prompts))]
        for out in engine.step():
            outputs[out.request_id].extend(out.new_token_ids)
            live -= out.finished


def fit_by_setting(loaded, outputs: list[list[int]], names: list[str]) -> dict[str, FitResult]:
    """Goodness of fit of each setting's outputs against its exact distribution."""
    results = {}
    for setting in SETTINGS:
        mine = [out for out, name in zip(outputs, names) if name == setting.name]
        results[setting.name] = goodness_of_fit(cell_counts(mine), exact_distribution(loaded, setting))
    return results
