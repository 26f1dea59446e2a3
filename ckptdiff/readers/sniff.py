"""Tell a file's format from its first bytes, never from its extension."""

from __future__ import annotations

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
    if head.startswith(b"\x93NUMPY"):
        return "npy"
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
    return "unknown"


def sniff_file(path: str, file_size: int | None = None) -> str:
    """Name the format of the file at ``path`` (reads at most 512 bytes)."""
    with open(path, "rb") as f:
        head = f.read(512)
    return sniff_bytes(head, file_size)
