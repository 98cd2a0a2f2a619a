# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress of a long copy (backup or restore): percent, rate and ETA as JSON lines in a file.

A module run with ``async`` returns nothing until it ends; ``async_status`` only says "running". The
progress file is what a person (or a task polling with ``slurp``/``tail``) reads meanwhile: one JSON
object per line, written at most once per ``interval`` seconds plus a final line, so the file stays
small and writing it never slows the copy down.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json
import os
import threading
import time


def _now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ProgressReporter:
    """Thread-safe byte counter that appends a progress line to ``path`` at most every ``interval`` seconds.

    ``path`` None keeps counting (the totals end up in the module result) without writing anything.
    """

    def __init__(self, path=None, total_bytes=0, operation="backup", interval=1.0, clock=time.monotonic):
        self.path = path
        self.total_bytes = int(total_bytes or 0)
        self.operation = operation
        self.interval = float(interval)
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._last_write = None
        self.done_bytes = 0
        self.phase = "starting"
        self.lines_written = 0
        if path:
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory):
                os.makedirs(directory, exist_ok=True)
            with open(path, "w"):
                pass     # a fresh file per run: a reader never mixes two runs

    def set_phase(self, phase, total_bytes=None):
        with self._lock:
            self.phase = phase
            if total_bytes is not None:
                self.total_bytes = int(total_bytes)
        self._maybe_write(force=True)

    def advance(self, nbytes):
        with self._lock:
            self.done_bytes += int(nbytes)
        self._maybe_write()

    def snapshot(self):
        """The current state as a dict (what one line of the file holds)."""
        with self._lock:
            elapsed = max(self._clock() - self._started, 1e-9)
            done, total = self.done_bytes, self.total_bytes
            rate = done / elapsed
            percent = 100.0 if total <= 0 and self.phase == "done" else (min(100.0, 100.0 * done / total) if total > 0 else 0.0)
            eta = (total - done) / rate if rate > 0 and total > done else 0.0
            return {"time": _now_iso(), "operation": self.operation, "phase": self.phase, "done_bytes": done,
                    "total_bytes": total, "percent": round(percent, 1), "bytes_per_second": int(rate),
                    "elapsed_seconds": round(elapsed, 3), "eta_seconds": round(eta, 1)}

    def _maybe_write(self, force=False):
        if not self.path:
            return
        now = self._clock()
        with self._lock:
            if not force and self._last_write is not None and now - self._last_write < self.interval:
                return
            self._last_write = now
        line = json.dumps(self.snapshot(), sort_keys=True)
        with self._lock:
            with open(self.path, "a") as handle:
                handle.write(line + "\n")
            self.lines_written += 1

    def finish(self, phase="done"):
        """Write the final line (always, whatever the interval)."""
        self.set_phase(phase)


def read_progress(path):
    """All lines of a progress file as dicts (for tests and tools); a half-written last line is skipped."""
    out = []
    with open(path) as handle:
        for line in handle:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
