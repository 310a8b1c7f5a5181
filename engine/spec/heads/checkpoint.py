"""Head checkpoints: config.json plus model.safetensors (the head's own
weights only; the shared embedding and LM head come from the target). The
weights may be packed as model.safetensors.xz (engine/packed_files.py says
why the committed heads are)."""
from __future__ import annotations

import contextlib
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from engine.config import ModelConfig
from engine.packed_files import PACKED_SUFFIX, existing_form, is_packed, plain_file, plain_name
from engine.spec.heads.base import DraftHead
from engine.spec.heads.config import HeadConfig
from engine.spec.heads.registry import head_class

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_head(head: DraftHead, directory: str, dtype: torch.dtype = torch.float16) -> int:
    """Write config.json and model.safetensors (own weights only, floats
    in `dtype`); returns the weight file's size in bytes."""
    os.makedirs(directory, exist_ok=True)
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous().cpu()
               for k, v in head.state_dict().items()}  # integer buffers (draft_ids) stay exact
    weights = os.path.join(directory, WEIGHTS_FILE)
    _atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"method": head.config.method}))
    _drop_other_form(weights)
    save_head_config(head.config, directory)
    return os.path.getsize(weights)


def save_head_config(config: HeadConfig, directory: str) -> None:
    """Write config.json alone (a recalibrated head keeps its weights file)."""
    os.makedirs(directory, exist_ok=True)
    _atomic_write(os.path.join(directory, CONFIG_FILE),
                  lambda tmp: open(tmp, "w", encoding="utf-8").write(config.to_json()))


def _atomic_write(path: str, write) -> None:
    """Write to a temporary name and rename: an interrupted save never leaves half a file."""
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def read_head_config(directory: str) -> HeadConfig:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} is not a draft head checkpoint (no {CONFIG_FILE})")
    with open(path, encoding="utf-8") as f:
        return HeadConfig.from_json(f.read())


def weights_path(directory: str) -> str:
    """The checkpoint's weights file: model.safetensors or its packed form."""
    return existing_form(os.path.join(directory, WEIGHTS_FILE))


def copy_head_weights(source: str, directory: str) -> None:
    """Copy `source`'s weights file as it is (packed or not) into
    `directory`, replacing whatever weights file that held."""
    weights = weights_path(source)
    os.makedirs(directory, exist_ok=True)
    kept = os.path.join(directory, os.path.basename(weights))
    _atomic_write(kept, lambda tmp: shutil.copyfile(weights, tmp))
    _drop_other_form(kept)


def _drop_other_form(kept: str) -> None:
    """Remove the weights file beside `kept` in the other form (packed or
    plain): it would hold older weights, and the plain one is read first."""
    other = os.path.join(os.path.dirname(kept), plain_name(kept)) if is_packed(kept) else kept + PACKED_SUFFIX
    with contextlib.suppress(FileNotFoundError):
        os.remove(other)


def read_head_weights(directory: str) -> dict[str, torch.Tensor]:
    """The head's own tensors as saved (the target's shared ones left out)."""
    with plain_file(weights_path(directory)) as plain:
        return load_file(plain)


def load_head(directory: str, target_model, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu") -> DraftHead:
    """Load a head checkpoint and attach it to `target_model` (strict weights)."""
    config = read_head_config(directory)
    _check_target_matches(config, target_model.config)
    head = head_class(config.method)(config)
    head.load_state_dict(read_head_weights(directory), strict=True)
    head.to(dtype=dtype, device=device).eval()
    head.attach_target(target_model)
    return head


def _check_target_matches(config: HeadConfig, target: ModelConfig) -> None:
    mismatches = [(name, mine, theirs) for name, mine, theirs in (
        ("vocab_size", config.vocab_size, target.vocab_size),
        ("hidden_size", config.hidden_size, target.hidden_size),
        ("num_layers", config.target_num_layers, target.num_layers),
    ) if mine != theirs]
    if mismatches:
        raise ValueError(f"draft head was trained for another target: {mismatches} (head, target)")
