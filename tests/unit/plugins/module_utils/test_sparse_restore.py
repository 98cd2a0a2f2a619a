"""Restored disks stay sparse (issue 14): zero ranges are holes in raw and VHDX output, and the content is the source's.

A lab VM with a large virtual disk (64 GiB, 4 TiB, 64 TiB) gets a few 1 MiB guest writes at 4 KiB-aligned offsets that
are not chunk-aligned, so every written chunk is half data, half zero pages. After a backup and a restore:
- raw: the data extents (SEEK_DATA / SEEK_HOLE) are exactly the written pages and st_blocks is about the data written;
- VHDX: only blocks with data have BAT entries, the file is not much larger than its data (smaller blocks for a
  large disk), the log region and unwritten BAT pages are holes;
- `qemu-img compare` says identical against a sparse reference image built from the source disk.
"""
import os
import subprocess

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.backup import restore_engine
from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import run_backup
from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import run_restore
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.host.disk_access import map_path
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk import direct_io
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx import VhdxImage
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_bat import PAYLOAD_NOT_PRESENT
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_format import BAT_REGION

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
PAGE = 4 * KiB
# 1 MiB writes starting 12 KiB into a chunk: each covers the tail of one chunk and the head of the next; the last one
# ends 4 KiB before the disk's end
WRITE = MiB


def _offsets(size):
    return [3 * PAGE, size // 3 // PAGE * PAGE + 5 * PAGE, size // 2 + 5 * PAGE, size - WRITE - PAGE]


def _extents(path):
    """[(start, end)] of the data extents of a file (SEEK_DATA / SEEK_HOLE)."""
    out, position = [], 0
    with open(path, "rb") as handle:
        fd, size = handle.fileno(), os.fstat(handle.fileno()).st_size
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            position = end
    return out


def _backed_up(tmp_path, size):
    """A backup of a lab VM with a ``size`` disk and four 1 MiB writes; (repo, source disk path, written ranges)."""
    directory = str(tmp_path / "lab")
    layout = LabLayout(directory, "h22")
    lab_admin.ensure_host(layout, era="2022")
    lab_admin.ensure_vm(layout, {"name": "big", "disks": [{"size": size}]})
    churned = lab_admin.churn(layout, "big", seed=5, write_size=WRITE, offsets=_offsets(size))
    repo = Repository.init(str(tmp_path / "repo"))
    params = dict(transport="lab", host="h22", lab_directory=directory, vm="big")
    with HostSession.from_module_params(params) as session:
        run_backup(session, repo, params)
        source = map_path(session.run("get_vms", names=["big"])[0]["disks"][0]["path"], session.path_map())
    written = sorted((w["offset"], w["offset"] + w["length"]) for w in churned["writes"])
    return repo, source, written


def _reference(source, path):
    """A sparse raw image with the source disk's content: only its allocated ranges are written."""
    with open_disk(source) as disk, open(path, "wb") as out:
        out.truncate(disk.virtual_size)
        for offset, length in disk.allocated_ranges():
            out.seek(offset)
            out.write(disk.read(offset, length))
    return path


def _restore(repo, tmp_path, fmt):
    result = run_restore(repo, {"vm": "big", "destination": str(tmp_path / ("out_" + fmt)), "format": fmt})
    disk = result["disks"][0]
    assert disk["verified"] and disk["manifest_hash"] == disk["restored_hash"]
    return disk["path"]


def _identical(a, b, fmt_a="raw", fmt_b="raw"):
    done = subprocess.run(["qemu-img", "compare", "-f", fmt_a, "-F", fmt_b, a, b], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "identical" in done.stdout


@pytest.mark.parametrize("size", [64 * GiB, 4 * TiB], ids=["64GiB", "4TiB"])
def test_raw_restore_writes_only_the_written_pages(tmp_path, size):
    repo, source, written = _backed_up(tmp_path, size)
    path = _restore(repo, tmp_path, "raw")
    assert os.path.getsize(path) == size
    # the data extents are the written ranges, nothing of the zero pages around them in the same chunks
    assert _extents(path) == written, "data outside the guest's writes (zero pages written) or writes missing"
    data = sum(end - start for start, end in written)
    assert os.stat(path).st_blocks * 512 <= data + 64 * KiB        # (+ the extent tree's blocks)
    _identical(path, _reference(source, str(tmp_path / "reference.raw")))


@pytest.mark.parametrize("size", [64 * GiB, 4 * TiB, 64 * TiB], ids=["64GiB", "4TiB", "64TiB"])
def test_vhdx_restore_allocates_only_blocks_with_data(tmp_path, size):
    repo, source, written = _backed_up(tmp_path, size)
    path = _restore(repo, tmp_path, "vhdx")
    block = restore_engine.restore_block_size(size)
    assert block == {64 * GiB: MiB, 4 * TiB: 2 * MiB, 64 * TiB: 32 * MiB}[size]
    with_data = sorted(set(b for start, end in written for b in range(start // block, (end - 1) // block + 1)))
    image = VhdxImage(path)
    try:
        assert image.block_size == block
        present = [b for b in range(image.block_count) if image.block_entry(b) & 7 != PAYLOAD_NOT_PRESENT]
        bat_offset, bat_length = image.regions[BAT_REGION]
        log_offset, log_length = image.header.log_offset, image.header.log_length
    finally:
        image.close()
    assert present == with_data, "BAT entries for blocks without data"
    # the file holds its headers, metadata and BAT region, then one block per block with data, nothing else
    assert os.path.getsize(path) <= bat_offset + bat_length + len(with_data) * block
    extents = _extents(path)
    data = sum(end - start for start, end in written)
    allocated = sum(end - start for start, end in extents)
    # file identifier, two headers, two region tables, the metadata table and its items (one 4 KiB page each), one BAT
    # page per block with data, and the data
    assert allocated <= data + 7 * PAGE + len(with_data) * PAGE, extents
    assert os.stat(path).st_blocks * 512 <= allocated + 64 * KiB
    for start, end in extents:      # the log and the untouched BAT pages are holes
        assert end <= log_offset or start >= log_offset + log_length
    bat_data = sum(min(end, bat_offset + bat_length) - max(start, bat_offset) for start, end in extents
                   if start < bat_offset + bat_length and end > bat_offset)
    assert bat_data <= len(with_data) * PAGE
    # the content, read back through the collection's reader, is the source's
    with open_disk(path) as restored, open_disk(source) as original:
        covered = set(b for start, length in restored.allocated_ranges() for b in range(start // block, (start + length - 1) // block + 1))
        assert sorted(covered) == with_data
        for start, end in written:
            assert restored.read(start - PAGE, end - start + 2 * PAGE) == original.read(start - PAGE, end - start + 2 * PAGE)
    subprocess.run(["qemu-img", "check", "-f", "vhdx", path], check=True, capture_output=True)


def test_vhdx_and_raw_restores_are_identical_to_the_source_for_qemu_img(tmp_path):
    """qemu-img 7's VHDX driver reads unallocated blocks as data, so the VHDX comparison runs on a 2 GiB disk."""
    repo, source, _written = _backed_up(tmp_path, 2 * GiB)
    reference = _reference(source, str(tmp_path / "reference.raw"))
    _identical(_restore(repo, tmp_path, "raw"), reference)
    _identical(_restore(repo, tmp_path, "vhdx"), reference, fmt_a="vhdx")
    _identical(source, reference, fmt_a="vhdx")


# --- the direct I/O channel the restore writes and verifies through --------------------------------------------------

def test_direct_channel_sends_aligned_pieces_direct_and_the_rest_buffered(tmp_path, monkeypatch):
    path = str(tmp_path / "f.raw")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 4 * MiB)
    channel = direct_io.DirectChannel(fd, writable=True)
    if not channel.direct:
        pytest.skip("this filesystem has no O_DIRECT")
    used = []
    real_pwrite = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda f, data, offset: (used.append((f, offset)), real_pwrite(f, data, offset))[1])
    buf = direct_io.aligned_buffer(MiB)
    buf[:] = os.urandom(MiB)
    with memoryview(buf) as view:
        channel.pwrite(view, MiB)                          # aligned: direct
        channel.pwrite(view[:1536], 3 * MiB)               # a short tail: buffered
    assert used == [(channel.direct_fd, MiB), (fd, 3 * MiB)]
    unaligned = bytearray(PAGE + 1)
    with memoryview(unaligned) as view:
        channel.pwrite(view[1:], 2 * MiB)                  # an unaligned buffer: EINVAL, then buffered for good
    assert used[-1] == (fd, 2 * MiB) and not channel.direct
    channel.close()
    os.close(fd)
    with open(path, "rb") as handle:
        content = handle.read()
    assert content[MiB:2 * MiB] == bytes(buf) and content[3 * MiB:3 * MiB + 1536] == bytes(buf[:1536])
    assert content[2 * MiB:2 * MiB + PAGE] == bytes(PAGE)


def test_data_runs_skip_whole_zero_pages_only():
    chunk = bytearray(os.urandom(64 * KiB))
    chunk[4 * KiB:12 * KiB] = bytes(8 * KiB)           # two zero pages
    chunk[20 * KiB + 1:24 * KiB] = bytes(4 * KiB - 1)   # not a whole zero page
    chunk[60 * KiB:] = bytes(4 * KiB)                  # a zero page at the end
    assert restore_engine._data_runs(bytes(chunk), len(chunk)) == [(0, 4 * KiB), (12 * KiB, 60 * KiB)]
    assert restore_engine._data_runs(bytes(KiB), KiB) == [(0, KiB)]     # a short zero tail is not a page: written
    assert restore_engine._data_runs(bytes(8 * KiB), 8 * KiB) == []
