"""Tests mirror the tree: the tests of `room/pkg/module.py` live in
`tests/room/pkg/test_module.py`, and every test file sits in a folder that
matches a package of ours (or one of the few folders that test across
packages)."""
from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Rooms whose every module must have a test file named after it.
MIRRORED_ROOMS = ("engine", "scheduler", "kernels", "server")
# Test folders that cut across packages: end-to-end runs and the
# documentation's examples.
CROSS_CUTTING = {"e2e", "docs"}


def mirrored_test(module: str) -> str:
    folder, name = os.path.split(module)
    return os.path.join("tests", folder, f"test_{name}")


def modules_without_tests(root: str) -> list[str]:
    """Modules (repository-relative) of the mirrored rooms lacking tests/<path>/test_<module>.py."""
    missing = []
    for room in MIRRORED_ROOMS:
        for folder, _, names in os.walk(os.path.join(root, room)):
            for name in names:
                module = os.path.relpath(os.path.join(folder, name), root)
                if (name.endswith(".py") and name != "__init__.py"
                        and not os.path.exists(os.path.join(root, mirrored_test(module)))):
                    missing.append(module)
    return sorted(missing)


def stray_test_folders(root: str) -> list[str]:
    """Folders under tests/ holding test files but matching no package of ours."""
    stray = []
    for folder, dirs, names in os.walk(os.path.join(root, "tests")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(folder, os.path.join(root, "tests"))
        if rel == "." or rel.split(os.sep)[0] in CROSS_CUTTING:
            continue
        has_tests = any(n.startswith("test_") and n.endswith(".py") for n in names)
        if has_tests and not os.path.isfile(os.path.join(root, rel, "__init__.py")):
            stray.append(os.path.join("tests", rel))
    return stray


def test_every_module_has_a_test_file_named_after_it():
    missing = modules_without_tests(ROOT)
    assert missing == [], "add: " + ", ".join(mirrored_test(m) for m in missing)


def test_every_test_folder_matches_a_package():
    assert stray_test_folders(ROOT) == []


def test_the_checks_catch_a_missing_test_and_a_stray_folder(tmp_path):
    def touch(path):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")

    for path in ("engine/__init__.py", "engine/spec/__init__.py", "engine/spec/ngram.py",
                 "engine/spec/rejection.py", "tests/engine/spec/test_ngram.py",
                 "tests/spec/test_rejection.py", "tests/e2e/test_whole_server.py"):
        touch(path)
    assert modules_without_tests(str(tmp_path)) == ["engine/spec/rejection.py"]
    assert stray_test_folders(str(tmp_path)) == ["tests/spec"]
