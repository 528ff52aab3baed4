"""llmtune's own log: a small rotating file in the cache directory.

The app writes what went wrong in the background there, with the traceback the
status line leaves out (``llmtune.log``, 1 MiB, and two older files). A log
must never be a new way to fail: the file opens on the first record, and a
read-only or full disk loses the record quietly instead of printing logging's
"--- Logging error ---" report over the terminal the app is drawing on.
"""

from __future__ import annotations

import logging
from logging.handlers import RotatingFileHandler
from pathlib import Path

from llmtune.paths import cache_dir

__all__ = ["LOG_NAME", "close_log", "open_log"]

LOG_NAME = "llmtune.log"
MAX_BYTES = 1 << 20
BACKUPS = 2
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class QuietRotatingFileHandler(RotatingFileHandler):
    """A rotating file whose failures (no directory, a read-only or full disk) are silent."""

    previous_level = logging.NOTSET  # the logger's level before the log was opened

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def open_log(directory: Path | None = None) -> Path:
    """Send the ``llmtune`` loggers' records (INFO and up) to ``directory/llmtune.log``
    (the cache directory by default) and return its path. Calling it again with
    the same place changes nothing; with another, the log moves there."""
    folder = directory if directory is not None else cache_dir()
    path = folder / LOG_NAME
    logger = logging.getLogger("llmtune")
    for handler in list(logger.handlers):
        if isinstance(handler, QuietRotatingFileHandler):
            if Path(handler.baseFilename) == path.absolute():
                return path
            logger.removeHandler(handler)
            logger.setLevel(handler.previous_level)
            handler.close()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # the handler then fails on each record, quietly
    handler = QuietRotatingFileHandler(
        path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8", delay=True
    )
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.previous_level = logger.level
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return path


def close_log() -> None:
    """Stop writing the log file (the app closes it when it ends)."""
    logger = logging.getLogger("llmtune")
    for handler in list(logger.handlers):
        if isinstance(handler, QuietRotatingFileHandler):
            logger.removeHandler(handler)
            logger.setLevel(handler.previous_level)
            handler.close()
