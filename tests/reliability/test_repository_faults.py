"""Repository faults: disk full, read-only storage, an S3 endpoint that errors, drops or stalls.

In every case the outcome must be a clear failure (or success after retries where retrying helps),
no half backup listed, earlier backups still verify and read back byte for byte, and the next run
after the fault is gone succeeds.
"""
import errno
import os
import subprocess

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository

from fault_helpers import FlakyProxy, injected_enospc, is_clear_repository_error, read_only_view, small_filesystem
from s3_server import S3Server
from storage_age import age
from test_repository import CHUNK, image, read_all, write_backup

pytestmark = [pytest.mark.reliability,
              # fills, write-protects and breaks repositories on purpose (and writes backups straight into them)
              pytest.mark.frozen_guard_off("injects storage faults into repositories on purpose (full disk, read-only, failing S3)")]


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server().start()
    yield server
    server.stop()


def lost_bytes(repo, backup, expected):
    """Bytes of ``expected`` that the backup no longer returns (0 when intact); a damaged backup counts whole."""
    try:
        data = read_all(repo, backup.backup_id)
    except RepositoryError:
        return len(expected)
    return sum(1 for a, b in zip(data, expected) if a != b) + abs(len(data) - len(expected))


def assert_intact(repo, earlier):
    """Every earlier (backup, data) pair is listed, verifies and reads back exactly; returns the bytes lost."""
    listed = [r.backup_id for r in repo.list_backups()]
    assert listed == [b.backup_id for b, _d in earlier], "a half backup is listed, or an earlier one vanished"
    report = repo.verify()
    assert report["ok"], report
    lost = sum(lost_bytes(repo, backup, data) for backup, data in earlier)
    assert lost == 0
    return lost


# --- disk full ---------------------------------------------------------------------------------------

def remount(mount_point, size_mib):
    return subprocess.run(["mount", "-o", "remount,size=%dm" % size_mib, str(mount_point)], check=False).returncode == 0


def fill_up(mount_point):
    """On a 6 MiB tmpfs: one backup that fits, then one that cannot; returns (repo, [(first, data)], error)."""
    repo = Repository.init(str(mount_point / "repo"), chunk_size=CHUNK)
    first_data = image(1, chunks=16)
    first = write_backup(repo, first_data, vm_id="vm-a", vm_name="alpha")
    too_big = image(2, chunks=120, zero_every=1000)          # ~7.5 MiB of random data: cannot fit
    with pytest.raises(Exception) as caught:
        write_backup(repo, too_big, vm_id="vm-b", vm_name="bravo")
    # the last few KiB may still be free (tmpfs pages); take them as another program on the volume would
    try:
        fd = os.open(str(mount_point / "other-program.dat"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, bytes(4096)):
                pass
        finally:
            os.close(fd)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    return repo, [(first, first_data)], caught.value


@pytest.fixture
def full_filesystem(tmp_path):
    mount_point = tmp_path / "small"
    with small_filesystem(mount_point, 6) as mounted:
        if not mounted:
            pytest.skip("mounting a tmpfs needs root; test_disk_full_at_each_stage simulates ENOSPC instead")
        yield mount_point


def test_disk_full_on_a_real_small_filesystem(full_filesystem, fault_ledger):
    """A backup that does not fit fails; the earlier one survives; once space is added, GC and a retry work."""
    repo, earlier, err = fill_up(full_filesystem)
    assert isinstance(err, (RepositoryError, OSError))
    lost = assert_intact(repo, earlier)
    assert remount(full_filesystem, 16)                    # the administrator grows the volume
    age(repo.store, "chunks/", 3600)
    assert repo.gc()["chunks_removed"] > 0   # the failed backup's chunks are reclaimed
    second_data = image(3, chunks=16)
    second = write_backup(repo, second_data, vm_id="vm-b", vm_name="bravo")
    assert_intact(repo, earlier + [(second, second_data)])
    fault_ledger.record("repository disk full (6 MiB tmpfs, real ENOSPC)",
                        "backup failed (%s); earlier backup intact; after growing the volume GC + retry ok" % type(err).__name__,
                        data_lost=lost)


def test_disk_full_error_is_a_clear_repository_error(full_filesystem):
    _repo, _earlier, err = fill_up(full_filesystem)
    assert is_clear_repository_error(err, "space", str(full_filesystem)), "%s: %s" % (type(err).__name__, err)


def test_gc_frees_space_on_a_full_repository(full_filesystem, fault_ledger):
    repo, earlier, _err = fill_up(full_filesystem)
    try:
        age(repo.store, "chunks/", 3600)
        report = repo.gc()
    except Exception as err:
        fault_ledger.record("GC on a full repository", "GC refused (%s)" % type(err).__name__, data_lost=0)
        raise
    assert report["chunks_removed"] > 0
    assert_intact(repo, earlier)


@pytest.mark.parametrize("stage", ["chunks/", "manifests/", "backups/"])
def test_disk_full_at_each_stage(tmp_path, stage, fault_ledger):
    """ENOSPC (simulated in the store) while writing chunks, then the manifest, then the record."""
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    first_data = image(11, chunks=8)
    first = write_backup(repo, first_data, vm_id="vm-a", vm_name="alpha")
    real_put = injected_enospc(repo.store, stage)
    with pytest.raises(Exception) as caught:
        write_backup(repo, image(12, chunks=8), vm_id="vm-a", vm_name="alpha")
    repo.store.put = real_put
    err = caught.value
    assert isinstance(err, (RepositoryError, OSError))
    if isinstance(err, OSError):
        assert err.errno == errno.ENOSPC and str(tmp_path) in str(err)
    lost = assert_intact(repo, [(first, first_data)])
    assert not [r for r in repo.list_backups(include_in_progress=True) if r.state == "in_progress"]
    again_data = image(12, chunks=8)
    again = write_backup(repo, again_data, vm_id="vm-a", vm_name="alpha")
    assert_intact(repo, [(first, first_data), (again, again_data)])
    fault_ledger.record("repository disk full while writing %s (simulated ENOSPC)" % stage.rstrip("/"),
                        "backup failed (%s), nothing half listed, retry ok" % type(err).__name__, data_lost=lost)


# --- read-only storage ---------------------------------------------------------------------------

def test_read_only_repository(tmp_path, fault_ledger):
    """Restores and verify still work from a read-only repository; a backup fails clearly and writes nothing."""
    source = tmp_path / "repo"
    repo = Repository.init(str(source), chunk_size=CHUNK)
    first_data = image(21, chunks=6)
    first = write_backup(repo, first_data, vm_id="vm-a", vm_name="alpha")
    view = tmp_path / "ro"
    with read_only_view(str(source), str(view)) as how:
        if how is None:
            pytest.skip("running as root without the right to mount: no way to make the repository read-only")
        ro = Repository.open(str(view))
        assert [r.backup_id for r in ro.list_backups()] == [first.backup_id]
        assert ro.verify(record_status=False)["ok"]
        assert read_all(ro, first.backup_id) == first_data
        with pytest.raises(Exception) as caught:
            write_backup(ro, image(22, chunks=6), vm_id="vm-b", vm_name="bravo")
        err = caught.value
        assert isinstance(err, (RepositoryError, OSError))
        assert [r.backup_id for r in ro.list_backups()] == [first.backup_id]
    lost = assert_intact(Repository.open(str(source)), [(first, first_data)])
    fault_ledger.record("repository read-only (%s)" % how, "backup refused (%s); list/verify/restore work" % type(err).__name__,
                        data_lost=lost)


def test_read_only_repository_error_is_a_clear_repository_error(tmp_path):
    source = tmp_path / "repo"
    Repository.init(str(source), chunk_size=CHUNK)
    with read_only_view(str(source), str(tmp_path / "ro")) as how:
        if how is None:
            pytest.skip("running as root without the right to mount: no way to make the repository read-only")
        with pytest.raises(Exception) as caught:
            write_backup(Repository.open(str(tmp_path / "ro")), image(22, chunks=2), vm_id="vm-b", vm_name="bravo")
    assert is_clear_repository_error(caught.value, "read-only"), "%s: %s" % (type(caught.value).__name__, caught.value)


# --- S3 endpoint that errors, drops and stalls --------------------------------------------------------

@pytest.fixture
def flaky_s3(s3_server):
    proxy = FlakyProxy(s3_server.port, seed=8)
    yield proxy
    proxy.stop()


def _proxied_repo(s3_server, proxy):
    location, options = s3_server.new_bucket()
    options = dict(options, endpoint_url=proxy.endpoint_url)
    return Repository.init(location, s3_options=options, chunk_size=CHUNK), location, options


def test_s3_flaky_endpoint_backups_complete_after_retries(s3_server, flaky_s3, fault_ledger):
    """A quarter of the writes (PUT/POST) get a 500, a dropped connection or a 1 s stall: every backup completes."""
    repo, location, options = _proxied_repo(s3_server, flaky_s3)
    flaky_s3.mode, flaky_s3.rate, flaky_s3.delay = "flaky", 0.25, 1.0
    earlier = []
    for number in range(4):
        data = image(30 + number, chunks=10)
        earlier.append((write_backup(repo, data, vm_id="vm-%d" % number, vm_name="s3vm%d" % number), data))
    flaky_s3.mode = "pass"
    lost = assert_intact(Repository.open(location, s3_options=options), earlier)
    injected = flaky_s3.counts["error_500"] + flaky_s3.counts["dropped"] + flaky_s3.counts["delayed"]
    assert injected >= 5, flaky_s3.counts
    for kind, fault, outcome in [
            ("error_500", "S3 request answered 500", "retried by the client; backups completed and verify"),
            ("dropped", "S3 request's connection dropped", "retried by the client; backups completed and verify"),
            ("delayed", "S3 request stalled 1 s", "waited; backups completed and verify")]:
        fault_ledger.record(fault, outcome, injected=flaky_s3.counts[kind], data_lost=0)
    assert lost == 0


def _backup_while_endpoint_goes_down(repo, proxy, data):
    """Write ``data`` as a backup; the endpoint goes down at chunk 5. Returns the exception (or None)."""
    session = repo.begin_backup(vm_id="vm-a", vm_name="alpha", host="hv1", method="rct", backup_type="full")
    disk = session.add_disk(disk_key="disk0", virtual_size=len(data))
    try:
        for index in range(disk.chunk_count):
            if index == 5:
                proxy.mode = "down"
            disk.put_chunk(index, data[index * CHUNK:(index + 1) * CHUNK])
        session.commit()
    except Exception as err:   # pylint: disable=broad-except  # judged by the callers
        return err
    finally:
        proxy.mode = "pass"
        if not session.finished:
            session.abort()
    return None


def test_s3_endpoint_goes_down_mid_upload(s3_server, flaky_s3, fault_ledger):
    """The endpoint stops answering halfway through a backup: a clear failure, nothing half listed, earlier intact."""
    repo, location, options = _proxied_repo(s3_server, flaky_s3)
    first_data = image(41, chunks=6)
    first = write_backup(repo, first_data, vm_id="vm-a", vm_name="alpha")
    data = image(42, chunks=12)
    caught = _backup_while_endpoint_goes_down(repo, flaky_s3, data)
    assert caught is not None, "the backup succeeded although the endpoint was down"
    lost = assert_intact(Repository.open(location, s3_options=options), [(first, first_data)])
    again = write_backup(repo, data, vm_id="vm-a", vm_name="alpha")
    assert_intact(repo, [(first, first_data), (again, data)])
    fault_ledger.record("S3 endpoint down mid-upload", "backup failed (%s); earlier intact; retry after recovery ok"
                        % type(caught).__name__, injected=1, data_lost=lost)


def test_s3_endpoint_down_error_is_a_clear_repository_error(s3_server, flaky_s3):
    repo, _location, _options = _proxied_repo(s3_server, flaky_s3)
    caught = _backup_while_endpoint_goes_down(repo, flaky_s3, image(43, chunks=8))
    assert is_clear_repository_error(caught, "s3"), "%s: %s" % (type(caught).__name__, caught)
