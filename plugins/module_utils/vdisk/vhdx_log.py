# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VHDX log (MS-VHDX 2.3): find the active log sequence and replay it in memory.

A VHDX whose header has a non-zero LogGuid may hold metadata/BAT updates that only reached the log
(the host crashed, or the file was copied while in use). The spec requires replaying them before any
read. We never modify a source file: ``replay_log`` returns an overlay ``{4 KiB-aligned file offset:
4096 bytes}`` that the reader applies to every structure read, or refuses when no valid, complete
sequence exists or the file is shorter than the log says it must be.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import struct

from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.crc32c import crc32c
from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.disk_io import read_exact

LOG_SECTOR = 4096
ENTRY_HEADER = struct.Struct("<4sIIIQII16sQQ")
DESCRIPTOR = struct.Struct("<4sIQQQ")
DATA_SECTOR_HEAD = struct.Struct("<4sI")
REPLAY_HINT = ("Open the disk once on the Hyper-V host (which replays the log), or run `qemu-img check -r all` "
               "on a copy, then back it up again.")


class LogEntry:
    """One validated log entry: where it is, its sequence number, tail, and its writes."""

    def __init__(self, position, length, tail, sequence, flushed_file_offset, last_file_offset, writes):
        self.position = position
        self.length = length
        self.tail = tail
        self.sequence = sequence
        self.flushed_file_offset = flushed_file_offset
        self.last_file_offset = last_file_offset
        self.writes = writes   # [(file_offset, bytes)] in order; zero descriptors give zero bytes


def parse_entry(ring, position, log_length, log_guid_bytes):
    """Return the LogEntry at ``position`` of the log ``ring`` (log read twice, for wrap-around) or None."""
    if position + ENTRY_HEADER.size > 2 * log_length:
        return None
    (signature, checksum, length, tail, sequence, count, _reserved, log_guid, flushed, last) = \
        ENTRY_HEADER.unpack_from(ring, position)
    if signature != b"loge" or log_guid != log_guid_bytes or sequence == 0:
        return None
    if length == 0 or length % LOG_SECTOR or length > log_length or tail % LOG_SECTOR or tail >= log_length:
        return None
    entry = bytearray(ring[position:position + length])
    struct.pack_into("<I", entry, 4, 0)
    if crc32c(entry) != checksum:
        return None
    descriptor_area = -(-(ENTRY_HEADER.size + count * DESCRIPTOR.size) // LOG_SECTOR) * LOG_SECTOR
    if descriptor_area > length:
        return None
    data_position = descriptor_area
    writes = []
    for index in range(count):
        kind, trailing, leading, file_offset, desc_sequence = DESCRIPTOR.unpack_from(entry, ENTRY_HEADER.size + index * DESCRIPTOR.size)
        if desc_sequence != sequence or file_offset % LOG_SECTOR:
            return None
        if kind == b"zero":
            if leading % LOG_SECTOR:   # for a zero descriptor this field is ZeroLength
                return None
            writes.append((file_offset, bytes(leading)))
        elif kind == b"desc":
            if data_position + LOG_SECTOR > length:
                return None
            sector = entry[data_position:data_position + LOG_SECTOR]
            data_signature, high = DATA_SECTOR_HEAD.unpack_from(sector, 0)
            low = struct.unpack_from("<I", sector, LOG_SECTOR - 4)[0]
            if data_signature != b"data" or (high << 32 | low) != sequence:
                return None
            writes.append((file_offset, struct.pack("<Q", leading) + bytes(sector[8:LOG_SECTOR - 4]) + struct.pack("<I", trailing)))
            data_position += LOG_SECTOR
        else:
            return None
    return LogEntry(position % log_length, length, tail, sequence, flushed, last, writes)


def find_active_sequence(ring, log_length, log_guid_bytes):
    """The newest valid complete sequence [LogEntry, ...] (tail first) or None."""
    best = None
    for start in range(0, log_length, LOG_SECTOR):
        first = parse_entry(ring, start, log_length, log_guid_bytes)
        if first is None:
            continue
        sequence = [first]
        position = (start + first.length) % log_length
        while len(sequence) < log_length // LOG_SECTOR:
            following = parse_entry(ring, position, log_length, log_guid_bytes)
            if following is None or following.sequence != sequence[-1].sequence + 1:
                break
            sequence.append(following)
            position = (position + following.length) % log_length
        head = sequence[-1]
        starts = [entry.position for entry in sequence]
        if head.tail not in starts:
            continue
        active = sequence[starts.index(head.tail):]
        if best is None or head.sequence > best[-1].sequence:
            best = active
    return best


def replay_log(image):
    """Return (overlay, last_file_offset) for ``image`` (a VhdxImage whose header has a LogGuid)."""
    header = image.header
    path = image.path
    if header.log_length == 0 or header.log_length % (1024 * 1024) or header.log_offset % (1024 * 1024) or header.log_offset < 1024 * 1024:
        raise VirtualDiskError(path, "the header names a pending log with a bad placement (offset %d, length %d)"
                               % (header.log_offset, header.log_length), hint=REPLAY_HINT)
    if header.log_offset + header.log_length > image.file_size:
        raise VirtualDiskError(path, "the pending log lies beyond the end of the file (truncated)", hint=REPLAY_HINT)
    log = bytes(read_exact(image.fd, path, header.log_offset, header.log_length))
    active = find_active_sequence(log + log, header.log_length, header.log_guid.bytes_le)
    if active is None:
        raise VirtualDiskError(path, "the file has a pending log (LogGuid %s) but no valid, complete log sequence "
                               "(bad entry checksum, signature or sequence)" % header.log_guid, hint=REPLAY_HINT)
    head = active[-1]
    if image.file_size < head.flushed_file_offset:
        raise VirtualDiskError(path, "the file is %d bytes but its log says it was at least %d bytes (truncated)"
                               % (image.file_size, head.flushed_file_offset), hint=REPLAY_HINT)
    overlay = {}
    for entry in active:
        for file_offset, data in entry.writes:
            for done in range(0, len(data), LOG_SECTOR):
                overlay[file_offset + done] = data[done:done + LOG_SECTOR]
    return overlay, head.last_file_offset
