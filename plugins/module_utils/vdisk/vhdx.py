# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A strict reader of one VHDX/AVHDX file (MS-VHDX).

``VhdxImage`` parses and validates one file (headers, region table, metadata, BAT, pending log
replayed in memory by ``vhdx_log``) and maps a virtual byte range to runs: data in this file, zeros,
or "ask the parent". Following a chain of parents is ``vdisk``'s job; writing is ``vhdx_writer``'s.
The on-disk structures it parses are defined once in ``vhdx_format`` (the writer builds them from
there), the BAT's entries and checks in ``vhdx_bat``, file access in ``disk_io``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import struct
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.direct_io import DirectChannel
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.disk_io import (
    MAX_DEPTH_HINT, close_file, file_size_of, open_file, pread_into, read_exact)
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_bat import (
    BAT_IN_MEMORY_LIMIT, LAZY_BAT_BYTES, OFFSET_MASK, PAYLOAD_FULLY_PRESENT, PAYLOAD_NOT_PRESENT, PAYLOAD_PARTIALLY_PRESENT,
    SB_PRESENT, SECTORS_PER_BITMAP, STATE_TABLE, ZERO_STATES, PagedBat, bat_entry_count, check_layout, check_page,
    chunk_ratio_for, read_entries, states_of)
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_format import (
    BAT_REGION, FILE_SIGNATURE, HEADER_OFFSETS, HEADER_SIGNATURE, HEADER_SIZE, ITEM_FILE_PARAMETERS, ITEM_LOGICAL_SECTOR_SIZE,
    ITEM_PARENT_LOCATOR, ITEM_PHYSICAL_SECTOR_SIZE, ITEM_VIRTUAL_DISK_ID, ITEM_VIRTUAL_DISK_SIZE, KiB, METADATA_ENTRY,
    METADATA_HEADER, METADATA_REGION, METADATA_SIGNATURE, METADATA_TABLE_SIZE, MiB, REGION_ENTRY, REGION_HEADER,
    REGION_SIGNATURE, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE, VhdxHeader, checksum_ok, guid_from, parse_parent_locator)

MAX_METADATA_REGION = 64 * MiB   # 2047 items of at most 1 MiB each would need 2 GiB; real files use 1 MiB

# Run kinds returned by VhdxImage.runs().
RUN_DATA = "data"
RUN_ZERO = "zero"
RUN_PARENT = "parent"

# Block state -> run kind letter (D data, Z zeros, P parent) for block_map; reserved states were refused at open.
_KIND_TABLE = bytes(ord("D") if value & 7 in (6, 7) else ord("Z") for value in range(256))
_KIND_TABLE_PARENT = bytes(ord("D") if value & 7 in (6, 7) else ord("P") if value & 7 == 0 else ord("Z") for value in range(256))
_KIND_NAMES = {b"D": RUN_DATA, b"Z": RUN_ZERO, b"P": RUN_PARENT}


class VhdxImage:
    """One VHDX or AVHDX file, validated, with its BAT in memory (paged when huge). Read-only unless ``writable``."""

    def __init__(self, path, writable=False, opener=None, metadata_only=False):
        self.path = str(path)
        self.writable = writable
        # metadata_only: headers, regions and metadata (sizes, ids, parent locator) without the BAT, for facts only
        self.metadata_only = metadata_only and not writable
        self._channel = None        # O_DIRECT reads, once enable_direct_io is called
        try:
            self.fd = open_file(self.path, writable, opener)
        except OSError as err:
            raise VirtualDiskError(self.path, "cannot open the file: %s" % err.strerror,
                                   hint="Check that the path exists and is readable by this user.")
        try:
            self._load()
        except Exception:
            close_file(self.fd)
            self.fd = None
            raise

    # --- parsing ---------------------------------------------------------------------------

    def fail(self, problem, hint=MAX_DEPTH_HINT):
        raise VirtualDiskError(self.path, problem, hint=hint)

    def _load(self):
        self.file_size = file_size_of(self.fd)
        if self.file_size < MiB:
            self.fail("the file is %d bytes, smaller than the 1 MiB VHDX header section (truncated or not a VHDX)"
                      % self.file_size)
        if bytes(read_exact(self.fd, self.path, 0, 8)) != FILE_SIGNATURE:
            self.fail("no 'vhdxfile' signature at offset 0: this is not a VHDX file",
                      hint="Check the file type; VHD files are opened by their footer.")
        self.overlay = {}
        self._load_headers()
        if self.header.log_guid.int != 0:
            if self.header.log_version != 0:
                self.fail("the log has unsupported version %d" % self.header.log_version)
            if self.writable:
                self.fail("the file has a pending log that must be replayed before it can be modified",
                          hint="Replay it on the Hyper-V host (mount the disk once) or run `qemu-img check -r all` on a copy.")
            from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_log import replay_log
            self.overlay, self.log_end = replay_log(self)
            self.file_size = max(self.file_size, self.log_end)
        self._load_region_table()
        self._load_metadata()
        if self.metadata_only:
            self.bat, self.bitmaps = None, {}
        else:
            self._load_bat()

    def read_structure(self, offset, length):
        """Read metadata/BAT/bitmap bytes with the in-memory log replay applied."""
        if offset + length > self.file_size:   # checked before allocating: sizes come from the file
            self.fail("a structure at bytes %d..%d lies beyond the end of the file (%d bytes)"
                      % (offset, offset + length, self.file_size))
        buf = bytearray(length)
        self.read_structure_into(memoryview(buf), offset)
        return buf

    def read_structure_into(self, view, offset):
        """Fill ``view`` (zeroed, unsigned bytes) from ``offset`` with the log replay applied; bounds checked by the caller."""
        length = len(view)
        available = max(0, min(length, file_size_of(self.fd) - offset))
        if available:   # past the real end but inside the log's LastFileOffset reads as zeros
            pread_into(self.fd, self.path, view[:available], offset)
        if self.overlay:
            self._apply_overlay(view, offset)

    def _apply_overlay(self, buf, offset):
        first = offset - offset % (4 * KiB)
        for sector in range(first, offset + len(buf), 4 * KiB):
            data = self.overlay.get(sector)
            if data is None:
                continue
            lo = max(sector, offset)
            hi = min(sector + 4 * KiB, offset + len(buf))
            buf[lo - offset:hi - offset] = data[lo - sector:hi - sector]

    def _load_headers(self):
        valid = []
        for slot, offset in enumerate(HEADER_OFFSETS):
            raw = read_exact(self.fd, self.path, offset, HEADER_SIZE)
            if bytes(raw[:4]) == HEADER_SIGNATURE and checksum_ok(raw):
                valid.append(VhdxHeader(slot, raw))
        if not valid:
            self.fail("both VHDX headers are invalid (bad signature or CRC-32C checksum)")
        self.header = max(valid, key=lambda h: h.sequence)
        self.other_header_valid = len(valid) == 2
        if self.header.version != 1:
            self.fail("unsupported VHDX header version %d (expected 1)" % self.header.version,
                      hint="This file was written by a newer or foreign tool.")

    def _load_region_table(self):
        problems = []
        for offset in REGION_TABLE_OFFSETS:
            raw = self.read_structure(offset, REGION_TABLE_SIZE)
            signature, _crc, count = REGION_HEADER.unpack_from(raw, 0)
            if signature != REGION_SIGNATURE:
                problems.append("region table at %d has a bad signature" % offset)
            elif count > 2047:
                problems.append("region table at %d claims %d entries (max 2047)" % (offset, count))
            elif not checksum_ok(raw):
                problems.append("region table at %d has a bad CRC-32C checksum" % offset)
            else:
                break
        else:
            self.fail("; ".join(problems))
        self.regions = {}
        for index in range(count):
            guid_raw, file_offset, length, required = REGION_ENTRY.unpack_from(raw, REGION_HEADER.size + index * REGION_ENTRY.size)
            guid = guid_from(guid_raw)
            if guid in (BAT_REGION, METADATA_REGION):
                if file_offset < MiB or file_offset % MiB or length % MiB or length == 0:
                    self.fail("region %s has a bad placement (offset %d, length %d)" % (guid, file_offset, length))
                self.regions[guid] = (file_offset, length)
            elif required & 1:
                self.fail("the file needs region %s, which this reader does not know" % guid,
                          hint="The file uses a VHDX feature this tool does not support.")
        for guid, name in ((BAT_REGION, "BAT"), (METADATA_REGION, "metadata")):
            if guid not in self.regions:
                self.fail("the region table has no %s region" % name)

    def _load_metadata(self):
        meta_offset, meta_length = self.regions[METADATA_REGION]
        if meta_length > MAX_METADATA_REGION:
            self.fail("the metadata region is %d bytes; more than %d is not a valid VHDX" % (meta_length, MAX_METADATA_REGION))
        raw = self.read_structure(meta_offset, meta_length)
        signature, count = METADATA_HEADER.unpack_from(raw, 0)
        if signature != METADATA_SIGNATURE:
            self.fail("the metadata region has a bad signature")
        if count > 2047:
            self.fail("the metadata table claims %d entries (max 2047)" % count)
        items = {}
        for index in range(count):
            item_raw, offset, length, flags = METADATA_ENTRY.unpack_from(raw, METADATA_HEADER.size + index * METADATA_ENTRY.size)
            item = guid_from(item_raw)
            if length and (offset < METADATA_TABLE_SIZE or offset + length > meta_length):
                self.fail("metadata item %s lies outside the metadata region" % item)
            items[item] = (bytes(raw[offset:offset + length]), flags)
        known = (ITEM_FILE_PARAMETERS, ITEM_VIRTUAL_DISK_SIZE, ITEM_VIRTUAL_DISK_ID, ITEM_LOGICAL_SECTOR_SIZE,
                 ITEM_PHYSICAL_SECTOR_SIZE, ITEM_PARENT_LOCATOR)
        for item, (_data, flags) in items.items():
            if item not in known and flags & 0b100:
                self.fail("the file needs metadata item %s, which this reader does not know" % item,
                          hint="The file uses a VHDX feature this tool does not support.")
        sizes = {ITEM_FILE_PARAMETERS: 8, ITEM_VIRTUAL_DISK_SIZE: 8, ITEM_VIRTUAL_DISK_ID: 16,
                 ITEM_LOGICAL_SECTOR_SIZE: 4, ITEM_PHYSICAL_SECTOR_SIZE: 4}
        for item, size in sizes.items():
            if item not in items or len(items[item][0]) < size:
                self.fail("the required metadata item %s is missing or too short" % item)
        self.block_size, file_flags = struct.unpack_from("<II", items[ITEM_FILE_PARAMETERS][0])
        self.leave_allocated = bool(file_flags & 1)
        self.has_parent = bool(file_flags & 2)
        self.virtual_size = struct.unpack_from("<Q", items[ITEM_VIRTUAL_DISK_SIZE][0])[0]
        self.disk_id = guid_from(items[ITEM_VIRTUAL_DISK_ID][0][:16])
        self.logical_sector_size = struct.unpack_from("<I", items[ITEM_LOGICAL_SECTOR_SIZE][0])[0]
        self.physical_sector_size = struct.unpack_from("<I", items[ITEM_PHYSICAL_SECTOR_SIZE][0])[0]
        if self.block_size < MiB or self.block_size > 256 * MiB or self.block_size & (self.block_size - 1):
            self.fail("bad block size %d (must be a power of two from 1 MiB to 256 MiB)" % self.block_size)
        if self.logical_sector_size not in (512, 4096) or self.physical_sector_size not in (512, 4096):
            self.fail("bad sector sizes (logical %d, physical %d; each must be 512 or 4096)"
                      % (self.logical_sector_size, self.physical_sector_size))
        if self.virtual_size == 0 or self.virtual_size % self.logical_sector_size or self.virtual_size > 64 * 1024 ** 4:
            self.fail("bad virtual disk size %d" % self.virtual_size)
        self.parent_locator = None
        if self.has_parent:
            if ITEM_PARENT_LOCATOR not in items:
                self.fail("the file is a differencing disk but has no parent locator")
            self.parent_locator = parse_parent_locator(self.path, items[ITEM_PARENT_LOCATOR][0])
            if "parent_linkage" not in self.parent_locator:
                self.fail("the parent locator has no parent_linkage")
        self.chunk_ratio = chunk_ratio_for(self.block_size, self.logical_sector_size)
        self.block_count = -(-self.virtual_size // self.block_size)

    def _load_bat(self):
        bat_offset, bat_length = self.regions[BAT_REGION]
        entries = bat_entry_count(self.virtual_size, self.block_size, self.logical_sector_size, self.has_parent)
        if entries * 8 > bat_length:
            self.fail("the BAT region (%d bytes) is too small for %d entries" % (bat_length, entries))
        if bat_offset + entries * 8 > self.file_size:
            self.fail("the BAT at bytes %d..%d lies beyond the end of the file (%d bytes)" % (bat_offset, bat_offset + entries * 8, self.file_size))
        self.bitmaps = {}
        if entries * 8 <= LAZY_BAT_BYTES:
            # read straight into the array: held once, not three times (a read buffer, its bytes copy and the array)
            self.bat = read_entries(self, bat_offset, 0, entries)
            self._check_layout()
        else:
            # big (a 64 TiB disk of 32 MiB blocks has a 16 MiB BAT): pages are read and checked as they are used, and
            # the whole layout the first time the whole table is read (entry_states). A writer only appends blocks past
            # the end of the file, where no checked entry points (check_page), and writes into its own files: a
            # restore's new disk, the lab's disks.
            self.bat = PagedBat(self, bat_offset, entries, check=lambda first, page: check_page(self, self.region_spans(), first, page),
                                keep_all=self.writable)
            self.layout_checked = False

    def region_spans(self):
        spans = [(0, MiB, "header section")]
        for guid, name in ((BAT_REGION, "BAT region"), (METADATA_REGION, "metadata region")):
            offset, length = self.regions[guid]
            spans.append((offset, offset + length, name))
        if self.header.log_guid.int != 0 or self.header.log_length:
            spans.append((self.header.log_offset, self.header.log_offset + self.header.log_length, "log"))
        return spans

    def _check_layout(self, states=None):
        """Refuse reserved states, blocks beyond EOF and any overlap between regions and blocks (vhdx_bat)."""
        if states is None:
            states = states_of(self.bat)
        check_layout(self, self.region_spans(), states, self.bat)
        self.layout_checked = True

    # --- mapping ---------------------------------------------------------------------------

    def bitmap(self, chunk):
        """The 1 MiB sector bitmap of ``chunk`` (cached), or None if it is not present."""
        if chunk in self.bitmaps:
            return self.bitmaps[chunk]
        entry = self.bat[chunk * (self.chunk_ratio + 1) + self.chunk_ratio]
        data = None
        if entry & 7 == SB_PRESENT:
            data = self.read_structure(entry & OFFSET_MASK, MiB)
        self.bitmaps[chunk] = data
        return data

    def block_entry(self, block):
        return self.bat[block + block // self.chunk_ratio]

    def runs(self, offset, length):
        """Map virtual [offset, offset+length) to [(offset, length, kind, file_offset)], contiguous data merged."""
        out = []
        block_size = self.block_size
        end = offset + length
        position = offset
        not_present = RUN_PARENT if self.has_parent else RUN_ZERO
        while position < end:
            block = position // block_size
            within = position - block * block_size
            piece = min(block_size - within, end - position)
            entry = self.bat[block + block // self.chunk_ratio]
            state = entry & 7
            if state == PAYLOAD_FULLY_PRESENT:
                self._add(out, position, piece, RUN_DATA, (entry & OFFSET_MASK) + within)
            elif state == PAYLOAD_NOT_PRESENT:
                self._add(out, position, piece, not_present, 0)
            elif state == PAYLOAD_PARTIALLY_PRESENT:
                self._partial_runs(out, position, piece, entry & OFFSET_MASK, block * block_size)
            elif state in ZERO_STATES:
                self._add(out, position, piece, RUN_ZERO, 0)
            else:
                self.fail("block %d has the reserved state %d" % (block, state))
            position += piece
        return out

    @staticmethod
    def _add(out, offset, length, kind, file_offset):
        if out:
            last = out[-1]
            if last[2] == kind and last[0] + last[1] == offset and (kind != RUN_DATA or last[3] + last[1] == file_offset):
                out[-1] = (last[0], last[1] + length, kind, last[3])
                return
        out.append((offset, length, kind, file_offset))

    def _partial_runs(self, out, position, piece, block_file_offset, block_start):
        sector_size = self.logical_sector_size
        first_sector = position // sector_size
        last_sector = (position + piece - 1) // sector_size
        chunk = first_sector // SECTORS_PER_BITMAP
        bitmap = self.bitmap(chunk)
        if bitmap is None:
            self.fail("block at virtual offset %d is PARTIALLY_PRESENT but its sector bitmap is not present" % block_start)
        first_bit = first_sector % SECTORS_PER_BITMAP
        count = last_sector - first_sector + 1
        lo_byte = first_bit // 8
        hi_byte = (first_bit + count + 7) // 8
        bits = int.from_bytes(bytes(bitmap[lo_byte:hi_byte]), "little") >> (first_bit % 8)
        bits &= (1 << count) - 1
        done = 0
        end = position + piece
        while done < count:
            rest = bits >> done
            if rest & 1:
                run = ((rest ^ (rest + 1)).bit_length() - 1)
                present = True
            else:
                run = (rest & -rest).bit_length() - 1 if rest else count - done
                present = False
            run = min(run, count - done)
            start = max(position, (first_sector + done) * sector_size)
            stop = min(end, (first_sector + done + run) * sector_size)
            if present:
                self._add(out, start, stop - start, RUN_DATA, block_file_offset + start - block_start)
            else:
                self._add(out, start, stop - start, RUN_PARENT, 0)
            done += run

    def entry_states(self, table=STATE_TABLE):
        """bytes: the state (low 3 bits) of every BAT entry, payload and sector bitmap entries alike, through ``table``.

        The first call on a paged BAT reads all of it and checks the whole layout; a BAT up to BAT_IN_MEMORY_LIMIT is
        then held whole, as a small one is from the start."""
        if isinstance(self.bat, PagedBat):
            if not self.layout_checked:
                if len(self.bat) * 8 <= BAT_IN_MEMORY_LIMIT:
                    self.bat = self.bat.whole()
                    self._check_layout()
                else:
                    self._check_layout(self.bat.states())
            if isinstance(self.bat, PagedBat):
                return self.bat.states(table)
        return states_of(self.bat, table)

    def payload_states(self, table=STATE_TABLE):
        """bytearray: the state of each payload block 0 .. block_count-1 (sector bitmap entries left out), through ``table``.

        One byte per BAT entry: the sector bitmap entries are deleted in place (a huge BAT's states come as a bytearray)."""
        states = self.entry_states(table)
        if not isinstance(states, bytearray):
            states = bytearray(states)
        del states[self.chunk_ratio::self.chunk_ratio + 1]
        del states[self.block_count:]
        return states

    def block_map(self):
        """Per-block [(offset, length, kind)] over the whole disk: data (incl. partial), zero or parent; merged."""
        kinds = self.payload_states(_KIND_TABLE_PARENT if self.has_parent else _KIND_TABLE)
        out = []
        # one match per run of blocks of one kind: a sparse 64 TiB disk is a few runs, whatever its block count
        for match in re.finditer(b"D+|P+|Z+", kinds):
            start = match.start() * self.block_size
            end = min(match.end() * self.block_size, self.virtual_size)
            out.append((start, end - start, _KIND_NAMES[bytes(kinds[match.start():match.start() + 1])]))   # not group(): a copy of the run
        return out

    def enable_direct_io(self):
        """Read 4 KiB-aligned payload into page-aligned buffers with O_DIRECT (direct_io.py); True if available."""
        if self._channel is None and isinstance(self.fd, int):
            self._channel = DirectChannel(self.fd)
        return self._channel is not None and self._channel.direct

    def read_data(self, view, file_offset):
        """Read payload bytes at ``file_offset`` into ``view`` (log overlay applied if the log touched them)."""
        channel = self._channel
        if channel is None or channel.preadinto(view, file_offset) != len(view):
            pread_into(self.fd, self.path, view, file_offset)      # (a short read: pread_into says where the file ended)
        if self.overlay and self._overlay_hits(file_offset, len(view)):
            buf = bytearray(view)
            self._apply_overlay(buf, file_offset)
            view[:] = buf

    def _overlay_hits(self, offset, length):
        first = offset - offset % (4 * KiB)
        if length // (4 * KiB) + 1 > len(self.overlay):
            return any(first <= key < offset + length for key in self.overlay)
        return any(key in self.overlay for key in range(first, offset + length, 4 * KiB))

    # --- identity and parents ---------------------------------------------------------------

    format_name = "vhdx"

    def parent_hints(self):
        """[(kind, path text)] from the parent locator, in the order MS-VHDX resolves them."""
        locator = self.parent_locator or {}
        hints = []
        for key, kind in (("relative_path", "relative"), ("volume_path", "volume"), ("absolute_win32_path", "absolute")):
            if locator.get(key):
                hints.append((kind, locator[key]))
        return hints

    def parent_mismatch(self, parent):
        """None if ``parent`` is this file's parent (linkage GUID matches), else what is wrong."""
        if getattr(parent, "format_name", None) != "vhdx":
            return "the parent of a VHDX must be a VHDX file"
        wanted = []
        for key in ("parent_linkage", "parent_linkage2"):
            try:
                wanted.append(uuid.UUID(self.parent_locator.get(key, "").strip().strip("{}")))
            except ValueError:
                continue
        if parent.header.data_write_guid in wanted:
            return None
        return "its DataWriteGuid {%s} is not the parent_linkage %s" % (
            parent.header.data_write_guid, self.parent_locator.get("parent_linkage"))

    def info(self):
        return {
            "format": "vhdx",
            "type": "differencing" if self.has_parent else ("fixed" if self.leave_allocated else "dynamic"),
            "virtual_size": self.virtual_size,
            "block_size": self.block_size,
            "logical_sector_size": self.logical_sector_size,
            "physical_sector_size": self.physical_sector_size,
            "disk_id": str(self.disk_id),
            "data_write_guid": str(self.header.data_write_guid),
            "parent_locator": dict(self.parent_locator or {}),
            "file_size": self.file_size,
        }

    def close(self):
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.fd is not None:
            close_file(self.fd)
            self.fd = None
