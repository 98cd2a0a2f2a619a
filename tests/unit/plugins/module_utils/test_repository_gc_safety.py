"""GC never deletes a chunk that a committed backup needs (issue 13, point 2), on a local directory and on S3.

Each finding is replayed deterministically: the test drives the interleaving of a writer (a second proxy: its own
``Repository`` object) and GC by hooking the exact step between which the race happened, and time passes by moving
the storage times of objects back (storage_age.age), never by sleeping. The rules they check are in
docs/repository.md, "Crash safety and concurrency".
"""
import contextlib
import fcntl
import threading
import time

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository, chunk_key
from ansible_collections.hyperv.backup.plugins.module_utils.repository.retention import RetentionPolicy

from storage_age import age, skewed_proxy_clock
from test_repository import CHUNK, backend, backend_options, image, new_repo, read_all, s3_server, write_backup  # noqa: F401  pylint: disable=unused-import

GRACE = 15 * 60          # the default gc grace, and the enforced minimum (touch threshold 10 min + 5 min skew margin)
LONG_AGO = 2 * 3600      # older than the grace, the touch threshold and a session's timeout


def other_proxy(repo):
    """The same repository opened by another proxy (own store, own client, own clock)."""
    options = backend_options(repo) if repo.store.kind == "s3" else None
    return Repository.open(repo.location, s3_options=options)


class LateWriter:
    """A writer on another proxy, run in a thread in two steps: ``start`` (begin + every chunk, i.e. all its dedup
    decisions) and ``finish`` (commit). ``busy`` is set once it is either done with its chunks or waiting for a sweep
    to end (it then sleeps through ``store.sleep``)."""

    def __init__(self, repo, data, vm_name="late"):
        self.repo, self.data, self.vm_name = repo, data, vm_name
        self.busy, self.go_on = threading.Event(), threading.Event()
        self.record, self.error = None, None
        real_sleep = time.sleep

        def sleep(seconds):
            self.busy.set()
            real_sleep(min(seconds, 0.05))
        repo.store.sleep = sleep
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            with self.repo.begin_backup(vm_id="vm-late", vm_name=self.vm_name, host="hv9", method="rct", backup_type="full") as session:
                disk = session.add_disk(disk_key="disk0", virtual_size=len(self.data))
                for index in range(disk.chunk_count):
                    disk.put_chunk(index, self.data[index * CHUNK:(index + 1) * CHUNK])
                self.busy.set()
                self.go_on.wait(60)
                self.record = session.commit()
        except Exception as err:     # pylint: disable=broad-except
            self.error = err
        finally:
            self.busy.set()

    def start(self, timeout=None):
        self.thread.start()
        # A writer blocked by the local chunk guard (flock, held by GC's sweep) neither finishes nor sleeps: then
        # the timeout lets GC go on, which releases the guard.
        self.busy.wait(timeout)

    def finish(self):
        self.go_on.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.record


def assert_restores(repo, record, data):
    report = repo.verify()
    assert report["ok"], report["damaged_backups"]
    assert read_all(repo, record.backup_id) == data


def pruned_backup(repo, data):
    """A committed backup whose record is then removed (as prune does): its chunks are unreferenced."""
    first = write_backup(repo, data)
    repo.store.delete("backups/%s" % first.backup_id)
    return first


# -- (a) a grace under the touch threshold ---------------------------------------------------------------------

def test_a_gc_grace_below_the_touch_threshold_plus_skew_margin_is_refused(backend):
    repo = new_repo(backend)
    write_backup(repo, image(300, chunks=2))
    for grace in (0, 300, 599, GRACE - 1):
        with pytest.raises(RepositoryError, match="at least 15 minutes") as caught:
            repo.gc(grace_seconds=grace)
        assert "gc_grace_minutes" in caught.value.hint
        with pytest.raises(RepositoryError, match="at least 15 minutes"):
            repo.prune(RetentionPolicy(keep_last=1), grace_seconds=grace)
    assert len(repo.list_backups()) == 1


@pytest.mark.parametrize("grace", [0, GRACE])
def test_a_writer_that_starts_after_gc_listed_the_sessions_loses_nothing(backend, grace):
    """GC lists the sessions; then a writer starts and deduplicates against unreferenced chunks; then GC sweeps."""
    repo = new_repo(backend)
    data = image(301, chunks=4, zero_every=99)
    pruned_backup(repo, data)
    if grace:
        age(repo.store, "chunks/", LONG_AGO)
        age(repo.store, "manifests/", LONG_AGO)
    writer = LateWriter(other_proxy(repo), data)
    real_sessions = repo._sessions

    def sessions_then_the_writer_starts():
        listed = real_sessions()
        if not writer.thread.is_alive() and not writer.busy.is_set():
            writer.start(timeout=5)
        return listed
    repo._sessions = sessions_then_the_writer_starts
    try:
        report = repo.gc(grace_seconds=grace)
    except RepositoryError as err:
        assert grace < GRACE and "at least 15 minutes" in err.message      # a grace that cannot be safe is refused
        return
    finally:
        repo._sessions = real_sessions
    record = writer.finish()
    assert report["chunks_removed"] >= 0
    assert_restores(repo, record, data)


# -- (b) the writer's clock is off --------------------------------------------------------------------------

@pytest.mark.parametrize("skew", [700, 15 * 60, -15 * 60])
def test_b_writer_clock_skew_does_not_lose_its_new_chunks(backend, skew):
    """The writer's clock is off by ``skew`` s; its backup has been running for 20 min (its chunks are that old,
    its marker's heartbeat is fresh); GC at the default grace runs meanwhile, with a correct clock."""
    repo = new_repo(backend)
    writer = other_proxy(repo)
    data = image(302, chunks=4, zero_every=99)
    with skewed_proxy_clock(skew):
        session = writer.begin_backup(vm_id="vm-s", vm_name="skewed", host="hv2", method="rct", backup_type="full")
        disk = session.add_disk(disk_key="disk0", virtual_size=len(data))
        for index in range(disk.chunk_count):
            disk.put_chunk(index, data[index * CHUNK:(index + 1) * CHUNK])
    age(repo.store, "chunks/", 20 * 60)
    report = repo.gc(grace_seconds=GRACE)
    assert report["live_sessions"] == 1 and report["chunks_removed"] == 0
    with skewed_proxy_clock(skew):
        record = session.commit()
    assert_restores(repo, record, data)


# -- (c) a writer's touch between GC's re-check and its delete ----------------------------------------------------

def test_c_touch_between_the_recheck_and_the_delete_loses_nothing(backend):
    repo = new_repo(backend)
    data = image(303, chunks=4, zero_every=99)
    pruned_backup(repo, data)
    age(repo.store, "chunks/", LONG_AGO)              # old: a candidate for GC, and a writer touches it when it dedups
    age(repo.store, "manifests/", LONG_AGO)
    writer = LateWriter(other_proxy(repo), data)
    real_delete = repo.store.delete

    def delete(key):
        if key.startswith("chunks/") and not writer.thread.is_alive() and not writer.busy.is_set():
            writer.start(timeout=5)                   # GC has re-checked this chunk; the writer dedups and touches it now
        return real_delete(key)
    repo.store.delete = delete
    try:
        repo.gc(grace_seconds=GRACE)
    finally:
        repo.store.delete = real_delete
    assert writer.busy.is_set()
    record = writer.finish()
    assert_restores(repo, record, data)


# -- commit checks --------------------------------------------------------------------------------------------

def test_commit_refuses_when_a_reused_chunk_is_gone(backend):
    """The parent is still there, the session is live, but a chunk the incremental takes from the parent is gone."""
    repo = new_repo(backend)
    base = image(304, chunks=5, zero_every=99)
    full = write_backup(repo, base)
    parent = repo.load_disk_manifest(full.backup_id, "disk0")
    with repo.begin_backup(vm_id="vm-1", vm_name="web01", host="hv1", method="rct", backup_type="incremental",
                           parent_backup_id=full.backup_id) as session:
        disk = session.add_disk(disk_key="disk0", virtual_size=len(base))
        for index in range(disk.chunk_count):
            disk.reuse_chunk(index, parent)
        repo.store.delete(chunk_key(parent.chunk_id(3)))        # lost behind the session's back
        with pytest.raises(RepositoryError, match="1 chunk") as caught:
            session.commit()
    assert parent.chunk_id(3) in caught.value.message
    assert [r.backup_id for r in repo.list_backups()] == [full.backup_id]


def test_session_reaped_as_stale_refuses_to_commit_and_its_heartbeat_does_not_revive_it(backend):
    """A writer paused past its session timeout (SIGSTOP): GC removes its marker and its chunks; when it wakes, its
    heartbeat must not bring the marker back and its commit must fail clearly."""
    repo = new_repo(backend)
    writer = other_proxy(repo)
    data = image(305, chunks=3, zero_every=99)
    session = writer.begin_backup(vm_id="vm-p", vm_name="paused", host="hv3", method="rct", backup_type="full")
    session._stop.set()                               # paused: no heartbeat
    disk = session.add_disk(disk_key="disk0", virtual_size=len(data))
    for index in range(disk.chunk_count):
        disk.put_chunk(index, data[index * CHUNK:(index + 1) * CHUNK])
    age(repo.store, "sessions/", LONG_AGO)
    age(repo.store, "chunks/", LONG_AGO)
    report = repo.gc(grace_seconds=GRACE)
    written = set(filter(None, (disk.chunk_id(i) for i in range(disk.chunk_count))))
    assert report["stale_sessions_removed"] == 1 and report["chunks_removed"] == len(written) == 3
    session.heartbeat()                               # wakes up: one beat
    assert repo.store.stat("sessions/%s" % session.backup_id) is None
    with pytest.raises(RepositoryError, match="session expired") as caught:
        session.commit()
    assert "run the backup again" in caught.value.hint.lower()
    assert repo.list_backups() == []


def test_marker_reaped_between_the_check_and_the_record_rolls_the_record_back(backend):
    """Paused after its last check: GC reaps the marker and sweeps the new chunks before the record is written."""
    repo = new_repo(backend)
    data = image(306, chunks=3, zero_every=99)
    session = repo.begin_backup(vm_id="vm-r", vm_name="racy", host="hv4", method="rct", backup_type="full")
    disk = session.add_disk(disk_key="disk0", virtual_size=len(data))
    for index in range(disk.chunk_count):
        disk.put_chunk(index, data[index * CHUNK:(index + 1) * CHUNK])
    real_put = repo.store.put

    def put(key, payload, **kwargs):
        if key == "backups/%s" % session.backup_id:
            repo.store.delete("sessions/%s" % session.backup_id)       # what a GC that found the marker stale does ...
            repo.store.delete(chunk_key(disk.chunk_id(0)))            # ... before it sweeps, not seeing this record
        return real_put(key, payload, **kwargs)
    repo.store.put = put
    try:
        with pytest.raises(RepositoryError, match="session expired"):
            session.commit()
    finally:
        repo.store.put = real_put
    assert repo.list_backups() == [] and repo.store.stat("backups/%s" % session.backup_id) is None
    assert repo.verify()["ok"]


# -- the sweep and the writers exclude each other ----------------------------------------------------------------

def test_gc_defers_deleting_while_a_writer_is_live_and_catches_up_after(backend):
    repo = new_repo(backend)
    data = image(307, chunks=3, zero_every=99)
    pruned_backup(repo, data)
    age(repo.store, "chunks/", LONG_AGO)
    with repo.begin_backup(vm_id="vm-2", vm_name="other", host="h", method="rct", backup_type="full") as session:
        disk = session.add_disk(disk_key="disk0", virtual_size=CHUNK)
        disk.put_chunk(0, bytes(range(256)) * (CHUNK // 256))
        report = repo.gc(grace_seconds=GRACE)
        assert report["chunks_removed"] == 0 and report["deferred"] == "1 live writer(s)"
        record = session.commit()
    age(repo.store, "chunks/", LONG_AGO)
    report = repo.gc(grace_seconds=GRACE)
    assert report["chunks_removed"] == 3 + 1 and not report.get("deferred")     # + the pruned backup's index page
    assert_restores(repo, record, bytes(range(256)) * (CHUNK // 256))


def test_writer_waits_for_a_live_sweep_and_fails_clearly_after_its_wait(backend):
    repo = new_repo(backend)
    gc_elsewhere = contextlib.ExitStack()
    if repo.store.kind == "local":                                      # a live local GC also holds this flock
        gc_elsewhere.enter_context(other_proxy(repo).store._flock("sweep-holder", fcntl.LOCK_EX))
    repo.store.put("locks/sweeping", b'{"owner": "gc elsewhere"}')     # a sweep in progress on another proxy
    repo.sweep_wait_seconds = 0
    with pytest.raises(RepositoryError, match="garbage collection") as caught:
        repo.begin_backup(vm_id="v", vm_name="v", host="h", method="rct", backup_type="full")
    assert "gc elsewhere" in caught.value.message
    assert list(repo.store.list("sessions/")) == []                     # gave up: its marker is gone again
    gc_elsewhere.close()                                                # that GC dies (SIGKILL: the kernel frees its flock)
    if repo.store.kind == "s3":
        age(repo.store, "locks/sweeping", LONG_AGO)                     # on S3 its marker must expire first
    assert repo.store.stat("locks/sweeping") is not None
    record = write_backup(repo, image(308, chunks=2))
    assert_restores(repo, record, image(308, chunks=2))


def test_gc_that_stalled_past_its_sweeping_marker_stops_deleting(backend):
    """Paused (SIGSTOP) for longer than the sweeping marker's ttl: writers may already have gone on, so GC deletes
    nothing more and says so; the next GC takes the rest."""
    repo = new_repo(backend)
    pruned_backup(repo, image(309, chunks=3, zero_every=99))
    age(repo.store, "chunks/", LONG_AGO)
    held = {}

    def on_step(name, **facts):
        if name == "gc.sweep_marker_written":
            held["sweep"] = facts["sweep"]
        elif name == "gc.references_loaded":
            held["sweep"].renewed_at -= 3600            # its last successful renewal was an hour ago
    repo.store.on_step = on_step
    report = repo.gc()
    repo.store.on_step = None
    assert report["chunks_removed"] == 0 and "could not be kept fresh" in report["sweep_stopped"]
    assert repo.store.stat("locks/sweeping") is None
    assert repo.gc()["chunks_removed"] == 3 + 1         # + the pruned backup's index page
