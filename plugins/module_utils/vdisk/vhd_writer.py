# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VHD writer: create dynamic or differencing VHD files and write to them at random offsets.

Used through ``vdisk`` (``create_vhd``, ``open_vhd_for_write``, ``create_disk``, ``open_disk_for_write``).
Layout of a new file, as Hyper-V lays it out: a copy of the footer at 0, the dynamic header at 512,
the BAT at 1536 (padded to a sector with unused 0xFFFFFFFF entries), for a differencing disk the
parent locator data (W2ku absolute, W2ru relative, UTF-16LE), then blocks (a 512-byte-padded sector
bitmap followed by the block's data) in the order they are first written, and the footer in the
last 512 bytes. Everything is big-endian. The creator application is Hyper-V's ``win `` so that
qemu (and Virtual PC heirs) take the size from the footer's Current Size rather than from the CHS
geometry, which cannot express most sizes exactly.

Crash guarantee (what an interrupted write leaves): the footer never changes, and before a new
block is written past the old end of the file the footer is first written at the new end, so the
last 512 bytes are a valid footer at every moment (and the copy at offset 0 is a second one). A
BAT entry is only written (at ``flush``) after the block's bitmap and data were fsynced, and a
sector bitmap bit of a differencing disk is only set after that sector's data was fsynced. So at
any crash point the file opens and every sector reads either what it held at the last completed
``flush`` or what was written after it (never a half-allocated block, never another block's data);
space allocated but not yet in the BAT is orphaned, not visible. Like a disk's write cache, writes
since the last ``flush`` may be lost; ``close`` flushes.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import calendar
import ntpath
import os
import struct
import sys
import time
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhd import (
    DYNAMIC_COOKIE, SECTOR, TYPE_DIFFERENCING, TYPE_DYNAMIC, TYPE_FIXED, UNALLOCATED, VHD_COOKIE, VhdImage,
    vhd_checksum)
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.disk_io import block_pieces, check_write, create_new_file, round_up

MiB = 1024 * 1024
DEFAULT_BLOCK_SIZE = 2 * MiB
# Hyper-V (Windows Server 2008 R2 is version 6.1) on Windows: qemu, Virtual PC and Hyper-V read the
# size of a 'win ' file from Current Size (qemu <= 9 uses the CHS geometry for unknown creators).
CREATOR_APP = b"win "
CREATOR_VERSION = 0x00060001
CREATOR_HOST_OS = b"Wi2k"
FEATURES_RESERVED = 0x00000002          # "always set" by the specification
FORMAT_VERSION = 0x00010000
NO_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
# Hyper-V refuses VHDs larger than 2040 GiB; the BAT's 32-bit sector numbers stop at 2 TiB anyway.
MAX_VHD_SIZE = 2040 * 1024 ** 3
VHD_EPOCH = calendar.timegm((2000, 1, 1, 0, 0, 0))
FOOTER_SIZE = 512
HEADER_OFFSET = 512
HEADER_SIZE = 1024
BAT_OFFSET = HEADER_OFFSET + HEADER_SIZE
LOCATOR_SLOTS = 8
LOCATOR_TABLE = 576                      # offset of the locator entries inside the dynamic header

_FOOTER = struct.Struct(">8sIIQI4sI4sQQHBBII16sB")
_DYNAMIC_HEAD = struct.Struct(">8sQQIIII16sI4x512s")
_LOCATOR = struct.Struct(">4sIIIQ")


def chs_geometry(virtual_size):
    """(cylinders, heads, sectors per track) for a disk of ``virtual_size`` bytes: the VHD specification's algorithm."""
    total = min(virtual_size // SECTOR, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        sectors, heads = 255, 16
        cylinder_times_heads = total // sectors
    else:
        sectors = 17
        cylinder_times_heads = total // sectors
        heads = max(4, (cylinder_times_heads + 1023) // 1024)
        if cylinder_times_heads >= heads * 1024 or heads > 16:
            sectors, heads = 31, 16
            cylinder_times_heads = total // sectors
        if cylinder_times_heads >= heads * 1024:
            sectors, heads = 63, 16
            cylinder_times_heads = total // sectors
    return cylinder_times_heads // heads, heads, sectors


def vhd_timestamp(unix_seconds=None):
    """Seconds since 2000-01-01 00:00:00 UTC (what VHD timestamps count), from a Unix time (default now)."""
    seconds = int(time.time() if unix_seconds is None else unix_seconds) - VHD_EPOCH
    return min(max(seconds, 0), 0xFFFFFFFF)


def _with_checksum(raw, field_offset):
    struct.pack_into(">I", raw, field_offset, vhd_checksum(raw, field_offset))
    return bytes(raw)


def build_footer(virtual_size, disk_type, unique_id, timestamp, data_offset):
    """The 512-byte footer (Original Size = Current Size, CHS from the spec's algorithm, checksum set)."""
    cylinders, heads, sectors = chs_geometry(virtual_size)
    raw = bytearray(FOOTER_SIZE)
    _FOOTER.pack_into(raw, 0, VHD_COOKIE, FEATURES_RESERVED, FORMAT_VERSION, data_offset, timestamp, CREATOR_APP,
                      CREATOR_VERSION, CREATOR_HOST_OS, virtual_size, virtual_size, cylinders, heads, sectors, disk_type,
                      0, unique_id.bytes, 0)
    return _with_checksum(raw, 64)


def build_dynamic_header(table_offset, max_entries, block_size, parent=None):
    """The 1024-byte dynamic header; ``parent`` = {unique_id, timestamp, name, locators: [(code, space, length, offset)]}."""
    raw = bytearray(HEADER_SIZE)
    parent = parent or {}
    parent_id = parent.get("unique_id", uuid.UUID(int=0)).bytes
    name = parent.get("name", "").encode("utf-16-be")[:512]
    _DYNAMIC_HEAD.pack_into(raw, 0, DYNAMIC_COOKIE, NO_DATA_OFFSET, table_offset, FORMAT_VERSION, max_entries, block_size,
                            0, parent_id, parent.get("timestamp", 0), name)
    for index, (code, space, length, offset) in enumerate(parent.get("locators", [])):
        _LOCATOR.pack_into(raw, LOCATOR_TABLE + index * _LOCATOR.size, code, space, length, 0, offset)
    return _with_checksum(raw, 36)


def bitmap_size_for(block_size):
    """Bytes of a block's sector bitmap: one bit per 512-byte sector, padded to a whole sector."""
    return round_up(block_size // SECTOR // 8, SECTOR)


def relative_windows_path(child_path, parent_path):
    """The parent's path relative to the child's directory, the Windows way (``.\\base.vhd``, ``..\\x\\base.vhd``)."""
    relative = os.path.relpath(os.path.abspath(parent_path), os.path.dirname(os.path.abspath(child_path))).replace("/", "\\")
    return relative if relative.startswith("..") else ".\\" + relative


def check_vhd_parameters(path, virtual_size, block_size):
    """Refuse a size or block size that would make an invalid VHD, saying what is allowed."""
    if block_size < 4096 or block_size > 256 * MiB or block_size & (block_size - 1):
        raise VirtualDiskError(path, "VHD block size %r is invalid" % (block_size,),
                               hint="Use a power of two from 4 KiB to 256 MiB (2 MiB is what Hyper-V uses).")
    if not virtual_size or virtual_size < 0 or virtual_size % SECTOR:
        raise VirtualDiskError(path, "virtual size %r is invalid" % (virtual_size,),
                               hint="Use a positive multiple of 512 bytes.")
    if virtual_size > MAX_VHD_SIZE:
        raise VirtualDiskError(path, "a VHD cannot be larger than 2040 GiB (asked for %d bytes)" % virtual_size,
                               hint="Use VHDX for larger disks.")


def _parent_linkage(path, parent, parent_absolute_path, unique_id, first_locator_offset):
    """The dynamic header's parent fields and the locator data [(offset, bytes)] of a new child of ``parent``."""
    absolute = parent_absolute_path or os.path.abspath(parent)
    locators, data, offset = [], [], first_locator_offset
    for code, text in ((b"W2ku", absolute), (b"W2ru", relative_windows_path(path, parent))):
        encoded = text.encode("utf-16-le")
        space = round_up(len(encoded), SECTOR)
        # DataSpace in bytes (what Windows writes); read as sectors it would only over-state the room.
        locators.append((code, space, len(encoded), offset))
        data.append((offset, encoded))
        offset += space
    header = {"unique_id": unique_id, "timestamp": vhd_timestamp(os.stat(parent).st_mtime),
              "name": ntpath.basename(absolute.replace("/", "\\")), "locators": locators}
    return header, data, offset


def create_vhd_file(path, virtual_size, block_size=None, parent=None, parent_absolute_path=None, open_writer=True):
    """Create a new, empty dynamic (or, with ``parent``, differencing) VHD and return a VhdWriter on it.

    With a parent, ``virtual_size`` may be None (it must equal the parent's) and ``block_size`` defaults
    to the parent's. ``parent_absolute_path`` overrides the W2ku locator (e.g. a Windows path).
    ``open_writer`` False creates the file and returns None.
    """
    path = str(path)
    if parent is not None:
        parent = str(parent)
        image = VhdImage(parent)
        try:
            parent_size, parent_id = image.virtual_size, image.unique_id
            parent_block_size = image.block_size if image.disk_type != TYPE_FIXED else DEFAULT_BLOCK_SIZE
        finally:
            image.close()
        if virtual_size is not None and virtual_size != parent_size:
            raise VirtualDiskError(path, "a differencing VHD must have its parent's size %d, not %d"
                                   % (parent_size, virtual_size), hint="Leave virtual_size unset for a child.")
        virtual_size = parent_size
        block_size = block_size or parent_block_size
    block_size = block_size or DEFAULT_BLOCK_SIZE
    check_vhd_parameters(path, virtual_size, block_size)
    entries = -(-virtual_size // block_size)
    bat_length = round_up(entries * 4, SECTOR)
    end = BAT_OFFSET + bat_length
    header_parent, locator_data = None, []
    if parent is not None:
        header_parent, locator_data, end = _parent_linkage(path, parent, parent_absolute_path, parent_id, end)
    disk_type = TYPE_DIFFERENCING if parent is not None else TYPE_DYNAMIC
    footer = build_footer(virtual_size, disk_type, uuid.uuid4(), vhd_timestamp(), HEADER_OFFSET)
    fd = create_new_file(path)
    try:
        os.pwrite(fd, footer, 0)
        os.pwrite(fd, build_dynamic_header(BAT_OFFSET, entries, block_size, header_parent), HEADER_OFFSET)
        os.pwrite(fd, b"\xff" * bat_length, BAT_OFFSET)
        for offset, encoded in locator_data:
            os.pwrite(fd, encoded, offset)
        os.pwrite(fd, footer, end)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return VhdWriter(path) if open_writer else None


def _set_bits_msb(bitmap, first, count):
    """Set ``count`` bits from bit ``first`` of a VHD sector bitmap (bit 0 is the MSB of byte 0)."""
    end = first + count
    while first < end and first % 8:
        bitmap[first // 8] |= 0x80 >> (first % 8)
        first += 1
    full_end = end - end % 8
    if full_end > first:
        bitmap[first // 8:full_end // 8] = b"\xff" * ((full_end - first) // 8)
        first = full_end
    while first < end:
        bitmap[first // 8] |= 0x80 >> (first % 8)
        first += 1


class VhdWriter:
    """Random-access writes to an existing fixed, dynamic or differencing VHD (the same API as VhdxWriter)."""

    format_name = "vhd"
    logical_sector_size = SECTOR
    physical_sector_size = SECTOR

    def __init__(self, path):
        self.path = str(path)
        image = VhdImage(self.path)          # validates footer, header checksums and the BAT
        try:
            self.virtual_size = image.virtual_size
            self.block_size = image.block_size
            self.disk_type = image.disk_type
            self.has_parent = image.has_parent
            self._bat = getattr(image, "bat", None)           # a fixed VHD has no BAT
            self._bitmap_size = getattr(image, "bitmap_size", 0)
            file_size = image.file_size
        finally:
            image.close()
        try:
            self.fd = os.open(self.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except OSError as err:
            raise VirtualDiskError(self.path, "cannot open the file for writing: %s" % err.strerror,
                                   hint="Check that the file is writable by this user and not read-only.")
        self._bitmaps = {}
        self._dirty_bitmaps = set()
        self._dirty_bat = set()
        self._data_dirty = False
        if self.disk_type == TYPE_FIXED:
            return
        try:
            self._load_layout(file_size)
        except BaseException:
            os.close(self.fd)
            self.fd = None
            raise

    def _load_layout(self, file_size):
        """Where the BAT is, the footer to append after new blocks, and where the next block goes."""
        footer = None
        for offset in (file_size - FOOTER_SIZE, 0):
            raw = os.pread(self.fd, FOOTER_SIZE, offset)
            if raw[:8] == VHD_COOKIE and vhd_checksum(raw, 64) == struct.unpack_from(">I", raw, 64)[0]:
                footer = raw
                break
        if footer is None:
            raise VirtualDiskError(self.path, "no valid VHD footer at the end or the start of the file",
                                   hint="Only files with a 512-byte footer can be written; convert the image with qemu-img.")
        self._footer = footer
        data_offset = struct.unpack_from(">Q", footer, 16)[0]
        header = os.pread(self.fd, HEADER_SIZE, data_offset)
        self._table_offset = struct.unpack_from(">Q", header, 16)[0]
        used_end = max(data_offset + HEADER_SIZE, self._table_offset + len(self._bat) * 4)
        if self.has_parent:
            for index in range(LOCATOR_SLOTS):
                _code, space, length, _reserved, offset = _LOCATOR.unpack_from(header, LOCATOR_TABLE + index * _LOCATOR.size)
                if length:
                    used_end = max(used_end, offset + max(space if space >= length else space * SECTOR, length))
        for entry in self._bat:
            if entry != UNALLOCATED:
                used_end = max(used_end, entry * SECTOR + self._bitmap_size + self.block_size)
        # Never write over anything already in the file (but the trailing footer, which moves to the new end).
        self._next_free = round_up(max(used_end, file_size - FOOTER_SIZE), SECTOR)
        if self._next_free + self._bitmap_size + self.block_size > 0xFFFFFFFF * SECTOR:
            raise VirtualDiskError(self.path, "the file is too large to add blocks (VHD block offsets stop at 2 TiB)")

    # --- public API -------------------------------------------------------------------------

    def write(self, offset, data):
        """Write ``data`` at virtual byte ``offset`` (both multiples of 512)."""
        if self.fd is None:
            raise VirtualDiskError(self.path, "write after close")
        view = memoryview(data).cast("B")
        length = len(view)
        check_write(self.path, offset, length, SECTOR, self.virtual_size)
        if not length:
            return
        if self.disk_type == TYPE_FIXED:
            os.pwrite(self.fd, view, offset)
            self._data_dirty = True
            return
        for block, within, start, piece in block_pieces(offset, length, self.block_size):
            self._write_piece(block, within, view[start:start + piece])
        self._data_dirty = True

    def flush(self):
        """Make written data durable, then the sector bitmaps and BAT entries that expose it (in that order)."""
        if self.fd is None or not self._data_dirty:
            return
        os.fsync(self.fd)
        if self._dirty_bitmaps or self._dirty_bat:
            for block in sorted(self._dirty_bitmaps):
                os.pwrite(self.fd, bytes(self._bitmaps[block]), self._bat[block] * SECTOR)
            raw = self._bat.tobytes() if sys.byteorder == "big" else _swapped(self._bat)
            for sector in sorted(self._dirty_bat):
                chunk = raw[sector * SECTOR:(sector + 1) * SECTOR]
                os.pwrite(self.fd, chunk, self._table_offset + sector * SECTOR)
            self._dirty_bitmaps.clear()
            self._dirty_bat.clear()
            os.fsync(self.fd)
        self._data_dirty = False

    def close(self):
        if self.fd is None:
            return
        try:
            self.flush()
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- internals ------------------------------------------------------------------------

    def _write_piece(self, block, within, piece):
        entry = self._bat[block]
        if entry == UNALLOCATED:
            entry = self._allocate(block)
        os.pwrite(self.fd, piece, entry * SECTOR + self._bitmap_size + within)
        if self.has_parent:
            bitmap = self._bitmap(block)
            _set_bits_msb(bitmap, within // SECTOR, len(piece) // SECTOR)
            self._dirty_bitmaps.add(block)

    def _bitmap(self, block):
        bitmap = self._bitmaps.get(block)
        if bitmap is None:
            bitmap = self._bitmaps[block] = bytearray(os.pread(self.fd, self._bitmap_size, self._bat[block] * SECTOR))
        return bitmap

    def _allocate(self, block):
        """Append a block: footer at the new end first, then its bitmap; the BAT entry waits for flush."""
        offset = self._next_free
        new_end = offset + self._bitmap_size + self.block_size
        os.pwrite(self.fd, self._footer, new_end)          # the file never lacks a footer at its end
        if self.has_parent:
            # Sectors not written read from the parent until their bit is set (after their data is durable).
            self._bitmaps[block] = bytearray(self._bitmap_size)
            os.pwrite(self.fd, bytes(self._bitmap_size), offset)
        else:
            # A dynamic disk's fresh block is zeros (new space in the file), all of it valid: every bit set, as qemu does.
            os.pwrite(self.fd, b"\xff" * self._bitmap_size, offset)
        self._next_free = new_end
        entry = offset // SECTOR
        self._bat[block] = entry
        self._dirty_bat.add(block * 4 // SECTOR)
        return entry


def _swapped(values):
    copy = values[:]
    copy.byteswap()
    return copy.tobytes()
