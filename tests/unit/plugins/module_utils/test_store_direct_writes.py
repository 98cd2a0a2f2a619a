"""Issue 14: a local repository writes its chunks with O_DIRECT (no page-cache copy of data that is read again only
by a restore), falls back to ordinary writes where the filesystem refuses direct I/O, and either way every object
reads back byte for byte, is exactly its length, and nothing is left under a temporary name."""
import errno
import os

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils import direct_io
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_store import LocalStore

MiB = 1024 * 1024


def takes_direct_io(directory):
    probe = os.path.join(str(directory), "probe")
    try:
        os.close(direct_io.create_file_direct(probe, [b"x" * 4096]))
    except direct_io.DirectRefused:
        return False
    os.unlink(probe)
    return True


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _dirs, names in os.walk(root) for f in names)


def test_a_chunk_is_written_directly_and_reads_back_exactly(tmp_path):
    if not takes_direct_io(tmp_path):
        pytest.skip("the test directory's filesystem takes no O_DIRECT")
    store = LocalStore(str(tmp_path / "repo"), create=True)
    parts = [b"H" * 9, os.urandom(MiB + 123), b"C" * 32]        # header, body, checksum: not a multiple of 4 KiB
    store.put("chunks/ab/abcd", parts, durable=False)
    store.flush()
    assert store._direct
    assert store.get("chunks/ab/abcd") == b"".join(parts)
    assert os.path.getsize(os.path.join(str(tmp_path / "repo"), "chunks", "ab", "abcd")) == 9 + MiB + 123 + 32
    assert files_under(str(tmp_path / "repo")) == [os.path.join("chunks", "ab", "abcd")]


def test_small_objects_are_written_through_the_page_cache(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_store.create_file_direct",
                        lambda path, parts: calls.append(path))
    store = LocalStore(str(tmp_path / "repo"), create=True)
    store.put("manifests/m1", [b"{}" * 100])
    assert calls == [] and store.get("manifests/m1") == b"{}" * 100


def test_a_filesystem_that_refuses_direct_io_at_open_gets_ordinary_writes(tmp_path, monkeypatch):
    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")        # what tmpfs answers
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    store = LocalStore(str(tmp_path / "repo"), create=True)
    data = os.urandom(2 * MiB)
    store.put("chunks/aa/one", [data])
    store.put("chunks/aa/two", [data[::-1]])
    assert not store._direct                                       # asked once, then never again
    assert store.get("chunks/aa/one") == data and store.get("chunks/aa/two") == data[::-1]
    assert files_under(str(tmp_path / "repo")) == [os.path.join("chunks", "aa", "one"), os.path.join("chunks", "aa", "two")]


def test_a_write_refused_after_the_open_leaves_no_file_and_falls_back(tmp_path, monkeypatch):
    if not takes_direct_io(tmp_path):
        pytest.skip("the test directory's filesystem takes no O_DIRECT")
    real_pwrite = os.pwrite

    def refusing_pwrite(fd, data, offset):
        if os.readlink("/proc/self/fd/%d" % fd).rsplit("/", 1)[-1].startswith(".tmp-"):
            raise OSError(errno.EINVAL, "Invalid argument")        # e.g. a network filesystem that refuses the write
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refusing_pwrite)
    store = LocalStore(str(tmp_path / "repo"), create=True)
    data = os.urandom(MiB)
    store.put("chunks/bb/one", [data])
    assert not store._direct and store.get("chunks/bb/one") == data
    assert files_under(str(tmp_path / "repo")) == [os.path.join("chunks", "bb", "one")]


def test_a_full_disk_during_a_direct_write_leaves_nothing_behind(tmp_path, monkeypatch):
    if not takes_direct_io(tmp_path):
        pytest.skip("the test directory's filesystem takes no O_DIRECT")

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    store = LocalStore(str(tmp_path / "repo"), create=True)
    with pytest.raises(Exception, match="no space left"):
        store.put("chunks/cc/one", [os.urandom(MiB)])
    assert files_under(str(tmp_path / "repo")) == []
