"""The safetensors header, read without safetensors: the loader, the file-backed embedding and the checks share it."""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO


def read_header(handle: BinaryIO) -> tuple[int, dict[str, Any]]:
    """(offset of the data, header) of an open safetensors file: an 8-byte length, then the JSON header."""
    (length,) = struct.unpack("<Q", handle.read(8))
    return 8 + length, json.loads(handle.read(length))
