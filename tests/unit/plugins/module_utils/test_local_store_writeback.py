"""The local store starts the writeback of lazily written chunks at once (local_store.start_writeback, issue 14).

The commit's fsync still makes them durable; these tests pin down which writes ask for early writeback, that the
libc binding works on Linux, and that a refusal is never an error.
"""
import os
import sys

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.repository import local_store
from ansible_collections.hyperv.backup.plugins.module_utils.repository.local_store import LocalStore, start_writeback
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range(2) is Linux's")


@linux_only
def test_the_kernel_takes_the_request_for_a_written_file(tmp_path):
    path = tmp_path / "object"
    data = os.urandom(4 << 20)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        assert start_writeback(fd) is True
    finally:
        os.close(fd)
    assert path.read_bytes() == data


@linux_only
def test_a_refused_request_is_false_not_an_error(tmp_path):
    fd = os.open(str(tmp_path / "object"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    assert start_writeback(fd) is False         # EBADF: the descriptor is closed


def test_without_the_call_nothing_is_asked(monkeypatch):
    monkeypatch.setattr(local_store, "_sync_file_range", None)
    assert start_writeback(0) is False


class Recorder:
    """Wraps the real call (or stands in for it where there is none) and keeps what each call was about."""

    def __init__(self, real):
        self.real = real
        self.files = []

    def __call__(self, fd, offset, nbytes, flags):
        assert (offset, nbytes, flags) == (0, 0, local_store.SYNC_FILE_RANGE_WRITE)
        self.files.append(os.readlink("/proc/self/fd/%d" % fd) if os.path.exists("/proc/self/fd") else fd)
        return self.real(fd, offset, nbytes, flags) if self.real is not None else 0


def test_lazy_puts_start_writeback_and_durable_puts_do_not(tmp_path, monkeypatch):
    recorder = Recorder(local_store._sync_file_range)
    monkeypatch.setattr(local_store, "_sync_file_range", recorder)
    store = LocalStore(str(tmp_path / "repo"), create=True)
    store.put("chunks/ab/lazy", [b"x" * 70000, b"tail"], durable=False)
    assert len(recorder.files) == 1
    assert os.path.basename(str(recorder.files[0])).startswith(".tmp-")     # asked before the rename, on its own file
    store.put("backups/durable", b"manifest", durable=True)
    assert len(recorder.files) == 1
    store.flush()
    assert store.get("chunks/ab/lazy") == b"x" * 70000 + b"tail"
    assert store.get("backups/durable") == b"manifest"


def test_every_new_chunk_of_a_backup_is_written_back_early(tmp_path, monkeypatch):
    recorder = Recorder(local_store._sync_file_range)
    monkeypatch.setattr(local_store, "_sync_file_range", recorder)
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=64 * 1024)
    data = os.urandom(64 * 1024 * 5) + bytes(64 * 1024 * 3)      # five chunks of data, three of zeros
    with repo.begin_backup("vm-id", "vm", "host", "rct", "full") as session:
        disk = session.add_disk("disk0", len(data))
        for index in range(8):
            disk.put_chunk(index, data[index * 64 * 1024:(index + 1) * 64 * 1024])
        record = session.commit()
    assert disk.stats["new_chunks"] == 5
    # the five chunks and the index page that names them, each asked once; zero chunks store nothing, and manifests,
    # the record and the catalog are written durably
    stored = [os.path.join(root, name) for root, _dirs, names in os.walk(str(tmp_path / "repo" / "chunks")) for name in names]
    assert len(stored) == 6
    assert sorted(os.path.dirname(str(path)) for path in recorder.files) == sorted(os.path.dirname(path) for path in stored)
    assert repo.open_disk_reader(record.backup_id, "disk0").read(0, len(data)) == data
