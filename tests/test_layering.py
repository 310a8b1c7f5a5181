"""Import direction between the rooms (layout.md): server -> engine ->
scheduler, engine -> kernels; kernels import nothing of ours; the scheduler
imports no torch; bench talks HTTP and imports only the CLI and itself; the
CLI sits on top. Every import statement counts, function-level ones too."""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = {"cli", "server", "engine", "scheduler", "kernels", "bench", "tools", "tests"}

# room -> (packages of ours it may import, third-party packages it must not import)
RULES: dict[str, tuple[set[str], set[str]]] = {
    "scheduler": ({"scheduler"}, {"torch", "numpy", "fastapi", "triton"}),
    "kernels": ({"kernels"}, {"fastapi"}),
    "engine": ({"engine", "scheduler", "kernels"}, {"fastapi", "uvicorn", "starlette"}),
    "server": ({"server", "engine", "scheduler"}, set()),
    "bench": ({"bench", "cli"}, set()),
    "tools": ({"tools", "engine", "scheduler", "kernels", "bench"}, set()),
    "cli": (OURS - {"tests"}, set()),
}


def imported_packages(source: str) -> set[str]:
    """Top-level package names of every import in `source` (relative imports excluded)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def violations(room: str, source: str) -> set[str]:
    allowed, banned = RULES[room]
    imported = imported_packages(source)
    return {name for name in imported if (name in OURS and name not in allowed) or name in banned}


def room_files(room: str) -> list[str]:
    files = []
    for folder, _, names in os.walk(os.path.join(ROOT, room)):
        files += [os.path.join(folder, n) for n in names if n.endswith(".py")]
    return files


@pytest.mark.parametrize("room", sorted(RULES))
def test_room_imports_only_what_it_may(room):
    found = {}
    for path in room_files(room):
        with open(path, encoding="utf-8") as f:
            bad = violations(room, f.read())
        if bad:
            found[os.path.relpath(path, ROOT)] = sorted(bad)
    assert room_files(room), f"{room}/ has no Python files"
    assert not found, f"forbidden imports: {found}"


def test_every_room_has_a_rule():
    rooms = {d for d in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, d, "__init__.py"))}
    assert rooms - {"tests"} == set(RULES)


@pytest.mark.parametrize("room, line", [
    ("scheduler", "import torch"),
    ("engine", "from server.app import create_app"),
    ("kernels", "from engine.config import ModelConfig"),
    ("server", "from cli.serve import add_serve_arguments"),
    ("bench", "def f():\n    from engine.engine import LLMEngine"),
])
def test_the_checker_catches_forbidden_imports(room, line):
    assert violations(room, line)


def test_the_documentation_examples_import_only_the_rooms_they_extend():
    # docs/examples/*.py are the files docs/extending.md tells a newcomer to
    # add to engine/, scheduler/ or server/: they may import only what those rooms may.
    allowed = RULES["server"][0] | RULES["engine"][0]
    examples = os.path.join(ROOT, "docs", "examples")
    for name in sorted(os.listdir(examples)):
        if name.endswith(".py"):
            with open(os.path.join(examples, name), encoding="utf-8") as f:
                imported = imported_packages(f.read())
            assert not {p for p in imported if p in OURS} - allowed, name


def test_no_installed_distribution_claims_our_top_level_names():
    """Our rooms are top-level import names. A third-party distribution
    with the same import name (Hugging Face's `kernels`, which transformers
    requires from 5.25; pyproject.toml keeps transformers below it) is
    shadowed by ours, and whoever imports it gets our package instead."""
    import importlib.metadata

    claimed = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        top_level = (dist.read_text("top_level.txt") or "").split()
        if name and name.lower() != "specserve":
            for package in set(top_level) | {name.lower().replace("-", "_")}:
                if package in OURS - {"tests"}:
                    claimed[package] = name
    assert not claimed, f"installed distributions claim our top-level names: {claimed}"
