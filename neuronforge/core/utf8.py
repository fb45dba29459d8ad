"""Read a user's text file as UTF-8 or say exactly where it is not (never replace bytes silently)."""

from __future__ import annotations

from pathlib import Path

from neuronforge.errors import NeuronforgeError


def read_utf8(path: Path) -> str:
    """The file's text (a UTF-8 byte-order mark is dropped); bytes that are not UTF-8 are an error naming them, and
    so is a NUL character: valid UTF-8, but no text file holds one (20000 NULs calibrated a model: report B05)."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise NeuronforgeError(
            f"{path} is not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line} (byte offset {exc.start})",
            f"convert it to UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} > {Path(path).stem}-utf8{Path(path).suffix}`",
        ) from None
    if (offset := data.find(b"\0")) >= 0:
        line = data.count(b"\n", 0, offset) + 1
        raise NeuronforgeError(
            f"{path} holds a NUL character at line {line} (byte offset {offset}): it looks like a binary file (or "
            "UTF-16 text), not UTF-8 text",
            "pass a UTF-8 text file (UTF-16 converts with `iconv -f utf-16 -t utf-8`)",
        )
    return text


def require_file(path: Path, what: str, fix: str) -> Path:
    """`path` is an existing regular file; a folder or a device (`/dev/null`) is named as what it is, not as
    missing (report B03, B14, C11)."""
    path = Path(path)
    if path.is_dir():
        raise NeuronforgeError(f"{what} {path} is a folder, not a file", fix)
    if path.exists() and not path.is_file():
        raise NeuronforgeError(f"{what} {path} is not a regular file (a device, pipe or socket)", fix)
    if not path.exists():
        raise NeuronforgeError(f"{what} {path} does not exist", fix)
    return path
