"""Pending VHDX log: replayed in memory (file untouched), same result as qemu's `check -r all`; bad logs refused."""
import shutil
import struct
import uuid

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import create_vhdx, open_disk, open_vhdx_for_write
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_log import find_active_sequence

from disk_helpers import MiB, log_entry, make_dirty, needs_qemu, qemu_to_raw, run, sha


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


def _ring(entries, log_length=MiB):
    log = bytearray(log_length)
    for position, entry in entries:
        end = position + len(entry)
        if end <= log_length:
            log[position:end] = entry
        else:                                  # the entry wraps around the end of the ring
            split = log_length - position
            log[position:] = entry[:split]
            log[:end - log_length] = entry[split:]
    return bytes(log) + bytes(log)


def test_active_sequence_is_the_newest_and_starts_at_its_tail():
    guid = uuid.uuid4()
    target = 3 * MiB
    first = log_entry(5, guid, [(target, b"\x05" * 4096)], 4 * MiB, 4 * MiB, tail=0)
    second = log_entry(6, guid, [(target, b"\x06" * 4096), (target + 4096, b"\x07" * 4096)], 4 * MiB, 4 * MiB, tail=0)
    stale = log_entry(2, guid, [(target, b"\x02" * 4096)], 4 * MiB, 4 * MiB, tail=512 * 1024)
    ring = _ring([(0, first), (len(first), second), (512 * 1024, stale)])
    active = find_active_sequence(ring, MiB, guid.bytes_le)
    assert [entry.sequence for entry in active] == [5, 6]
    assert active[-1].writes[0] == (target, b"\x06" * 4096)
    # A head whose tail is itself makes a one-entry sequence; an entry of another log is ignored.
    second_alone = log_entry(6, guid, [(target, b"\x06" * 4096)], 4 * MiB, 4 * MiB, tail=len(first))
    other_log = log_entry(7, uuid.uuid4(), [(target, b"\x09" * 4096)], 4 * MiB, 4 * MiB, tail=len(first) * 2)
    ring = _ring([(0, first), (len(first), second_alone), (len(first) * 2, other_log)])
    assert [entry.sequence for entry in find_active_sequence(ring, MiB, guid.bytes_le)] == [6]


def test_entry_wrapping_around_the_ring_end():
    guid = uuid.uuid4()
    position = MiB - 4096
    entry = log_entry(9, guid, [(2 * MiB, b"\x0a" * 4096)], 3 * MiB, 3 * MiB, tail=position)
    assert len(entry) == 8192
    active = find_active_sequence(_ring([(position, entry)]), MiB, guid.bytes_le)
    assert [(e.sequence, e.position) for e in active] == [(9, position)]
    assert active[0].writes == [(2 * MiB, b"\x0a" * 4096)]
    assert find_active_sequence(_ring([]), MiB, guid.bytes_le) is None
