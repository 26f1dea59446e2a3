"""Tell a file's format from its first bytes, never from its extension."""

from __future__ import annotations

import os
import stat

from ckptdiff.readers.safetensors_header import looks_like_safetensors

__all__ = ["sniff_bytes", "sniff_file", "FORMAT_NAMES"]

#: What each sniffed format is called in messages.
FORMAT_NAMES = {
    "safetensors": "a safetensors file",
    "zip": "a zip archive (torch >= 1.6 format)",
    "pickle": "a pickle (legacy torch format or plain pickle)",
    "json": "a JSON file",
    "tar": "a tar archive (the pre-1.6 torch tar format or another tar)",
    "7z": "a 7z archive",
    "npy": "a numpy .npy array",
    "npy-object": "a numpy .npy array of Python objects (a pickle numpy would run on load)",
    "gzip": "a gzip-compressed file (decompress it first)",
    "bz2": "a bzip2-compressed file (decompress it first)",
    "xz": "an xz-compressed file (decompress it first)",
    "zstd": "a zstd-compressed file (decompress it first)",
    "special": "not a regular file (a pipe, socket or device)",
    "gguf": "a GGUF file",
    "hdf5": "an HDF5 file (Keras/TensorFlow)",
    "onnx-or-protobuf": "a protobuf file (ONNX or TensorFlow)",
    "empty": "an empty file",
    "unknown": "no checkpoint format ckptdiff knows",
}


def sniff_bytes(head: bytes, file_size: int | None = None) -> str:
    """Name the format of a file from its first bytes (at least 512 for tar detection).

    Returns:
        one of the keys of :data:`FORMAT_NAMES`.
    """
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if looks_like_safetensors(head, file_size):
        return "safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and 0 < head[1] <= 5:
        return "pickle"
    if head[:1] in (b"(", b"}", b"]", b"c", b"N", b"I", b"L", b"S", b"F", b"V") and b"." in head:
        # protocol 0/1 pickles have no PROTO opcode; only claim it when there is a STOP
        if head[:1] in (b"(", b"}", b"]", b"c"):
            return "pickle"
    if head[8:9] == b"{" and head[9:10] in (b'"', b"}"):
        # a safetensors JSON header behind an impossible length: let its reader say what is wrong
        return "safetensors"
    if head.startswith(b"\x93NUMPY"):
        return "npy-object" if _npy_holds_objects(head) else "npy"
    for magic, kind in _COMPRESSED:
        if head.startswith(magic):
            return kind
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z"
    if head.startswith(b"GGUF"):
        return "gguf"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "json"
    if _opcodes_only(head):
        # a pickle without a PROTO opcode (pickle.load needs none): read it as one, so that a
        # payload hidden in it is reported rather than left as an unknown file
        return "pickle"
    return "unknown"


_COMPRESSED = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


def _npy_holds_objects(head: bytes) -> bool:
    """Whether a .npy header declares an object dtype (``'descr': '|O'``)."""
    header = head[8:].split(b"}", 1)[0]
    return b"'|O'" in header or b"'O'" in header or b"'<O'" in header


def _opcodes_only(head: bytes) -> bool:
    """Whether ``head`` is a valid run of pickle opcodes (up to its end or a STOP)."""
    if len(head) < 2:
        return False
    from ckptdiff.readers.unpickler.opcodes import scan_pickle  # only for non-archives
    from ckptdiff.readers.unpickler.records import PickleDataError

    try:
        scan_pickle(head)
    except PickleDataError:
        return False
    return True


def sniff_file(path: str, file_size: int | None = None) -> str:
    """Name the format of the file at ``path`` (reads at most 512 bytes).

    A pipe, socket or device is ``special`` and is not opened: opening a pipe would wait for a
    writer forever, and a device has no end.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        return "special"
    with open(path, "rb") as f:
        head = f.read(512)
    return sniff_bytes(head, file_size)
