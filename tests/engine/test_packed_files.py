"""xz-packed weight files: either form is found, read and written the same."""
from __future__ import annotations

import lzma
import os
import shutil

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from engine.packed_files import (existing_form, plain_file, plain_name, safetensors_metadata,
                                 write_maybe_packed)

XZ_MAGIC = b"\xfd7zXZ\x00"


def _write_weights(path: str) -> None:
    save_file({"a": np.arange(6, dtype=np.float32), "b": np.ones((2, 3), dtype=np.int64)}, path,
              metadata={"format": "toy", "note": "x" * 300})


def test_the_plain_form_is_found_first_then_the_packed_one(tmp_path):
    plain = str(tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError, match=r"neither .*w.safetensors nor .*w.safetensors.xz"):
        existing_form(plain)
    write_maybe_packed(plain + ".xz", _write_weights)
    assert existing_form(plain) == plain + ".xz"
    _write_weights(plain)
    assert existing_form(plain) == plain


def test_a_packed_file_is_standard_xz_of_the_plain_one(tmp_path):
    plain, packed = str(tmp_path / "w.safetensors"), str(tmp_path / "p" / "w.safetensors.xz")
    os.makedirs(os.path.dirname(packed))
    _write_weights(plain)
    write_maybe_packed(packed, lambda path: shutil.copyfile(plain, path))
    with open(packed, "rb") as f:
        assert f.read(6) == XZ_MAGIC
    with open(plain, "rb") as f:
        assert lzma.decompress(open(packed, "rb").read()) == f.read()
    assert sorted(os.listdir(os.path.dirname(packed))) == ["w.safetensors.xz"]  # no temporary left


def test_either_form_reads_as_the_plain_file_and_the_copy_goes_after(tmp_path):
    plain, packed = str(tmp_path / "w.safetensors"), str(tmp_path / "w2.safetensors.xz")
    _write_weights(plain)
    write_maybe_packed(packed, lambda path: shutil.copyfile(plain, path))
    with plain_file(plain) as same:
        assert same == plain
    with plain_file(packed) as unpacked:
        assert os.path.basename(unpacked) == plain_name(packed) == "w2.safetensors"
        assert open(unpacked, "rb").read() == open(plain, "rb").read()
    assert not os.path.exists(unpacked)


def test_metadata_is_read_from_the_header_of_either_form(tmp_path):
    plain, packed = str(tmp_path / "w.safetensors"), str(tmp_path / "w.safetensors.xz")
    _write_weights(plain)
    write_maybe_packed(packed, _write_weights)
    with safe_open(plain, "numpy") as f:
        expected = f.metadata()
    assert safetensors_metadata(plain) == safetensors_metadata(packed) == expected
    assert expected["note"] == "x" * 300


def test_a_writer_that_fails_leaves_no_file(tmp_path):
    packed = str(tmp_path / "w.safetensors.xz")

    def broken(path: str) -> None:
        open(path, "wb").write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_maybe_packed(packed, broken)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["junk.safetensors", "junk.safetensors.xz"])
def test_a_file_that_is_not_safetensors_is_refused_by_name(tmp_path, name):
    path = str(tmp_path / name)
    write_maybe_packed(path, lambda plain: open(plain, "wb").write(b"\xff" * 64))
    with pytest.raises(ValueError, match=f"{name} is not a safetensors file"):
        safetensors_metadata(path)
    write_maybe_packed(path, lambda plain: open(plain, "wb").write((12).to_bytes(8, "little") + b"\xff" * 12))
    with pytest.raises(ValueError, match="header unreadable"):
        safetensors_metadata(path)


def test_a_pack_that_fails_leaves_no_file(tmp_path, monkeypatch):
    import engine.packed_files as module

    def failing_copy(source, out, length):
        out.write(b"part")
        raise OSError("disk full")

    monkeypatch.setattr(module.shutil, "copyfileobj", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        write_maybe_packed(str(tmp_path / "w.safetensors.xz"), _write_weights)
    assert os.listdir(tmp_path) == []
