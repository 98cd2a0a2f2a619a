"""Helpers for the virtual disk tests: qemu-img oracle calls, random images, dirty-log and VHD builders."""
import json
import os
import random
import shutil
import struct
import subprocess
import uuid

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.crc32c import crc32c
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.disk_io import round_up
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx import VhdxImage
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_bat import OFFSET_MASK, PAYLOAD_FULLY_PRESENT
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_format import HEADER_OFFSETS, build_header

MiB = 1024 * 1024
KiB = 1024

needs_qemu = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")


def run(*cmd, check=True):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError("%s failed (%d): %s %s" % (" ".join(map(str, cmd)), result.returncode, result.stdout, result.stderr))
    return result


def qemu_info(path, fmt="vhdx"):
    return json.loads(run("qemu-img", "info", "-f", fmt, "--output=json", path).stdout)


def qemu_to_raw(path, raw_path, fmt="vhdx"):
    run("qemu-img", "convert", "-f", fmt, "-O", "raw", path, raw_path)
    with open(raw_path, "rb") as handle:
        return handle.read()


def random_image(size, seed, extents=12, max_extent=3 * MiB):
    """A raw image with random data extents (unaligned edges) between zero holes."""
    rnd = random.Random(seed)
    data = bytearray(size)
    for _extent in range(extents):
        offset = rnd.randrange(0, size)
        length = min(size - offset, rnd.randrange(1, max_extent))
        data[offset:offset + length] = rnd.randbytes(length)
    return data


def write_file(path, data):
    with open(path, "wb") as handle:
        handle.write(data)


def sha(path):
    import hashlib
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def random_ranges(size, seed, count=200, max_length=5 * MiB):
    rnd = random.Random(seed)
    out = [(0, size), (size - 1, 1), (0, 1)]
    for _pair in range(count):
        offset = rnd.randrange(0, size)
        out.append((offset, rnd.randrange(0, min(max_length, size - offset) + 1)))
    return out


def assert_reads_match(disk, expected, seed=0, count=200):
    for offset, length in random_ranges(len(expected), seed, count):
        got = disk.read(offset, length)
        assert got == bytes(expected[offset:offset + length]), "mismatch at offset %d length %d" % (offset, length)


def assert_ranges_cover(ranges, expected):
    """Every non-zero byte of ``expected`` lies inside one of ``ranges`` (sorted, merged, in bounds)."""
    covered = bytearray(len(expected))
    previous_end = -1
    for offset, length in ranges:
        assert length > 0 and offset > previous_end and offset + length <= len(expected)
        previous_end = offset + length
        covered[offset:offset + length] = b"\x01" * length
    view = memoryview(expected)
    step = 64 * KiB
    for start in range(0, len(expected), step):
        chunk = bytes(view[start:start + step])
        if chunk.count(0) != len(chunk):
            mask = covered[start:start + step]
            for index, byte in enumerate(chunk):
                if byte:
                    assert mask[index], "non-zero byte at %d outside allocated_ranges" % (start + index)


# --- dirty log builder (MS-VHDX 2.3.1) ---------------------------------------------------------

def log_entry(sequence, log_guid, writes, flushed_file_offset, last_file_offset, tail=0):
    """One log entry with a 'desc' + data sector per 4 KiB write ``(file_offset, sector)``."""
    count = len(writes)
    descriptor_area = round_up(64 + 32 * count, 4096)
    length = descriptor_area + 4096 * count
    entry = bytearray(length)
    struct.pack_into("<4sIIIQII16sQQ", entry, 0, b"loge", 0, length, tail, sequence, count, 0, log_guid.bytes_le,
                     flushed_file_offset, last_file_offset)
    for index, (file_offset, sector) in enumerate(writes):
        assert len(sector) == 4096
        trailing = struct.unpack_from("<I", sector, 4092)[0]
        leading = struct.unpack_from("<Q", sector, 0)[0]
        struct.pack_into("<4sIQQQ", entry, 64 + 32 * index, b"desc", trailing, leading, file_offset, sequence)
        data = descriptor_area + 4096 * index
        struct.pack_into("<4sI", entry, data, b"data", sequence >> 32)
        entry[data + 8:data + 4092] = sector[8:4092]
        struct.pack_into("<I", entry, data + 4092, sequence & 0xFFFFFFFF)
    struct.pack_into("<I", entry, 4, crc32c(entry))
    return bytes(entry)


def make_dirty(clean_path, dirty_path, block, pattern):
    """Copy ``clean_path`` to ``dirty_path`` with a new data block whose BAT entry exists only in the log."""
    shutil.copyfile(clean_path, dirty_path)
    image = VhdxImage(dirty_path)
    try:
        header = image.header
        bat_offset = [o for g, (o, _l) in image.regions.items() if str(g).upper().startswith("2DC27766")][0]
        index = block + block // image.chunk_ratio
        assert image.bat[index] & 7 != PAYLOAD_FULLY_PRESENT
        new_block_offset = round_up(image.file_size, MiB)
        page = (index * 8) // 4096
        bat_page = bytearray(image.read_structure(bat_offset + page * 4096, 4096))
        struct.pack_into("<Q", bat_page, index * 8 - page * 4096, new_block_offset | PAYLOAD_FULLY_PRESENT)
        block_size = image.block_size
        log_offset, log_length = header.log_offset, header.log_length
        sequence, slot = header.sequence, header.slot
    finally:
        image.close()
    file_end = new_block_offset + block_size
    with open(dirty_path, "r+b") as handle:
        handle.truncate(file_end)
        handle.seek(new_block_offset)
        handle.write(pattern * (block_size // len(pattern)))
        log_guid = uuid.uuid4()
        entry = log_entry(1, log_guid, [(bat_offset + page * 4096, bytes(bat_page))], file_end, file_end)
        assert len(entry) <= log_length
        handle.seek(log_offset)
        handle.write(entry)
        handle.seek(HEADER_OFFSETS[1 - slot])
        handle.write(build_header(sequence + 1, uuid.uuid4(), uuid.uuid4(), log_guid, log_offset, log_length))
    return new_block_offset, log_offset


# --- VHD builder (for differencing VHDs, which qemu cannot create) -----------------------------

def _vhd_checksum(raw, field):
    return ~(sum(raw) - sum(raw[field:field + 4])) & 0xFFFFFFFF


def vhd_footer(size, disk_type, data_offset, unique_id):
    footer = bytearray(512)
    struct.pack_into(">8sIIQI4sI4sQQHBBII16sB", footer, 0, b"conectix", 2, 0x10000, data_offset, 0, b"win ", 0x000A0000,
                     b"Wi2k", size, size, 1024, 16, 63, disk_type, 0, unique_id.bytes, 0)
    struct.pack_into(">I", footer, 64, _vhd_checksum(footer, 64))
    return bytes(footer)


def make_vhd(path, size, blocks, block_size=2 * MiB, parent=None):
    """Write a dynamic (or, with parent=(path, unique_id, relative), differencing) VHD.

    ``blocks``: {block index: (bitmap bytes or None for all sectors, block data)}.
    Returns the footer's unique id.
    """
    unique_id = uuid.uuid4()
    entries = -(-size // block_size)
    bat_offset = 512 + 1024
    bat_size = round_up(entries * 4, 512)
    locator_offset = bat_offset + bat_size
    bitmap_size = round_up(block_size // 512 // 8, 512)
    header = bytearray(1024)
    locators = b""
    parent_id = uuid.UUID(int=0)
    if parent is not None:
        parent_path, parent_id, relative = parent
        locators = relative.encode("utf-16-le")
        name = os.path.basename(parent_path).encode("utf-16-be")
        header[64:64 + len(name)] = name
        struct.pack_into(">4sIIIQ", header, 576, b"W2ru", 512, len(locators), 0, locator_offset)
    struct.pack_into(">8sQQIIII16sI", header, 0, b"cxsparse", 0xFFFFFFFFFFFFFFFF, bat_offset, 0x10000, entries, block_size, 0,
                     parent_id.bytes, 0)
    struct.pack_into(">I", header, 36, _vhd_checksum(header, 36))
    footer = vhd_footer(size, 4 if parent is not None else 3, 512, unique_id)
    data_start = locator_offset + (512 if parent is not None else 0)
    bat = [0xFFFFFFFF] * entries
    body = bytearray()
    for index in sorted(blocks):
        bitmap, data = blocks[index]
        if bitmap is None:
            bitmap = b"\xff" * (block_size // 512 // 8)
        bat[index] = (data_start + len(body)) // 512
        body += bitmap.ljust(bitmap_size, b"\x00") + data.ljust(block_size, b"\x00")
    with open(path, "wb") as handle:
        handle.write(footer)
        handle.write(header)
        handle.write(struct.pack(">%dI" % entries, *bat).ljust(bat_size, b"\xff"))
        if parent is not None:
            handle.write(locators.ljust(512, b"\x00"))
        handle.write(body)
        handle.write(footer)
    return unique_id


def block_offsets(path):
    """{block: file offset} of the present payload blocks of a VHDX (for corruption tests)."""
    image = VhdxImage(path)
    try:
        return dict((b, image.block_entry(b) & OFFSET_MASK) for b in range(image.block_count)
                    if image.block_entry(b) & 7 == PAYLOAD_FULLY_PRESENT)
    finally:
        image.close()
