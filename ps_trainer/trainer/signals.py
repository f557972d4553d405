"""Ctrl-C and SIGTERM as a flag, not an exception.

A KeyboardInterrupt can land between any two bytecodes: between taking a worker's metric rows and
writing them, or between popping a simulated event and scheduling the next. Both loops instead
read this flag between rounds, then stop cleanly, checkpoint and write everything.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager


@contextmanager
def stop_requested(stop: list | None = None):
    """Yields a list that Ctrl-C or SIGTERM append to; the previous handlers come back after.
    `stop`: append to this list instead (a caller's, e.g. a sweep's: a signal it noted while the
    run was being set up stops the run as soon as its loop starts)."""
    stop = [] if stop is None else stop
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
