"""A one-line progress bar (the pytorch/examples ProgressMeter, for a run with many workers).

On a terminal it redraws one line; in a log (CI, `tee`) it prints a line every `log_every` s.
"""

from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, total: int, enabled: bool = True, log_every: float = 10.0, stream=None):
        self.total, self.enabled, self.log_every = max(1, total), enabled, log_every
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.time()
        self._last_log = 0.0

    def update(self, done: int, **fields) -> None:
        if not self.enabled:
            return
        elapsed = time.time() - self.start
        frac = min(1.0, done / self.total)
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        parts = [f"[{bar}] {100 * frac:5.1f}%", f"{elapsed:5.0f}s", f"eta {eta:4.0f}s"]
        parts += [f"{k} {v}" for k, v in fields.items()]
        line = " | ".join(parts)
        if self.tty:
            self.stream.write("\r" + line[:200].ljust(120))
            self.stream.flush()
        elif elapsed - self._last_log >= self.log_every or frac >= 1.0:
            self._last_log = elapsed
            self.stream.write(line + "\n")
            self.stream.flush()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
