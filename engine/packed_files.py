"""Weight files the repository ships xz-packed.

Why packed: a lent GPU machine takes the checkout only while its tracked
tree stays under 64 MiB (the device tool's limit), and the bundled n-gram
datastore and the three draft heads were 74 MB as plain safetensors. Packed
with `xz -9e` they are 53 MB. A packed file is a standard .xz of the plain
file, so `unxz` gives the plain one back and either form loads.

Unpacking goes to a temporary file that is removed after reading, so
safetensors' own reader (header, metadata, dtypes) is used unchanged; it
takes a fraction of a second for these sizes.
"""
from __future__ import annotations

import contextlib
import json
import lzma
import os
import shutil
import tempfile
from collections.abc import Iterator

PACKED_SUFFIX = ".xz"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own bound on a header


def existing_form(path: str) -> str:
    """`path` if it exists, else its packed form `path.xz`; FileNotFoundError
    naming both when neither does."""
    if os.path.isfile(path):
        return path
    if os.path.isfile(path + PACKED_SUFFIX):
        return path + PACKED_SUFFIX
    raise FileNotFoundError(f"neither {path} nor {path + PACKED_SUFFIX} exists")


def is_packed(path: str) -> bool:
    return path.endswith(PACKED_SUFFIX)


def plain_name(path: str) -> str:
    """The file's name without the packed suffix."""
    return os.path.basename(path[:-len(PACKED_SUFFIX)] if is_packed(path) else path)


def safetensors_metadata(path: str) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, packed or not, read from its
    header alone: an 8-byte little-endian length, then that many bytes of
    JSON (the format's specification). A packed file is unpacked only that far."""
    opener = lzma.open if is_packed(path) else open
    with opener(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path} is not a safetensors file (header of {length} bytes)")
        try:
            header = json.loads(f.read(length))
        except ValueError as exc:  # UnicodeDecodeError included
            raise ValueError(f"{path} is not a safetensors file (header unreadable: {exc})") from exc
    return header.get("__metadata__") or {}


@contextlib.contextmanager
def plain_file(path: str) -> Iterator[str]:
    """A path to the plain contents of `path`: the path itself, or a
    temporary unpacked copy (same file name) removed on exit."""
    if not is_packed(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="specserve-unpacked-") as folder:
        plain = os.path.join(folder, plain_name(path))
        with lzma.open(path) as packed, open(plain, "wb") as out:
            shutil.copyfileobj(packed, out, 1 << 20)
        yield plain


def write_maybe_packed(path: str, write_plain) -> None:
    """Call `write_plain(p)` to write the plain file; where `path` ends in
    .xz, write it to a temporary file and pack that into `path` (xz -9e)."""
    if not is_packed(path):
        write_plain(path)
        return
    with tempfile.TemporaryDirectory(prefix="specserve-packing-") as folder:
        plain = os.path.join(folder, plain_name(path))
        write_plain(plain)
        try:
            with open(plain, "rb") as source, lzma.open(path + ".tmp", "wb", preset=9 | lzma.PRESET_EXTREME) as out:
                shutil.copyfileobj(source, out, 1 << 20)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path + ".tmp")
            raise
    os.replace(path + ".tmp", path)  # an interrupted pack never leaves half a file
