# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Direct I/O (O_DIRECT) beside a file's ordinary descriptor, for the restore's writes and its verifying re-read.

A restore writes each byte of a disk once and reads it back once to prove it. Through the page cache that costs a
fresh page-cache page per 4 KiB, a copy in and a copy out; on a VM whose memory the host hands out lazily the fresh
pages alone measured 1.4-1.7 CPU s per GiB written or read cold (docs/benchmarks/backup.md). With O_DIRECT the data
moves between our reused, page-aligned buffers and the device without a copy (about 0.1 CPU s per GiB), and the
verify reads what the device holds, not what the page cache remembers.

``DirectChannel`` sends a piece through O_DIRECT when its file offset and length are multiples of ``ALIGN`` and
otherwise (a disk's short last chunk, a header) through the ordinary descriptor. The kernel refuses a buffer whose
address is not aligned, or a filesystem without direct I/O (tmpfs, some FUSE), with EINVAL: the channel then falls
back to the ordinary descriptor for good. Mixing both is coherent: a direct write drops the range from the page
cache and a direct read first writes back what the page cache holds dirty there.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import mmap
import os

ALIGN = 4096            # covers 512-byte and 4 KiB logical blocks alike


def aligned_buffer(size):
    """A page-aligned, zeroed, writable buffer of at least ``size`` bytes (anonymous memory: mmap aligns it)."""
    return mmap.mmap(-1, max(ALIGN, -(-size // ALIGN) * ALIGN))


def is_aligned(offset, length):
    return offset % ALIGN == 0 and length % ALIGN == 0 and length > 0


def reopen_direct(fd, writable):
    """An O_DIRECT descriptor on the same open file as ``fd`` (through /proc/self/fd, so a name swapped since the file
    was opened is never followed), or None where direct I/O is not available."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct or not isinstance(fd, int):
        return None
    flags = (os.O_RDWR if writable else os.O_RDONLY) | direct | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open("/proc/self/fd/%d" % fd, flags)
    except OSError as err:
        if err.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM):
            return None         # no direct I/O here (tmpfs, FUSE) or no /proc: the ordinary descriptor does it all
        raise


class DirectChannel:
    """Positioned reads and writes that go through O_DIRECT where they can, else through ``fd``."""

    def __init__(self, fd, writable=False, enabled=True):
        self.fd = fd
        self.direct_fd = reopen_direct(fd, writable) if enabled else None

    @property
    def direct(self):
        return self.direct_fd is not None

    def _give_up_direct(self):
        fd, self.direct_fd = self.direct_fd, None
        if fd is not None:
            os.close(fd)

    def pwrite(self, view, offset):
        """Write all of ``view`` at ``offset``."""
        view = memoryview(view).cast("B")
        if self.direct_fd is not None and is_aligned(offset, len(view)):
            try:
                _pwrite_all(self.direct_fd, view, offset)
                return
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                self._give_up_direct()      # an unaligned buffer or a filesystem that refuses: buffered from now on
        _pwrite_all(self.fd, view, offset)

    def preadinto(self, view, offset):
        """Fill ``view`` from ``offset``; returns the bytes read (fewer only at the end of the file)."""
        view = memoryview(view).cast("B")
        if self.direct_fd is not None and is_aligned(offset, len(view)):
            try:
                return _pread_all(self.direct_fd, view, offset)
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                self._give_up_direct()
        return _pread_all(self.fd, view, offset)

    def close(self):
        self._give_up_direct()


def _pwrite_all(fd, view, offset):
    while len(view):
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def _pread_all(fd, view, offset):
    total = 0
    while len(view):
        got = os.preadv(fd, [view], offset)
        if got <= 0:
            break
        total += got
        view, offset = view[got:], offset + got
    return total
