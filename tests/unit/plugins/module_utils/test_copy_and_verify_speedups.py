"""The copy's reused chunk buffers and the restore verification's shortcuts must not change what is stored or checked.

ChunkCopier reuses its chunk buffers (a fresh buffer per chunk costs more in page faults than the read); the
restore verification skips reading holes / unallocated blocks (they read as zeros) and reads into one buffer
per thread; a raw restore is made durable while it is verified. Each test checks the result, not the mechanism
alone: the stored chunks equal the disk, a wrong byte or a missing chunk in a hole is still found, and a failed
fsync still fails the restore without leaving a file.
"""
import os

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.backup import restore_engine
from ansible_collections.hyperv.backup.plugins.module_utils.backup import restore_verify
from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import ChunkCopier, CopyOptions
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import run_restore, verify_file

CHUNK = 64 * 1024


class MemoryDisk:
    """A source disk in memory, read like vdisk's VirtualDisk (readinto)."""

    def __init__(self, data):
        self.data = data
        self.virtual_size = len(data)

    def readinto(self, offset, buf):
        buf[:] = self.data[offset:offset + len(buf)]


class RecordingWriter:
    """Keeps a copy of every chunk handed to put_chunk and the buffer objects it was given."""

    def __init__(self):
        self.chunks = {}
        self.buffers = set()

    def put_chunk(self, index, data):
        self.chunks[index] = bytes(data)
        self.buffers.add(id(data))


def test_reused_buffers_store_every_chunk_exactly_as_read(tmp_path):
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    count = 200
    data = b"".join(bytes([i % 251]) * 1000 + os.urandom(CHUNK - 1000) for i in range(count)) + os.urandom(CHUNK // 3)
    disk = MemoryDisk(data)
    copier = ChunkCopier(repo, CopyOptions(workers=4))
    writer = RecordingWriter()
    copier.copy(disk, writer, range(count + 1))
    assert sorted(writer.chunks) == list(range(count + 1))
    for index, chunk in writer.chunks.items():
        assert chunk == data[index * CHUNK:(index + 1) * CHUNK], index
    # full-size buffers are reused: no more of them than chunks can be in flight (the short last one is extra)
    assert len(writer.buffers) <= copier.in_flight + 1 < count


def _raw_backup(tmp_path, data, chunk_size=CHUNK):
    """A repository with one backup of ``data`` (one disk) and its record."""
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=chunk_size)
    with repo.begin_backup("vm-id", "vm", "host", "rct", "full") as session:
        writer = session.add_disk("scsi0-0", len(data), source_path="C:\\vm\\disk.vhdx", metadata={"file_name": "disk.vhdx"})
        for index in range(writer.chunk_count):
            writer.put_chunk(index, data[index * chunk_size:(index + 1) * chunk_size])
        writer.wait()
        record = session.commit()
    return repo, record


def _sparse_image(path, data):
    """Write only the non-zero chunks of ``data`` into a sparse file of its size (zero chunks are holes)."""
    with open(path, "wb") as out:
        out.truncate(len(data))
        for offset in range(0, len(data), CHUNK):
            piece = data[offset:offset + CHUNK]
            if piece.strip(b"\0"):
                out.seek(offset)
                out.write(piece)


@pytest.fixture
def image():
    """Chunks: data, zeros, data, zeros, zeros, data, and a short data tail (whole sectors)."""
    chunk = [os.urandom(CHUNK), bytes(CHUNK), os.urandom(CHUNK), bytes(CHUNK), bytes(CHUNK), os.urandom(CHUNK), os.urandom(1536)]
    return b"".join(chunk)


def test_verify_accepts_a_sparse_raw_image_and_reads_only_its_data(tmp_path, image, monkeypatch):
    repo, record = _raw_backup(tmp_path, image)
    manifest = repo.load_disk_manifest(record.backup_id, "scsi0-0", record)
    path = str(tmp_path / "disk.raw")
    _sparse_image(path, image)
    reads = []
    real_readinto = restore_verify.RawFile.readinto
    monkeypatch.setattr(restore_verify.RawFile, "readinto", lambda self, offset, buf: (reads.append(offset), real_readinto(self, offset, buf)))
    check = verify_file(repo, manifest, path, "raw")
    assert check["mismatch_count"] == 0 and check["manifest_hash"] == check["restored_hash"]
    assert check["verified_chunks"] == 7
    data_offsets = [i * CHUNK for i in (0, 2, 5, 6)]
    # a filesystem without SEEK_DATA reports everything as data: then every chunk is read, which is also right
    assert sorted(reads) == data_offsets or sorted(reads) == [i * CHUNK for i in range(7)]


def test_verify_still_finds_a_wrong_byte_and_a_data_chunk_that_is_a_hole(tmp_path, image):
    repo, record = _raw_backup(tmp_path, image)
    manifest = repo.load_disk_manifest(record.backup_id, "scsi0-0", record)
    wrong = bytearray(image)
    wrong[2 * CHUNK + 17] ^= 0x01                              # one bit in data chunk 2
    wrong[5 * CHUNK:6 * CHUNK] = bytes(CHUNK)                  # data chunk 5 left as a hole
    path = str(tmp_path / "disk.raw")
    _sparse_image(path, bytes(wrong))
    check = verify_file(repo, manifest, path, "raw")
    assert check["mismatch_count"] == 2
    assert [m["offset"] for m in check["mismatches"]] == [2 * CHUNK, 5 * CHUNK]
    assert check["mismatches"][1]["found"] == "zeros"
    assert check["manifest_hash"] != check["restored_hash"]


@pytest.mark.parametrize("fmt", ["raw", "vhdx"])
def test_restore_round_trip_with_holes(tmp_path, image, fmt):
    repo, record = _raw_backup(tmp_path, image)
    result = run_restore(repo, {"backup_id": record.backup_id, "destination": str(tmp_path / "out"), "format": fmt})
    disk = result["disks"][0]
    assert disk["verified"] and disk["manifest_hash"] == disk["restored_hash"]
    if fmt == "raw":
        with open(disk["path"], "rb") as restored:
            assert restored.read() == image


def test_a_failed_fsync_fails_the_raw_restore_and_leaves_no_file(tmp_path, image, monkeypatch):
    repo, record = _raw_backup(tmp_path, image)

    def failing_fsync(path):
        raise OSError(5, "Input/output error", path)

    monkeypatch.setattr(restore_engine, "_fsync_file", failing_fsync)
    destination = tmp_path / "out"
    with pytest.raises(HyperVBackupError, match="Input/output error") as caught:
        run_restore(repo, {"backup_id": record.backup_id, "destination": str(destination), "format": "raw"})
    assert "free space" in caught.value.hint
    assert not destination.exists() or os.listdir(str(destination)) == []


def test_background_writeback_during_a_raw_restore_keeps_the_content(tmp_path, image, monkeypatch):
    repo, record = _raw_backup(tmp_path, image)
    synced = []
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(restore_engine, "WRITEBACK_EVERY", CHUNK)      # a writeback after every chunk
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real_fdatasync(fd)))
    result = run_restore(repo, {"backup_id": record.backup_id, "destination": str(tmp_path / "out"), "format": "raw"})
    assert synced, "no background writeback ran"
    with open(result["disks"][0]["path"], "rb") as restored:
        assert restored.read() == image


def test_a_failed_background_writeback_fails_the_raw_restore(tmp_path, image, monkeypatch):
    repo, record = _raw_backup(tmp_path, image)

    def failing_fdatasync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(restore_engine, "WRITEBACK_EVERY", CHUNK)
    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    destination = tmp_path / "out"
    with pytest.raises(HyperVBackupError, match="No space left"):
        run_restore(repo, {"backup_id": record.backup_id, "destination": str(destination), "format": "raw"})
    assert not destination.exists() or os.listdir(str(destination)) == []
