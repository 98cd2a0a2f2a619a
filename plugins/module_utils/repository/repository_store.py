# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where repository objects live, behind one interface: what the two stores share, and ``open_store``.

An object is named by a ``/``-separated key (``chunks/ab/ab12...``, ``backups/<id>``). Both stores give:
``put`` (atomic and durable: a reader sees the whole object or nothing), ``get``, ``stat``, ``list``,
``delete``, ``touch`` (mark an existing object as used now), ``renew`` (refresh an object that must still
exist, never re-creating it), ``exclusive_lock`` (one prune/GC at a time, with expiry so a crashed holder does
not block forever) and ``chunk_guard``/``sweep_guard`` (a short shared/exclusive section that makes "dedup
hit + touch" and "re-check + delete" atomic against each other where the medium allows it: flock locally; S3
has no such primitive, so GC and writers exclude each other with markers instead, see docs/repository.md).

Time (issue 13, point 2): every age the repository judges is storage time: ``now()`` is the storage's clock
(local: the mtime of a file just created; S3: the ``Date`` of a response), carried forward by the monotonic
clock between measurements, so a proxy's wall clock (``clock``, injectable for tests) never decides whether
a chunk, a session or a lock is old. ``step(name)`` calls ``on_step`` (None by default) at the protocol's
step boundaries so tests can interleave writers, prune and GC deterministically.

The stores themselves: local_store.py (a directory) and s3_store.py (an S3-compatible bucket). This module
holds what they share (ObjectInfo, LockHeld, Heartbeat, storage time and the sweeping marker in _StoreClock).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import errno
import json
import os
import socket
import threading
import time

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError


class ObjectInfo:
    """What a store knows about one object: size, modification time (storage time), Object Lock retention (epoch s)
    and, on S3, its ETag."""

    def __init__(self, key, size, mtime, retain_until=None, etag=None):
        self.key = key
        self.size = size
        self.mtime = mtime
        self.retain_until = retain_until
        self.etag = etag


class LockHeld(Exception):
    """Raised inside the stores when an exclusive lock is taken by someone else."""


CLOCK_RESYNC_SECONDS = 10 * 60      # storage time is measured again after this long (monotonic drift is tiny)


def _system_clock():
    """The proxy's wall clock (looked up at call time, so a test can skew the ``time`` module the stores see)."""
    return time.time()


def _system_sleep(seconds):
    time.sleep(seconds)


class Heartbeat:
    """Keep an object alive while it is held: ``renew()`` every ``interval`` s on a daemon thread.

    ``renew`` returns False when the object is gone or no longer ours (it must never re-create it): the heartbeat
    then stops and ``lost`` is set. ``fresh(margin)`` says whether others still see the object as live: its last
    successful renewal started less than ``ttl - margin`` s ago (monotonic time, which also runs while the process
    is stopped, so a holder woken from SIGSTOP knows it may have been taken over)."""

    def __init__(self, renew, interval, ttl, name="heartbeat"):
        self._renew = renew
        self.interval = interval
        self.ttl = ttl
        self.lost = False
        self.renewed_at = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self):
        started = time.monotonic()
        try:
            alive = self._renew()
        except Exception:    # pylint: disable=broad-except
            return          # a missed renewal is harmless unless it lasts the ttl; fresh() tells when it matters
        if alive:
            self.renewed_at = started
        else:
            self.lost = True
            self._stop.set()

    def fresh(self, margin=0):
        return not self.lost and time.monotonic() - self.renewed_at < self.ttl - margin

    def stop(self):
        self._stop.set()


SWEEP_MARKER_KEY = "locks/sweeping"
SWEEP_TTL_SECONDS = 2 * 60          # a sweeping marker not renewed for this long belongs to a GC that died
SWEEP_RENEW_SECONDS = 20
SWEEP_FRESH_MARGIN_SECONDS = 30     # GC stops deleting when its last renewal is older than the ttl minus this


class _StoreClock:
    """Storage time, the injectable proxy clock, the step hook and the sweeping marker, shared by both stores."""

    @contextlib.contextmanager
    def sweeping(self, purpose):
        """Hold the sweeping marker (``locks/sweeping``) while GC deletes: writers that find it live wait before they
        make any dedup decision. Renewed by a heartbeat; ``fresh()`` of the yielded Heartbeat says whether writers
        still see it (GC stops deleting when it does not)."""
        body = json.dumps({"owner": _owner_text(), "purpose": purpose, "since": self.clock(), "ttl": SWEEP_TTL_SECONDS}).encode()
        try:
            etag = self.put(SWEEP_MARKER_KEY, body)
        except RepositoryError as err:
            if self.kind != "local" or err.extra.get("errno") not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # A full local disk: GC (which frees space) must still run. No writer can start meanwhile (its marker
            # cannot be written either), a running one is listed and defers the sweep, and the chunk flock still makes
            # a writer's check-and-touch and GC's re-check-and-delete exclude each other.
            unmarked = Heartbeat(lambda: True, interval=SWEEP_RENEW_SECONDS, ttl=SWEEP_TTL_SECONDS, name="sweep-heartbeat")
            try:
                yield unmarked
            finally:
                unmarked.stop()
            return
        heartbeat = Heartbeat(lambda: self.renew(SWEEP_MARKER_KEY, body, etag), interval=SWEEP_RENEW_SECONDS,
                              ttl=SWEEP_TTL_SECONDS, name="sweep-heartbeat")
        try:
            yield heartbeat
        finally:
            heartbeat.stop()
            self.delete(SWEEP_MARKER_KEY)

    def sweep_in_progress(self):
        """Who is sweeping (text), if a live sweeping marker exists; None otherwise (none, or its GC died)."""
        info = self.stat(SWEEP_MARKER_KEY)
        if info is None or info.mtime + SWEEP_TTL_SECONDS < self.now() or self._sweeper_gone():
            return None
        try:
            fields = json.loads(self.get(SWEEP_MARKER_KEY))
            return "%s (%s)" % (fields.get("owner", "unknown"), fields.get("purpose", "gc"))
        except (KeyError, ValueError, AttributeError, RepositoryError):
            return "unknown"

    def _sweeper_gone(self):
        """True when the GC that wrote a live-looking sweeping marker is known to be dead (local: its flock is free)."""
        return False

    def _init_clock(self):
        self.clock = _system_clock      # the proxy's wall clock: notes for people only, never an age
        self.sleep = _system_sleep
        self.on_step = None
        self._measured = None           # (storage time, monotonic time) of the last measurement

    def step(self, name, **facts):
        """A step boundary of the writer/GC/lock protocol: tests hook ``on_step`` to interleave proxies."""
        if self.on_step is not None:
            self.on_step(name, **facts)

    def sync_clock(self):
        """Measure the storage's clock now (one round trip) and return it."""
        before = time.monotonic()
        storage = self._storage_time()
        after = time.monotonic()
        self._measured = (storage, (before + after) / 2.0)
        return storage + (after - self._measured[1])

    def now(self):
        """The storage's time (epoch s): the last measurement carried forward by the monotonic clock."""
        measured = self._measured
        if measured is None or time.monotonic() - measured[1] > CLOCK_RESYNC_SECONDS:
            return self.sync_clock()
        return measured[0] + (time.monotonic() - measured[1])


def open_store(location, s3_options=None, create=False):
    """The store for ``location``: ``s3://bucket/prefix`` or a local directory path."""
    # Imported here, not at the top: both store modules import their base class from this one.
    if str(location).startswith("s3://"):
        from ansible_collections.hyperv.backup.plugins.module_utils.repository.s3_store import S3Store
        return S3Store(location, s3_options or {})
    if s3_options:
        raise RepositoryError("S3 options were given but the repository location %s is not an s3:// URL." % location,
                              hint="Use s3://bucket/prefix as the location, or drop the S3 options.")
    from ansible_collections.hyperv.backup.plugins.module_utils.repository.local_store import LocalStore
    return LocalStore(location, create=create)


def _owner_text():
    return "%s pid %d" % (socket.gethostname(), os.getpid())
