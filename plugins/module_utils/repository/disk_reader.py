# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading one disk of a committed backup: ``DiskReader`` (chunks checked against their ids, through the chunk index).

A zero entry reads as zeros without touching storage; a damaged chunk or index page raises RepositoryError naming the
backup, the disk and the offset, never wrong data.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import concurrent.futures

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import chunk_index


class DiskReader:
    """Reads one disk of one backup; every chunk is checked against its id, a bad one raises RepositoryError."""

    def __init__(self, repo, record, manifest):
        self.repo = repo
        self.record = record
        self.manifest = manifest
        self.backup_id = record.backup_id
        self.disk_key = manifest.disk_key
        self.virtual_size = manifest.virtual_size
        self.chunk_size = manifest.chunk_size
        self._cache = (None, None)

    def _chunk(self, index, cid=False):
        if cid is False:
            cid = self._chunk_id(index)
        length = self.manifest.chunk_length(index)
        if cid is None:
            return bytes(length)
        try:
            return self.repo.read_chunk(cid, length)
        except KeyError:
            problem = "is missing"
        except ValueError as err:
            problem = "is corrupt (%s)" % err
        raise RepositoryError("Backup %s, disk %r: chunk %s at offset %d %s; refusing to return wrong data." % (
            self.backup_id, self.disk_key, cid, index * self.chunk_size, problem),
            hint="Run verify on the repository and restore from another backup.",
            backup_id=self.backup_id, disk_key=self.disk_key, chunk_id=cid, offset=index * self.chunk_size)

    def _chunk_id(self, index):
        try:
            return self.manifest.chunk_id(index)
        except chunk_index.IndexDamaged as err:
            raise index_error(self.backup_id, self.disk_key, err, index * self.chunk_size)

    def read(self, offset, length):
        """Bytes [offset, offset+length) of the virtual disk (never short inside the disk)."""
        if offset < 0 or length < 0 or offset + length > self.virtual_size:
            raise RepositoryError("Read of %d bytes at %d is outside disk %r (%d bytes)." % (length, offset, self.disk_key, self.virtual_size))
        parts = []
        end = offset + length
        while offset < end:
            index = offset // self.chunk_size
            if self._cache[0] != index:
                self._cache = (index, self._chunk(index))
            data = self._cache[1]
            start = offset - index * self.chunk_size
            piece = data[start:start + (end - offset)]
            parts.append(piece)
            offset += len(piece)
        return b"".join(parts)

    def iter_chunks(self, skip_zero=True, prefetch=None):
        """Yield (offset, bytes) in order, fetching ahead on a thread pool; zero chunks skipped unless asked."""
        entries = self.iter_ids() if skip_zero else ((i, False) for i in range(self.manifest.chunk_count))
        window = prefetch or self.repo.workers * 2
        with concurrent.futures.ThreadPoolExecutor(self.repo.workers) as pool:
            pending = collections.deque()
            for index, cid in entries:
                pending.append((index, pool.submit(self._chunk, index, cid)))
                if len(pending) >= window:
                    index, future = pending.popleft()
                    yield index * self.chunk_size, future.result()
            while pending:
                index, future = pending.popleft()
                yield index * self.chunk_size, future.result()

    def iter_ids(self):
        """(index, hex id) of the non-zero chunks in order; a damaged index page raises RepositoryError naming it."""
        position = 0
        try:
            for index, cid in self.manifest.iter_chunks():
                position = index
                yield index, cid
        except chunk_index.IndexDamaged as err:
            raise index_error(self.backup_id, self.disk_key, err, position * self.chunk_size)


def index_error(backup_id, disk_key, err, offset):
    """The RepositoryError for a damaged index page (``err``: chunk_index.IndexDamaged) near ``offset``."""
    return RepositoryError("Backup %s, disk %r: %s (near offset %d); refusing to return wrong data." % (backup_id, disk_key, err, offset),
                           hint="Run verify on the repository and restore from another backup.",
                           backup_id=backup_id, disk_key=disk_key, chunk_id=err.page_id, offset=offset)
