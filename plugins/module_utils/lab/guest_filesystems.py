# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lab disks with a partition table and real guest file systems, built without mounting anything.

``build_image(raw_path, size, scheme, partitions)`` writes a sparse raw disk image: a GPT (protective MBR, header
and entry array at both ends, CRC32s) or an MBR, and in each partition a file system populated from a directory
with the distribution's own tools: NTFS (mkntfs, then ntfscp -t per file: ntfs-3g's offline tools cannot make
directories, so an NTFS source holds files only at its top level), ext4 (mkfs.ext4 -d), XFS (mkfs.xfs -p protofile;
modification times set afterwards with xfs_db, as a protofile cannot carry them) or FAT32 (mkfs.fat, mcopy -s -m).
Each file system is made in a temporary file of the partition's size and copied in at the partition's offset.

``write_image(disk, raw_path)`` brings a lab disk to the image's content: only 64 KiB blocks that differ from
what the disk holds are written, recorded for RCT as guest writes, so an incremental after a guest file change
carries the changed blocks (lab_admin.guest_files rebuilds the partition from the changed directory).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import shutil
import struct
import subprocess
import tempfile
import uuid
import zlib

from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_rct
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.crc32c import crc32c
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk, open_disk_for_write

MiB = 1024 * 1024
SECTOR = 512
FIRST_PARTITION = MiB                    # partitions start at 1 MiB, as Windows and parted align them
GPT_ENTRIES = 128
COMPARE_BLOCK = 64 * 1024
FILESYSTEMS = ("ntfs", "ext4", "xfs", "fat32")
MIN_SIZES = {"ntfs": 8 * MiB, "ext4": 8 * MiB, "xfs": 300 * MiB, "fat32": 40 * MiB}
GPT_TYPES = {"ntfs": "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7", "fat32": "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
             "ext4": "0fc63daf-8483-4772-8e79-3d69d8477de4", "xfs": "0fc63daf-8483-4772-8e79-3d69d8477de4"}
MBR_TYPES = {"ntfs": 0x07, "fat32": 0x0C, "ext4": 0x83, "xfs": 0x83}


def _run(args, **kwargs):
    result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, **kwargs)
    if result.returncode:
        raise ValueError("%s failed (%d): %s" % (" ".join(args[:2]), result.returncode,
                                                 (result.stderr or result.stdout).decode("utf-8", "replace").strip()[-400:]))
    return result.stdout.decode("utf-8", "replace")


def layout_partitions(size, partitions, scheme="gpt"):
    """[(offset, length)] for ``partitions`` (each {size: bytes or None for the rest}), 1 MiB aligned."""
    end = size - (MiB if scheme == "gpt" else 0)    # GPT keeps its backup header and entries in the last MiB
    placed, offset = [], FIRST_PARTITION
    for index, spec in enumerate(partitions):
        length = spec.get("size") or (end - offset if index == len(partitions) - 1 else None)
        if not length:
            raise ValueError("partition %d needs a size (only the last one may take the rest of the disk)" % (index + 1))
        length = length // MiB * MiB
        if offset + length > end:
            raise ValueError("partition %d (%d bytes at %d) does not fit a disk of %d bytes" % (index + 1, length, offset, size))
        minimum = MIN_SIZES.get(spec.get("type"), 0)
        if length < minimum:
            raise ValueError("partition %d: %s needs at least %d MiB" % (index + 1, spec.get("type"), minimum // MiB))
        placed.append((offset, length))
        offset += length
    return placed


def partition_table(size, placed, types, scheme="gpt", disk_guid=None):
    """[(offset, bytes)] that write an MBR or a GPT (both copies) for partitions ``placed`` of file systems ``types``."""
    if scheme == "mbr":
        if len(placed) > 4:
            raise ValueError("an MBR lab disk holds at most 4 (primary) partitions")
        mbr = bytearray(SECTOR)
        struct.pack_into("<I", mbr, 440, zlib.crc32(str(disk_guid).encode()) & 0xFFFFFFFF)   # disk signature
        for slot, ((offset, length), kind) in enumerate(zip(placed, types)):
            struct.pack_into("<B3sB3sII", mbr, 446 + 16 * slot, 0, b"\xfe\xff\xff", MBR_TYPES[kind], b"\xfe\xff\xff",
                             offset // SECTOR, length // SECTOR)
        mbr[510:512] = b"\x55\xaa"
        return [(0, bytes(mbr))]
    sectors = size // SECTOR
    entries = bytearray(GPT_ENTRIES * 128)
    for index, ((offset, length), kind) in enumerate(zip(placed, types)):
        struct.pack_into("<16s16sQQQ72s", entries, index * 128, uuid.UUID(GPT_TYPES[kind]).bytes_le,
                         uuid.uuid5(uuid.NAMESPACE_OID, "%s/%d" % (disk_guid, index)).bytes_le, offset // SECTOR,
                         (offset + length) // SECTOR - 1, 0, ("%s data" % kind).encode("utf-16-le"))
    entries_crc = zlib.crc32(entries) & 0xFFFFFFFF
    entry_sectors = len(entries) // SECTOR

    def header(current, backup, entries_lba):
        raw = bytearray(struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, current, backup, 34,
                                    sectors - 34, uuid.UUID(str(disk_guid)).bytes_le, entries_lba, GPT_ENTRIES, 128, entries_crc))
        struct.pack_into("<I", raw, 16, zlib.crc32(bytes(raw)) & 0xFFFFFFFF)
        return bytes(raw) + bytes(SECTOR - len(raw))

    mbr = bytearray(SECTOR)
    struct.pack_into("<B3sB3sII", mbr, 446, 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, min(sectors - 1, 0xFFFFFFFF))
    mbr[510:512] = b"\x55\xaa"
    last = sectors - 1
    return [(0, bytes(mbr)), (SECTOR, header(1, last, 2)), (2 * SECTOR, bytes(entries)),
            ((last - entry_sectors) * SECTOR, bytes(entries)), (last * SECTOR, header(last, 1, last - entry_sectors))]


def _source_files(source):
    """(relative path, full path, is_dir) under ``source``, parents first, sorted."""
    out = []
    for root, dirs, files in os.walk(source):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            full = os.path.join(root, name)
            out.append((os.path.relpath(full, source), full, name in dirs))
    return out


def make_filesystem(kind, path, source, label="LAB"):
    """Make file system ``kind`` in the file ``path`` (its size is the partition's) and copy ``source``'s tree in."""
    if kind == "ext4":
        _run(["mkfs.ext4", "-q", "-F", "-L", label[:16], "-E", "root_owner=0:0", "-d", source, path])
    elif kind == "fat32":
        _run(["mkfs.fat", "-F", "32", "-n", label[:11].upper(), path])
        names = sorted(os.listdir(source))
        if names:
            _run(["mcopy", "-s", "-m", "-Q", "-i", path] + [os.path.join(source, name) for name in names] + ["::/"],
                 env=dict(os.environ, TZ="UTC", MTOOLS_SKIP_CHECK="1"))
    elif kind == "ntfs":
        _run(["mkntfs", "-q", "-F", "-Q", "-L", label, path])
        for relative, full, is_dir in _source_files(source):
            if is_dir:
                raise ValueError("NTFS lab partitions hold files at the top level only (ntfs-3g's offline tools cannot "
                                 "create the directory %s)" % relative)
            _run(["ntfscp", "-q", "-t", path, full, relative])
    elif kind == "xfs":
        _make_xfs(path, source, label)
    else:
        raise ValueError("file system %r is not one the lab makes (%s)" % (kind, ", ".join(FILESYSTEMS)))


def _make_xfs(path, source, label):
    lines = ["lab", "0 0", "d--755 0 0"]

    def add(directory, indent):
        for name in sorted(os.listdir(directory)):
            full = os.path.join(directory, name)
            if " " in name or not name:
                raise ValueError("XFS lab partitions cannot hold the name %r (a protofile has no quoting)" % name)
            if os.path.isdir(full):
                lines.append("%s%s d--755 0 0" % (" " * indent, name))
                add(full, indent + 1)
                lines.append("%s$" % (" " * indent))
            else:
                lines.append("%s%s ---644 0 0 %s" % (" " * indent, name, full))
    add(source, 1)
    lines.append("$")
    with tempfile.NamedTemporaryFile("w", suffix=".proto", delete=False) as proto:
        proto.write("\n".join(lines) + "\n")
    try:
        _run(["mkfs.xfs", "-q", "-f", "-m", "bigtime=0", "-L", label[:12], "-p", proto.name, path])
    finally:
        os.unlink(proto.name)
    # A protofile gives every inode the current time (and xfs_db cannot write a time field reliably): set each
    # inode's modification time to its source's in place and re-seal the inode's CRC32C.
    with open(path, "r+b") as image:
        superblock = image.read(512)
        block_size, = struct.unpack_from(">I", superblock, 4)
        ag_blocks, = struct.unpack_from(">I", superblock, 84)
        inode_size, = struct.unpack_from(">H", superblock, 104)
        inodes_log, ag_blocks_log = superblock[123], superblock[124]
        for relative, full, _is_dir in _source_files(source):
            number = _xfs_inode_number(path, relative)
            ag, ag_inode = number >> (ag_blocks_log + inodes_log), number & ((1 << (ag_blocks_log + inodes_log)) - 1)
            position = (ag * ag_blocks + (ag_inode >> inodes_log)) * block_size + (ag_inode & ((1 << inodes_log) - 1)) * inode_size
            image.seek(position)
            inode = bytearray(image.read(inode_size))
            mtime_ns = os.stat(full).st_mtime_ns
            struct.pack_into(">II", inode, 40, mtime_ns // 1000000000, mtime_ns % 1000000000)
            struct.pack_into("<I", inode, 100, 0)
            struct.pack_into("<I", inode, 100, crc32c(bytes(inode)))
            image.seek(position)
            image.write(inode)


def _xfs_inode_number(path, relative):
    """The inode number of ``relative`` in the XFS image ``path`` (xfs_db walks the path)."""
    found = re.search(r"\binode (\d+),", _run(["xfs_db", "-r", "-c", "path /%s" % relative, "-c", "stack", path]))
    if found:
        return int(found.group(1))
    raise ValueError("xfs_db found no inode for %s" % relative)


def build_image(raw_path, size, partitions, scheme="gpt", disk_guid=None):
    """Write a sparse raw disk image of ``size`` bytes: the table and each {type, source, size, label} partition."""
    if scheme not in ("gpt", "mbr"):
        raise ValueError("partition scheme %r is not gpt or mbr" % scheme)
    disk_guid = disk_guid or uuid.uuid4()
    placed = layout_partitions(size, partitions, scheme)
    with open(raw_path, "wb") as image:
        image.truncate(size)
        for offset, data in partition_table(size, placed, [spec["type"] for spec in partitions], scheme, disk_guid):
            image.seek(offset)
            image.write(data)
        for (offset, length), spec in zip(placed, partitions):
            _write_partition(image, offset, length, spec)
    return placed


def _write_partition(image, offset, length, spec):
    directory = os.path.dirname(os.path.abspath(image.name))
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".fs") as part:
        part.truncate(length)
        part.flush()
        make_filesystem(spec["type"], part.name, spec["source"], spec.get("label") or "LAB")
        with open(part.name, "rb") as made:
            for first, count in _data_ranges(part.name, 0, length):     # holes stay holes: a 64 GiB partition is quick
                made.seek(first)
                position = first
                while position < first + count:
                    block = made.read(min(MiB, first + count - position))
                    if block.strip(b"\0"):
                        image.seek(offset + position)
                        image.write(block)
                    position += len(block)


def rebuild_partition(raw_path, offset, length, spec):
    """Make the partition at ``offset`` afresh from its source (after guest file changes), in the raw image."""
    zero = bytes(MiB)
    with open(raw_path, "r+b") as image:
        # The old file system's blocks must not survive where the new one has holes; they stay data (zeros), so
        # changed_ranges still compares them with the disk.
        for first, count in _data_ranges(raw_path, offset, offset + length):
            image.seek(first)
            for position in range(first, first + count, MiB):
                image.write(zero[:min(MiB, first + count - position)])
        _write_partition(image, offset, length, spec)


def _data_ranges(raw_path, start, end):
    """[(offset, length)] of the image's data (not holes) within [start, end)."""
    out = []
    with open(raw_path, "rb") as image:
        fd = image.fileno()
        position = start
        while position < end:
            try:
                data = os.lseek(fd, position, os.SEEK_DATA)
            except OSError:        # ENXIO: no data after position
                break
            if data >= end:
                break
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
            out.append((data, hole - data))
            position = hole
    return out


def changed_ranges(disk_reader, raw_path, start=0, end=None):
    """[(offset, bytes)] of 64 KiB blocks in [start, end) of the raw image that differ from ``disk_reader`` (an open
    lab disk); only the image's data ranges are compared (its holes were never written, on the disk either)."""
    changes = []
    size = disk_reader.virtual_size
    ranges = _data_ranges(raw_path, start, size if end is None else end)
    with open(raw_path, "rb") as image:
        for first, length in ranges:
            offset = first - first % COMPARE_BLOCK
            while offset < first + length:
                image.seek(offset)
                block = image.read(min(COMPARE_BLOCK, size - offset))
                if not block:
                    break
                if disk_reader.read(offset, len(block)) != block:
                    if changes and changes[-1][0] + len(changes[-1][1]) == offset and len(changes[-1][1]) < 4 * MiB:
                        changes[-1] = (changes[-1][0], changes[-1][1] + block)
                    else:
                        changes.append((offset, block))
                offset += len(block)
    return changes


def _write_changes(disk, raw_path, start=0, end=None):
    """Write what differs into the disk's current file as guest writes (recorded for RCT); returns bytes written."""
    with open_disk(disk["current"]) as current:
        changes = changed_ranges(current, raw_path, start, end)
    if not changes:
        return 0
    tracking = lab_rct.load(disk["rct_file"], disk["disk_id"])
    writer = open_disk_for_write(disk["current"])
    try:
        for offset, data in changes:
            writer.write(offset, data)
        writer.flush()
    finally:
        writer.close()
    lab_rct.record_writes(tracking, [(offset, len(data)) for offset, data in changes])
    lab_rct.save(disk["rct_file"], tracking)
    return sum(len(data) for _offset, data in changes)


def _work_dir(vm_dir, disk):
    return os.path.join(vm_dir, "guest_filesystems", disk["disk_id"])


def populate_disk(vm_dir, disk, spec):
    """Give a new lab disk a partition table and file systems per ``spec`` ({scheme, partitions: [{type, source,
    size, label}]}); the sources are copied into the VM's folder (guest_files changes that copy). Returns the record
    kept in the disk's document."""
    work = _work_dir(vm_dir, disk)
    if os.path.isdir(work):
        shutil.rmtree(work)
    os.makedirs(work, 0o700)
    partitions = []
    for number, item in enumerate(spec.get("partitions") or [], 1):
        if item.get("type") not in FILESYSTEMS:
            raise ValueError("partition %d: type %r is not one of %s" % (number, item.get("type"), ", ".join(FILESYSTEMS)))
        copy = os.path.join(work, "p%d" % number)
        if item.get("source"):
            shutil.copytree(item["source"], copy, symlinks=True)
        else:
            os.makedirs(copy)
        partitions.append({"type": item["type"], "size": item.get("size"), "label": item.get("label") or "LAB", "source": copy})
    if not partitions:
        raise ValueError("a guest file system needs at least one partition")
    raw = os.path.join(work, "disk.raw")
    scheme = spec.get("scheme") or "gpt"
    placed = build_image(raw, disk["virtual_size"], partitions, scheme, uuid.uuid5(uuid.NAMESPACE_OID, disk["disk_id"]))
    _write_changes(disk, raw)
    for item, (offset, length) in zip(partitions, placed):
        item.update(offset=offset, length=length)
    return {"scheme": scheme, "partitions": partitions, "image": raw}


def change_files(disk, partition, files):
    """Guest file writes: ``files`` [{path, content or source, mtime, state present/absent}] in partition number
    ``partition`` of a disk made by populate_disk; the partition is rebuilt and the changed blocks written.
    Returns {partition, changed: [paths], bytes_written}."""
    record = disk.get("guest_filesystem")
    if not record:
        raise ValueError("disk %s has no guest file system (give the disk guest_filesystem first)" % disk["disk_id"])
    if not 1 <= partition <= len(record["partitions"]):
        raise ValueError("disk %s has no partition %d" % (disk["disk_id"], partition))
    spec = record["partitions"][partition - 1]
    changed = []
    for item in files:
        relative = "/".join(part for part in str(item["path"]).split("/") if part)
        if not relative or ".." in relative.split("/"):
            raise ValueError("guest file path %r must name a file below the partition's root" % item["path"])
        target = os.path.join(spec["source"], relative)
        if item.get("state") == "absent":
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            elif os.path.lexists(target):
                os.unlink(target)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if item.get("source"):
                shutil.copyfile(item["source"], target)
            else:
                with open(target, "wb") as handle:
                    handle.write((item.get("content") or "").encode("utf-8"))
            if item.get("mtime") is not None:
                os.utime(target, (float(item["mtime"]), float(item["mtime"])))
        changed.append("/" + relative)
    rebuild_partition(record["image"], spec["offset"], spec["length"], spec)
    written = _write_changes(disk, record["image"], spec["offset"], spec["offset"] + spec["length"])
    return {"partition": partition, "changed": changed, "bytes_written": written}
