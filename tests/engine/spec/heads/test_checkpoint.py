"""Head checkpoints: round trip, shared weights left out, the wrong target
refused, and the committed checkpoints' layout still matching the classes."""
from __future__ import annotations

import os
import pathlib

import pytest
import torch

from engine.packed_files import write_maybe_packed
from engine.spec.heads.checkpoint import (copy_head_weights, load_head, read_head_config, read_head_weights,
                                         save_head)
from engine.spec.heads.registry import HEAD_METHODS, head_class
from tests.engine.spec.conftest import make_head

BLOCK = 4
ROOT = str(pathlib.Path(__file__).resolve().parents[4])  # the repository root


@pytest.mark.parametrize("method", HEAD_METHODS)
def test_checkpoint_round_trip(tiny_target, method, tmp_path):
    head = make_head(method, tiny_target, BLOCK)
    head.config.calibration = [1.0, 1.5, 2.0, 0.5]
    save_head(head, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    loaded = load_head(str(tmp_path), tiny_target.model)
    assert read_head_config(str(tmp_path)) == head.config
    own = head.state_dict()
    for name, tensor in loaded.state_dict().items():
        # Saved in float16: equal up to its rounding.
        torch.testing.assert_close(tensor, own[name].half().float())
    # The shared embedding / LM head are not in the file; they come from the target.
    shape = (tiny_target.config.vocab_size, tiny_target.config.hidden_size)
    assert not any(tuple(t.shape) == shape for t in own.values())
    assert loaded.shared.lm_head.data_ptr() == tiny_target.model.model.embed_tokens.weight.data_ptr()


def test_checkpoint_refuses_another_target(tiny_target, tmp_path, tmp_path_factory):
    from engine.models.loader import load_model
    from tests.tiny_model import make_tiny_model_dir

    save_head(make_head("dspark", tiny_target, BLOCK), str(tmp_path))
    other = load_model(make_tiny_model_dir(tmp_path_factory.mktemp("other"), num_layers=2))
    with pytest.raises(ValueError, match="another target"):
        load_head(str(tmp_path), other.model)


def test_a_packed_checkpoint_loads_the_same_weights_and_a_new_save_replaces_it(tiny_target, tmp_path):
    head = make_head("dspark", tiny_target, BLOCK)
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    save_head(head, str(plain))
    save_head(head, str(packed))
    weights = str(packed / "model.safetensors")
    write_maybe_packed(weights + ".xz", lambda path: os.replace(weights, path))
    assert sorted(os.listdir(packed)) == ["config.json", "model.safetensors.xz"]
    expected = read_head_weights(str(plain))
    assert {k: v.tolist() for k, v in read_head_weights(str(packed)).items()} == {
        k: v.tolist() for k, v in expected.items()}
    load_head(str(packed), tiny_target.model)  # strict: every tensor found
    save_head(head, str(packed))  # the packed weights would be the stale ones
    assert sorted(os.listdir(packed)) == ["config.json", "model.safetensors"]


def test_copied_weights_keep_their_form_and_replace_the_old_ones(tiny_target, tmp_path):
    packed, out = tmp_path / "packed", tmp_path / "out"
    save_head(make_head("dspark", tiny_target, BLOCK), str(packed))
    weights = str(packed / "model.safetensors")
    write_maybe_packed(weights + ".xz", lambda path: os.replace(weights, path))
    save_head(make_head("eagle3", tiny_target, BLOCK), str(out))  # another head's plain weights
    copy_head_weights(str(packed), str(out))
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors.xz"]
    assert (out / "model.safetensors.xz").read_bytes() == (packed / "model.safetensors.xz").read_bytes()


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a draft head checkpoint"):
        read_head_config(str(tmp_path))


@pytest.mark.parametrize("method", HEAD_METHODS)
def test_committed_checkpoint_matches_its_class(method):
    """Every tensor name and shape in checkpoints/METHOD-smollm2 is one the
    head class declares, and none is missing (a fast guard; loading them
    onto SmolLM2 is test_committed_heads.py)."""
    directory = os.path.join(ROOT, "checkpoints", f"{method}-smollm2")
    config = read_head_config(directory)
    assert config.method == method
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in head_class(method)(config).state_dict().items()}
    stored = {k: tuple(v.shape) for k, v in read_head_weights(directory).items()}
    assert stored == expected
