"""The backup repository against both backends: a local directory and S3 (moto server over real HTTP).

Every test that takes ``backend`` runs twice. Chunks are 64 KiB here so images stay small and fast.
"""
import datetime
import os
import random
import stat

import tempfile
from unittest import mock

import botocore.exceptions
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.hyperv.backup.plugins.module_utils.repository import backup_session as backup_session_module
from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import DEFAULT_CHUNK_SIZE, Repository, chunk_key
from ansible_collections.hyperv.backup.plugins.module_utils.repository.retention import RetentionPolicy

from s3_server import S3Server
from storage_age import age
from test_retention import oracle, policies as RETENTION_POLICIES, times as RETENTION_TIMES

CHUNK = 64 * 1024
FAST_KDF = {"n": 2 ** 14, "r": 8, "p": 1}


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path, s3_server):
    """A factory of fresh repository locations: (location, s3_options)."""
    counter = [0]

    def make(object_lock=False):
        counter[0] += 1
        if request.param == "local":
            return str(tmp_path / ("repo%d" % counter[0])), None
        return s3_server.new_bucket(object_lock=object_lock)
    make.kind = request.param
    return make


def new_repo(backend, **options):
    location, s3_options = backend()
    options.setdefault("chunk_size", CHUNK)
    return Repository.init(location, s3_options=s3_options, **options)


def image(seed, chunks, zero_every=3, tail=1234):
    """Random bytes with whole zero chunks every ``zero_every`` chunks and a short last chunk."""
    rng = random.Random(seed)
    parts = []
    for index in range(chunks):
        parts.append(bytes(CHUNK) if index % zero_every == 1 else rng.randbytes(CHUNK))
    parts.append(rng.randbytes(tail))
    return b"".join(parts)


def write_backup(repo, data, vm_id="vm-1", vm_name="web01", host="hv1", disk_key="disk0", asynchronous=True,
                 backup_type="full", parent=None, reuse=None):
    """Write ``data`` as one disk; ``reuse``: chunk indexes taken from ``parent`` (a DiskManifest) instead."""
    with repo.begin_backup(vm_id=vm_id, vm_name=vm_name, host=host, method="rct", backup_type=backup_type,
                           parent_backup_id=parent.backup_id if parent else None, consistency="application") as session:
        disk = session.add_disk(disk_key=disk_key, virtual_size=len(data), source_path="C:\\VMs\\%s.vhdx" % vm_name, rct_id="rct-1")
        for index in range(disk.chunk_count):
            if reuse and index in reuse:
                disk.reuse_chunk(index, parent)
                continue
            piece = data[index * repo.chunk_size:(index + 1) * repo.chunk_size]
            if asynchronous:
                disk.put_chunk_async(index, piece)
            else:
                disk.put_chunk(index, piece)
        return session.commit()


def read_all(repo, backup_id, disk_key="disk0"):
    reader = repo.open_disk_reader(backup_id, disk_key)
    out = bytearray(reader.virtual_size)
    for offset, data in reader.iter_chunks():
        out[offset:offset + len(data)] = data
    return bytes(out)


def all_ids(manifest):
    """Every entry of a (small) disk's index, None for zeros: a list the size of the disk, for tests only."""
    return [manifest.chunk_id(index) for index in range(manifest.chunk_count)]


def chunk_keys(repo):
    return sorted(info.key for info in repo.store.list("chunks/"))


# -- round trip, dedup, zeros ---------------------------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2])
def test_round_trip_of_random_images(backend, seed):
    repo = new_repo(backend)
    data = image(seed, chunks=10)
    record = write_backup(repo, data, asynchronous=seed % 2 == 0)
    assert read_all(repo, record.backup_id) == data
    reader = repo.open_disk_reader(record.backup_id, "disk0")
    rng = random.Random(seed)
    for _attempt in range(20):
        offset = rng.randrange(len(data))
        length = rng.randrange(min(3 * CHUNK, len(data) - offset) + 1)
        assert reader.read(offset, length) == data[offset:offset + length]
    reopened = Repository.open(repo.location, s3_options=getattr(repo.store, "client", None) and backend_options(repo))
    assert read_all(reopened, record.backup_id) == data


def backend_options(repo):
    endpoint = repo.store.client.meta.endpoint_url
    return {"endpoint_url": endpoint, "access_key": "testing", "secret_key": "testing"}


def test_zero_chunks_are_not_stored(backend):
    repo = new_repo(backend)
    data = image(3, chunks=9, zero_every=3)          # chunks 1, 4, 7 are zero
    record = write_backup(repo, data)
    disk = record.disks[0]
    assert disk["zero_chunks"] == 3
    assert disk["chunk_count"] == 7                  # 6 random full chunks + the short tail
    assert len(chunk_keys(repo)) == 7 + 1             # + the index page (one leaf: the disk has under 1024 chunks)
    all_zero = write_backup(repo, bytes(5 * CHUNK), vm_id="vm-z", vm_name="empty")
    assert all_zero.disks[0]["chunk_count"] == 0 and len(chunk_keys(repo)) == 7 + 1     # an all-zero disk: no page at all
    assert read_all(repo, all_zero.backup_id) == bytes(5 * CHUNK)


def test_dedup_across_backups_and_vms(backend):
    repo = new_repo(backend)
    data = image(4, chunks=8)
    first = write_backup(repo, data)
    stored = chunk_keys(repo)
    second = write_backup(repo, data)                                  # same VM again
    third = write_backup(repo, data, vm_id="vm-2", vm_name="db01", disk_key="os")   # another VM, same bytes
    assert chunk_keys(repo) == stored
    assert second.stats["new_chunks"] == 0 and second.stats["dedup_chunks"] == first.stats["new_chunks"]
    assert third.stats["stored_bytes"] == 0
    assert read_all(repo, third.backup_id, "os") == data


def test_incremental_reuses_parent_chunks_and_stands_alone(backend):
    repo = new_repo(backend)
    base = image(5, chunks=8)
    full = write_backup(repo, base)
    changed = bytearray(base)
    changed[2 * CHUNK + 100:2 * CHUNK + 200] = os.urandom(100)
    parent = repo.load_disk_manifest(full.backup_id, "disk0")
    unchanged = set(range(parent.header["chunk_count"])) - {2}
    incr = write_backup(repo, bytes(changed), backup_type="incremental", parent=parent, reuse=unchanged)
    assert incr.stats["reused_chunks"] + incr.stats["zero_chunks"] == len(unchanged)
    assert incr.stats["new_chunks"] == 1
    assert incr.parent_backup_id == full.backup_id
    age(repo.store, "chunks/", 3600)                                   # older than the GC grace (storage time)
    report = repo.prune(RetentionPolicy(keep_last=1))   # drop the full: the incremental stays whole
    assert [r["backup_id"] for r in report["removed"]] == [full.backup_id]
    assert read_all(repo, incr.backup_id) == bytes(changed)
    assert repo.verify()["ok"]


# -- verify and refusing bad data -------------------------------------------------------------------

def damage(repo, cid, how):
    key = chunk_key(cid)
    if how == "missing":
        repo.store.delete(key)
    else:
        blob = bytearray(repo.store.get(key))
        blob[len(blob) // 2] ^= 0xFF
        repo.store.put(key, bytes(blob))


def test_verify_names_missing_and_corrupt_chunks_by_backup(backend):
    repo = new_repo(backend)
    good = write_backup(repo, image(6, chunks=4), vm_id="vm-a", vm_name="a")
    hurt = write_backup(repo, image(7, chunks=6), vm_id="vm-b", vm_name="b")
    manifest = repo.load_disk_manifest(hurt.backup_id, "disk0")
    corrupt_id, missing_id = manifest.chunk_id(0), manifest.chunk_id(2)
    damage(repo, corrupt_id, "corrupt")
    damage(repo, missing_id, "missing")
    report = repo.verify()
    assert not report["ok"]
    assert report["damaged_backups"] == [hurt.backup_id]
    entry = dict((e["backup_id"], e) for e in report["backups"])[hurt.backup_id]
    assert entry["vm_name"] == "b"
    assert [(c["chunk_id"], c["offset"]) for c in entry["corrupt_chunks"]] == [(corrupt_id, 0)]
    assert [(c["chunk_id"], c["offset"]) for c in entry["missing_chunks"]] == [(missing_id, 2 * CHUNK)]
    assert dict((e["backup_id"], e) for e in report["backups"])[good.backup_id]["ok"]
    states = dict((r.backup_id, r.state) for r in repo.list_backups())
    assert states == {good.backup_id: "complete", hurt.backup_id: "damaged"}


def test_verify_refuses_ids_with_paths_and_writes_no_status_for_unknown_ids(backend):
    """Verify records a status per backup under status/<id>: '../config' once overwrote the config there."""
    repo = new_repo(backend, passphrase="pw", scrypt_params=FAST_KDF)
    backup = write_backup(repo, image(8, chunks=2))
    config_before = repo.store.get("config")
    for hostile in ("../config", "..", "a/../../config", "/etc/passwd", ""):
        with pytest.raises(RepositoryError, match="is not a backup id"):
            repo.verify([backup.backup_id, hostile])
    unknown = "20260101T000000Z-0123456789ab"
    report = repo.verify([unknown])
    assert not report["ok"] and "does not exist" in report["backups"][0]["problems"][0]
    assert repo.store.get("config") == config_before
    assert sorted(info.key for info in repo.store.list("status/")) == []
    assert repo.verify()["ok"] and [info.key for info in repo.store.list("status/")] == ["status/" + backup.backup_id]


@pytest.mark.parametrize("how", ["corrupt", "missing"])
def test_restore_refuses_a_bad_chunk(backend, how):
    repo = new_repo(backend)
    data = image(8, chunks=5)
    record = write_backup(repo, data)
    bad = repo.load_disk_manifest(record.backup_id, "disk0").chunk_id(3)
    damage(repo, bad, how)
    reader = repo.open_disk_reader(record.backup_id, "disk0")
    assert reader.read(0, CHUNK) == data[:CHUNK]                  # good chunks still read
    with pytest.raises(RepositoryError) as err:
        reader.read(3 * CHUNK, 10)
    assert record.backup_id in str(err.value) and bad in str(err.value)
    with pytest.raises(RepositoryError):
        read_all(repo, record.backup_id)


def test_chunk_swapped_under_another_name_is_detected(backend):
    repo = new_repo(backend)
    record = write_backup(repo, image(9, chunks=3, zero_every=99))
    ids = all_ids(repo.load_disk_manifest(record.backup_id, "disk0"))
    repo.store.put(chunk_key(ids[0]), repo.store.get(chunk_key(ids[2])))
    report = repo.verify([record.backup_id])
    assert report["backups"][0]["corrupt_count"] == 1


def test_lost_manifest_is_reported_and_stops_gc(backend):
    repo = new_repo(backend)
    kept = write_backup(repo, image(19, chunks=2), vm_name="kept")
    broken = write_backup(repo, image(20, chunks=2), vm_id="vm-2", vm_name="broken")
    repo.store.delete(broken.disks[0]["manifest"])
    report = repo.verify()
    entry = dict((e["backup_id"], e) for e in report["backups"])[broken.backup_id]
    assert not entry["ok"] and "manifest of disk 'disk0' is missing" in entry["problems"][0]
    assert report["damaged_backups"] == [broken.backup_id]
    chunks = chunk_keys(repo)
    age(repo.store, "chunks/", 3600)
    with pytest.raises(RepositoryError, match="stopped before deleting anything"):
        repo.gc()
    assert chunk_keys(repo) == chunks
    assert read_all(repo, kept.backup_id) == image(19, chunks=2)


def test_incremental_whose_parent_vanished_still_commits_whole(backend):
    """Issue 13: GC defers while a writer is live, so a parent pruned behind a running incremental keeps its chunks
    until the incremental is committed (a chunk missing anyway is refused: test_repository_gc_safety.py)."""
    repo = new_repo(backend)
    data = image(21, chunks=3, zero_every=99)
    full = write_backup(repo, data)
    age(repo.store, "chunks/", 3600)                      # parent chunks older than the grace
    parent = repo.load_disk_manifest(full.backup_id, "disk0")
    with repo.begin_backup(vm_id="vm-1", vm_name="web01", host="hv1", method="rct", backup_type="incremental",
                           parent_backup_id=full.backup_id) as session:
        disk = session.add_disk(disk_key="disk0", virtual_size=len(data))
        for index in range(disk.chunk_count):
            disk.reuse_chunk(index, parent)
        repo.store.delete("backups/%s" % full.backup_id)      # the parent is pruned behind the session's back
        report = repo.gc()
        assert report["chunks_removed"] == 0 and report["deferred"] == "1 live writer(s)"
        record = session.commit()
    assert read_all(repo, record.backup_id) == data and repo.verify()["ok"]


def test_init_refuses_bad_chunk_size_and_level(tmp_path):
    for size in (1000, 3 * 1024 * 1024, 128 * 1024 * 1024):
        with pytest.raises(RepositoryError, match="power of two"):
            Repository.init(str(tmp_path / "r"), chunk_size=size)
    with pytest.raises(RepositoryError, match="compression_level"):
        Repository.init(str(tmp_path / "r"), compression_level=40)
    with pytest.raises(RepositoryError, match="object_lock_days -3 is not allowed"):
        Repository.init(str(tmp_path / "r"), object_lock_days=-3)
    assert not os.path.exists(str(tmp_path / "r" / "config"))


# -- listing and catalog ----------------------------------------------------------------------------

def test_list_filters_and_catalog_rebuild(backend):
    repo = new_repo(backend)
    a = write_backup(repo, image(10, chunks=2), vm_id="id-a", vm_name="alpha", host="hv1")
    b = write_backup(repo, image(11, chunks=2), vm_id="id-b", vm_name="beta", host="hv2")
    assert [r.backup_id for r in repo.list_backups()] == [a.backup_id, b.backup_id]
    assert [r.backup_id for r in repo.list_backups(vm="beta")] == [b.backup_id]
    assert [r.backup_id for r in repo.list_backups(vm="id-a")] == [a.backup_id]
    assert [r.backup_id for r in repo.list_backups(host="HV2")] == [b.backup_id]
    assert repo.list_backups(since=b.created + datetime.timedelta(seconds=1)) == []
    assert [r.backup_id for r in repo.list_backups(until=a.created)] == [a.backup_id]
    listed = repo.list_backups(vm="alpha")[0]
    assert listed.disks[0]["virtual_size"] == 2 * CHUNK + 1234 and listed.method == "rct"
    assert listed.consistency == "application" and listed.type == "full"
    repo.store.delete("catalog")
    assert [r.backup_id for r in repo.list_backups()] == [a.backup_id, b.backup_id]
    assert repo.latest_backup("id-b").backup_id == b.backup_id
    assert repo.latest_backup("nope") is None
    assert [v["vm_name"] for v in repo.list_vms()] == ["alpha", "beta"]


def test_read_only_view_lists_without_writing_the_catalog(backend):
    repo = new_repo(backend)
    a = write_backup(repo, image(12, chunks=2), vm_id="id-a", vm_name="alpha", host="hv1")
    assert repo.store.stat("catalog") is None          # a commit does not write it; the next listing would
    view = repo.read_only_view()
    assert view.latest_backup("id-a").backup_id == a.backup_id and [v["vm_name"] for v in view.list_vms()] == ["alpha"]
    assert repo.store.stat("catalog") is None           # check mode (issue 12, point 8): not even the cache
    with pytest.raises(RepositoryError, match="reading only"):
        view.begin_backup("id-a", "alpha", "hv1", "rct", "full")
    assert view.in_progress() == [] and not repo.read_only
    assert [r.backup_id for r in repo.list_backups()] == [a.backup_id] and repo.store.stat("catalog") is not None


def test_open_missing_repository_and_existing_init_fail_clearly(backend):
    location, s3_options = backend()
    with pytest.raises(RepositoryError, match="No backup repository"):
        Repository.open(location, s3_options=s3_options)
    Repository.init(location, s3_options=s3_options)
    with pytest.raises(RepositoryError, match="already exists"):
        Repository.init(location, s3_options=s3_options)
    repo, created = Repository.ensure(location, s3_options=s3_options)
    assert not created and repo.chunk_size == DEFAULT_CHUNK_SIZE == 1024 * 1024


def test_bad_chunk_input_is_refused(backend):
    repo = new_repo(backend)
    with repo.begin_backup(vm_id="v", vm_name="v", host="h", method="rct", backup_type="full") as session:
        disk = session.add_disk(disk_key="d", virtual_size=3 * CHUNK)
        with pytest.raises(RepositoryError, match="expected 65536"):
            disk.put_chunk(0, b"short")
        with pytest.raises(RepositoryError, match="outside"):
            disk.put_chunk(3, bytes(CHUNK))
    assert repo.list_backups() == []        # leaving the block without commit aborted the session
    assert list(repo.store.list("sessions/")) == []


# -- prune and GC ---------------------------------------------------------------------------------

def test_prune_removes_backups_and_gc_frees_their_chunks(backend):
    repo = new_repo(backend)
    old = write_backup(repo, image(12, chunks=4))
    shared = image(13, chunks=4)
    middle = write_backup(repo, shared)
    newest = write_backup(repo, shared)
    before = set(chunk_keys(repo))
    age(repo.store, "chunks/", 3600)
    dry = repo.prune(RetentionPolicy(keep_last=2), dry_run=True)
    assert [r["backup_id"] for r in dry["removed"]] == [old.backup_id]
    assert dry["gc"]["chunks_removed"] == 0 and set(chunk_keys(repo)) == before   # dry run changes nothing
    report = repo.prune(RetentionPolicy(keep_last=2))
    assert [r["backup_id"] for r in report["removed"]] == [old.backup_id]
    assert sorted(k["backup_id"] for k in report["kept"]) == sorted([middle.backup_id, newest.backup_id])
    old_only = before - set(chunk_keys(repo))
    assert report["gc"]["chunks_removed"] == len(old_only) == 4 + 1          # its 4 chunks and its index page
    assert [r.backup_id for r in repo.list_backups()] == [middle.backup_id, newest.backup_id]
    assert repo.verify()["ok"]
    assert read_all(repo, middle.backup_id) == shared


def test_gc_keeps_chunks_a_running_backup_deduplicated(backend):
    """While a backup runs GC deletes nothing (issue 13: deferred); once it is committed, only its chunks stay."""
    repo = new_repo(backend)
    data = image(14, chunks=4, zero_every=99)
    doomed = write_backup(repo, data)
    age(repo.store, "chunks/", 3600)                     # the chunks are now "old" to the storage
    with repo.begin_backup(vm_id="vm-2", vm_name="other", host="h", method="rct", backup_type="full") as session:
        disk = session.add_disk(disk_key="disk0", virtual_size=len(data))
        disk.put_chunk(0, data[:CHUNK])                  # dedup hit: touches the old chunk
        repo.store.delete("backups/%s" % doomed.backup_id)   # as if pruned: nothing committed references them
        report = repo.gc()
        assert report["live_sessions"] == 1 and report["deferred"] == "1 live writer(s)"
        assert report["chunks_removed"] == 0
        for index in range(1, disk.chunk_count):
            disk.put_chunk(index, data[index * CHUNK:(index + 1) * CHUNK])
        record = session.commit()
    age(repo.store, "chunks/", 3600)
    assert repo.gc()["chunks_removed"] == 0              # the committed backup references every one of them
    assert read_all(repo, record.backup_id) == data
    assert repo.verify()["ok"]


def test_prune_and_gc_exclude_each_other(backend):
    repo = new_repo(backend)
    write_backup(repo, image(15, chunks=2))
    with repo.store.exclusive_lock("exclusive", "test holds it"):
        with pytest.raises(RepositoryError, match="locked by"):
            repo.prune(RetentionPolicy(keep_last=1))
        with pytest.raises(RepositoryError, match="locked by"):
            repo.gc()
    assert repo.gc()["chunks_removed"] == 0


def test_gc_removes_chunks_and_marker_of_an_abandoned_session(backend):
    repo = new_repo(backend)
    session = repo.begin_backup(vm_id="v", vm_name="v", host="h", method="rct", backup_type="full")
    disk = session.add_disk(disk_key="d", virtual_size=2 * CHUNK)
    disk.put_chunk(0, os.urandom(CHUNK))
    session._stop.set()                      # the writer "dies": no more heartbeats, nothing committed
    age(repo.store, "chunks/", 3600)
    assert repo.gc()["chunks_removed"] == 0      # still live: kept
    age(repo.store, "sessions/", 3600)          # an hour without a heartbeat (storage time): dead
    report = repo.gc()
    assert report["chunks_removed"] == 1 and report["stale_sessions_removed"] == 1
    assert chunk_keys(repo) == []
    with pytest.raises(RepositoryError):
        session.commit()                     # its chunk is gone: it refuses to commit a broken backup
    assert repo.list_backups() == []


# -- encryption -----------------------------------------------------------------------------------

def test_encrypted_repository_hides_content_and_rejects_wrong_passphrase(backend):
    repo = new_repo(backend, passphrase="correct horse", scrypt_params=FAST_KDF)
    secret = (b"TOP-SECRET-PAYROLL " * 4000)[:CHUNK]
    data = secret * 3 + os.urandom(CHUNK)
    record = write_backup(repo, data, vm_name="payroll-vm")
    plain_id = __import__("blake3").blake3(secret).hexdigest()
    keys = chunk_keys(repo)
    assert all(plain_id not in key for key in keys)
    for key in keys:
        assert b"TOP-SECRET" not in repo.store.get(key)
    for info in list(repo.store.list("")):
        if info.key != "config":
            assert b"payroll-vm" not in repo.store.get(info.key)
    opts = backend_options(repo) if backend.kind == "s3" else None
    with pytest.raises(RepositoryError, match="Wrong passphrase"):
        Repository.open(repo.location, passphrase="wrong", s3_options=opts)
    with pytest.raises(RepositoryError, match="encrypted and no passphrase"):
        Repository.open(repo.location, s3_options=opts)
    reopened = Repository.open(repo.location, passphrase="correct horse", s3_options=opts)
    assert read_all(reopened, record.backup_id) == data
    assert reopened.verify()["ok"]


def test_local_repository_is_owner_only(tmp_path):
    repo = Repository.init(str(tmp_path / "r"), chunk_size=CHUNK)
    write_backup(repo, image(16, chunks=3))
    for directory, dirs, files in os.walk(repo.location):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) == 0o600, name


# -- S3 Object Lock -------------------------------------------------------------------------------

def test_object_lock_keeps_locked_backups_and_prune_reports_them(s3_server):
    location, options = s3_server.new_bucket(object_lock=True)
    repo = Repository.init(location, s3_options=options, chunk_size=CHUNK, object_lock_days=2)
    first = write_backup(repo, image(17, chunks=3))
    second = write_backup(repo, image(18, chunks=3))
    info = repo.store.stat("backups/%s" % first.backup_id)
    assert info.retain_until > repo.store.now() + 86400
    report = repo.prune(RetentionPolicy(keep_last=1))
    assert report["removed"] == []
    assert [entry["backup_id"] for entry in report["locked"]] == [first.backup_id]
    assert report["locked"][0]["kept_until"].startswith(
        (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)).strftime("%Y-%m-%d"))
    assert [r.backup_id for r in repo.list_backups()] == [first.backup_id, second.backup_id]
    assert repo.verify()["ok"]
    # Someone with the repository credentials tries to destroy a backup's data for good: refused.
    client = s3_server.client()
    bucket, prefix = location[len("s3://"):].split("/", 1)
    cid = repo.load_disk_manifest(first.backup_id, "disk0").chunk_id(0)
    versions = client.list_object_versions(Bucket=bucket, Prefix="%s/%s" % (prefix, chunk_key(cid)))["Versions"]
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        client.delete_object(Bucket=bucket, Key=versions[0]["Key"], VersionId=versions[0]["VersionId"])


def test_object_lock_refused_where_it_cannot_work(s3_server, tmp_path):
    location, options = s3_server.new_bucket(object_lock=False)
    with pytest.raises(RepositoryError, match="Object Lock"):
        Repository.init(location, s3_options=options, object_lock_days=7)
    with pytest.raises(RepositoryError, match="needs an S3"):
        Repository.init(str(tmp_path / "x"), object_lock_days=7)


def test_local_store_refuses_keys_that_leave_the_repository(tmp_path):
    """The store is the last line of defence: no key, whatever its origin, names a file outside the directory."""
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    (tmp_path / "outside").write_bytes(b"keep me")
    for key in ("../outside", "status/../config", "/etc/passwd", "backups//x", "backups/./x"):
        for operation in (lambda k: repo.store.put(k, b"x"), repo.store.get, repo.store.delete, repo.store.touch):
            with pytest.raises(RepositoryError, match="not a plain relative name"):
                operation(key)
    assert (tmp_path / "outside").read_bytes() == b"keep me"
    assert Repository.open(repo.location).describe()["chunk_size"] == CHUNK


# -- prune against the repository, property-based ---------------------------------------------------

VM_BACKUPS = st.lists(st.tuples(st.sampled_from(["vm-a", "vm-b"]), RETENTION_TIMES), min_size=1, max_size=7,
                      unique_by=lambda item: item[1])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(VM_BACKUPS, RETENTION_POLICIES)
def test_prune_keeps_exactly_what_the_policy_says_per_vm(backups, counts):
    """Real backups (created at the drawn times) pruned by Repository.prune: what stays per VM is the oracle's set,
    every kept backup restores byte for byte, and GC leaves exactly the chunks the kept backups reference."""
    shared = os.urandom(CHUNK)
    with tempfile.TemporaryDirectory() as workdir:
        repo = Repository.init(os.path.join(workdir, "repo"), chunk_size=CHUNK)
        written = {}            # backup_id -> (vm_id, created, data, commit position)
        for position, (vm_id, created) in enumerate(backups):
            data = shared + os.urandom(CHUNK // 2)      # one chunk shared by all, one of its own
            with mock.patch.object(backup_session_module, "utc_now", return_value=created):
                record = write_backup(repo, data, vm_id=vm_id, vm_name=vm_id)
            written[record.backup_id] = (vm_id, created, data, position)
        age(repo.store, "chunks/", 3600)
        age(repo.store, "manifests/", 3600)
        report = repo.prune(RetentionPolicy.from_dict(counts))
        expected = set()
        # newest = committed last, whatever the drawn clock said (issue 12, point 6); periods by the drawn time
        for vm_id in set(vm for vm, _created in backups):
            expected |= oracle([(bid, position, created) for bid, (vm, created, _data, position) in written.items() if vm == vm_id],
                               counts)
        assert set(r.backup_id for r in repo.list_backups()) == expected
        assert set(r["backup_id"] for r in report["removed"]) == set(written) - expected
        for backup_id in expected:
            assert read_all(repo, backup_id) == written[backup_id][2]
        assert len(chunk_keys(repo)) == 1 + 2 * len(expected)       # the shared chunk, each kept backup's own and its index page
        assert repo.verify(record_status=False)["ok"]


@pytest.mark.parametrize("failing", ["write", "rename"])
def test_failed_local_write_is_a_clear_error_and_leaves_no_file(tmp_path, monkeypatch, failing):
    """ENOSPC while writing or renaming: RepositoryError naming the path and what to do; no object, no temp file."""
    import errno as errno_module
    from ansible_collections.hyperv.backup.plugins.module_utils.repository import local_store

    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    real_write_all, real_rename = local_store._write_all, os.rename

    def full_write(fd, parts):          # the session marker fits; the first chunk does not
        if "/chunks/" in os.readlink("/proc/self/fd/%d" % fd):
            raise OSError(errno_module.ENOSPC, "No space left on device")
        real_write_all(fd, parts)

    def full_rename(src, dst):
        if "/chunks/" in str(dst):
            raise OSError(errno_module.ENOSPC, "No space left on device")
        real_rename(src, dst)
    if failing == "write":
        monkeypatch.setattr(local_store, "_write_all", full_write)
    else:
        monkeypatch.setattr(os, "rename", full_rename)
    with pytest.raises(RepositoryError) as caught:
        write_backup(repo, image(9, chunks=2))
    assert "no space left" in caught.value.message and "/chunks/" in caught.value.message
    assert "Free space" in caught.value.hint
    monkeypatch.undo()
    leftovers = [name for _d, _s, files in os.walk(repo.location) for name in files if name.startswith(".tmp-")]
    assert leftovers == [] and chunk_keys(repo) == [] and repo.list_backups() == []
    assert list(repo.store.list("sessions/")) == []
