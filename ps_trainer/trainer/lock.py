"""One process at a time per run or sweep folder: a lock file naming its holder.

`hold(folder, flag)` takes an exclusive `fcntl.flock` on `folder/.lock` and writes the holder's
pid and command line into it. The kernel drops the lock when the last process holding the file
descriptor dies, however it dies (`kill -9` included), so a stale lock never needs cleaning up;
a process forked from the holder (a pool worker) shares the descriptor and so keeps the folder
locked until it too has exited, which is exactly when a rerun may safely write there.
"""

from __future__ import annotations

import fcntl
import os
import sys
from contextlib import contextmanager
from pathlib import Path

NAME = ".lock"


@contextmanager
def hold(folder: str | Path, flag: str):
    """Hold `folder`'s lock for the block. ValueError (naming `flag`, the folder and the holder's
    pid) if another process holds it. The folder is created if needed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ValueError(f"{flag} {folder}: in use by another ps-train process ({holder}); wait "
                         f"for it to finish or stop it, or choose another folder") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:300]}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock (once forked children holding it have exited too)


def holder(folder: str | Path) -> int | None:
    """The pid recorded by whoever holds `folder`'s lock now, or None if nobody holds it."""
    path = Path(folder) / NAME
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            return int(text.split()[1].rstrip(":")) if text.startswith("pid ") else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
