"""The bytes of a model file, read-only: a memory map, or the bytes themselves
where a file system cannot map. The GGUF reader parses headers from it.

Opening refuses what is not a regular file (a directory, a FIFO, a device) in
one sentence, and never waits: a FIFO is opened without blocking.
"""

from __future__ import annotations

import mmap
import os
import stat

from llmtune.errors import GGUFError

__all__ = ["MappedFile"]


class MappedFile:
    """A read-only view of a regular file: an mmap, or bytes for tiny files."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
            flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise GGUFError("no such file", path) from None
        except IsADirectoryError:
            raise GGUFError("is a directory, not a GGUF file", path) from None
        except PermissionError:
            raise GGUFError("permission denied", path) from None
        except OSError as exc:
            raise GGUFError(f"cannot open: {exc.strerror or exc}", path) from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise GGUFError("is a directory, not a GGUF file", path)
            if not stat.S_ISREG(st.st_mode):
                raise GGUFError("not a regular file", path)
            self.size = st.st_size
            self.buf: bytes | mmap.mmap
            if self.size == 0:
                raise GGUFError("empty file (0 bytes)", path)
            try:
                self.buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                # Some file systems cannot map; headers are small, read what we need.
                with os.fdopen(os.dup(fd), "rb") as fh:
                    self.buf = fh.read(min(self.size, 1 << 30))
        finally:
            os.close(fd)

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()
