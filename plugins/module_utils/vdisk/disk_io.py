# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the VHD and VHDX readers and writers share below their formats.

One file abstraction (``open_file`` / ``pread_into`` / ``file_size_of`` / ``close_file``): a local file is an OS file
descriptor read with ``os.preadv`` into the caller's buffer, a remote one any object with ``pread_into(view, offset)``,
``size``, ``path`` and ``close()`` (host/disk_access.py). ``read_exact`` and ``pread_into`` name a truncated file
instead of returning short data; ``create_new_file`` never overwrites. ``check_write``, ``block_pieces`` and
``round_up`` are the arithmetic of a write at a virtual offset that both writers do.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError

# The hint of every error that says a disk file is damaged: here, at the bottom, so that the file helpers and both
# formats (vhdx_format, vhdx, vhd) give the same one.
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
