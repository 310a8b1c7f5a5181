"""The context-feature calibration check: each feature is what was known
before the block, and a feature the outcomes depend on is found by the fit."""
from __future__ import annotations

import json
import math

import pytest
import torch

from engine.spec.training.calibrate import BlockRecord
from engine.spec.training.scripts import calibration_features as cf

BLOCK = 2


def test_history_is_the_request_s_own_earlier_first_drafts():
    prior = math.log(cf.HISTORY_PRIOR / (1 - cf.HISTORY_PRIOR))
    logits = cf.history_logits([0, 1, 0, 0, 1], [2, 0, 1, 0, 0])
    assert logits[0] == pytest.approx(prior) and logits[1] == pytest.approx(prior)  # nothing seen yet
    after_one_hit = (1 + cf.HISTORY_PRIOR * cf.HISTORY_WEIGHT) / (1 + cf.HISTORY_WEIGHT)
    assert logits[2] == pytest.approx(math.log(after_one_hit / (1 - after_one_hit)))
    assert logits[3] > logits[2] > prior  # two hits read higher than one
    assert logits[4] < prior  # request 1 missed its first draft: request 0's hits do not count


class _Tokenizer:
    texts = {1: "Here", 2: "```", 3: "python\n", 4: "x = 1", 5: "\n```\n"}

    def decode(self, ids):
        return "".join(self.texts[i] for i in ids)


def test_a_fence_opens_and_closes_the_code_context():
    tokens = [1, 2, 3, 4, 5, 1]
    counts = cf.fence_counts(_Tokenizer(), tokens)
    assert [cf.inside_fence(tokens, i, counts) for i in range(len(tokens))] == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def _planted(n: int, seed: int, effect: float) -> cf.ContextRecords:
    """Blocks whose first draft survives with sigmoid(logit(c) + effect * f - 0.5)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, BLOCK, generator=g) * 0.8 + 0.1
    peaks = torch.rand(n, BLOCK, generator=g) * 0.8 + 0.1
    f = (torch.rand(n, generator=g) < 0.5).double()
    p = torch.sigmoid(torch.log(c[:, 0] / (1 - c[:, 0])) + effect * f - 0.5)
    first = torch.rand(n, generator=g) < p
    second = first & (torch.rand(n, generator=g) < c[:, 1])
    records = [BlockRecord(c[i].tolist(), int(first[i]) + int(second[i]), peaks[i].tolist()) for i in range(n)]
    return cf.ContextRecords(records, list(range(n)), {"fence": f.tolist()})


def test_the_fit_finds_a_feature_the_outcomes_depend_on():
    fit_set, check = _planted(4000, 0, 1.5), _planted(4000, 1, 1.5)
    weights = cf.fit(fit_set, "fence", BLOCK)
    assert weights[0, 2] == pytest.approx(1.5, abs=0.25)  # position 1: [confidence, peak, fence, bias]
    plain = cf.score(cf.fit(fit_set, None, BLOCK), check, None, BLOCK)
    with_fence = cf.score(weights, check, "fence", BLOCK)
    assert cf.log_loss(*with_fence) < cf.log_loss(*plain) - 0.01


def test_a_feature_the_outcomes_ignore_gets_no_weight():
    weights = cf.fit(_planted(4000, 2, 0.0), "fence", BLOCK)
    assert abs(float(weights[0, 2])) < 0.2


def test_records_without_peaks_are_refused():
    data = cf.ContextRecords([BlockRecord([0.5, 0.5], 1)], [0], {"fence": [0.0]})
    with pytest.raises(ValueError, match="peaks"):
        cf.fit(data, "fence", BLOCK)


def test_the_table_has_a_row_per_input_and_a_pooled_column():
    fit_set = _planted(600, 3, 1.0)
    rows = cf.feature_rows(fit_set, {"a": _planted(300, 4, 1.0), "b": _planted(300, 5, 0.0)}, [None, "fence"], BLOCK)
    assert rows[0].startswith("| input beside confidence and peak | fit set: check half | a | b | pooled |")
    assert [row.split("|")[1].strip() for row in rows[2:]] == ["none", "fence"]
    assert all(len(row.split("|")) == len(rows[0].split("|")) for row in rows)


def test_decoded_records_read_history_in_the_order_the_engine_verified_them(tmp_path):
    # request 0's blocks listed out of step order: its history must follow the steps
    report = {"results": {"temperature=0": {
        "records": [[[0.5], 0], [[0.5], 1], [[0.5], 1]],
        "record_origins": [[0, 7], [0, 3], [1, 5]]}}}
    path = tmp_path / "dspark-humaneval.json"
    path.write_text(json.dumps(report))
    data = cf.decoded(str(path))
    assert [r.num_accepted for r in data.records] == [1, 1, 0]  # steps 3, 5, 7
    assert data.requests == [0, 1, 0]
    assert data.features["history"][2] > data.features["history"][0]  # after request 0's hit at step 3


def test_walked_blocks_carry_every_feature_from_their_own_context(tiny_target, samples, tmp_path):
    from engine.spec.training.features import collect_features
    from tests.engine.spec.conftest import make_head

    head = make_head("dspark", tiny_target, 4, seed=1)
    cached = collect_features(tiny_target, samples[:3], head.config.aux_layers, str(tmp_path), progress=False)
    data = cf.walked(head, cached, tiny_target.tokenizer)
    assert set(data.features) == set(cf.FEATURES)
    assert all(len(values) == len(data.records) for values in data.features.values())
    for request in range(3):
        mine = [i for i, r in enumerate(data.requests) if r == request]
        assert data.features["position"][mine[0]] == 0.0  # the first block drafts from the reply's start
        positions = [data.features["position"][i] for i in mine]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
