"""One live process per run directory: an advisory lock on ``<output_dir>/.lock`` that names its holder.

The lock is an exclusive ``flock`` on the file, so the kernel releases it the moment its holder exits, even
when the holder is killed (``SIGKILL``, power loss of a local disk). A lock file left by a dead process
therefore does not block: the next run takes the lock over and rewrites the holder record. While a run
holds the directory, a second run or a second resume there is refused with the holder's pid, host and the
time it took the lock. POSIX only (``fcntl``); where it is missing, no lock is taken.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_FILE = ".lock"


class RunDirectoryLocked(RuntimeError):
    """Raised when another live process holds the run directory."""


def _holder_record() -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv)[:500],
    }


def _describe(record: dict[str, object]) -> str:
    return f"pid {record.get('pid', '?')} on {record.get('host', '?')} since {record.get('since', '?')}"


class RunDirectoryLock:
    """Exclusive hold of a run directory for the lifetime of a ``with`` block (or ``acquire``/``release``).

    Args:
        directory: the run directory; created when missing. The lock file is ``directory/.lock``.

    Raises:
        RunDirectoryLocked: on ``acquire`` when a live process holds the directory, naming it.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> RunDirectoryLock:
        """Take the lock and write this process's holder record; returns ``self`` (no-op if held or without ``fcntl``).

        Raises:
            RunDirectoryLocked: another live process holds the directory.
        """
        if self._fd is not None or fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            raise RunDirectoryLocked(
                f"Expected no other process to use the run directory `{self.path.parent}`, but it is held by "
                f"{_describe(holder)} ({holder.get('command') or 'unknown command'}). Wait for that run to end "
                "or stop it, or choose another `output_dir`."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        previous = self._read(fd)
        if previous:  # its holder ended without releasing: killed, or its machine went down
            print(f"[lightning_al] took over the lock of `{self.path.parent}` left by {_describe(previous)}")
        record = json.dumps(_holder_record()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the directory up; the lock file stays (a later holder overwrites its record)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing drops the flock

    @staticmethod
    def _read(fd: int) -> dict[str, object]:
        try:
            record = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def __enter__(self) -> RunDirectoryLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()
