"""train-draft and eval-draft from the command line, on the tiny target."""
from __future__ import annotations

import json
import os

import pytest

from engine.spec.heads.checkpoint import read_head_config
from engine.spec.training.cli import main


@pytest.fixture(scope="module")
def mtbench_available():
    from engine.spec.training.data import mtbench_prompts

    try:
        mtbench_prompts()
    except FileNotFoundError as missing:
        pytest.skip(f"MT-Bench data not installed: {missing}")


def test_train_then_eval_draft(tiny_dir, tmp_path, capsys, mtbench_available):
    out = tmp_path / "head"
    common = ["--target", str(tiny_dir), "--no-progress", "--threads", "1"]
    args = ["train-draft", "--method", "dspark", "--out", str(out), "--data", "mtbench:6",
            "--heldout-data", "mtbench:2", "--max-new-tokens", "12", "--block-size", "3",
            "--steps", "4", "--sequences-per-step", "2", "--anchors", "4", "--eval-every", "2",
            "--checkpoint-every", "2", *common]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 4 and report["final_greedy_tau"]["heldout"] >= 1.0
    assert set(report["T=0"]) >= {"check_raw", "check_sts"} and report["T=1"]["tau_check_half"] >= 1.0
    config = read_head_config(str(out))
    assert config.method == "dspark" and set(config.calibration) == {"0", "1"}
    assert all(len(temperatures) == 3 for temperatures in config.calibration.values())
    assert sorted(os.listdir(out)) == ["best", "config.json", "data", "log.jsonl", "model.safetensors",
                                       "report.json", "train_state.pt"]
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals if e["event"] == "eval"] == [2, 4]
    # A second run finds everything cached and its training already done.
    assert main(args) == 0
    assert json.loads((out / "report.json").read_text())["steps"] == 4
    capsys.readouterr()
    assert main(["eval-draft", "--draft-model", str(out), "--data", "mtbench:2", "--block-size", "3",
                 "--max-new-tokens", "8", "--temperatures", "0", "1", "--report", str(tmp_path / "eval.json"),
                 *common]) == 0
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert set(results) == {"temperature=0", "temperature=1"}
    assert all(r["tau"] >= 1.0 for r in results.values())


def test_eval_draft_reports_tau_and_calibration(tiny_dir, tiny_target, tmp_path, capsys, monkeypatch):
    """eval-draft on a saved head, with prompts from a stand-in source (the
    data packages are optional): one entry per temperature, the report's
    fields, and calibrated figures when the checkpoint is calibrated."""
    from engine.spec.heads.checkpoint import save_head
    from engine.spec.training import data
    from engine.spec.training.data import Prompt
    from tests.engine.spec.conftest import make_head

    head = make_head("dspark", tiny_target, 3)
    head.config.calibration = [1.0, 1.5, 2.0]
    save_head(head, str(tmp_path / "head"))
    prompts = [Prompt("toy", f"toy/{i}", f"Tell me about fox {i}.") for i in range(3)]
    monkeypatch.setattr(data, "load_prompts", lambda spec, split=None: prompts)
    args = ["eval-draft", "--draft-model", str(tmp_path / "head"), "--target", str(tiny_dir), "--data", "toy:3",
            "--block-size", "3", "--max-new-tokens", "8", "--temperatures", "0", "1", "--batch", "2",
            "--report", str(tmp_path / "eval.json"), "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "eval.json").read_text())
    assert (report["method"], report["prompts"], report["block_size"]) == ("dspark", 3, 3)
    for result in report["results"].values():
        assert result["steps"] > 0 and 1.0 <= result["tau"] <= 4.0
        assert {"emitted", "accepted_per_position", "ece_survival", "auroc_conditional", "calibrated",
                "seconds"} <= set(result)
    assert set(report["results"]) == {"temperature=0", "temperature=1"}


def test_eval_draft_records_rebuild_the_reported_calibration(tiny_dir, tiny_target, tmp_path, capsys, monkeypatch):
    """--records puts each verification step's raw confidences, accepted
    count and the draft distributions' peaks in the report, enough to
    recompute its calibration figures."""
    from engine.spec.heads.checkpoint import save_head
    from engine.spec.training import data
    from engine.spec.training.calibrate import BlockRecord, calibration_report
    from engine.spec.training.data import Prompt
    from tests.engine.spec.conftest import make_head

    save_head(make_head("dspark", tiny_target, 3), str(tmp_path / "head"))
    prompts = [Prompt("toy", f"toy/{i}", f"Tell me about fox {i}.") for i in range(2)]
    monkeypatch.setattr(data, "load_prompts", lambda spec, split=None: prompts)
    args = ["eval-draft", "--draft-model", str(tmp_path / "head"), "--target", str(tiny_dir), "--data", "toy:2",
            "--block-size", "3", "--max-new-tokens", "8", "--temperatures", "0", "--records",
            "--report", str(tmp_path / "eval.json"), "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    result = json.loads((tmp_path / "eval.json").read_text())["results"]["temperature=0"]
    records = [BlockRecord(c, n, peaks) for c, n, peaks in result["records"]]
    assert len(records) == result["steps"] and all(len(r.peaks) == len(r.confidences) for r in records)
    assert calibration_report(records, 3)["ece_conditional"] == result["ece_conditional"]


def test_eval_draft_records_say_which_request_and_step_each_came_from(tiny_dir, tiny_target, tmp_path, capsys,
                                                                       monkeypatch):
    """record_origins: one [request number, engine step] per record, request
    numbers unique across --batch batches, steps in order across them (an
    online calibrator's replay reads them in that order)."""
    from engine.spec.heads.checkpoint import save_head
    from engine.spec.training import data
    from engine.spec.training.data import Prompt
    from tests.engine.spec.conftest import make_head

    save_head(make_head("dspark", tiny_target, 3), str(tmp_path / "head"))
    prompts = [Prompt("toy", f"toy/{i}", f"Tell me about fox {i}.") for i in range(3)]
    monkeypatch.setattr(data, "load_prompts", lambda spec, split=None: prompts)
    assert main(["eval-draft", "--draft-model", str(tmp_path / "head"), "--target", str(tiny_dir), "--data", "toy:3",
                 "--block-size", "3", "--max-new-tokens", "8", "--temperatures", "0", "--records", "--batch", "2",
                 "--report", str(tmp_path / "eval.json"), "--no-progress"]) == 0
    capsys.readouterr()
    result = json.loads((tmp_path / "eval.json").read_text())["results"]["temperature=0"]
    origins = result["record_origins"]
    assert len(origins) == len(result["records"])
    assert {request for request, _ in origins} == {0, 1, 2}
    steps = [step for _, step in origins]
    assert steps == sorted(steps)
    # The third request ran in the second batch, after every step of the first.
    first_batch_last = max(step for request, step in origins if request < 2)
    assert min(step for request, step in origins if request == 2) > first_batch_last
    # No request is verified twice in one step.
    assert len(set(map(tuple, origins))) == len(origins)


@pytest.mark.parametrize("whole, asked", [
    (False, [("mtbench:3,sharegpt:2", "test")]),
    (True, [("mtbench:3", None), ("sharegpt:2", "test")]),  # ShareGPT's train split never: it is trained on
])
def test_eval_draft_takes_whole_evaluation_sets_only_when_asked(tiny_dir, tiny_target, tmp_path, capsys, monkeypatch,
                                                                 whole, asked):
    from engine.spec.heads.checkpoint import save_head
    from engine.spec.training import data, pipeline
    from engine.spec.training.data import Prompt
    from tests.engine.spec.conftest import make_head

    save_head(make_head("dspark", tiny_target, 3), str(tmp_path / "head"))
    seen = []

    def load_prompts(spec, split=None):
        seen.append((spec, split))
        return [Prompt("toy", f"toy/{spec}", f"Tell me about {spec}.")]

    monkeypatch.setattr(data, "load_prompts", load_prompts)
    monkeypatch.setattr(pipeline, "load_prompts", load_prompts)  # the whole evaluation sets' loader
    args = ["eval-draft", "--draft-model", str(tmp_path / "head"), "--target", str(tiny_dir),
            "--data", "mtbench:3,sharegpt:2", "--block-size", "3", "--max-new-tokens", "2", "--temperatures", "0",
            "--report", str(tmp_path / "eval.json"), "--no-progress"] + (["--whole-eval-sets"] if whole else [])
    assert main(args) == 0
    capsys.readouterr()
    assert seen == asked
    report = json.loads((tmp_path / "eval.json").read_text())
    assert (report["prompts"], report["whole_eval_sets"]) == (len(asked), whole)


@pytest.mark.parametrize("method", ["logistic", "logistic-peak", "sts", "0=logistic-peak,1=logistic"])
def test_calibrate_draft_refits_a_saved_head(tiny_dir, tiny_target, tmp_path, capsys, monkeypatch, method):
    """calibrate-draft regenerates only held-out data, refits STS per
    temperature (shifts only for sts-shift), keeps the weights and writes
    the fit's report next to the head."""
    from engine.spec.heads.checkpoint import save_head
    from engine.spec.training import pipeline
    from engine.spec.training.data import Prompt
    from tests.engine.spec.conftest import make_head

    save_head(make_head("dspark", tiny_target, 3), str(tmp_path / "head"))
    prompts = [Prompt("toy", f"toy/{i}", f"Tell me about fox {i}.") for i in range(4)]
    asked = []
    monkeypatch.setattr(pipeline, "load_prompts", lambda spec, split=None: asked.append((spec, split)) or prompts)
    out = tmp_path / "recalibrated"
    assert main(["calibrate-draft", "--draft-model", str(tmp_path / "head"), "--target", str(tiny_dir),
                 "--work-dir", str(tmp_path / "work"), "--heldout-data", "toy:4", "--max-new-tokens", "12",
                 "--calibration-tokens", "8", "--calibration", method, "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert asked == [("toy:4", "test")]  # held-out prompts only, from the test split
    calibration = read_head_config(str(out)).calibration
    assert set(calibration) == {"0", "1"}
    methods = dict(part.split("=") for part in method.split(",")) if "=" in method else {"0": method, "1": method}
    for key, entries in calibration.items():  # maps that read the peak beside DSpark's confidence head, or pairs
        peak_map = methods[key] == "logistic-peak"
        assert all(isinstance(entry, dict) == peak_map for entry in entries), calibration
        assert not peak_map or all(set(entry) == {"confidence", "peak", "bias"} for entry in entries), calibration
    if method in ("logistic", "sts"):  # shifts only where fitted by log-loss
        shifts = [shift for entries in calibration.values() for _, shift in entries]
        assert (any(shifts) if method == "logistic" else not any(shifts)), calibration
    report = json.loads((out / "calibration-report.json").read_text())
    assert report["method"] == method and report["heldout_sequences"] == 4
    assert {key: report[f"T={key}"]["method"] for key in ("0", "1")} == methods
    assert {"check_raw", "check_sts"} <= set(report["T=0"])
    # The weights stay byte for byte what they were (the head ran in the target's dtype).
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "head" / "model.safetensors").read_bytes()


def test_train_draft_warm_starts_from_a_checkpoint(tiny_dir, tmp_path, capsys, monkeypatch):
    """--init-from: the run starts from the checkpoint's weights (trained
    for 0 steps it saves them unchanged), its log counts on from the
    checkpoint's anchors, and a head of another method or draft vocabulary
    is refused."""
    from engine.spec.training import pipeline
    from engine.spec.training.data import Prompt

    prompts = [Prompt("toy", f"toy/{i}", f"Tell me about fox {i}.") for i in range(6)]
    monkeypatch.setattr(pipeline, "load_prompts", lambda spec, split=None: prompts[:int(spec.split(":")[1])])
    common = ["--target", str(tiny_dir), "--work-dir", str(tmp_path / "work"), "--data", "toy:4",
              "--heldout-data", "toy:2", "--max-new-tokens", "12", "--block-size", "3", "--draft-vocab", "48",
              "--sequences-per-step", "2", "--anchors", "4", "--calibration-tokens", "6", "--no-progress"]

    def train(out: str, *extra: str) -> int:
        return main(["train-draft", "--method", "dspark", "--out", str(tmp_path / out), *common, *extra])

    assert train("first", "--steps", "3") == 0
    first_anchors = read_head_config(str(tmp_path / "first")).training["anchors"]
    assert first_anchors > 0
    assert train("unchanged", "--steps", "0", "--init-from", str(tmp_path / "first")) == 0
    weights = "model.safetensors"
    assert (tmp_path / "unchanged" / weights).read_bytes() == (tmp_path / "first" / weights).read_bytes()
    assert train("more", "--steps", "2", "--warmup-steps", "5", "--init-from", str(tmp_path / "first")) == 0
    assert read_head_config(str(tmp_path / "more")).training["config"]["warmup_steps"] == 5
    assert read_head_config(str(tmp_path / "more")).training["config"]["seed"] == 0
    assert train("reseeded", "--steps", "2", "--train-seed", "7", "--init-from", str(tmp_path / "first")) == 0
    assert read_head_config(str(tmp_path / "reseeded")).training["config"]["seed"] == 7
    weights = "model.safetensors"
    assert (tmp_path / "reseeded" / weights).read_bytes() != (tmp_path / "more" / weights).read_bytes()
    evals = [json.loads(line) for line in (tmp_path / "more" / "log.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "eval"]
    assert evals[-1]["step"] == 2 and evals[-1]["anchors"] > first_anchors
    assert json.loads((tmp_path / "more" / "report.json").read_text())["init_from"] == str(tmp_path / "first")
    assert (tmp_path / "more" / weights).read_bytes() != (tmp_path / "first" / weights).read_bytes()
    capsys.readouterr()
    with pytest.raises(ValueError, match="is a dspark head, not dflash"):
        main(["train-draft", "--method", "dflash", "--out", str(tmp_path / "other"), *common, "--steps", "1",
              "--init-from", str(tmp_path / "first")])
    with pytest.raises(ValueError, match="drafts over 48 tokens, not --draft-vocab 40"):
        train("vocab", "--steps", "1", "--draft-vocab", "40", "--init-from", str(tmp_path / "first"))


def test_a_continuation_keeps_the_checkpoints_draft_vocabulary(tiny_dir, tiny_target, tmp_path, capsys, monkeypatch):
    """--init-from on other data: the head drafts over the vocabulary it was
    trained with (its LM-head rows are those tokens), not the one the new
    data's counts would pick."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from engine.spec.training import pipeline
    from engine.spec.training.data import Prompt

    prompts = [Prompt("toy", f"toy/{i}", f"Tell me about fox {i}.") for i in range(6)]
    monkeypatch.setattr(pipeline, "load_prompts", lambda spec, split=None: prompts[:int(spec.split(":")[1])])
    common = ["--method", "dspark", "--target", str(tiny_dir), "--work-dir", str(tmp_path / "work"),
              "--data", "toy:4", "--heldout-data", "toy:2", "--max-new-tokens", "12", "--block-size", "3",
              "--draft-vocab", "48", "--sequences-per-step", "2", "--anchors", "4", "--calibration-tokens", "6",
              "--no-progress"]
    assert main(["train-draft", "--out", str(tmp_path / "first"), *common, "--steps", "1"]) == 0
    # A checkpoint whose vocabulary no count of this data picks: the 48 ids after the counted ones.
    shutil.copytree(tmp_path / "first", tmp_path / "other-vocab")
    weights = load_file(str(tmp_path / "other-vocab" / "model.safetensors"))
    counted = weights["draft_ids"]
    unused = torch.tensor([t for t in range(tiny_target.config.vocab_size) if t not in set(counted.tolist())][:48])
    weights["draft_ids"] = unused.to(counted.dtype)
    save_file(weights, str(tmp_path / "other-vocab" / "model.safetensors"))
    assert main(["train-draft", "--out", str(tmp_path / "continued"), *common, "--steps", "1",
                 "--init-from", str(tmp_path / "other-vocab")]) == 0
    capsys.readouterr()
    continued = load_file(str(tmp_path / "continued" / "model.safetensors"))["draft_ids"]
    assert torch.equal(continued.long(), unused) and not torch.equal(continued.long(), counted.long())
