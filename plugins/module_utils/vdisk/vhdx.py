# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VHDX format (MS-VHDX): on-disk structures and a strict reader of one VHDX/AVHDX file.

``VhdxImage`` parses and validates one file (headers, region table, metadata, BAT, pending log
replayed in memory by ``vhdx_log``) and maps a virtual byte range to runs: data in this file, zeros,
or "ask the parent". Following a chain of parents is ``vdisk``'s job; writing is ``vhdx_writer``'s.
The builders (``build_header`` ...) are shared with the writer so both sides use one definition.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import struct
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.crc32c import crc32c
from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.direct_io import DirectChannel
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_bat import (
    BAT_IN_MEMORY_LIMIT, LAZY_BAT_BYTES, OFFSET_MASK, PAYLOAD_FULLY_PRESENT, PAYLOAD_NOT_PRESENT, PAYLOAD_PARTIALLY_PRESENT,
    SB_PRESENT, SECTORS_PER_BITMAP, STATE_TABLE, ZERO_STATES, PagedBat, bat_entry_count, check_layout, check_page,
    chunk_ratio_for, read_entries, states_of)

KiB = 1024
MiB = 1024 * 1024

FILE_SIGNATURE = b"vhdxfile"
HEADER_SIGNATURE = b"head"
REGION_SIGNATURE = b"regi"
METADATA_SIGNATURE = b"metadata"
HEADER_OFFSETS = (64 * KiB, 128 * KiB)
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
HEADER_SIZE = 4 * KiB
REGION_TABLE_SIZE = 64 * KiB
METADATA_TABLE_SIZE = 64 * KiB
MAX_METADATA_REGION = 64 * MiB   # 2047 items of at most 1 MiB each would need 2 GiB; real files use 1 MiB

BAT_REGION = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")

ITEM_FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
ITEM_VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
ITEM_VIRTUAL_DISK_ID = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
ITEM_LOGICAL_SECTOR_SIZE = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
ITEM_PHYSICAL_SECTOR_SIZE = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
ITEM_PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
PARENT_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")

# Run kinds returned by VhdxImage.runs().
RUN_DATA = "data"
RUN_ZERO = "zero"
RUN_PARENT = "parent"

# Block state -> run kind letter (D data, Z zeros, P parent) for block_map; reserved states were refused at open.
_KIND_TABLE = bytes(ord("D") if value & 7 in (6, 7) else ord("Z") for value in range(256))
_KIND_TABLE_PARENT = bytes(ord("D") if value & 7 in (6, 7) else ord("P") if value & 7 == 0 else ord("Z") for value in range(256))
_KIND_NAMES = {b"D": RUN_DATA, b"Z": RUN_ZERO, b"P": RUN_PARENT}

_HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
_REGION_HEADER = struct.Struct("<4sII4x")
_REGION_ENTRY = struct.Struct("<16sQII")
_METADATA_HEADER = struct.Struct("<8s2xH20x")
_METADATA_ENTRY = struct.Struct("<16sIII4x")
_LOCATOR_HEADER = struct.Struct("<16s2xH")
_LOCATOR_ENTRY = struct.Struct("<IIHH")

MAX_DEPTH_HINT = "The file may be damaged or truncated; copy it again from the host, or restore it from a backup."


def round_up(value, multiple):
    """Round ``value`` up to a multiple of ``multiple``."""
    return -(-value // multiple) * multiple


def check_write(path, offset, length, sector_size, virtual_size):
    """Refuse a write a disk writer cannot take: not whole sectors, or past the end of the disk."""
    if offset < 0 or offset % sector_size or length % sector_size:
        raise VirtualDiskError(path, "write at offset %d of %d bytes is not aligned to the %d-byte logical sector"
                               % (offset, length, sector_size), hint="Write whole sectors.")
    if offset + length > virtual_size:
        raise VirtualDiskError(path, "write of %d bytes at offset %d goes past the end of the %d-byte disk"
                               % (length, offset, virtual_size))


def block_pieces(offset, length, block_size):
    """Split the virtual range [offset, offset+length) at block boundaries: (block, offset within it, start
    relative to ``offset``, length) per piece, in order."""
    position, end = offset, offset + length
    while position < end:
        block = position // block_size
        within = position - block * block_size
        piece = min(block_size - within, end - position)
        yield block, within, position - offset, piece
        position += piece


def guid_bytes(value):
    """Microsoft's mixed-endian 16-byte form of a UUID."""
    return value.bytes_le


def guid_from(raw):
    return uuid.UUID(bytes_le=bytes(raw))


def with_checksum(buf, checksum_offset=4):
    """Fill the CRC-32C field at ``checksum_offset`` of ``buf`` (a bytearray) and return bytes."""
    struct.pack_into("<I", buf, checksum_offset, 0)
    struct.pack_into("<I", buf, checksum_offset, crc32c(buf))
    return bytes(buf)


def checksum_ok(buf, checksum_offset=4):
    stored = struct.unpack_from("<I", buf, checksum_offset)[0]
    work = bytearray(buf)
    struct.pack_into("<I", work, checksum_offset, 0)
    return crc32c(work) == stored


# --- builders (used by the writer) -----------------------------------------------------------

def build_header(sequence, file_write_guid, data_write_guid, log_guid, log_offset, log_length):
    buf = bytearray(HEADER_SIZE)
    _HEADER.pack_into(buf, 0, HEADER_SIGNATURE, 0, sequence, guid_bytes(file_write_guid), guid_bytes(data_write_guid),
                      guid_bytes(log_guid), 0, 1, log_length, log_offset)
    return with_checksum(buf)


def build_region_table(regions):
    """``regions``: [(guid, file_offset, length, required)] -> 64 KiB region table."""
    buf = bytearray(REGION_TABLE_SIZE)
    _REGION_HEADER.pack_into(buf, 0, REGION_SIGNATURE, 0, len(regions))
    for index, (guid, offset, length, required) in enumerate(regions):
        _REGION_ENTRY.pack_into(buf, _REGION_HEADER.size + index * _REGION_ENTRY.size, guid_bytes(guid), offset, length,
                                1 if required else 0)
    return with_checksum(buf)


def build_parent_locator(entries):
    """``entries``: ordered {key: value} -> Parent Locator metadata item bytes (UTF-16LE, no NUL)."""
    keys = list(entries)
    table_end = _LOCATOR_HEADER.size + len(keys) * _LOCATOR_ENTRY.size
    head = bytearray(_LOCATOR_HEADER.pack(guid_bytes(PARENT_LOCATOR_TYPE), len(keys)))
    strings = bytearray()
    for key in keys:
        key_raw = key.encode("utf-16-le")
        value_raw = entries[key].encode("utf-16-le")
        key_offset = table_end + len(strings)
        strings += key_raw
        value_offset = table_end + len(strings)
        strings += value_raw
        head += _LOCATOR_ENTRY.pack(key_offset, value_offset, len(key_raw), len(value_raw))
    return bytes(head + strings)


def build_metadata_region(block_size, virtual_size, disk_id, logical_sector_size, physical_sector_size,
                          has_parent=False, leave_allocated=False, parent_locator=None):
    """The whole 1 MiB metadata region: table plus the five (six with a parent) items."""
    flags_vd_req = 0b110
    items = [
        (ITEM_FILE_PARAMETERS, struct.pack("<II", block_size, (1 if leave_allocated else 0) | (2 if has_parent else 0)), 0b100),
        (ITEM_VIRTUAL_DISK_SIZE, struct.pack("<Q", virtual_size), flags_vd_req),
        (ITEM_VIRTUAL_DISK_ID, guid_bytes(disk_id), flags_vd_req),
        (ITEM_LOGICAL_SECTOR_SIZE, struct.pack("<I", logical_sector_size), flags_vd_req),
        (ITEM_PHYSICAL_SECTOR_SIZE, struct.pack("<I", physical_sector_size), flags_vd_req),
    ]
    if has_parent:
        items.append((ITEM_PARENT_LOCATOR, build_parent_locator(parent_locator), 0b100))
    buf = bytearray(MiB)
    _METADATA_HEADER.pack_into(buf, 0, METADATA_SIGNATURE, len(items))
    position = METADATA_TABLE_SIZE
    for index, (item_id, data, flags) in enumerate(items):
        _METADATA_ENTRY.pack_into(buf, _METADATA_HEADER.size + index * _METADATA_ENTRY.size, guid_bytes(item_id),
                                  position, len(data), flags)
        buf[position:position + len(data)] = data
        position += round_up(len(data), 8)
    return bytes(buf)


def parse_parent_locator(path, raw):
    if len(raw) < _LOCATOR_HEADER.size:
        raise VirtualDiskError(path, "the parent locator metadata item is too short", hint=MAX_DEPTH_HINT)
    locator_type, count = _LOCATOR_HEADER.unpack_from(raw, 0)
    if guid_from(locator_type) != PARENT_LOCATOR_TYPE:
        raise VirtualDiskError(path, "unknown parent locator type %s" % guid_from(locator_type),
                               hint="Only the VHDX parent locator type is supported.")
    entries = {}
    for index in range(count):
        position = _LOCATOR_HEADER.size + index * _LOCATOR_ENTRY.size
        if position + _LOCATOR_ENTRY.size > len(raw):
            raise VirtualDiskError(path, "the parent locator entry table runs past its item", hint=MAX_DEPTH_HINT)
        key_offset, value_offset, key_length, value_length = _LOCATOR_ENTRY.unpack_from(raw, position)
        if key_offset + key_length > len(raw) or value_offset + value_length > len(raw):
            raise VirtualDiskError(path, "a parent locator string runs past its item", hint=MAX_DEPTH_HINT)
        try:
            key = bytes(raw[key_offset:key_offset + key_length]).decode("utf-16-le")
            value = bytes(raw[value_offset:value_offset + value_length]).decode("utf-16-le")
        except UnicodeDecodeError:
            raise VirtualDiskError(path, "a parent locator string is not valid UTF-16", hint=MAX_DEPTH_HINT)
        entries[key] = value
    return entries


class VhdxHeader:
    """One parsed header (MS-VHDX 2.2.2)."""

    def __init__(self, slot, raw):
        (_sig, _crc, self.sequence, file_write, data_write, log_guid, self.log_version, self.version,
         self.log_length, self.log_offset) = _HEADER.unpack_from(raw, 0)
        self.slot = slot
        self.file_write_guid = guid_from(file_write)
        self.data_write_guid = guid_from(data_write)
        self.log_guid = guid_from(log_guid)


def file_size_of(fd):
    """Size of an open disk file: an OS file descriptor, or a remote file (``.size``; see disk_access.SmbFile)."""
    if isinstance(fd, int):
        return os.fstat(fd).st_size
    return fd.size


def open_file(path, writable=False, opener=None):
    """An OS file descriptor for ``path``, or ``opener(path)``'s remote file (read-only)."""
    if opener is not None:
        if writable:
            raise VirtualDiskError(path, "a remote disk file cannot be opened for writing")
        return opener.open(path)
    return os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | getattr(os, "O_CLOEXEC", 0))


def create_new_file(path):
    """A new disk file opened for writing; an existing file is never overwritten."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    except FileExistsError:
        raise VirtualDiskError(path, "the file already exists", hint="Remove it or choose another path; it is never overwritten.")
    except OSError as err:
        raise VirtualDiskError(path, "cannot create the file: %s" % err.strerror)


def close_file(fd):
    if isinstance(fd, int):
        os.close(fd)
    else:
        fd.close()


def read_exact(fd, path, offset, length):
    """pread exactly ``length`` bytes or raise a VirtualDiskError saying the file is truncated."""
    file_size = file_size_of(fd)
    if offset < 0 or length < 0 or offset + length > file_size:
        raise VirtualDiskError(path, "a structure at bytes %d..%d lies beyond the end of the file (%d bytes)"
                               % (offset, offset + length, file_size), hint=MAX_DEPTH_HINT)
    buf = bytearray(length)
    pread_into(fd, path, memoryview(buf), offset)
    return buf


def pread_into(fd, path, view, offset):
    """Fill ``view`` from ``offset`` of an OS file descriptor (os.preadv: no copy, no shared position) or a remote
    file (its ``pread_into``); a short read is a truncated file."""
    done = 0
    total = len(view)
    read_at = (lambda part, at: os.preadv(fd, [part], at)) if isinstance(fd, int) else fd.pread_into
    while done < total:
        got = read_at(view[done:], offset + done)
        if got <= 0:
            raise VirtualDiskError(path, "the file ends at byte %d, but data is expected up to byte %d (truncated file)"
                                   % (offset + done, offset + total), hint=MAX_DEPTH_HINT)
        done += got


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
            signature, _crc, count = _REGION_HEADER.unpack_from(raw, 0)
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
            guid_raw, file_offset, length, required = _REGION_ENTRY.unpack_from(raw, _REGION_HEADER.size + index * _REGION_ENTRY.size)
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
        signature, count = _METADATA_HEADER.unpack_from(raw, 0)
        if signature != METADATA_SIGNATURE:
            self.fail("the metadata region has a bad signature")
        if count > 2047:
            self.fail("the metadata table claims %d entries (max 2047)" % count)
        items = {}
        for index in range(count):
            item_raw, offset, length, flags = _METADATA_ENTRY.unpack_from(raw, _METADATA_HEADER.size + index * _METADATA_ENTRY.size)
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
