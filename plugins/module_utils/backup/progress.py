# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress of a long copy (backup or restore): percent, rate and ETA as JSON lines in a file.

A module run with ``async`` returns nothing until it ends; ``async_status`` only says "running". The
progress file is what a person (or a task polling with ``slurp``/``tail``) reads meanwhile: one JSON
object per line, written at most once per ``interval`` seconds plus a final line, so the file stays
small and writing it never slows the copy down.

A copy started as an async job outlives the ansible-playbook run that started it (async_wrapper detaches it). The
roles therefore set ``HYPERV_BACKUP_HEARTBEAT_FILE`` and ``HYPERV_BACKUP_HEARTBEAT_SECONDS`` on the job: the role's
polling loop touches that file at every round, and the reporter stops the copy (``CopyAbandoned``, raised from
``advance`` like any copy failure, so nothing is committed and the recovery point is handed back) once the file has
not been touched for that long -- the run was cancelled or killed. The VM lease on the host then has no live process
and the next run takes the VM over at once (hyperv/locks.py).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json
import os
import threading
import time

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError

HEARTBEAT_FILE_ENV = "HYPERV_BACKUP_HEARTBEAT_FILE"
HEARTBEAT_SECONDS_ENV = "HYPERV_BACKUP_HEARTBEAT_SECONDS"
HEARTBEAT_CHECK_SECONDS = 2.0        # how often advance() looks at the heartbeat file (one stat)


class CopyAbandoned(HyperVBackupError):
    """The run that started this copy stopped polling it (cancelled or killed): the copy stops."""


class Heartbeat:
    """The role's polling loop as seen from the copy: stale once ``path`` is untouched for ``seconds`` (wall clock)."""

    def __init__(self, path, seconds, clock=time.time):
        self.path = os.path.expanduser(path)
        self.seconds = float(seconds)
        self._clock = clock
        self._started = clock()
        self._last_check = None

    @classmethod
    def from_environment(cls, environ=None):
        environ = os.environ if environ is None else environ
        path, seconds = environ.get(HEARTBEAT_FILE_ENV), environ.get(HEARTBEAT_SECONDS_ENV)
        if not path or not seconds:
            return None
        try:
            return cls(path, float(seconds)) if float(seconds) > 0 else None
        except ValueError:
            return None

    def check(self):
        """Raise CopyAbandoned when the poller has been silent for longer than ``seconds``."""
        now = self._clock()
        if self._last_check is not None and now - self._last_check < HEARTBEAT_CHECK_SECONDS:
            return
        self._last_check = now
        try:
            last = max(os.stat(self.path).st_mtime, self._started)
        except OSError:
            last = self._started         # not touched yet: the job was just started
        if now - last > self.seconds:
            raise CopyAbandoned(
                "The run that started this copy has not polled it for %d seconds (its heartbeat %s is stale): it was "
                "cancelled or killed, so the copy stops here and commits nothing." % (now - last, self.path),
                hint="Start the backup or restore again; the recovery point of this copy is handed back and the VM is free.",
                heartbeat_file=self.path, heartbeat_seconds=self.seconds)


def _now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ProgressReporter:
    """Thread-safe byte counter that appends a progress line to ``path`` at most every ``interval`` seconds.

    ``path`` None keeps counting (the totals end up in the module result) without writing anything.
    """

    def __init__(self, path=None, total_bytes=0, operation="backup", interval=1.0, clock=time.monotonic, heartbeat="environment"):
        self.path = path
        if heartbeat == "environment":
            # only a copy that writes a progress file is polled by someone
            heartbeat = Heartbeat.from_environment() if path else None
        self.heartbeat = heartbeat
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
        if self.heartbeat is not None:
            self.heartbeat.check()
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
