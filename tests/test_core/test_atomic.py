"""Atomic writes: a killed writer's leftovers are removed by the next writer (only those), permissions follow the umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from neuronforge.core.atomic import atomic_dir, atomic_write_text, remove_leftovers
from neuronforge.errors import NeuronforgeError

KILLED_WRITER = """
import os, sys
from pathlib import Path
from neuronforge.core.atomic import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "model.safetensors").write_bytes(b"x" * 1024)
    os.kill(os.getpid(), 9)
"""


def test_a_killed_standalone_write_is_cleaned_by_the_next_one(tmp_path: Path) -> None:
    """5.8: a standalone `quantize` killed while writing left `.out.partial-*` forever."""
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out)], check=False, env={**os.environ})
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial-")]
    assert len(leftovers) == 1 and not out.exists()
    mine = tmp_path / ".out.partial-notes"  # a look-alike name that no writer makes: never touched
    mine.mkdir()
    live = tmp_path / f".out.partial-{os.getpid()}-0123abcd"  # a writer that is still running: never touched
    live.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "done.txt").write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", mine.name, live.name])
    assert remove_leftovers(tmp_path) == []


def test_existing_target_is_kept_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(NeuronforgeError, match="already exists"), atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize(("umask", "folder", "file"), [(0o022, 0o755, 0o644), (0o002, 0o775, 0o664)])
def test_permissions_follow_the_umask(tmp_path: Path, umask: int, folder: int, file: int) -> None:
    """Stage folders were 0700 and files 0600 (mkdtemp/mkstemp): unreadable to the rest of a team."""
    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "stage") as tmp:
            atomic_write_text(tmp / "manifest.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "stage").stat().st_mode) == folder
    assert stat.S_IMODE((tmp_path / "stage" / "manifest.json").stat().st_mode) == file


DISK_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def test_a_full_disk_is_one_error_naming_the_output_and_leaves_nothing(tmp_path: Path) -> None:
    """F01-F03: ENOSPC, as an OSError or as the text of safetensors' own error (no OSError), was a traceback."""
    import errno

    from safetensors import SafetensorError

    from neuronforge.core.atomic import atomic_file, atomic_write_bytes

    final = tmp_path / "out"
    for raised in (OSError(errno.ENOSPC, "No space left on device"), SafetensorError(DISK_FULL)):
        with pytest.raises(
            NeuronforgeError, match=r"the disk holding .*out is full: writing it needs more than 1\.0 KiB"
        ):
            with atomic_dir(final) as tmp:
                (tmp / "part").write_bytes(b"x" * 1024)
                raise raised
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(NeuronforgeError, match="is full"), atomic_file(tmp_path / "f") as tmp:
        tmp.write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []
    atomic_write_bytes(tmp_path / "f", b"ok")  # once space is back, the same write works
    assert (tmp_path / "f").read_bytes() == b"ok"
