"""One live run per output directory: an OS-level lock, released by the kernel when the process ends (a crash
or a kill included), so a stale lock never blocks the next run."""
import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from ..errors import ConfigError

__all__ = ['RunLock']

LOCK_NAME = '.gpvit.lock'


class RunLock:
    """``fcntl.flock`` on ``output_dir/.gpvit.lock``, which names the holder (pid, host, start time).

    Where ``fcntl`` does not exist (Windows) the lock is a no-op.
    """

    def __init__(self, output_dir):
        self.path = Path(output_dir) / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> 'RunLock':
        """Take the lock, or raise a :class:`ConfigError` naming the process that holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors='replace').strip()
            os.close(fd)
            try:
                info = json.loads(holder)
                who = f'process {info["pid"]} on {info["host"]}, started {info["started"]}'
            except (ValueError, KeyError, TypeError):
                who = 'another process'
            raise ConfigError(f'output_dir: {self.path.parent} is in use by another run ({who}); wait for it to '
                              f'finish, or choose another output_dir') from None
        info = {'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.strftime('%Y-%m-%d %H:%M:%S')}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def __enter__(self) -> 'RunLock':
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
