# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VHDX on-disk format (MS-VHDX 2.2, 2.6): the header section and the metadata region, built and parsed.

Signatures, offsets and sizes, the region and metadata item GUIDs, the struct layouts, the CRC-32C checksum of a
header or region table, the builders of a header, region table and metadata region, and the parent locator's
parser. Both ``vhdx.VhdxImage`` (the reader) and ``vhdx_writer`` use them, so a file we write is read back against
the same definition. The BAT is ``vhdx_bat``'s, the log ``vhdx_log``'s.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import struct
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.crc32c import crc32c
from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.disk_io import MAX_DEPTH_HINT, round_up

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

BAT_REGION = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")

ITEM_FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
ITEM_VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
ITEM_VIRTUAL_DISK_ID = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
ITEM_LOGICAL_SECTOR_SIZE = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
ITEM_PHYSICAL_SECTOR_SIZE = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
ITEM_PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
PARENT_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")

_HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
REGION_HEADER = struct.Struct("<4sII4x")
REGION_ENTRY = struct.Struct("<16sQII")
METADATA_HEADER = struct.Struct("<8s2xH20x")
METADATA_ENTRY = struct.Struct("<16sIII4x")
_LOCATOR_HEADER = struct.Struct("<16s2xH")
_LOCATOR_ENTRY = struct.Struct("<IIHH")


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
    REGION_HEADER.pack_into(buf, 0, REGION_SIGNATURE, 0, len(regions))
    for index, (guid, offset, length, required) in enumerate(regions):
        REGION_ENTRY.pack_into(buf, REGION_HEADER.size + index * REGION_ENTRY.size, guid_bytes(guid), offset, length,
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
    METADATA_HEADER.pack_into(buf, 0, METADATA_SIGNATURE, len(items))
    position = METADATA_TABLE_SIZE
    for index, (item_id, data, flags) in enumerate(items):
        METADATA_ENTRY.pack_into(buf, METADATA_HEADER.size + index * METADATA_ENTRY.size, guid_bytes(item_id),
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
