"""Atomic file writes (a reader never sees a half-written checkpoint, config or result file)
and one writer per output folder (`FolderLock`).

The data goes to a temporary file in the target's own directory (same filesystem), is
flushed to disk, then renamed over the target with `os.replace`, which is atomic on POSIX
and Windows. A crash mid-write leaves the old file intact and at most a stray `.*.tmp`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from finecap.errors import UserError


def _umask() -> int:
    # mkstemp / mkdtemp create 0600 / 0700; give the final file or folder the permissions
    # open() / mkdir() would have given. os.umask can only be read by setting it, so do it
    # once at import, before any threads.
    umask = os.umask(0)
    os.umask(umask)
    return umask


_FILE_MODE = 0o666 & ~_umask()
FOLDER_MODE = 0o777 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically, creating parent directories as needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically (see `atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode(encoding))


class FolderInUseError(UserError, RuntimeError):
    """Another finecap process holds the folder's lock."""


class FolderLock:
    """One writer per output folder: an exclusive `flock` on `FOLDER/.finecap.lock`.

    The kernel releases the lock when its process dies, however it dies, so a lock left by a
    killed run is simply taken over; the file holds the owner's pid for the error message.
    Use as a context manager: `with FolderLock(out): ...`.
    """

    FILE = ".finecap.lock"

    def __init__(self, folder: str | os.PathLike, what: str = "finecap") -> None:
        self.folder, self.what = Path(folder), what
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        import fcntl

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / self.FILE, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        except OSError as err:
            raise UserError(
                f"{self.folder}: cannot be used as an output folder ({err.strerror})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FolderInUseError(
                f"{self.folder} is in use by another finecap process (pid {owner}); wait for "
                "it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (hard links and other spellings too), even if absent."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def named_path(item: str) -> tuple[str, Path]:
    """`NAME=FILE` -> (NAME, FILE); a plain `FILE` (or a file whose own name holds "=") is
    named after its stem."""
    name, eq, path = item.partition("=")
    if eq and name and not Path(item).exists():
        return name, Path(path)
    return Path(item).stem, Path(item)
