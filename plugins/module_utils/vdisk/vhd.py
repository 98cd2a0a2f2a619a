# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Legacy VHD reader (fixed, dynamic, differencing), one file at a time.

``VhdImage`` has the same layer interface as ``vhdx.VhdxImage`` (``runs``, ``block_map``,
``read_data``, ``parent_hints``, ``parent_mismatch``, ``info``) so ``vdisk`` reads chains of either.
Everything is big-endian; footer and dynamic header carry ones'-complement checksums; sector
bitmaps are MSB first; the disk size is the footer's Current Size (what Hyper-V uses).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import struct
import uuid
from array import array
import sys

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.disk_io import (
    MAX_DEPTH_HINT, close_file, file_size_of, open_file, pread_into, read_exact)
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx import RUN_DATA, RUN_PARENT, RUN_ZERO

MiB = 1024 * 1024
VHD_COOKIE = b"conectix"
DYNAMIC_COOKIE = b"cxsparse"
TYPE_FIXED, TYPE_DYNAMIC, TYPE_DIFFERENCING = 2, 3, 4
UNALLOCATED = 0xFFFFFFFF
SECTOR = 512

_FOOTER = struct.Struct(">8sIIQI4sI4sQQHBBII16sB")
_DYNAMIC = struct.Struct(">8sQQIIII16sI4x512s")
_LOCATOR = struct.Struct(">4sIIIQ")
_LOCATOR_START = 576


def vhd_checksum(raw, field_offset):
    """Ones' complement of the byte sum with the checksum field counted as zero."""
    total = sum(raw) - sum(raw[field_offset:field_offset + 4])
    return ~total & 0xFFFFFFFF


class VhdImage:
    """One VHD file, validated, with its BAT in memory (read-only)."""

    format_name = "vhd"

    def __init__(self, path, opener=None):
        self.path = str(path)
        try:
            self.fd = open_file(self.path, False, opener)
        except OSError as err:
            raise VirtualDiskError(self.path, "cannot open the file: %s" % err.strerror)
        try:
            self._load()
        except Exception:
            close_file(self.fd)
            self.fd = None
            raise

    def _fail(self, problem, hint=MAX_DEPTH_HINT):
        raise VirtualDiskError(self.path, problem, hint=hint)

    def _load(self):
        self.file_size = file_size_of(self.fd)
        if self.file_size < SECTOR:
            self._fail("the file is %d bytes, too small for a VHD footer" % self.file_size)
        footer = None
        bad_checksum = False
        for offset in (self.file_size - SECTOR, self.file_size - SECTOR + 1, 0):
            raw = read_exact(self.fd, self.path, offset, min(SECTOR, self.file_size - offset))
            if bytes(raw[:8]) == VHD_COOKIE and len(raw) >= _FOOTER.size:
                if vhd_checksum(raw[:SECTOR], 64) == struct.unpack_from(">I", raw, 64)[0]:
                    footer = raw
                    break
                bad_checksum = True
        if footer is None:
            if bad_checksum:
                self._fail("the VHD footer checksum is wrong")
            self._fail("no 'conectix' VHD footer found")
        (_cookie, _features, _version, data_offset, _time, self.creator, _cv, _cos, _orig, current_size,
         _c, _h, _s, disk_type, _sum, unique_id, _saved) = _FOOTER.unpack_from(footer, 0)
        self.unique_id = uuid.UUID(bytes=bytes(unique_id))
        self.disk_type = disk_type
        self.virtual_size = current_size
        self.logical_sector_size = SECTOR
        self.physical_sector_size = SECTOR
        self.has_parent = disk_type == TYPE_DIFFERENCING
        self.parent_unique_id = None
        self.parent_name = None
        self.locators = []
        if disk_type == TYPE_FIXED:
            self.block_size = 2 * MiB   # nominal (VHD's default): a fixed disk has no blocks
            if self.file_size - SECTOR < current_size:
                self._fail("the fixed VHD holds %d data bytes but its size is %d (truncated)"
                           % (self.file_size - SECTOR, current_size))
            return
        if disk_type not in (TYPE_DYNAMIC, TYPE_DIFFERENCING):
            self._fail("unknown VHD disk type %d" % disk_type)
        header = read_exact(self.fd, self.path, data_offset, 1024)
        (cookie, _unused, table_offset, _hv, max_entries, self.block_size, checksum, parent_id, _pt,
         parent_name) = _DYNAMIC.unpack_from(header, 0)
        if cookie != DYNAMIC_COOKIE:
            self._fail("no 'cxsparse' dynamic header at offset %d" % data_offset)
        if vhd_checksum(header, 36) != checksum:
            self._fail("the VHD dynamic header checksum is wrong")
        if self.block_size < SECTOR or self.block_size & (self.block_size - 1):
            self._fail("bad VHD block size %d" % self.block_size)
        self.block_count = -(-current_size // self.block_size)
        if max_entries < self.block_count:
            self._fail("the BAT has %d entries but the disk needs %d" % (max_entries, self.block_count))
        self.bat = array("I", bytes(read_exact(self.fd, self.path, table_offset, self.block_count * 4)))
        if sys.byteorder == "little":
            self.bat.byteswap()
        self.bitmap_size = -(-(self.block_size // SECTOR // 8) // SECTOR) * SECTOR
        seen = set()
        for block in self.allocated_blocks():
            entry = self.bat[block]
            if entry in seen:
                self._fail("two BAT entries point at sector %d" % entry)
            seen.add(entry)
            in_disk = min(self.block_size, current_size - block * self.block_size)
            if entry * SECTOR + self.bitmap_size + in_disk > self.file_size:
                self._fail("BAT entry for block %d points beyond the end of the file" % block)
        self.bitmaps = {}
        if self.has_parent:
            self.parent_unique_id = uuid.UUID(bytes=bytes(parent_id))
            self.parent_name = bytes(parent_name).decode("utf-16-be", "replace").split("\x00", 1)[0]
            for index in range(8):
                code, _space, length, _res, offset = _LOCATOR.unpack_from(header, _LOCATOR_START + index * _LOCATOR.size)
                if code in (b"W2ru", b"W2ku") and length and offset + length <= self.file_size:
                    text = bytes(read_exact(self.fd, self.path, offset, length)).decode("utf-16-le", "replace")
                    self.locators.append(("relative" if code == b"W2ru" else "absolute", text.split("\x00", 1)[0]))

    def parent_hints(self):
        hints = sorted(self.locators, key=lambda hint: hint[0] != "relative")
        if self.parent_name:
            hints.append(("name", self.parent_name))
        return hints

    def parent_mismatch(self, parent):
        if getattr(parent, "format_name", None) != "vhd":
            return "the parent of a VHD must be a VHD file"
        if parent.unique_id != self.parent_unique_id:
            return "its unique id %s is not the ParentUniqueId %s" % (parent.unique_id, self.parent_unique_id)
        return None

    def _bitmap(self, block):
        bitmap = self.bitmaps.get(block)
        if bitmap is None:
            bitmap = self.bitmaps[block] = bytes(read_exact(self.fd, self.path, self.bat[block] * SECTOR, self.bitmap_size))
        return bitmap

    def runs(self, offset, length):
        if self.disk_type == TYPE_FIXED:
            return [(offset, length, RUN_DATA, offset)]
        out = []
        end = offset + length
        position = offset
        missing = RUN_PARENT if self.has_parent else RUN_ZERO
        while position < end:
            block = position // self.block_size
            within = position - block * self.block_size
            piece = min(self.block_size - within, end - position)
            entry = self.bat[block]
            data_start = entry * SECTOR + self.bitmap_size
            if entry == UNALLOCATED:
                _add(out, position, piece, missing, 0)
            elif not self.has_parent:
                _add(out, position, piece, RUN_DATA, data_start + within)
            else:
                self._partial(out, block, position, piece, data_start)
            position += piece
        return out

    def _partial(self, out, block, position, piece, data_start):
        bitmap = self._bitmap(block)
        block_start = block * self.block_size
        first = (position - block_start) // SECTOR
        last = (position - block_start + piece - 1) // SECTOR
        end = position + piece
        sector = first
        while sector <= last:
            present = bitmap[sector // 8] >> (7 - sector % 8) & 1
            run_end = sector + 1
            while run_end <= last and (bitmap[run_end // 8] >> (7 - run_end % 8) & 1) == present:
                run_end += 1
            start = max(position, block_start + sector * SECTOR)
            stop = min(end, block_start + run_end * SECTOR)
            if present:
                _add(out, start, stop - start, RUN_DATA, data_start + start - block_start)
            else:
                _add(out, start, stop - start, RUN_PARENT, 0)
            sector = run_end

    def _allocation_map(self):
        """bytes, one per block: 0xFF where the BAT entry is UNALLOCATED, another value where the block has data.

        The AND of an entry's four bytes is 0xFF only for 0xFFFFFFFF; done on whole byte strings, not per block, so
        listing a sparse 2 TiB VHD (1 Mi blocks of 2 MiB) costs its allocated blocks, not a Python loop over the BAT."""
        raw = self.bat.tobytes()
        count = len(self.bat)
        if not count:
            return b""
        both = int.from_bytes(raw[0::4], "little") & int.from_bytes(raw[1::4], "little")
        both &= int.from_bytes(raw[2::4], "little") & int.from_bytes(raw[3::4], "little")
        return both.to_bytes(count, "little")

    def allocated_blocks(self):
        """The numbers of the blocks that have a BAT entry, in order."""
        return (match.start() for match in re.finditer(b"[^\xff]", self._allocation_map()))

    def block_map(self):
        if self.disk_type == TYPE_FIXED:
            return [(0, self.virtual_size, RUN_DATA)]
        out = []
        missing = RUN_PARENT if self.has_parent else RUN_ZERO
        # runs of unallocated (0xFF) and allocated (anything else) blocks
        for match in re.finditer(b"\xff+|[^\xff]+", self._allocation_map()):
            start = match.start() * self.block_size
            end = min(match.end() * self.block_size, self.virtual_size)
            out.append((start, end - start, missing if match.string[match.start()] == 0xFF else RUN_DATA))
        return out

    def read_data(self, view, file_offset):
        pread_into(self.fd, self.path, view, file_offset)

    def info(self):
        return {
            "format": "vhd",
            "type": {TYPE_FIXED: "fixed", TYPE_DYNAMIC: "dynamic", TYPE_DIFFERENCING: "differencing"}[self.disk_type],
            "virtual_size": self.virtual_size,
            "block_size": self.block_size,
            "logical_sector_size": SECTOR,
            "physical_sector_size": SECTOR,
            "disk_id": str(self.unique_id),
            "data_write_guid": None,
            "parent_locator": dict((kind, text) for kind, text in self.parent_hints()) if self.has_parent else {},
            "file_size": self.file_size,
        }

    def close(self):
        if self.fd is not None:
            close_file(self.fd)
            self.fd = None


def _add(out, offset, length, kind, file_offset):
    if out:
        last = out[-1]
        if last[2] == kind and last[0] + last[1] == offset and (kind != RUN_DATA or last[3] + last[1] == file_offset):
            out[-1] = (last[0], last[1] + length, kind, last[3])
            return
    out.append((offset, length, kind, file_offset))
