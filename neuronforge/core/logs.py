"""Third-party log lines (auto-round, transformers) go to a log file in the output folder, not between ours.

auto-round logs through its own "autoround" logger with a coloured stream handler of its own and
`propagate = False` (intel/auto-round@v0.16.1:auto_round/logger.py:111-116), so silencing the root logger does
nothing: its handlers are swapped for the log file while a command runs (and kept, beside it, with --verbose).
The file and its folder appear only when a line is logged, so a command that fails early leaves nothing behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

THIRD_PARTY_LOGGERS = ("autoround", "transformers")
LOG_DIR = "logs"
LOG_FILE = "third_party.log"


class _LazyFileHandler(logging.FileHandler):
    """A FileHandler that makes its folder at the first line, not before (`delay=True` opens the file late)."""

    def emit(self, record: logging.LogRecord) -> None:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        super().emit(record)


def third_party_log(out_dir: Path) -> Path:
    """Where a command writing `out_dir` keeps the third-party log."""
    return Path(out_dir) / LOG_DIR / LOG_FILE


@dataclass
class _Capture:
    handler: logging.Handler
    verbose: bool
    saved: dict[str, tuple[list[logging.Handler], bool]] = field(default_factory=dict)


_active: list[_Capture] = []


def adopt_third_party_loggers() -> None:
    """Route the third-party loggers to the active log file; call it right after importing such a library
    (auto-round adds its stream handler at import, transformers at its first `get_logger`). No-op outside
    `third_party_logs`."""
    if not _active:
        return
    capture = _active[-1]
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        if name not in capture.saved:
            capture.saved[name] = (list(logger.handlers), logger.propagate)
        if not capture.verbose:
            for old in [h for h in logger.handlers if h is not capture.handler]:
                logger.removeHandler(old)
            logger.propagate = False
        if capture.handler not in logger.handlers:
            logger.addHandler(capture.handler)


@contextmanager
def third_party_logs(log_file: Path, verbose: bool = False) -> Iterator[None]:
    """While the block runs, third-party loggers write to `log_file` (appending); with `verbose` also to their
    own handlers (the terminal). Their handlers and propagation come back afterwards."""
    handler = _LazyFileHandler(log_file, delay=True, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    capture = _Capture(handler, verbose)
    _active.append(capture)
    adopt_third_party_loggers()
    try:
        yield
    finally:
        _active.remove(capture)
        for name, (handlers, propagate) in capture.saved.items():
            logger = logging.getLogger(name)
            logger.removeHandler(handler)
            for old in handlers:
                if old not in logger.handlers:
                    logger.addHandler(old)
            logger.propagate = propagate
        handler.close()
