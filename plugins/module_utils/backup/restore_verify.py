# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Proving a restored disk file equal to its backup: ``verify_file`` re-reads the file and compares it with the chunk index.

Used by restore_engine before a restored file gets its name. Holes and unallocated VHDX blocks read as zeros and are
not read; the rest is re-hashed with the repository's chunk-id function, one leaf of the index at a time.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import concurrent.futures
import errno
import os
import threading

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError, RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import chunk_index
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.direct_io import DirectChannel, aligned_buffer
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk

VIRTUAL_DISK_FORMATS = ("vhdx", "vhd")      # what Hyper-V attaches; VHD for 2008 / 2008 R2 hosts


class RawFile:
    """A restored raw image seen like a VirtualDisk: readinto and the ranges that hold data."""

    def __init__(self, path):
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)
        self.virtual_size = os.fstat(self._fd).st_size
        self._channel = None

    def enable_direct_io(self):
        """Read aligned chunks with O_DIRECT (direct_io.py); True if the filesystem allows it."""
        if self._channel is None:
            self._channel = DirectChannel(self._fd)
        return self._channel.direct

    def readinto(self, offset, buffer):
        view = memoryview(buffer).cast("B")
        if self._channel is not None:
            got = self._channel.preadinto(view, offset)
            view, offset = view[got:], offset + got
        while len(view):
            got = os.preadv(self._fd, [view], offset)
            if got <= 0:
                raise HyperVBackupError("%s ends at offset %d, before its size %d." % (self.path, offset, self.virtual_size))
            view, offset = view[got:], offset + got

    def allocated_ranges(self):
        """The data extents (SEEK_DATA / SEEK_HOLE): a hole reads as zeros, so it needs no reading to be checked."""
        ranges, position = [], 0
        try:
            while position < self.virtual_size:
                try:
                    start = os.lseek(self._fd, position, os.SEEK_DATA)
                except OSError as err:
                    if err.errno == errno.ENXIO:       # no data after position
                        break
                    raise
                end = os.lseek(self._fd, start, os.SEEK_HOLE)
                ranges.append((start, end - start))
                position = end
        except OSError:                                # a filesystem without SEEK_DATA: read everything
            return [(0, self.virtual_size)]
        return ranges

    # a raw file's data extents are already what it stores
    stored_ranges = allocated_ranges

    def close(self):
        if self._channel is not None:
            self._channel.close()
        os.close(self._fd)


# --- verify --------------------------------------------------------------------------------------------

def verify_file(repo, manifest, path, fmt, workers=None):
    """Re-read ``path`` and compare every chunk with the manifest; returns {verified_chunks, mismatches, hashes}.

    Chunks outside the file's allocated ranges (VHDX blocks not in the BAT, raw holes, and the holes a restore left
    inside a VHDX block: ``VirtualDisk.stored_ranges``) read as zeros by definition and are counted as zero chunks
    without being read. The rest is read into one reused, page-aligned
    buffer per thread (a fresh buffer per chunk costs more in page faults than the read itself), with O_DIRECT where
    the filesystem allows it: the check then reads what the device holds, and costs no page-cache copies (direct_io.py);
    a chunk that reads as zeros is told by its hash, equal to the zero chunk's. The file is compared one
    leaf page of the index (``chunk_index.FANOUT`` chunks) at a time, so memory does not grow with the disk; the
    restored hash is the root the file's own chunk index would have, equal to the backup's root only for equal disks.
    """
    disk = open_disk(path) if fmt in VIRTUAL_DISK_FORMATS else RawFile(path)
    chunk_size = manifest.chunk_size
    mismatches = []
    mismatch_count = [0]
    builder = chunk_index.IndexBuilder(manifest.chunk_count, repo.keys.chunk_id, _unreachable, dirty_limit=1)
    try:
        if disk.virtual_size != manifest.virtual_size:
            return {"verified_chunks": 0, "mismatches": [{"offset": 0, "problem": "size %d, expected %d" % (
                disk.virtual_size, manifest.virtual_size)}], "mismatch_count": 1, "manifest_hash": None, "restored_hash": None}
        getattr(disk, "enable_direct_io", lambda: False)()
        zero_ids = {}
        local = threading.local()

        def chunk_id(index):
            length = manifest.chunk_length(index)
            buf = getattr(local, "buf", None)
            if buf is None:
                buf = local.buf = aligned_buffer(chunk_size)
            with memoryview(buf) as whole, whole[:length] as data:
                disk.readinto(index * chunk_size, data)
                found = repo.keys.chunk_id(data)
            if length not in zero_ids:
                zero_ids[length] = repo.keys.chunk_id(bytes(length))
            return index, (None if found == zero_ids[length] else found)

        def compare(found, leaf):
            """``found`` {index: id} of the file's chunks in leaf page ``leaf`` against the backup's entries there."""
            try:
                page = manifest.index.leaf(leaf)
            except chunk_index.IndexDamaged as err:
                raise RepositoryError("Backup %s, disk %r: %s; the restored file cannot be checked." % (
                    manifest.backup_id, manifest.disk_key, err), hint="Run verify on the repository and restore from another backup.")
            first = leaf * chunk_index.FANOUT
            want = dict((first + pos // chunk_index.ENTRY_BYTES, page[pos:pos + chunk_index.ENTRY_BYTES].hex())
                        for pos in chunk_index.nonzero_entries(page))
            for index in sorted(set(want) | set(i for i, cid in found.items() if cid)):
                expected, got = want.get(index), found.get(index)
                if expected != got:
                    mismatch_count[0] += 1
                    if len(mismatches) < 20:
                        mismatches.append({"offset": index * chunk_size, "expected": expected or "zeros", "found": got or "zeros"})
                if got:
                    builder.set(index, got)

        with concurrent.futures.ThreadPoolExecutor(workers or (os.cpu_count() or 2)) as pool:
            leaf, batch = 0, []
            for index in _data_chunks(disk.stored_ranges(), chunk_size, manifest.virtual_size):
                if index // chunk_index.FANOUT != leaf:
                    compare(dict(pool.map(chunk_id, batch)), leaf)
                    for between in range(leaf + 1, index // chunk_index.FANOUT):
                        if manifest.index.leaf_id(between) is not None:     # the file has no data here; the backup has
                            compare({}, between)
                    leaf, batch = index // chunk_index.FANOUT, []
                batch.append(index)
            compare(dict(pool.map(chunk_id, batch)), leaf)
            for between in range(leaf + 1, manifest.index.leaf_count):
                if manifest.index.leaf_id(between) is not None:
                    compare({}, between)
    finally:
        disk.close()
    return {"verified_chunks": manifest.chunk_count, "mismatches": mismatches, "mismatch_count": mismatch_count[0],
            "manifest_hash": manifest.root or "zeros", "restored_hash": builder.finish() or "zeros"}


def _data_chunks(ranges, chunk_size, virtual_size):
    """Ascending indexes of the chunks that the sorted ``ranges`` [(offset, length)] touch, each once, without a set."""
    last = -1
    end_index = (virtual_size - 1) // chunk_size
    for offset, length in sorted(ranges):
        if length <= 0:
            continue
        first = max(last + 1, int(offset) // chunk_size)
        stop = min(end_index, (int(offset) + int(length) - 1) // chunk_size)
        yield from range(first, stop + 1)
        last = max(last, stop)


def _unreachable(page_id):
    raise KeyError(page_id)     # verify_file feeds its builder in ascending order: a sealed leaf is never read back
