"""The training toolkit end to end on a tiny random target: data parsing,
generation through the engine, cached features, training (loss falls,
resume is exact), STS calibration, and evaluation that agrees with real
decoding."""
from __future__ import annotations

import json
import os

import pytest
import torch

from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.engine import LLMEngine
from engine.spec.heads.config import HeadConfig
from engine.spec.heads.registry import HEAD_METHODS as METHODS
from engine.spec.training.recipes import build_head
from engine.spec.training import features as features_module
from engine.spec.training.calibrate import (BlockRecord, auroc, calibration_report,
                                           expected_calibration_error, fit_sts)
from engine.spec.training.data import Prompt, iter_json_array, split_of
from engine.spec.training.evaluate import speculative_decode, teacher_forced_simulation
from engine.spec.training.features import collect_features
from engine.spec.training.generate import Sample, generate_responses
from engine.spec.training.train import TrainConfig, Trainer
from scheduler.request import SamplingParams

BLOCK = 4


# ---------------------------------------------------------------- data

def test_truncated_json_array_is_read_entry_by_entry(tmp_path):
    entries = [{"id": f"x{i}", "conversations": [{"from": "human", "value": "hi, [a] {b} \"c\"" * i}]}
               for i in range(30)]
    text = json.dumps(entries, indent=2)
    path = tmp_path / "cut.json"
    path.write_text(text[: text.index('"x29"') + 3], encoding="utf-8")  # cut inside the last entry
    for chunk in (7, 64, 1 << 20):  # chunk borders inside strings and between entries
        assert [e["id"] for e in iter_json_array(str(path), chunk_chars=chunk)] == [f"x{i}" for i in range(29)]
    path.write_text(text, encoding="utf-8")
    assert len(list(iter_json_array(str(path), chunk_chars=5))) == 30


def test_split_is_stable_and_mixed():
    ids = [f"sharegpt/{i}" for i in range(400)]
    splits = [split_of(i) for i in ids]
    assert splits == [split_of(i) for i in ids]
    assert 10 < splits.count("test") < 80


def test_bundled_prompt_sources():
    from engine.spec.training.data import load_prompts

    try:
        prompts = load_prompts("mtbench:3,humaneval:2,sharegpt:3")
    except FileNotFoundError as missing:
        pytest.skip(f"data package not installed: {missing}")
    assert [p.source for p in prompts] == ["mtbench"] * 3 + ["humaneval"] * 2 + ["sharegpt"] * 3
    assert all(p.text for p in prompts)
    assert all(p.split == "test" for p in load_prompts("humaneval:5", split="test"))


# ---------------------------------------------------------------- pipeline fixtures

@pytest.fixture(scope="module")
def engine(tiny_dir, tiny_target):
    config = EngineConfig(model=str(tiny_dir), cache=CacheConfig(block_size=16, num_blocks=256),
                          scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=1024))
    return LLMEngine(config, loaded=tiny_target)


@pytest.fixture(scope="module")
def samples(engine, tmp_path_factory):
    prompts = [Prompt("toy", f"toy/{i}", f"Tell me about the fox number {i} and {i * 7} dogs.") for i in range(20)]
    path = str(tmp_path_factory.mktemp("responses") / "responses.jsonl")
    generate_responses(engine, prompts[:8], path, max_tokens=40, progress=False)
    return generate_responses(engine, prompts, path, max_tokens=40, progress=False)  # resumes


@pytest.fixture(scope="module")
def feature_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="module")
def feature_set(tiny_target, samples, feature_dir):
    return collect_features(tiny_target, samples, (1, 2, 3), feature_dir, progress=False)


def split(features):
    """(train, held-out): prompts 0..3 are held out."""
    held, train = features.split_by(lambda sid: int(sid.split("/")[1]) < 4)
    return train, held


def test_generation_resumes_and_matches_plain_decoding(engine, samples):
    assert [s.id for s in samples] == [f"toy/{i}" for i in range(20)]
    assert len(set(s.id for s in samples)) == 20
    again = engine.generate([samples[3].prompt_ids], SamplingParams(temperature=0.0, max_tokens=40))[0]
    assert again == samples[3].response_ids


def test_features_are_cached_and_reused(tiny_target, samples, feature_set, feature_dir, monkeypatch):
    assert len(feature_set) == len(samples)
    assert feature_set.aux[0].shape == (len(samples[0].tokens), 3 * tiny_target.config.hidden_size)
    assert feature_set.aux[0].dtype == torch.float16
    monkeypatch.setattr(features_module, "_forward", lambda *a, **k: pytest.fail("recomputed"))
    again = collect_features(tiny_target, samples, (1, 2, 3), feature_dir, progress=False)
    assert torch.equal(again.aux[5], feature_set.aux[5])
    two = again.select_layers((3, 1))
    h = tiny_target.config.hidden_size
    assert torch.equal(two.aux[0], torch.cat([feature_set.aux[0][:, 2 * h:], feature_set.aux[0][:, :h]], 1))


def test_features_match_the_final_hidden_the_target_samples_from(tiny_target, samples, feature_set):
    """The cached final states reproduce the target's greedy choices."""
    logits = tiny_target.model.compute_logits(feature_set.final[2].float())
    prompt_len = feature_set.prompt_lens[2]
    predicted = logits[prompt_len - 1:-1].argmax(-1)
    assert predicted.tolist() == samples[2].response_ids[: predicted.shape[0]]


# ---------------------------------------------------------------- training

def make_trainer(tiny_target, feature_set, method, out_dir=None, steps=30, seed=0):
    train, held = split(feature_set)
    torch.manual_seed(seed)
    head = build_head(HeadConfig.for_target(method, tiny_target.config, block_size=BLOCK), tiny_target.model)
    config = TrainConfig(steps=steps, lr=3e-3, warmup_steps=3, sequences_per_step=4, anchors_per_sequence=8,
                         checkpoint_every=10, seed=seed)
    return Trainer(head, train, config, out_dir, held, log=lambda *_: None, progress=False)


@pytest.mark.parametrize("method", METHODS)
def test_training_loss_falls(tiny_target, feature_set, method):
    """On fresh random batches the loss falls; on one fixed batch the head
    can fit it (gradients reach every part that matters)."""
    trainer = make_trainer(tiny_target, feature_set, method, steps=200)  # lr stays high throughout
    steps = [trainer.train_step() for _ in range(40)]

    def mean(key, part):
        return sum(step[key] for step in part) / len(part)

    # A random tiny target is nearly unpredictable: only a modest fall on new data.
    assert mean("loss", steps[-5:]) < 0.97 * mean("loss", steps[:5])
    assert mean("top1", steps[-5:]) > mean("top1", steps[:5])
    fixed = trainer._sample_step_blocks()
    trainer._sample_step_blocks = lambda: fixed
    first = trainer.train_step()["ce"]
    for _ in range(30):
        last = trainer.train_step()["ce"]
    assert last < 0.7 * first, (first, last)


def test_training_resumes_exactly(tiny_target, feature_set, tmp_path):
    straight = make_trainer(tiny_target, feature_set, "dspark", steps=20)
    straight.run()
    interrupted = make_trainer(tiny_target, feature_set, "dspark", str(tmp_path), steps=20)
    for _ in range(10):
        interrupted.train_step()
    interrupted.save()  # as a periodic checkpoint would, then the process dies
    assert os.path.exists(tmp_path / "train_state.pt") and os.path.exists(tmp_path / "model.safetensors")
    resumed = make_trainer(tiny_target, feature_set, "dspark", str(tmp_path), steps=20, seed=0)
    resumed.run()
    assert resumed.step == 20
    for name, tensor in straight.head.state_dict().items():
        torch.testing.assert_close(resumed.head.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- evaluation and calibration

def test_teacher_forced_tau_equals_real_greedy_decoding(tiny_target, samples, tmp_path):
    """On the target's own greedy output, the cheap simulation reproduces
    real speculative decoding step for step."""
    torch.manual_seed(1)
    head = build_head(HeadConfig.for_target("dspark", tiny_target.config, block_size=BLOCK), tiny_target.model)
    prompts = [s.prompt_ids for s in samples[:4]]
    params = SamplingParams(temperature=0.0, max_tokens=30)
    real = speculative_decode(tiny_target, head, prompts, params)
    plain = [s.response_ids[:30] for s in samples[:4]]
    decoded = [Sample(f"toy/{i}", "toy", p, r) for i, (p, r) in enumerate(zip(prompts, plain))]
    cached = collect_features(tiny_target, decoded, head.config.aux_layers, str(tmp_path), progress=False)
    simulated = teacher_forced_simulation(head, cached)
    assert simulated.num_steps == real.num_steps and simulated.num_emitted == real.num_emitted
    assert [r.num_accepted for r in simulated.records] == [r.num_accepted for r in real.records]
    assert real.tau >= 1.0


def test_sampled_decoding_reports_valid_records(tiny_target, samples):
    torch.manual_seed(2)
    head = build_head(HeadConfig.for_target("eagle3", tiny_target.config, block_size=BLOCK), tiny_target.model)
    result = speculative_decode(tiny_target, head, [s.prompt_ids for s in samples[:3]],
                                SamplingParams(temperature=1.0, max_tokens=20, seed=5))
    assert result.num_steps > 0 and 1.0 <= result.tau <= BLOCK + 1
    assert all(0 <= r.num_accepted <= len(r.confidences) <= BLOCK for r in result.records)
    report = result.summary(BLOCK)
    assert 0 <= report["ece_survival"] <= 1


def test_ece_and_auroc_on_known_cases():
    perfect = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert expected_calibration_error(perfect, perfect.bool()) == 0
    assert expected_calibration_error(torch.full((4,), 0.9), torch.tensor([1, 0, 0, 0]).bool()) == pytest.approx(0.65)
    assert auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1]).bool()) == 1.0


def test_sts_lowers_heldout_ece():
    """Over-confident raw confidences (true survival is lower and falls with
    position): temperatures fitted on one half calibrate the other half."""
    gen = torch.Generator().manual_seed(0)

    def records(n):
        out = []
        for _ in range(n):
            raw = torch.rand(BLOCK, generator=gen) * 0.3 + 0.7  # says 0.7..1.0
            true = 0.5 * (raw - 0.5)  # truly 0.1..0.25
            accepted = 0
            while accepted < BLOCK and torch.rand(1, generator=gen) < true[accepted]:
                accepted += 1
            out.append(BlockRecord(raw.tolist(), accepted))
        return out

    fit, held = records(2000), records(2000)
    temperatures = fit_sts(fit, BLOCK)
    before = calibration_report(held, BLOCK)["ece_survival"]
    after = calibration_report(held, BLOCK, temperatures)["ece_survival"]
    assert after < 0.5 * before, (before, after, temperatures)


def test_sts_on_a_trained_head_lowers_heldout_ece(tiny_target, feature_set):
    trainer = make_trainer(tiny_target, feature_set, "dspark", steps=30)
    trainer.run()
    _, held = split(feature_set)
    train_records = teacher_forced_simulation(trainer.head, split(feature_set)[0]).records
    held_records = teacher_forced_simulation(trainer.head, held).records
    temperatures = fit_sts(train_records, BLOCK)
    before = calibration_report(held_records, BLOCK)["ece_survival"]
    after = calibration_report(held_records, BLOCK, temperatures)["ece_survival"]
    assert after < before, (before, after)


def test_sts_keeps_the_previous_temperature_without_evidence():
    """Nothing ever survives past position 2: STS must not sharpen the
    later confidences towards 1 to 'fit' all-zero labels."""
    records = [BlockRecord([0.9, 0.6, 0.6, 0.6], min(i % 3, 2)) for i in range(300)]
    temperatures = fit_sts(records, BLOCK)
    assert temperatures[2] == temperatures[3] == temperatures[1]
