# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Partition tables of a backed-up disk (MBR with extended partitions, GPT), parsed in pure Python.

``read_partitions(disk)`` takes anything with ``read(offset, length)`` and ``virtual_size`` (a repository
DiskReader, or guestfs.filesystem.ChunkCache over one) and returns ``Partition`` records: number (GPT and
primary MBR entries 1-4, logical partitions 5 on as Linux counts them), scheme, type, offset and size in bytes.
A disk without a partition table whose first sector holds a file system boot sector (a "superfloppy") is one
partition numbered 0. GPT headers and entry arrays are checked with their CRC32; a damaged primary header falls
back to the backup header at the disk's end, as firmware does. A table that points outside the disk, overlaps
itself or fails its checksums raises GuestFileSystemError naming the table and the partition.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import struct
import uuid
import zlib

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError

SECTOR = 512
EXTENDED_TYPES = (0x05, 0x0F, 0x85)
PROTECTIVE_MBR = 0xEE
MAX_LOGICAL = 128                       # an EBR chain longer than this is a loop in a damaged table
MBR_TYPE_NAMES = {
    0x01: "FAT12", 0x04: "FAT16", 0x06: "FAT16", 0x07: "NTFS/exFAT/HPFS", 0x0B: "FAT32", 0x0C: "FAT32 (LBA)",
    0x0E: "FAT16 (LBA)", 0x27: "Windows recovery", 0x82: "Linux swap", 0x83: "Linux", 0x8E: "Linux LVM",
    0xEF: "EFI system", 0xFD: "Linux RAID",
}
GPT_TYPE_NAMES = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI system",
    "e3c9e316-0b5c-4db8-817d-f92df00215ae": "Microsoft reserved",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
    "de94bba4-06d1-4d40-a16a-bfd50179d6ac": "Windows recovery",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux file system",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
    "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
}


class GuestFileSystemError(HyperVBackupError):
    """A guest partition table or file system cannot be read; names the disk, the partition and the problem."""


class Partition:
    """One partition: ``number``, ``scheme`` (gpt, mbr, none), ``type`` (GUID or 0xNN), ``offset`` and ``size`` in bytes."""

    def __init__(self, number, scheme, type_id, offset, size, name=None, type_name=None):
        self.number = number
        self.scheme = scheme
        self.type = type_id
        self.offset = offset
        self.size = size
        self.name = name or ""
        self.type_name = type_name or ""

    def as_dict(self):
        return {"number": self.number, "scheme": self.scheme, "type": self.type, "type_name": self.type_name,
                "name": self.name, "offset": self.offset, "size": self.size}

    def __repr__(self):
        return "Partition(%d, %s, %s, offset=%d, size=%d)" % (self.number, self.scheme, self.type, self.offset, self.size)


def _damaged(what, problem, number=None):
    where = "partition %d of the %s" % (number, what) if number is not None else "the %s" % what
    return GuestFileSystemError("The disk's partition table is damaged: %s %s." % (where, problem),
                                hint="Restore the whole disk (hyperv_restore) and repair the table with the guest's tools, "
                                     "or pick another backup.", partition=number, table=what)


def read_partitions(disk):
    """The disk's partitions in table order (see the module docstring); [] for a disk that is all zeros at sector 0."""
    size = disk.virtual_size
    if size < SECTOR:
        return []
    mbr = disk.read(0, SECTOR)
    if mbr[510:512] != b"\x55\xaa":
        return _superfloppy(mbr, size)
    entries = [struct.unpack_from("<B3sB3sII", mbr, 446 + 16 * slot) for slot in range(4)]
    if any(entry[2] == PROTECTIVE_MBR for entry in entries):
        return _read_gpt(disk, size)
    if _is_boot_sector(mbr) and not any(entry[2] for entry in entries):
        return _superfloppy(mbr, size)
    return _read_mbr(disk, size, entries)


def _is_boot_sector(sector):
    return sector[3:11] in (b"NTFS    ", b"-FVE-FS-", b"EXFAT   ") or sector[82:90] == b"FAT32   " or sector[54:59] in (b"FAT12", b"FAT16")


def _superfloppy(sector, size):
    """A disk formatted without a table (boot sector at 0, or an ext/XFS superblock) is one partition numbered 0."""
    if sector[:4] == b"XFSB" or _is_boot_sector(sector):
        return [Partition(0, "none", "", 0, size, type_name="whole disk")]
    return []


def _read_mbr(disk, size, entries):
    partitions = []
    for slot, (_status, _chs, type_id, _chs_end, first, count) in enumerate(entries, 1):
        if not type_id or not count:
            continue
        offset, length = first * SECTOR, count * SECTOR
        if offset + length > size or first == 0:
            raise _damaged("MBR", "lies outside the disk (sectors %d-%d, disk has %d)" % (first, first + count, size // SECTOR), slot)
        if type_id in EXTENDED_TYPES:
            partitions.extend(_read_logical(disk, size, first, first + count))
            continue
        partitions.append(Partition(slot, "mbr", "0x%02x" % type_id, offset, length, type_name=MBR_TYPE_NAMES.get(type_id)))
    _check_overlaps(partitions, "MBR")
    return sorted(partitions, key=lambda part: part.number)


def _read_logical(disk, size, extended_first, extended_end):
    """Logical partitions of an extended partition: a chain of EBRs, each relative to the extended partition's start."""
    partitions, ebr = [], extended_first
    for number in range(5, 5 + MAX_LOGICAL):
        sector = disk.read(ebr * SECTOR, SECTOR)
        if sector[510:512] != b"\x55\xaa":
            raise _damaged("MBR", "has no valid extended boot record at sector %d" % ebr, number)
        _s, _c, type_id, _e, first, count = struct.unpack_from("<B3sB3sII", sector, 446)
        _s, _c, next_type, _e, next_first, _n = struct.unpack_from("<B3sB3sII", sector, 462)
        if type_id and count:
            start = ebr + first
            if start + count > extended_end or start * SECTOR + count * SECTOR > size:
                raise _damaged("MBR", "(logical) lies outside its extended partition", number)
            partitions.append(Partition(number, "mbr", "0x%02x" % type_id, start * SECTOR, count * SECTOR,
                                        type_name=MBR_TYPE_NAMES.get(type_id)))
        if next_type not in EXTENDED_TYPES or not next_first:
            return partitions
        ebr = extended_first + next_first
        if ebr >= extended_end:
            raise _damaged("MBR", "(logical) links to an extended boot record outside the extended partition", number + 1)
    raise _damaged("MBR", "has more than %d logical partitions (a loop in the extended boot records)" % MAX_LOGICAL)


def _gpt_header(disk, lba, sector_size):
    """The parsed GPT header at ``lba`` (dict), or a string saying why it is not valid."""
    raw = disk.read(lba * sector_size, sector_size)
    if raw[:8] != b"EFI PART":
        return "no 'EFI PART' signature at LBA %d" % lba
    header_size = struct.unpack_from("<I", raw, 12)[0]
    if header_size < 92 or header_size > sector_size:
        return "header size %d is impossible" % header_size
    stored_crc = struct.unpack_from("<I", raw, 16)[0]
    if zlib.crc32(raw[:16] + b"\0\0\0\0" + raw[20:header_size]) & 0xFFFFFFFF != stored_crc:
        return "header checksum mismatch at LBA %d" % lba
    first_usable, last_usable = struct.unpack_from("<QQ", raw, 40)
    entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", raw, 72)
    if entry_size < 128 or entry_size % 8 or count > 4096:
        return "entry size %d or count %d is impossible" % (entry_size, count)
    return {"first_usable": first_usable, "last_usable": last_usable, "entries_lba": entries_lba, "count": count,
            "entry_size": entry_size, "entries_crc": entries_crc}


def _read_gpt(disk, size):
    problems = []
    for sector_size in (SECTOR, 4096):
        if size < 2 * sector_size:
            continue
        last_lba = size // sector_size - 1
        for lba in (1, last_lba):
            header = _gpt_header(disk, lba, sector_size)
            if isinstance(header, str):
                problems.append(header)
                continue
            array_length = header["count"] * header["entry_size"]
            if header["entries_lba"] * sector_size + array_length > size:
                problems.append("entry array at LBA %d lies outside the disk" % header["entries_lba"])
                continue
            array = disk.read(header["entries_lba"] * sector_size, array_length)
            if zlib.crc32(array) & 0xFFFFFFFF != header["entries_crc"]:
                problems.append("entry array checksum mismatch (header at LBA %d)" % lba)
                continue
            return _gpt_entries(array, header, sector_size, size)
    raise _damaged("GPT", "cannot be read: %s" % "; ".join(problems))


def _gpt_entries(array, header, sector_size, size):
    partitions = []
    for index in range(header["count"]):
        entry = array[index * header["entry_size"]:(index + 1) * header["entry_size"]]
        type_guid = entry[:16]
        if type_guid == bytes(16):
            continue
        number = index + 1
        first, last = struct.unpack_from("<QQ", entry, 32)
        if last < first or (last + 1) * sector_size > size:
            raise _damaged("GPT", "lies outside the disk (LBA %d-%d)" % (first, last), number)
        type_id = str(uuid.UUID(bytes_le=type_guid))
        name = entry[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
        partitions.append(Partition(number, "gpt", type_id, first * sector_size, (last - first + 1) * sector_size, name=name,
                                    type_name=GPT_TYPE_NAMES.get(type_id)))
    _check_overlaps(partitions, "GPT")
    return partitions


def _check_overlaps(partitions, what):
    ordered = sorted(partitions, key=lambda part: part.offset)
    for before, after in zip(ordered, ordered[1:]):
        if after.offset < before.offset + before.size:
            raise _damaged(what, "overlaps partition %d" % before.number, after.number)


def find_partition(partitions, number):
    """The partition numbered ``number``; GuestFileSystemError listing the numbers there are otherwise."""
    for part in partitions:
        if part.number == number:
            return part
    raise GuestFileSystemError("The disk has no partition %s." % number,
                               hint="Its partitions: %s (list them with state=listed)." % (
                                   ", ".join(str(part.number) for part in partitions) or "none"), partition=number)
