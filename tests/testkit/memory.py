"""How much of a file the process holds: memory maps count each page a read touched in its RSS."""

from __future__ import annotations

from pathlib import Path


def mapped_rss(file: Path) -> int:
    """Bytes of `file`'s pages resident in this process's memory maps (Linux /proc/self/smaps)."""
    target = str(Path(file).resolve())
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):  # a mapping's header: address perms offset device inode [path]
            inside = len(fields) >= 6 and fields[5] == target
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total
