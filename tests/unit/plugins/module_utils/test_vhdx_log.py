"""Pending VHDX log: replayed in memory (file untouched), same result as qemu's `check -r all`; bad logs refused."""
import shutil
import struct

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk import create_vhdx, open_disk, open_vhdx_for_write

from disk_helpers import MiB, make_dirty, needs_qemu, qemu_to_raw, run, sha


def clean_disk(path):
    with create_vhdx(path, 8 * MiB, block_size=1 * MiB) as writer:
        writer.write(0, b"\x11" * MiB)


@needs_qemu
def test_dirty_log_replayed_in_memory_like_qemu(tmp_path):
    clean, dirty = tmp_path / "clean.vhdx", tmp_path / "dirty.vhdx"
    clean_disk(clean)
    make_dirty(clean, dirty, block=3, pattern=b"\xab\xcd")
    before = sha(dirty)
    # qemu refuses the read-only open of a dirty file; the repaired copy is the oracle.
    assert run("qemu-img", "convert", "-f", "vhdx", "-O", "raw", dirty, tmp_path / "x.raw", check=False).returncode != 0
    repaired = tmp_path / "repaired.vhdx"
    shutil.copyfile(dirty, repaired)
    run("qemu-img", "check", "-r", "all", "-f", "vhdx", repaired, check=False)
    expected = qemu_to_raw(repaired, tmp_path / "expected.raw")
    assert expected[3 * MiB:4 * MiB] == b"\xab\xcd" * (MiB // 2)      # the oracle did replay the log
    with open_disk(dirty) as disk:
        assert disk.read(0, disk.virtual_size) == expected
        assert (3 * MiB, MiB) in disk.allocated_ranges()
    assert sha(dirty) == before


def test_corrupt_log_entry_is_refused(tmp_path):
    clean, dirty = tmp_path / "clean.vhdx", tmp_path / "dirty.vhdx"
    clean_disk(clean)
    _block, log_offset = make_dirty(clean, dirty, block=2, pattern=b"\x01")
    with open(dirty, "r+b") as handle:            # flip one byte of the data sector: entry CRC no longer matches
        handle.seek(log_offset + 4096 + 100)
        byte = handle.read(1)
        handle.seek(log_offset + 4096 + 100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(VirtualDiskError, match="no valid, complete log sequence") as err:
        open_disk(dirty)
    assert "qemu-img check -r all" in str(err.value)


def test_truncated_file_with_log_is_refused(tmp_path):
    clean, dirty = tmp_path / "clean.vhdx", tmp_path / "dirty.vhdx"
    clean_disk(clean)
    block_offset, _log = make_dirty(clean, dirty, block=2, pattern=b"\x01")
    with open(dirty, "r+b") as handle:
        handle.truncate(block_offset)
    with pytest.raises(VirtualDiskError, match="truncated"):
        open_disk(dirty)


def test_log_with_wrong_guid_is_refused_and_not_writable(tmp_path):
    clean, dirty = tmp_path / "clean.vhdx", tmp_path / "dirty.vhdx"
    clean_disk(clean)
    _block, log_offset = make_dirty(clean, dirty, block=2, pattern=b"\x01")
    with pytest.raises(VirtualDiskError, match="pending log"):
        open_vhdx_for_write(dirty)
    with open(dirty, "r+b") as handle:             # entry belongs to another log (GUID differs)
        handle.seek(log_offset + 32)
        handle.write(struct.pack("<Q", 12345))
    with pytest.raises(VirtualDiskError, match="log"):
        open_disk(dirty)
