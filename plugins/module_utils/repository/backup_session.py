# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writing and reading one backup: ``BackupSession`` (in progress until ``commit``), ``DiskWriter`` and ``DiskReader``.

A session registers a marker (``sessions/<backup id>``, heartbeat by mtime) that protects its chunks from GC while
it lives; chunks are written first, then the manifests, then the record: only the record makes a backup visible.

GC and writers exclude each other by "write your marker, then look for the other's" (issue 13, point 2): a writer
writes its marker, then waits while a live sweeping marker exists, before any dedup decision; GC writes the
sweeping marker, then lists the sessions and deletes nothing while one is live. At least one of the two sees the
other. A writer whose marker was removed as stale (paused past its timeout) refuses to commit, checked before the
manifests and again after the record.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import concurrent.futures
import os
import re
import threading
import time
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import chunk_index
from ansible_collections.hyperv.backup.plugins.module_utils.repository.backup_record import (
    BackupRecord, DiskManifest, chunk_key, iso, json_bytes, utc_now,
)
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_crypto import (
    KIND_BACKUP, KIND_CHUNK, KIND_MANIFEST, KIND_STATUS,
)
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_store import SWEEP_TTL_SECONDS

SESSION_HEARTBEAT_SECONDS = 60
SESSION_TIMEOUT_SECONDS = 15 * 60   # a marker not refreshed for this long belongs to a dead writer
TOUCH_AFTER_SECONDS = 10 * 60       # a deduplicated chunk older than this is touched; GC keeps this margin
SWEEP_WAIT_SECONDS = 30 * 60        # how long a new backup waits for a running GC sweep before it gives up
SWEEP_POLL_SECONDS = 2
REFERENCE_HEAD_LIMIT = 1000         # at commit, more chunks to check than this: one listing instead of one HEAD each
REFERENCE_BATCH = 16384             # ids checked at a time at commit (memory stays flat whatever the disk size)
KNOWN_CHUNKS_LIMIT = 65536          # ids a session remembers as stored or touched (~8 MiB)


class BackupSession:
    """One backup of one VM in progress: disks are added, chunks written; ``commit`` makes it visible."""

    def __init__(self, repo, vm_id, vm_name, host, method, backup_type, parent_backup_id, consistency, metadata, lineage=None):
        self.repo = repo
        started = utc_now()
        self.backup_id = "%s-%s" % (started.strftime("%Y%m%dT%H%M%SZ"), uuid.uuid4().hex[:12])
        # started_epoch is storage time (informational: GC judges a session by its marker's own mtime only).
        self.values = {"backup_id": self.backup_id, "vm_id": vm_id, "vm_name": vm_name, "host": host, "method": method,
                       "lineage": lineage or vm_id,
                       "type": backup_type, "consistency": consistency, "parent_backup_id": parent_backup_id,
                       "metadata": dict(metadata or {}), "created": iso(started), "started_epoch": repo.store.now(),
                       "timeout": SESSION_TIMEOUT_SECONDS, "pid": os.getpid()}
        self.started = started
        self._started_monotonic = time.monotonic()
        self.disks = []
        # ids this session stored or touched lately: a chunk seen again needs no HEAD. Bounded (a 64 TiB full backup
        # has 64 Mi chunks); one that fell out is looked up again, which is only slower.
        self.known_chunks = collections.OrderedDict()
        self.expired = False            # set when a heartbeat finds the marker gone (GC reaped it as stale)
        self._lock = threading.Lock()
        self._pool = None
        self._slots = threading.BoundedSemaphore(repo.workers * 2)
        self.retain_until = repo._retain_until()
        self.finished = False
        self._marker = "sessions/%s" % self.backup_id
        repo._put_sealed(KIND_STATUS, self._marker, json_bytes(self.values))
        # What a heartbeat rewrites (S3: the same bytes under If-Match, which keeps the ETag and never re-creates a
        # marker GC has removed).
        self._marker_etag = getattr(repo.store.stat(self._marker), "etag", None)
        self._marker_data = repo.store.get(self._marker) if self._marker_etag else None
        repo.store.step("session.marker_written", backup_id=self.backup_id)
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="backup-heartbeat", daemon=True)
        self._heartbeat.start()
        try:
            self._wait_for_sweep()
        except BaseException:
            self.abort()
            raise

    def _beat(self):
        interval = min(SESSION_HEARTBEAT_SECONDS, self.values["timeout"] / 3.0)
        while not self._stop.wait(interval):
            self.heartbeat()

    def heartbeat(self):
        """One heartbeat: refresh the marker's mtime. False (and ``expired``) once the marker is gone: GC removed it as
        stale, and this session can no longer commit."""
        try:
            alive = self.repo.store.renew(self._marker, self._marker_data, self._marker_etag)
        except Exception:    # pylint: disable=broad-except
            return True         # a missed heartbeat is harmless unless it lasts SESSION_TIMEOUT_SECONDS
        if not alive:
            self.expired = True
            self._stop.set()
        return alive

    def _wait_for_sweep(self):
        """Wait (bounded) while a GC sweep is deleting chunks: our marker is written, so a sweep that starts from now
        on sees us and deletes nothing; one that started before did not see us, and we must not deduplicate against
        chunks it may be deleting."""
        store = self.repo.store
        limit = getattr(self.repo, "sweep_wait_seconds", SWEEP_WAIT_SECONDS)
        waited_from = time.monotonic()
        while True:
            holder = store.sweep_in_progress()
            if holder is None:
                store.step("session.sweep_checked", backup_id=self.backup_id)
                return
            if time.monotonic() - waited_from >= limit:
                raise RepositoryError(
                    "Backup %s cannot start: garbage collection is deleting chunks in %s (%s) and did not finish within %d s."
                    % (self.backup_id, self.repo.location, holder, limit),
                    hint="Run the backup again when that prune/GC has finished, or schedule prune and GC outside the backup "
                         "window. A GC that died stops blocking backups %d s after its last heartbeat (at once on a "
                         "local repository)." % SWEEP_TTL_SECONDS, backup_id=self.backup_id)
            store.step("session.waiting_for_sweep", backup_id=self.backup_id)
            store.sleep(SWEEP_POLL_SECONDS)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.finished:
            self.abort()
        return False

    @property
    def pool(self):
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.repo.workers, thread_name_prefix="chunk")
            return self._pool

    def add_disk(self, disk_key, virtual_size, source_path=None, rct_id=None, metadata=None, base=None):
        """A disk of this backup. ``base``: the parent's DiskManifest of the same size, whose entries the new index starts
        from (RCT incrementals: only changed chunks are put; the rest is shared page by page)."""
        if any(d.disk_key == disk_key for d in self.disks):
            raise RepositoryError("Disk %r was added twice to backup %s." % (disk_key, self.backup_id))
        if not isinstance(virtual_size, int) or virtual_size <= 0:
            raise RepositoryError("Disk %r: virtual_size must be a positive number of bytes, got %r." % (disk_key, virtual_size))
        disk = DiskWriter(self, len(self.disks), disk_key, virtual_size, source_path, rct_id, metadata or {}, base)
        self.disks.append(disk)
        return disk

    def attach(self, name, data):
        """Store a small per-backup object (KB to a few MB, e.g. the VM configuration files) beside the manifests.

        It is sealed like a manifest (compressed, encrypted), kept as long as the backup (same prefix, same Object
        Lock retention), deleted with it by prune, and removed by GC if the backup is never committed.
        """
        check_attachment_name(name)
        self.repo._put_sealed(KIND_MANIFEST, attachment_key(self.backup_id, name), bytes(data), self.retain_until)
        return attachment_key(self.backup_id, name)

    def _store_chunk(self, data):
        """Return (chunk id, stored compressed bytes or 0 if it was already there)."""
        repo = self.repo
        cid = repo.keys.chunk_id(data)
        with self._lock:
            if cid in self.known_chunks:
                self.known_chunks.move_to_end(cid)
                return cid, 0, "dedup"
        key = chunk_key(cid)
        with repo.store.chunk_guard():
            info = repo.store.stat(key)
            repo.store.step("chunk.checked", key=key, exists=info is not None)
            if info is not None:
                # Both times are the storage's: the chunk's mtime and the storage's now (never this proxy's clock).
                fresh = info.mtime >= repo.store.now() - TOUCH_AFTER_SECONDS
                locked = self.retain_until is None or (info.retain_until or 0) >= self.retain_until
                if (fresh and locked) or repo.store.touch(key, self.retain_until):
                    self._remember(cid)
                    return cid, 0, "dedup"
        parts = repo.keys.seal_parts(KIND_CHUNK, key, data, repo.compressor())
        repo.store.put(key, parts, retain_until=self.retain_until, durable=False)   # synced in batch by commit
        self._remember(cid)
        return cid, sum(len(part) for part in parts), "new"

    def _remember(self, cid):
        with self._lock:
            self.known_chunks[cid] = True
            if len(self.known_chunks) > KNOWN_CHUNKS_LIMIT:
                self.known_chunks.popitem(last=False)

    def abort(self):
        """Give up: nothing becomes visible; chunks already written are left for GC."""
        if self.finished:
            return
        self.finished = True
        self._shutdown()
        self.repo.store.delete(self._marker)

    def _shutdown(self):
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def commit(self):
        """Wait for every chunk, write manifests durably, then the backup record: only now is it visible."""
        if self.finished:
            raise RepositoryError("Backup %s was already committed or aborted." % self.backup_id)
        try:
            for disk in self.disks:
                disk.wait()
            self._check_session()
            for disk in self.disks:
                disk.finish_index()
            self._check_references()
            repo = self.repo
            repo.store.flush()                      # chunk renames durable before anything points at them
            completed = utc_now()
            disks = []
            for disk in self.disks:
                manifest = disk.manifest(completed)
                repo._put_sealed(KIND_MANIFEST, manifest_key(self.backup_id, disk.ordinal), manifest.encode(), self.retain_until)
                disks.append(disk.summary())
            repo.store.flush()
            record = dict(self.values)
            for transient in ("started_epoch", "timeout", "pid"):
                record.pop(transient, None)
            elapsed = max(time.monotonic() - self._started_monotonic, 1e-9)
            totals = dict((k, sum(d.stats[k] for d in self.disks)) for k in DiskWriter.COUNTERS)
            totals.update(duration_seconds=round(elapsed, 3), bytes_per_second=int(totals["bytes_read"] / elapsed))
            # The sequence is drawn last, after every chunk and manifest is durable: it orders this backup after
            # every backup committed before it, whatever the clocks say (issue 12, point 6).
            record.update(completed=iso(completed), disks=disks, stats=totals, state="complete",
                          retain_until=self.retain_until, format=repo.config["version"], sequence=repo.next_sequence())
            repo._put_sealed(KIND_BACKUP, "backups/%s" % self.backup_id, json_bytes(record), self.retain_until)
            repo.store.flush()
            repo.store.step("commit.record_written", backup_id=self.backup_id)
            # Paused between the check above and the record (SIGSTOP)? A GC that reaped our marker meanwhile read the
            # records before ours and may have swept our chunks: take the record back. If the marker is still here,
            # any GC that reaps it later reads the records after ours, and keeps what it references.
            if self.expired or repo.store.stat(self._marker) is None:
                repo.store.delete("backups/%s" % self.backup_id)
                repo.store.flush()
                raise self._expired_error()
        except BaseException:
            self.abort()
            raise
        self.finished = True
        self._shutdown()
        self.repo.store.delete(self._marker)
        return BackupRecord(record)

    def _expired_error(self):
        return RepositoryError(
            "Backup %s cannot be committed: session expired (its marker %s was removed as stale after more than %d minutes "
            "without a heartbeat, e.g. while the process was paused); GC may have removed chunks it wrote." % (
                self.backup_id, self._marker, self.values["timeout"] // 60), backup_id=self.backup_id,
            hint="Run the backup again; nothing of this attempt is visible. Keep backup processes from being suspended "
                 "for that long (VM snapshots of the proxy, SIGSTOP).")

    def _check_session(self):
        """Our marker must still be ours: if GC removed it as stale, GC may have swept our chunks."""
        if self.expired or self.repo.store.stat(self._marker) is None:
            raise self._expired_error()

    def _check_batch(self, batch, missing, present):
        """Check ``batch`` (ids); append the missing ones to ``missing``; returns the listing of chunks if one was made."""
        repo = self.repo
        if not batch:
            return present
        ids = sorted(batch)
        if self.retain_until is not None:
            # touch returns False for a missing chunk
            kept = list(self.pool.map(lambda cid: repo.store.touch(chunk_key(cid), self.retain_until), ids))
            missing.extend(cid for cid, there in zip(ids, kept) if not there)
        elif present is not None or (repo.store.kind == "s3" and len(ids) > REFERENCE_HEAD_LIMIT):
            if present is None:
                present = set(info.key.rsplit("/", 1)[1] for info in repo.store.list("chunks/"))
            missing.extend(cid for cid in ids if cid not in present)
        else:
            exists = list(self.pool.map(lambda cid: repo.store.stat(chunk_key(cid)) is not None, ids))
            missing.extend(cid for cid, there in zip(ids, exists) if not there)
        return present

    def _check_references(self):
        """Refuse to commit a backup that references a chunk which is not there.

        Chunks this session stored, or found and touched, are protected by its live marker (checked just before).
        The other entries of the leaf pages this session changed (taken from the parent) are checked now: one HEAD
        each, or one listing of the chunks when there are many. Pages shared whole with the parent were checked when
        the parent was committed, and GC cannot take them while this session lives (verify finds damage done since).
        With Object Lock every referenced chunk and page is touched, which also extends its retention to this
        backup's (issue 13, point 3): a walk of the whole index, as long as the data it references.
        """
        everything = self.retain_until is not None
        missing = []
        present = None                  # S3 without Object Lock, many ids: one listing instead of a HEAD each
        for disk in self.disks:
            batch = set()
            try:
                for cid in disk.references(everything):
                    batch.add(cid)
                    if len(batch) >= REFERENCE_BATCH:
                        present = self._check_batch(batch, missing, present)
                        batch = set()
            except chunk_index.IndexDamaged as err:
                raise disk._parent_damaged(err)
            present = self._check_batch(batch, missing, present)
        if missing:
            raise RepositoryError("Backup %s cannot be committed: %d chunk(s) it references are missing (first: %s); a "
                                  "concurrent prune/GC or damaged storage removed them." % (self.backup_id, len(missing), missing[0]),
                                  hint="Run the backup again (as a full backup if its parent was pruned), and run verify on "
                                       "the repository: backups that share these chunks are damaged too.", backup_id=self.backup_id)


def manifest_key(backup_id, ordinal):
    return "manifests/%s/%d" % (backup_id, ordinal)


ATTACHMENT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")     # never a number: those are the disk manifests


def attachment_key(backup_id, name):
    return "manifests/%s/%s" % (backup_id, name)


def check_attachment_name(name):
    if not isinstance(name, str) or not ATTACHMENT_NAME.match(name):
        raise RepositoryError("%r is not a backup attachment name." % (name,))


class DiskWriter:
    """The chunks of one disk in a backup session, and its chunk index (chunk_index.py). ``put_chunk`` is thread-safe."""

    COUNTERS = ("chunks", "zero_chunks", "new_chunks", "dedup_chunks", "reused_chunks", "bytes_read", "new_bytes",
                "stored_bytes", "referenced_bytes")

    def __init__(self, session, ordinal, disk_key, virtual_size, source_path, rct_id, metadata, base=None):
        self.session = session
        self.ordinal = ordinal
        self.disk_key = disk_key
        self.virtual_size = virtual_size
        self.source_path = source_path
        self.rct_id = rct_id
        self.metadata = dict(metadata)
        self.chunk_size = session.repo.chunk_size
        self.chunk_count = (virtual_size + self.chunk_size - 1) // self.chunk_size
        if base is not None and (base.chunk_size != self.chunk_size or base.virtual_size != virtual_size):
            raise RepositoryError("Disk %r: the parent's index (%d bytes in chunks of %d) cannot be the base of a disk of %d bytes "
                                  "in chunks of %d." % (disk_key, base.virtual_size, base.chunk_size, virtual_size, self.chunk_size),
                                  hint="Take a full backup of this disk.")
        self.base = base
        try:
            self._index = chunk_index.IndexBuilder(self.chunk_count, self._store_page, self._fetch_page,
                                                   base=base.index if base is not None else None)
        except chunk_index.IndexDamaged as err:
            raise self._parent_damaged(err)
        self._own = {}                      # leaf -> bitmaps of the entries this session put / set (the rest came from the parent)
        # counts of the index kept as entries change (a walk of the finished tree would cost as much as its data): the
        # parent's to start with, from its manifest
        parent_stats = (base.header.get("stats") or {}) if base is not None else {}
        self._inherited = (int(parent_stats.get("chunks") or 0), int(parent_stats.get("referenced_bytes") or 0))
        self._live = list(self._inherited)
        self._inherited_replaced = 0
        self._entries_set = 0
        self._stored_pages = set()          # index pages this session stored (the others are the parent's)
        self.root = None
        self._finished = False
        self._counts = dict((k, 0) for k in self.COUNTERS)
        self._lock = threading.Lock()
        self._futures = []
        self._zero = bytes(self.chunk_size)

    def _fetch_page(self, page_id):
        try:
            return self.session.repo.fetch_page(page_id)
        except KeyError:
            raise self._parent_damaged(chunk_index.IndexDamaged(page_id, "is missing"))
        except ValueError as err:
            raise self._parent_damaged(chunk_index.IndexDamaged(page_id, "is corrupt (%s)" % err))

    def _parent_damaged(self, err):
        return RepositoryError("Backup %s, disk %r: %s; the index this backup builds on cannot be read." % (
            self.session.backup_id, self.disk_key, err),
            hint="Run verify on the repository; take a full backup of this VM (hyperv_backup backup_type: full).",
            backup_id=self.session.backup_id, disk_key=self.disk_key, chunk_id=err.page_id)

    def _store_page(self, data):
        cid, stored, outcome = self.session._store_chunk(data)
        self._stored_pages.add(cid)
        if outcome == "new":
            self._counts["stored_bytes"] += stored        # called with self._lock held (set -> eviction, or finish)
        return cid

    def _check_index(self, index):
        if not isinstance(index, int) or not 0 <= index < self.chunk_count:
            raise RepositoryError("Disk %r: chunk index %r is outside 0..%d." % (self.disk_key, index, self.chunk_count - 1))
        if self._finished:
            raise RepositoryError("Disk %r: its index is already sealed; no chunk can be added." % self.disk_key)

    def expected_length(self, index):
        return min(self.chunk_size, self.virtual_size - index * self.chunk_size)

    def _set(self, index, cid, own):
        """Entry ``index`` := ``cid``; keeps the counts of the index up to date without walking it (self._lock held)."""
        old = self._index.get(index)
        self._index.set(index, cid)
        leaf, entry = divmod(index, chunk_index.FANOUT)
        bitmaps = self._own.get(leaf)
        if bitmaps is None:         # [entries put by this session, entries set at all by this session]
            bitmaps = self._own[leaf] = (bytearray(chunk_index.FANOUT // 8), bytearray(chunk_index.FANOUT // 8))
        own_bits, set_bits = bitmaps
        byte, bit = entry // 8, 1 << (entry % 8)
        if not set_bits[byte] & bit:
            self._entries_set += 1
            if old:
                self._inherited_replaced += 1        # a chunk of the parent this backup no longer shares
        set_bits[byte] |= bit
        if own:
            own_bits[byte] |= bit
        else:
            own_bits[byte] &= ~bit & 0xFF
        length = self.expected_length(index)
        self._live[0] += (1 if cid else 0) - (1 if old else 0)
        self._live[1] += (length if cid else 0) - (length if old else 0)

    def _is_own(self, index):
        leaf, entry = divmod(index, chunk_index.FANOUT)
        bitmaps = self._own.get(leaf)
        return bitmaps is not None and bool(bitmaps[0][entry // 8] & (1 << (entry % 8)))

    def put_chunk(self, index, data):
        """Store the bytes at offset index*chunk_size (exactly one chunk; the last may be short)."""
        self._check_index(index)
        if len(data) != self.expected_length(index):
            raise RepositoryError("Disk %r: chunk %d has %d bytes; expected %d (chunk_size %d, virtual size %d)." % (
                self.disk_key, index, len(data), self.expected_length(index), self.chunk_size, self.virtual_size))
        if isinstance(data, memoryview):
            data = data.tobytes()
        zero = self._zero if len(data) == self.chunk_size else bytes(len(data))
        if data == zero:         # memcmp: ~0.15 ms per 4 MiB zero chunk, exits early on data
            cid, stored, outcome = None, 0, "zero"
        else:
            cid, stored, outcome = self.session._store_chunk(data)
        with self._lock:
            self._set(index, cid, True)
            counts = self._counts
            counts["bytes_read"] += len(data)
            counts[outcome + "_chunks"] += 1
            if outcome == "new":
                counts["new_bytes"] += len(data)
                counts["stored_bytes"] += stored
        return cid

    def put_chunk_async(self, index, data):
        """Queue ``put_chunk`` on the session's thread pool; blocks while 2x workers chunks are in flight."""
        session = self.session
        session._slots.acquire()
        try:
            future = session.pool.submit(self.put_chunk, index, data)
        except BaseException:
            session._slots.release()
            raise
        future.add_done_callback(lambda _f: session._slots.release())
        with self._lock:
            self._futures.append(future)
        return future

    def wait(self):
        """Wait for the queued chunks; raise the first error."""
        with self._lock:
            futures, self._futures = self._futures, []
        for future in futures:
            future.result()

    def reuse_chunk(self, index, parent_disk_manifest):
        """Take the parent's chunk reference for this unchanged chunk (zeros past the parent's end).

        Needed only without a ``base`` (VSS incrementals compare chunk by chunk); with one, unchanged chunks need no call."""
        self._check_index(index)
        parent = parent_disk_manifest
        if parent.chunk_size != self.chunk_size:
            raise RepositoryError("Disk %r: parent manifest has chunk_size %d, this repository uses %d." % (
                self.disk_key, parent.chunk_size, self.chunk_size))
        cid = parent.chunk_id(index) if index < parent.chunk_count else None
        if cid and index == parent.chunk_count - 1 and parent.chunk_length(index) != self.expected_length(index):
            raise RepositoryError("Disk %r: the last chunk of the parent is short (the disk grew); read chunk %d again." % (
                self.disk_key, index))
        with self._lock:
            self._set(index, cid, False)
            self._counts["reused_chunks" if cid else "zero_chunks"] += 1
        return cid

    def chunk_id(self, index):
        """The entry of chunk ``index`` as it stands (hex id or None)."""
        with self._lock:
            return self._index.get(index)

    def finish_index(self):
        """Store the changed index pages and count what the index references; called by commit after every chunk."""
        with self._lock:
            if self._finished:
                return self.root
            self.root = self._index.finish()
            self._finished = True
            counts = self._counts
            if self.base is not None:
                # as if every chunk not put had been taken from the parent: non-zero ones are reused, the rest zeros
                reused = self._inherited[0] - self._inherited_replaced
                counts["reused_chunks"] += reused
                counts["zero_chunks"] += self.chunk_count - self._entries_set - reused
            counts["chunks"], counts["referenced_bytes"] = self._live
            return self.root

    def reader(self):
        """The finished index, for reading (after ``finish_index``)."""
        return chunk_index.IndexReader(self._fetch_page, self.chunk_count, self.root)

    def references(self, everything=False):
        """Yield the ids (hex) of the finished index that commit must check, the ones this session put left out: the
        entries of the leaves it changed that came from the parent, or (``everything``) every chunk and page of the
        tree that this session did not store. An id may come twice (the same data at two offsets)."""
        reader = self.reader()
        if everything:
            for index, cid in reader.iter_chunks():
                if not self._is_own(index):
                    yield cid
            yield from reader.page_ids() - self._stored_pages
            return
        for leaf in sorted(self._own):
            data = reader.leaf(leaf)
            for pos in chunk_index.nonzero_entries(data):
                if not self._is_own(leaf * chunk_index.FANOUT + pos // chunk_index.ENTRY_BYTES):
                    yield data[pos:pos + chunk_index.ENTRY_BYTES].hex()

    @property
    def stats(self):
        with self._lock:
            return dict(self._counts)

    def manifest(self, completed):
        values = self.session.values
        header = {"format": self.session.repo.config["version"], "backup_id": values["backup_id"], "vm_id": values["vm_id"], "vm_name": values["vm_name"],
                  "host": values["host"], "disk_key": self.disk_key, "virtual_size": self.virtual_size, "chunk_size": self.chunk_size,
                  "chunk_count": self.chunk_count, "source_path": self.source_path, "rct_id": self.rct_id,
                  "method": values["method"], "type": values["type"], "consistency": values["consistency"],
                  "parent_backup_id": values["parent_backup_id"], "created": values["created"], "completed": iso(completed),
                  "metadata": self.metadata, "stats": self.stats, "index": DiskManifest.index_header(self.finish_index(), self.chunk_count)}
        return DiskManifest(header, self.session.repo.fetch_page)

    def summary(self):
        out = {"disk_key": self.disk_key, "manifest": manifest_key(self.session.backup_id, self.ordinal),
               "virtual_size": self.virtual_size, "chunk_size": self.chunk_size, "source_path": self.source_path,
               "rct_id": self.rct_id, "metadata": self.metadata}
        stats = self.stats
        out.update(chunk_count=stats["chunks"], stored_bytes=stats["stored_bytes"], referenced_bytes=stats["referenced_bytes"],
                   new_chunks=stats["new_chunks"], reused_chunks=stats["reused_chunks"], dedup_chunks=stats["dedup_chunks"],
                   zero_chunks=self.chunk_count - stats["chunks"])
        return out
