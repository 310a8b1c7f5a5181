import json
import random

import pytest

from engine.spec.training.calibrate import BlockRecord
from engine.spec.training.scripts import served_calibration as served
from scheduler.calibration import ConfidenceCalibrator


def _shifted_set(name: str, steps: int, confidence: float, true_rate: float, seed: int = 0) -> served.CheckSet:
    """Blocks of 3 drafts all given `confidence` whose drafts survive at `true_rate`,
    two requests per engine step."""
    rng = random.Random(seed)
    records, origins = [], []
    for step in range(steps):
        for request in (2 * step // 10, 2 * step // 10 + 1):  # a request lasts five steps
            accepted = 0
            while accepted < 3 and rng.random() < true_rate:
                accepted += 1
            records.append(BlockRecord([confidence] * 3, accepted))
            origins.append((request, step))
    return served.CheckSet(name, records, origins)


def test_the_online_map_corrects_a_level_the_stored_one_gets_wrong():
    check = _shifted_set("code", 600, confidence=0.5, true_rate=0.8)
    offline, online = served.replay([check], None, 3, ConfidenceCalibrator(max_positions=3))["code"]
    assert offline.scores()["ece_conditional"] == pytest.approx(0.3, abs=0.03)
    assert online.scores()["ece_conditional"] < 0.05
    assert online.scores()["events"] == offline.scores()["events"]


def test_a_confidence_never_reads_its_own_steps_outcomes():
    """Prequential: changing what one step's blocks accepted changes no
    confidence given at that step or before, only later ones."""
    check = _shifted_set("chat", 40, confidence=0.6, true_rate=0.5)
    changed = served.CheckSet("chat", [BlockRecord(r.confidences, r.num_accepted) for r in check.records],
                              check.origins)
    step = 20
    for i, (_, s) in enumerate(changed.origins):
        if s == step:
            changed.records[i].num_accepted = 3 - changed.records[i].num_accepted

    def given(c: served.CheckSet) -> list[list[float]]:
        calibrator, out = ConfidenceCalibrator(max_positions=3), []
        original = calibrator.calibrate
        calibrator.calibrate = lambda rid, raw: out.append(original(rid, raw)) or out[-1]
        served.replay([c], None, 3, calibrator)
        return out

    before, after = given(check), given(changed)
    upto = sum(1 for _, s in check.origins if s <= step)
    assert before[:upto] == after[:upto]
    assert before[upto:] != after[upto:]


def test_sets_streamed_through_one_calibrator_carry_what_it_learnt():
    """The second set starts from the first set's online map: traffic that
    changes domain, as the table's 'then' rows say."""
    first = _shifted_set("code", 300, confidence=0.5, true_rate=0.9, seed=1)
    second = _shifted_set("chat", 5, confidence=0.5, true_rate=0.9, seed=2)
    fresh = served.replay([second], None, 3, ConfidenceCalibrator(max_positions=3))["chat"][1]
    carried = served.replay([first, second], None, 3, ConfidenceCalibrator(max_positions=3))["chat"][1]
    assert carried.predicted[0] > fresh.predicted[0] + 0.2


def test_the_stored_map_is_applied_before_the_online_one():
    check = served.CheckSet("x", [BlockRecord([0.5, 0.5], 2)], [(0, 0)])
    calibration = [[1.0, 2.0]] * 2  # per position [temperature, shift]
    stored = served.stored_confidences(check.records, calibration, 2)
    assert stored[0] == pytest.approx([0.8808, 0.8808], abs=1e-4)  # sigmoid(0 + 2)
    offline, online = served.replay([check], calibration, 2, ConfidenceCalibrator(max_positions=2))["x"]
    assert offline.predicted == pytest.approx(stored[0])
    assert online.predicted == pytest.approx(stored[0])  # nothing observed yet: the prior is the stored value


def test_the_sampling_floor_is_what_perfect_confidences_show():
    events = served.Events([0.5] * 4000, [True, False] * 2000)
    floor = events.sampling_floor()
    assert 0.0 < floor < 0.03  # ~ 0.4 / sqrt(4000): sampling noise alone
    assert events.scores()["ece_conditional"] == 0.0  # these outcomes happen to match exactly


def test_reports_without_origins_are_refused(tmp_path):
    path = tmp_path / "dspark-humaneval.json"
    path.write_text(json.dumps({"results": {"temperature=0": {"records": [[[0.5], 1]]}}}))
    with pytest.raises(SystemExit, match="record_origins"):
        served.load_check(str(path), "0")


def test_the_table_has_a_row_per_stream_and_set(tmp_path, capsys, monkeypatch):
    paths = []
    for name, rate in (("mtbench", 0.5), ("humaneval", 0.8)):
        check = _shifted_set(name, 50, confidence=0.5, true_rate=rate)
        entry = {"records": [[r.confidences, r.num_accepted] for r in check.records],
                 "record_origins": [list(o) for o in check.origins]}
        path = tmp_path / f"dspark-{name}.json"
        path.write_text(json.dumps({"results": {"temperature=0": entry}}))
        paths.append(str(path))

    class _Config:
        calibration = None

    monkeypatch.setattr(served, "read_head_config", lambda path: _Config())
    assert served.main(["--checkpoint", "ckpt", "--check", *paths, "--temperatures", "0", "--block-size", "3"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    labels = [tuple(cell.strip() for cell in row.split("|")[1:3]) for row in rows[1:]]
    assert labels == [("mtbench alone", "mtbench"), ("humaneval alone", "humaneval"),
                      ("mtbench then humaneval", "mtbench"), ("mtbench then humaneval", "humaneval"),
                      ("humaneval then mtbench", "humaneval"), ("humaneval then mtbench", "mtbench")]
