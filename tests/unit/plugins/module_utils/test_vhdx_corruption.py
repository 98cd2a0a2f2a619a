"""Damaged VHDX files give a VirtualDiskError naming the file and the problem (never wrong data)."""
import os
import struct
import uuid

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import create_vhdx, open_disk
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx import VhdxImage
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_format import BAT_REGION, METADATA_REGION, with_checksum

from disk_helpers import MiB, block_offsets

KiB = 1024


@pytest.fixture
def disk(tmp_path):
    path = str(tmp_path / "d.vhdx")
    with create_vhdx(path, 8 * MiB, block_size=1 * MiB) as writer:
        writer.write(0, b"\x01" * MiB)
        writer.write(5 * MiB, b"\x05" * MiB)
    return path


def regions(path):
    image = VhdxImage(path)
    try:
        return image.regions[BAT_REGION][0], image.regions[METADATA_REGION][0]
    finally:
        image.close()


def patch(path, offset, data):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def refused(path, pattern):
    with pytest.raises(VirtualDiskError, match=pattern) as err:
        open_disk(path)
    assert path in str(err.value)
    return err.value


def test_not_a_vhdx(tmp_path):
    path = str(tmp_path / "junk.vhdx")
    with open(path, "wb") as handle:
        handle.write(b"\x00" * 2 * MiB)
    refused(path, "not a VHDX or VHD")


def test_bad_file_signature(disk):
    patch(disk, 0, b"vhdxfilX")
    refused(disk, "not a VHDX or VHD")


def test_truncated_header_section(disk):
    os.truncate(disk, 100 * KiB)
    refused(disk, "smaller than the 1 MiB")


def test_truncated_payload(disk):
    os.truncate(disk, max(block_offsets(disk).values()) + 512 * KiB)
    refused(disk, "beyond the end of the file")


def test_one_bad_header_uses_the_other_both_bad_refused(disk):
    image = VhdxImage(disk)
    current = image.header.slot
    image.close()
    patch(disk, (64 + 64 * current) * KiB + 100, b"\xff")
    with open_disk(disk) as opened:
        assert opened.read(5 * MiB, 4) == b"\x05" * 4
    patch(disk, (64 + 64 * (1 - current)) * KiB + 100, b"\xff")
    refused(disk, "both VHDX headers are invalid")


def test_bad_region_table_crc(disk):
    patch(disk, 192 * KiB + 40, b"\xee")
    with open_disk(disk) as opened:              # the copy at 256 KiB is intact
        assert opened.read(0, 4) == b"\x01" * 4
    patch(disk, 256 * KiB + 40, b"\xee")
    refused(disk, "bad CRC-32C")


def test_unknown_required_region_refused(disk):
    for offset in (192 * KiB, 256 * KiB):
        with open(disk, "rb") as handle:
            handle.seek(offset)
            table = bytearray(handle.read(64 * KiB))
        count = struct.unpack_from("<I", table, 8)[0]
        struct.pack_into("<16sQII", table, 16 + 32 * count, uuid.uuid4().bytes_le, 200 * MiB, MiB, 1)
        struct.pack_into("<I", table, 8, count + 1)
        patch(disk, offset, with_checksum(table))
    refused(disk, "needs region")


@pytest.mark.parametrize("flags, opens", [(0, True), (4, False)])
def test_unknown_metadata_item(disk, flags, opens):
    _bat, metadata = regions(disk)
    with open(disk, "rb") as handle:
        handle.seek(metadata)
        table = bytearray(handle.read(64 * KiB))
    count = struct.unpack_from("<H", table, 10)[0]
    struct.pack_into("<16sIII", table, 32 + 32 * count, uuid.uuid4().bytes_le, 512 * KiB, 8, flags)
    struct.pack_into("<H", table, 10, count + 1)
    patch(disk, metadata, bytes(table))
    if opens:
        with open_disk(disk) as opened:
            assert opened.read(0, 4) == b"\x01" * 4
    else:
        refused(disk, "needs metadata item")


def test_bat_entry_beyond_eof(disk):
    bat, _metadata = regions(disk)
    patch(disk, bat + 8 * 2, struct.pack("<Q", (500 * MiB) | 6))
    refused(disk, "block 2 points beyond the end of the file")


def test_reserved_state_4(disk):
    bat, _metadata = regions(disk)
    patch(disk, bat + 8 * 3, struct.pack("<Q", 4))
    refused(disk, "reserved state 4")


def test_legacy_unmapped_state_5_reads_zeros(disk):
    bat, _metadata = regions(disk)
    patch(disk, bat, struct.pack("<Q", 5))
    with open_disk(disk) as opened:
        assert opened.read(0, MiB) == bytes(MiB)


def test_duplicate_block_offsets(disk):
    bat, _metadata = regions(disk)
    offsets = block_offsets(disk)
    patch(disk, bat + 8 * 6, struct.pack("<Q", offsets[0] | 6))
    refused(disk, "overlaps")


def test_block_overlapping_metadata(disk):
    bat, metadata = regions(disk)
    patch(disk, bat + 8 * 6, struct.pack("<Q", metadata | 6))
    refused(disk, "overlaps metadata region")
