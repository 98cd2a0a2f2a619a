# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VHDX writer: create dynamic or differencing VHDX files and write to them at random offsets.

Used through ``vdisk`` (``create_vhdx``, ``open_vhdx_for_write``, ``write_vhdx_from``). Layout of a
new file: header section, a 1 MiB log at 1 MiB (kept empty, LogGuid 0), the metadata region at
2 MiB, the BAT at 3 MiB, then payload and sector bitmap blocks at 1 MiB-aligned offsets in the order
they are first written. Crash order on flush: data blocks, fsync, bitmaps and BAT, fsync, headers
(the non-current one first), fsync, so the file on disk is always a valid VHDX.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import sys
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.direct_io import DirectChannel
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.disk_io import block_pieces, check_write, create_new_file, round_up
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx import VhdxImage
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_bat import (
    OFFSET_MASK, PAYLOAD_FULLY_PRESENT, PAYLOAD_NOT_PRESENT, PAYLOAD_PARTIALLY_PRESENT, SB_PRESENT, SECTORS_PER_BITMAP,
    ZERO_STATES, bat_entry_count)
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_format import (
    BAT_REGION, FILE_SIGNATURE, HEADER_OFFSETS, METADATA_REGION, MiB, REGION_TABLE_OFFSETS, build_header, build_metadata_region,
    build_region_table)

CREATOR = "hyperv.backup"
LOG_OFFSET = 1 * MiB
LOG_LENGTH = 1 * MiB
METADATA_OFFSET = 2 * MiB
BAT_OFFSET = 3 * MiB
_PAGE = 4096


def check_geometry(path, virtual_size, block_size, logical_sector_size, physical_sector_size):
    """Refuse parameters that would make an invalid VHDX, saying which one and what is allowed."""
    if block_size < MiB or block_size > 256 * MiB or block_size & (block_size - 1):
        raise VirtualDiskError(path, "block size %r is invalid" % (block_size,),
                               hint="Use a power of two from 1 MiB to 256 MiB (32 MiB is the usual default).")
    if logical_sector_size not in (512, 4096) or physical_sector_size not in (512, 4096):
        raise VirtualDiskError(path, "sector sizes must be 512 or 4096 (got logical %r, physical %r)"
                               % (logical_sector_size, physical_sector_size))
    if not virtual_size or virtual_size % logical_sector_size or virtual_size > 64 * 1024 ** 4:
        raise VirtualDiskError(path, "virtual size %r is invalid" % (virtual_size,),
                               hint="Use a positive multiple of the logical sector size (%d), at most 64 TiB."
                               % logical_sector_size)


def parent_locator_for(child_path, parent_path, parent_image, absolute_path=None):
    """Parent locator entries: linkage to the parent's DataWriteGuid plus relative and absolute paths."""
    parent_abs = os.path.abspath(parent_path)
    relative = os.path.relpath(parent_abs, os.path.dirname(os.path.abspath(child_path))).replace("/", "\\")
    if not relative.startswith(".."):
        relative = ".\\" + relative
    return {
        "parent_linkage": "{%s}" % parent_image.header.data_write_guid,
        "relative_path": relative,
        "absolute_win32_path": absolute_path or parent_abs,
    }


def create_vhdx_file(path, virtual_size, block_size=32 * MiB, logical_sector_size=512, physical_sector_size=4096,
                     parent=None, parent_absolute_path=None, open_writer=True):
    """Create a new, empty dynamic (or, with ``parent``, differencing) VHDX and return a VhdxWriter on it.

    ``open_writer`` False returns None: a writer reads and checks the whole BAT (16 MiB for 64 TiB) at open, which
    a caller that only creates the file (a checkpoint's child) does not need."""
    path = str(path)
    parent_locator = None
    if parent is not None:
        parent_image = VhdxImage(parent, metadata_only=True)     # its ids and sizes; its BAT is not needed
        try:
            if virtual_size is None:
                virtual_size = parent_image.virtual_size
            if parent_image.logical_sector_size != logical_sector_size:
                raise VirtualDiskError(path, "the parent %s has %d-byte logical sectors, the child would have %d"
                                       % (parent, parent_image.logical_sector_size, logical_sector_size),
                                       hint="Create the child with the parent's logical sector size.")
            parent_locator = parent_locator_for(path, parent, parent_image, parent_absolute_path)
        finally:
            parent_image.close()
    check_geometry(path, virtual_size, block_size, logical_sector_size, physical_sector_size)
    entries = bat_entry_count(virtual_size, block_size, logical_sector_size, parent is not None)
    bat_length = round_up(entries * 8, MiB)
    fd = create_new_file(path)
    try:
        identifier = bytearray(64 * 1024)
        identifier[0:8] = FILE_SIGNATURE
        creator = CREATOR.encode("utf-16-le")
        identifier[8:8 + len(creator)] = creator
        _write_trimmed(fd, bytes(identifier), 0)
        regions = build_region_table([(BAT_REGION, BAT_OFFSET, bat_length, True),
                                      (METADATA_REGION, METADATA_OFFSET, MiB, True)])
        for offset in REGION_TABLE_OFFSETS:
            _write_trimmed(fd, regions, offset)
        metadata = build_metadata_region(block_size, virtual_size, uuid.uuid4(), logical_sector_size, physical_sector_size,
                                         has_parent=parent is not None, parent_locator=parent_locator)
        _write_trimmed(fd, metadata, METADATA_OFFSET)
        # the log, the rest of the metadata region and the BAT (all zeros: no block present) stay holes
        os.ftruncate(fd, BAT_OFFSET + bat_length)
        file_write, data_write, no_log = uuid.uuid4(), uuid.uuid4(), uuid.UUID(int=0)
        for sequence, offset in enumerate(HEADER_OFFSETS, start=1):
            os.pwrite(fd, build_header(sequence, file_write, data_write, no_log, LOG_OFFSET, LOG_LENGTH), offset)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return VhdxWriter(path) if open_writer else None


def _write_trimmed(fd, data, offset):
    """Write the pages of ``data`` that are not all zeros: in a new file the others read as zeros anyway, and the
    64 KiB identifier, the 64 KiB region tables and the 1 MiB metadata region are mostly zeros (holes instead)."""
    zero = bytes(_PAGE)
    start = None
    for page in range(0, len(data) + _PAGE, _PAGE):
        empty = page >= len(data) or data[page:page + _PAGE] == zero[:len(data) - page]
        if empty and start is not None:
            os.pwrite(fd, data[start:page], offset + start)
            start = None
        elif not empty and start is None:
            start = page


def _set_bits(bitmap, first, count, value):
    """Set (value=True) or clear ``count`` bits from bit ``first`` of ``bitmap`` (LSB first)."""
    end = first + count
    while first < end and first % 8:
        _set_bit(bitmap, first, value)
        first += 1
    full_end = end - end % 8
    if full_end > first:
        bitmap[first // 8:full_end // 8] = (b"\xff" if value else b"\x00") * ((full_end - first) // 8)
        first = full_end
    while first < end:
        _set_bit(bitmap, first, value)
        first += 1


def _set_bit(bitmap, bit, value):
    if value:
        bitmap[bit // 8] |= 1 << (bit % 8)
    else:
        bitmap[bit // 8] &= ~(1 << (bit % 8)) & 0xFF


class VhdxWriter:
    """Random-access writes to an existing dynamic or differencing VHDX (no pending log)."""

    def __init__(self, path):
        self.image = VhdxImage(path, writable=True)
        self.path = self.image.path
        self.virtual_size = self.image.virtual_size
        self.block_size = self.image.block_size
        self.logical_sector_size = self.image.logical_sector_size
        self.physical_sector_size = self.image.physical_sector_size
        self._data_dirty = False
        self._bat_pages = set()
        self._bitmaps_dirty = set()
        self._session_started = False
        self._next_free = self._first_free_offset()
        self._channel = None

    def _first_free_offset(self):
        # every block and sector bitmap an entry points to lies inside the file (vhdx_bat.check_entries, for the whole
        # BAT at open or for each page as it is read): new ones go past its end and past every region
        image = self.image
        return round_up(max([os.fstat(image.fd).st_size] + [end for _start, end, _name in image.region_spans()]), MiB)

    # --- public API -------------------------------------------------------------------------

    def enable_direct_io(self):
        """Write 4 KiB-aligned payload from page-aligned buffers with O_DIRECT (direct_io.py says why); True if available.

        Headers, BAT and sector bitmaps stay buffered; flush's fsync makes both durable."""
        if self._channel is None and self.image.fd is not None:
            self._channel = DirectChannel(self.image.fd, writable=True)
        return bool(self._channel and self._channel.direct)

    def _write_data(self, piece, file_offset):
        if self._channel is not None:
            self._channel.pwrite(piece, file_offset)
        else:
            os.pwrite(self.image.fd, piece, file_offset)

    def write(self, offset, data):
        """Write ``data`` at virtual byte ``offset`` (both multiples of the logical sector size)."""
        if self.image.fd is None:
            raise VirtualDiskError(self.path, "write after close")
        view = memoryview(data).cast("B")
        length = len(view)
        check_write(self.path, offset, length, self.logical_sector_size, self.virtual_size)
        if not length:
            return
        if not self._session_started:
            self._start_session()
        for block, within, start, piece in block_pieces(offset, length, self.block_size):
            self._write_piece(block, within, view[start:start + piece])
        self._data_dirty = True

    def flush(self):
        """Make written data, bitmaps, BAT and headers durable (in that order)."""
        image = self.image
        if image.fd is None or not self._data_dirty:
            return
        os.fsync(image.fd)
        for chunk in sorted(self._bitmaps_dirty):
            entry = image.bat[chunk * (image.chunk_ratio + 1) + image.chunk_ratio]
            os.pwrite(image.fd, bytes(image.bitmaps[chunk]), entry & OFFSET_MASK)
        self._bitmaps_dirty.clear()
        bat_offset = image.regions[BAT_REGION][0]
        for page in sorted(self._bat_pages):
            # only the dirty pages are copied out: a 64 TiB disk's BAT is 16 MiB, a flush after a few writes is not
            entries = image.bat[page * _PAGE // 8:(page + 1) * _PAGE // 8]
            os.pwrite(image.fd, entries.tobytes() if sys.byteorder == "little" else _swapped(entries), bat_offset + page * _PAGE)
        self._bat_pages.clear()
        os.fsync(image.fd)
        self._write_headers(image.header.file_write_guid, image.header.data_write_guid)
        self._data_dirty = False

    def close(self):
        if self.image.fd is None:
            return
        try:
            self.flush()
        finally:
            if self._channel is not None:
                self._channel.close()
            self.image.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- internals ------------------------------------------------------------------------

    def _start_session(self):
        """Before the first change: new FileWriteGuid and DataWriteGuid (children linked to the old data break)."""
        self._write_headers(uuid.uuid4(), uuid.uuid4())
        self._session_started = True

    def _write_headers(self, file_write_guid, data_write_guid):
        image = self.image
        header = image.header
        sequence = header.sequence
        slots = (1 - header.slot, header.slot)
        for slot in slots:
            sequence += 1
            os.pwrite(image.fd, build_header(sequence, file_write_guid, data_write_guid, uuid.UUID(int=0),
                                             header.log_offset, header.log_length), HEADER_OFFSETS[slot])
            os.fsync(image.fd)
        header.sequence = sequence
        header.file_write_guid = file_write_guid
        header.data_write_guid = data_write_guid
        header.log_guid = uuid.UUID(int=0)

    def _allocate(self, length):
        offset = self._next_free
        self._next_free += round_up(length, MiB)
        os.ftruncate(self.image.fd, self._next_free)   # the new space reads as zeros
        # the image checks entries against its file size (pages read later, the whole table): the file grew
        self.image.file_size = max(self.image.file_size, self._next_free)
        return offset

    def _set_entry(self, index, value):
        self.image.bat[index] = value
        self._bat_pages.add(index * 8 // _PAGE)

    def _write_piece(self, block, within, piece):
        image = self.image
        index = block + block // image.chunk_ratio
        entry = image.bat[index]
        state = entry & 7
        block_start = block * self.block_size
        in_disk = min(self.block_size, self.virtual_size - block_start)
        whole = within == 0 and len(piece) == in_disk
        if state == PAYLOAD_FULLY_PRESENT:
            self._write_data(piece, (entry & OFFSET_MASK) + within)
        elif state == PAYLOAD_PARTIALLY_PRESENT:
            self._write_data(piece, (entry & OFFSET_MASK) + within)
            self._mark_sectors(block, within, len(piece), in_disk)
        elif state == PAYLOAD_NOT_PRESENT and image.has_parent and not whole:
            offset = self._allocate(self.block_size)
            self._write_data(piece, offset + within)
            self._set_entry(index, offset | PAYLOAD_PARTIALLY_PRESENT)
            self._mark_sectors(block, 0, in_disk, in_disk, value=False)
            self._mark_sectors(block, within, len(piece), in_disk)
        elif state == PAYLOAD_NOT_PRESENT or state in ZERO_STATES:
            # Without a parent (or for a ZERO block in a child) the unwritten rest must read as zeros:
            # fresh space past the end of the file is zero, so the block becomes fully present.
            offset = self._allocate(self.block_size)
            self._write_data(piece, offset + within)
            self._set_entry(index, offset | PAYLOAD_FULLY_PRESENT)
        else:
            raise VirtualDiskError(self.path, "block %d has the reserved state %d; refusing to write into it" % (block, state))

    def _mark_sectors(self, block, within, length, in_disk, value=True):
        """Record in the chunk's sector bitmap that these sectors are (or are not) in this file."""
        image = self.image
        sector = self.logical_sector_size
        first_sector = (block * self.block_size + within) // sector
        chunk = first_sector // SECTORS_PER_BITMAP
        bitmap = image.bitmap(chunk)
        if bitmap is None:
            sb_index = chunk * (image.chunk_ratio + 1) + image.chunk_ratio
            self._set_entry(sb_index, self._allocate(MiB) | SB_PRESENT)
            bitmap = image.bitmaps[chunk] = bytearray(MiB)
        _set_bits(bitmap, first_sector % SECTORS_PER_BITMAP, length // sector, value)
        self._bitmaps_dirty.add(chunk)
        if value:
            block_first = (block * self.block_size // sector) % SECTORS_PER_BITMAP
            count = in_disk // sector
            full = bitmap[block_first // 8:(block_first + count) // 8].count(0xFF) == count // 8
            tail_bits = count % 8
            if full and tail_bits:
                full = bitmap[(block_first + count) // 8] & ((1 << tail_bits) - 1) == (1 << tail_bits) - 1
            if full:
                index = block + block // image.chunk_ratio
                self._set_entry(index, (image.bat[index] & OFFSET_MASK) | PAYLOAD_FULLY_PRESENT)


def _swapped(values):
    copy = values[:]
    copy.byteswap()
    return copy.tobytes()
