"""glibc's allocator told to keep freed memory (`tune_malloc`), for processes that allocate and
free the same sizes over and over: gRPC's ~1 MiB messages, and a training step's tensors.

glibc's default hands freed pages back to the kernel: it trims the heap top beyond ~2x the
largest recent block, and mmaps blocks above a threshold that it raises only as it sees them
freed. The next allocation of the same size then faults its pages in again. Measured on the
2-core VM of docs/benchmarks.md:
- gRPC: a third of a 100 MB pull's or push's time went to those faults (docs/grpc.md);
- training: a plain digits_cnn loop ran 7-9% slower with the default settings (medians of five
  runs, in the main thread and in another one, as a threaded Ray actor runs it); the Ray worker
  (`WorkerActor`, which calls this) went from 85% to 91% of the plain loop's images/s in two
  runs back to back.
The cost is up to TRIM_BYTES of freed heap kept per process, and blocks up to
MMAP_THRESHOLD_BYTES served from the heap. Process-wide; applied once; a no-op off glibc.
"""

from __future__ import annotations

import ctypes
import sys
import threading

MMAP_THRESHOLD_BYTES = 16 << 20  # blocks below this come from the heap (gRPC chunks are <= 4 MiB)
TRIM_BYTES = 128 << 20  # free heap top kept before it is returned to the kernel
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_tuned: bool | None = None
_tune_lock = threading.Lock()


def tune_malloc() -> bool:
    """Make glibc keep freed memory for reuse (process-wide, once). True if the allocator is
    glibc's and took the settings; elsewhere a no-op returning False."""
    global _tuned
    with _tune_lock:
        if _tuned is None:
            _tuned = False
            if sys.platform.startswith("linux"):
                try:
                    libc = ctypes.CDLL(None)
                    mallopt = libc.mallopt
                    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and \
                        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
                except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                    _tuned = False
        return _tuned


def tuned() -> bool:
    """Whether `tune_malloc` has taken effect in this process."""
    return bool(_tuned)
