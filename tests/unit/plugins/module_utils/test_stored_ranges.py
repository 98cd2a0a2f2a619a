"""Issue 14: a restored VHDX of a huge disk has 32 MiB blocks, and a block takes its whole size as soon as one sector
is written; the restore leaves the rest of the block unwritten (a hole). The verify reads what the file stores
(``VirtualDisk.stored_ranges``), not 32 MiB per scattered MiB, and still finds data that went missing."""
import ctypes
import ctypes.util
import os

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import verify_file
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import create_vhdx, open_disk

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
BLOCK = 32 * MiB
CHUNK = 1 * MiB
PIECES = [(5 * MiB + 12 * KiB, 64 * KiB), (GiB + 4 * KiB, 8 * KiB), (3 * GiB, MiB)]


def punch_hole(path, offset, length):
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path, os.O_RDWR)
    try:
        # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if libc.fallocate(fd, 0x02 | 0x01, ctypes.c_long(offset), ctypes.c_long(length)) != 0:
            pytest.skip("this filesystem cannot punch holes (errno %d)" % ctypes.get_errno())
    finally:
        os.close(fd)


def holes_are_reported(directory):
    probe = os.path.join(str(directory), "probe")
    with open(probe, "wb") as out:
        out.truncate(8 * MiB)
        out.seek(4 * MiB)
        out.write(b"x")
    try:
        with open(probe, "rb") as handle:
            return os.lseek(handle.fileno(), 0, os.SEEK_DATA) >= 4 * MiB - 4 * KiB
    except OSError:
        return False
    finally:
        os.unlink(probe)


@pytest.fixture
def scattered(tmp_path):
    if not holes_are_reported(tmp_path):
        pytest.skip("the test directory's filesystem does not report holes (SEEK_DATA)")
    path = str(tmp_path / "restored.vhdx")
    with create_vhdx(path, 4 * GiB, block_size=BLOCK) as writer:
        for offset, length in PIECES:
            writer.write(offset, bytes([offset % 251 + 1]) * length)
    return path


def test_stored_ranges_are_the_written_pieces_and_allocated_ranges_the_whole_blocks(scattered):
    with open_disk(scattered) as disk:
        allocated = disk.allocated_ranges()
        stored = disk.stored_ranges()
    assert allocated == [(0, BLOCK), (GiB, BLOCK), (3 * GiB, BLOCK)]
    assert stored == PIECES


def test_a_differencing_chain_keeps_its_allocated_ranges(scattered, tmp_path):
    child = str(tmp_path / "child.avhdx")
    with create_vhdx(child, None, block_size=BLOCK, parent=scattered) as writer:
        writer.write(GiB, b"\x07" * 4096)
    with open_disk(child) as disk:
        assert disk.stored_ranges() == disk.allocated_ranges()


def _backup_of(tmp_path, image_path):
    """A repository holding one backup of the disk at ``image_path`` (read whole), chunked at CHUNK."""
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    with open_disk(image_path) as disk, repo.begin_backup("vm-id", "vm", "host", "rct", "full") as session:
        writer = session.add_disk("scsi0-0", disk.virtual_size, source_path="C:\\vm\\d.vhdx", metadata={"file_name": "d.vhdx"})
        for offset, length in disk.allocated_ranges():
            for index in range(offset // CHUNK, (offset + length) // CHUNK):
                writer.put_chunk(index, disk.read(index * CHUNK, CHUNK))
        for index in range(writer.chunk_count):
            if not any(o // CHUNK <= index < (o + n) // CHUNK for o, n in disk.allocated_ranges()):
                writer.put_chunk(index, bytes(CHUNK))
        writer.wait()
        record = session.commit()
    return repo, repo.load_disk_manifest(record.backup_id, "scsi0-0", record)


def test_verify_reads_only_the_stored_pieces_and_matches(scattered, tmp_path, monkeypatch):
    repo, manifest = _backup_of(tmp_path, scattered)
    from ansible_collections.hyperv.backup.plugins.module_utils.vdisk import vdisk
    reads = []
    real = vdisk.VirtualDisk.readinto
    monkeypatch.setattr(vdisk.VirtualDisk, "readinto", lambda self, offset, buf: (reads.append(offset), real(self, offset, buf))[1])
    check = verify_file(repo, manifest, scattered, "vhdx")
    assert check["mismatch_count"] == 0 and check["manifest_hash"] == check["restored_hash"]
    assert sorted(reads) == [5 * MiB, GiB, 3 * GiB]        # three chunks, not 96 of three whole blocks


def test_verify_finds_data_that_became_a_hole_inside_an_allocated_block(scattered, tmp_path):
    repo, manifest = _backup_of(tmp_path, scattered)
    with open_disk(scattered) as disk:
        (_offset, _length, _kind, file_offset), = disk._layers[0].runs(GiB + 4 * KiB, 8 * KiB)
    punch_hole(scattered, file_offset, 8 * KiB)                  # the 8 KiB at 1 GiB + 4 KiB are gone from the file
    check = verify_file(repo, manifest, scattered, "vhdx")
    assert check["mismatch_count"] == 1
    assert check["mismatches"][0]["offset"] == GiB and check["mismatches"][0]["found"] == "zeros"
