# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The virtual disk API the rest of the collection uses: open, read and write VHDX/AVHDX/VHD files.

``open_disk`` recognises the format by signature, follows differencing parents (always confirming
the parent linkage) and returns a ``VirtualDisk`` that reads through the whole chain.
``create_vhdx`` / ``open_vhdx_for_write`` / ``write_vhdx_from`` write VHDX files (see ``vhdx_writer``),
``create_vhd`` / ``open_vhd_for_write`` / ``write_vhd_from`` VHD files (see ``vhd_writer``), and
``create_disk`` / ``open_disk_for_write`` either, by extension, parent or signature, for callers that
do not care which. ``disk_info`` describes one file without opening its parents.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhd import VHD_COOKIE, VhdImage
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhd_writer import DEFAULT_BLOCK_SIZE as VHD_DEFAULT_BLOCK_SIZE
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhd_writer import VhdWriter, create_vhd_file
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx import RUN_DATA, RUN_PARENT, VhdxImage
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_format import FILE_SIGNATURE, MiB
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_writer import VhdxWriter, create_vhdx_file

MAX_CHAIN_DEPTH = 128
_ZEROS = bytes(MiB)


def _signature_bytes(path, opener):
    """The first 8 and the last 512 bytes of a file (the VHDX signature or the VHD footer)."""
    if opener is None:
        with open(path, "rb") as handle:
            head = handle.read(8)
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 512))
            return head, handle.read(512)
    remote = opener.open(path)
    try:
        head, tail = bytearray(min(8, remote.size)), bytearray(min(512, remote.size))
        remote.pread_into(memoryview(head), 0)
        remote.pread_into(memoryview(tail), remote.size - len(tail))
        return bytes(head), bytes(tail)
    finally:
        remote.close()


def open_layer(path, opener=None, metadata_only=False):
    """Open one file (no parents) as a VhdxImage or VhdImage, by its signature.

    ``opener`` reads files that are not local (disk_access.SmbOpener); None means the local filesystem.
    ``metadata_only``: a VHDX is read without its BAT (facts only: it cannot be read); a 64 TiB disk's BAT is 16 MiB.
    """
    path = str(path)
    try:
        head, tail = _signature_bytes(path, opener)
    except OSError as err:
        raise VirtualDiskError(path, "cannot open the file: %s" % (err.strerror or err),
                               hint="Check that the path exists and is readable by this user.")
    if head == FILE_SIGNATURE:
        return VhdxImage(path, opener=opener, metadata_only=metadata_only)
    if head == VHD_COOKIE or tail[:8] == VHD_COOKIE or tail[1:9] == VHD_COOKIE:
        return VhdImage(path, opener=opener)
    raise VirtualDiskError(path, "not a VHDX or VHD file (no 'vhdxfile' signature and no 'conectix' footer)",
                           hint="Check the path; only VHDX, AVHDX and VHD files are supported.")


def _parent_candidates(child_path, hints, search_paths):
    """Paths to try for a parent, best first: relative path, absolute path, then by file name."""
    child_dir = os.path.dirname(os.path.abspath(child_path))
    out = []
    for kind, value in hints:
        posix = value.replace("\\", "/")
        if kind == "relative":
            while posix.startswith("./"):
                posix = posix[2:]
            out.append(os.path.normpath(os.path.join(child_dir, posix)))
        elif os.path.isabs(posix):
            out.append(posix)
    names = []
    for _kind, value in hints:
        name = value.replace("\\", "/").rsplit("/", 1)[-1]
        if name and name not in names:
            names.append(name)
    for directory in [child_dir] + [str(p) for p in (search_paths or [])]:
        for name in names:
            out.append(os.path.join(directory, name))
    unique = []
    for candidate in out:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def _open_parent(child, search_paths, chain_real_paths, opener=None, metadata_only=False):
    tried, mismatches = [], []
    if opener is None:
        candidates = _parent_candidates(child.path, child.parent_hints(), search_paths)
        exists, identity = os.path.isfile, os.path.realpath
    else:
        candidates = opener.parent_candidates(child.path, child.parent_hints())
        exists, identity = opener.exists, opener.identity
    for candidate in candidates:
        tried.append(candidate)
        if not exists(candidate):
            continue
        if identity(candidate) in chain_real_paths:
            raise VirtualDiskError(child.path, "the parent chain loops back to %s" % candidate,
                                   hint="The differencing chain is corrupt (a cycle).")
        parent = open_layer(candidate, opener, metadata_only)
        problem = child.parent_mismatch(parent)
        if problem is None:
            return parent
        parent.close()
        mismatches.append("%s: %s" % (candidate, problem))
    if mismatches:
        raise VirtualDiskError(child.path, "parent linkage mismatch: " + "; ".join(mismatches),
                               hint="The parent was modified after this child was created (or it is another disk); "
                                    "use the parent that belongs to this checkpoint chain.")
    raise VirtualDiskError(child.path, "the parent disk was not found (tried: %s)" % ", ".join(tried),
                           hint="Copy the whole chain into one directory or pass its directory in search_paths.")


def open_disk(path, search_paths=None, opener=None):
    """Open a VHDX, AVHDX or VHD with its whole differencing chain; returns a VirtualDisk.

    ``opener`` (e.g. disk_access.SmbOpener) opens files that are not local, and resolves the parents of a
    remote file on the same host; None means the local filesystem (then ``search_paths`` are also tried).
    """
    identity = os.path.realpath if opener is None else opener.identity
    layers = [open_layer(path, opener)]
    try:
        real_paths = {identity(layers[0].path)}
        while layers[-1].has_parent:
            if len(layers) >= MAX_CHAIN_DEPTH:
                raise VirtualDiskError(path, "the differencing chain is deeper than %d files" % MAX_CHAIN_DEPTH,
                                       hint="Merge checkpoints on the host before backing up.")
            parent = _open_parent(layers[-1], search_paths, real_paths, opener)
            layers.append(parent)
            real_paths.add(identity(parent.path))
            if parent.logical_sector_size != layers[0].logical_sector_size:
                raise VirtualDiskError(parent.path, "logical sector size %d differs from the child's %d"
                                       % (parent.logical_sector_size, layers[0].logical_sector_size))
    except BaseException:
        for layer in layers:
            layer.close()
        raise
    return VirtualDisk(layers)


class VirtualDisk:
    """A readable virtual disk: the top file and its parents, read through as one disk."""

    def __init__(self, layers):
        self._layers = layers
        top = layers[0]
        self.path = top.path
        self.chain = [layer.path for layer in layers]
        self.virtual_size = top.virtual_size
        self.logical_sector_size = top.logical_sector_size
        self.physical_sector_size = top.physical_sector_size
        self.block_size = top.block_size
        self.format = top.format_name

    def read(self, offset, length):
        """Return exactly ``length`` bytes from ``offset``; raise past the end."""
        buf = bytearray(length)
        self.readinto(offset, buf)
        return bytes(buf)

    def readinto(self, offset, buffer):
        view = memoryview(buffer).cast("B")
        if self._layers is None:
            raise VirtualDiskError(self.path, "read after close")
        if offset < 0 or offset + len(view) > self.virtual_size:
            raise VirtualDiskError(self.path, "read of %d bytes at offset %d is outside the %d-byte disk"
                                   % (len(view), offset, self.virtual_size))
        self._read_layer(0, offset, view)

    def _read_layer(self, depth, offset, view):
        layer = self._layers[depth]
        length = len(view)
        inside = max(0, min(length, layer.virtual_size - offset))
        if inside < length:
            _zero(view[inside:])
        if not inside:
            return
        for run_offset, run_length, kind, file_offset in layer.runs(offset, inside):
            sub = view[run_offset - offset:run_offset - offset + run_length]
            if kind == RUN_DATA:
                layer.read_data(sub, file_offset)
            elif kind == RUN_PARENT and depth + 1 < len(self._layers):
                self._read_layer(depth + 1, run_offset, sub)
            else:
                _zero(sub)

    def enable_direct_io(self):
        """Read aligned payload with O_DIRECT where a layer can (direct_io.py): a verify that re-reads a whole restored
        disk then reads the device, without filling the page cache. True if the top file reads directly."""
        enabled = [getattr(layer, "enable_direct_io", lambda: False)() for layer in self._layers or ()]
        return bool(enabled and enabled[0])

    def allocated_ranges(self):
        """Merged, sorted [(offset, length)] that may hold non-zero data, from the BATs of the chain."""
        return [(start, end - start) for start, end in self._allocated(0)]

    def stored_ranges(self):
        """``allocated_ranges`` less the holes of the file itself: a VHDX block takes its whole size (32 MiB at 64 TiB)
        as soon as one sector is written, and a writer that left the rest unwritten leaves holes there, which read as
        zeros. Only for a single file without a pending log on a filesystem that reports holes (SEEK_DATA); otherwise
        the same as ``allocated_ranges``. A restore's verify reads these, not 32 MiB per scattered MiB."""
        ranges = self.allocated_ranges()
        layer = self._layers[0]
        if len(self._layers) != 1 or not isinstance(getattr(layer, "fd", None), int) or getattr(layer, "overlay", None):
            return ranges
        out = []
        try:
            for offset, length in ranges:
                for run_offset, run_length, kind, file_offset in layer.runs(offset, length):
                    if kind != RUN_DATA:
                        continue
                    for start, end in _file_data(layer.fd, file_offset, file_offset + run_length):
                        out.append((run_offset + start - file_offset, run_offset + end - file_offset))
        except OSError as err:
            if err.errno in (errno.EINVAL, errno.EOPNOTSUPP):     # no SEEK_DATA here: every allocated byte counts
                return ranges
            raise
        return [(start, end - start) for start, end in _merge(out)]

    def _allocated(self, depth):
        layer = self._layers[depth]
        own, through = [], []
        for start, length, kind in layer.block_map():
            if kind == RUN_DATA:
                own.append((start, start + length))
            elif kind == RUN_PARENT:
                through.append((start, start + length))
        if through and depth + 1 < len(self._layers):
            own.extend(_intersect(through, self._allocated(depth + 1)))
        return _merge(own)

    def close(self):
        if self._layers:
            for layer in self._layers:
                layer.close()
        self._layers = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _zero(view):
    position = 0
    while position < len(view):
        step = min(len(_ZEROS), len(view) - position)
        view[position:position + step] = _ZEROS[:step]
        position += step


def _file_data(fd, start, end):
    """[(start, end)] of the file bytes in [start, end) that are data, not holes (SEEK_DATA / SEEK_HOLE)."""
    out, position = [], start
    while position < end:
        try:
            data = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:        # nothing but hole up to the end of the file
                break
            raise
        if data >= end:
            break
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        out.append((data, min(hole, end)))
        position = hole
    return out


def _merge(intervals):
    out = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _intersect(a, b):
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


# --- writing ------------------------------------------------------------------------------------

def create_vhdx(path, virtual_size, block_size=32 * MiB, logical_sector_size=512, physical_sector_size=4096,
                parent=None, parent_absolute_path=None, open_writer=True):
    """Create a dynamic VHDX (or a differencing one on ``parent``) and return its VhdxWriter (None: ``open_writer`` False).

    ``virtual_size`` may be None with a parent (the child takes the parent's size).
    ``parent_absolute_path`` overrides the absolute_win32_path locator entry (e.g. a Windows path).
    """
    return create_vhdx_file(path, virtual_size, block_size, logical_sector_size, physical_sector_size,
                            parent, parent_absolute_path, open_writer)


def open_vhdx_for_write(path):
    """Open an existing dynamic or differencing VHDX for random-access writes."""
    return VhdxWriter(path)


def create_vhd(path, virtual_size, block_size=VHD_DEFAULT_BLOCK_SIZE, parent=None, parent_absolute_path=None,
               open_writer=True):
    """Create a dynamic VHD (or a differencing one on the VHD ``parent``) and return its VhdWriter (None: ``open_writer`` False).

    VHD sectors are always 512 bytes. With a parent, ``virtual_size`` may be None (the parent's size) and
    ``block_size`` None takes the parent's. ``parent_absolute_path`` overrides the W2ku locator entry.
    """
    return create_vhd_file(path, virtual_size, block_size, parent, parent_absolute_path, open_writer)


def open_vhd_for_write(path):
    """Open an existing fixed, dynamic or differencing VHD for random-access writes."""
    return VhdWriter(path)


# File name extensions of each format (Hyper-V names a VHD checkpoint child .avhd, a VHDX one .avhdx).
FORMAT_EXTENSIONS = {"vhdx": (".vhdx", ".avhdx"), "vhd": (".vhd", ".avhd")}


def format_of_path(path):
    """'vhdx' or 'vhd' from a file name's extension; None if the extension says neither."""
    extension = os.path.splitext(str(path))[1].lower()
    for name, extensions in FORMAT_EXTENSIONS.items():
        if extension in extensions:
            return name
    return None


def create_disk(path, virtual_size, block_size=None, logical_sector_size=512, parent=None, parent_absolute_path=None,
                disk_format=None, open_writer=True):
    """Create a dynamic disk (or a differencing one on ``parent``) in ``disk_format``; returns its writer (None with
    ``open_writer`` False: only the file).

    The format, unless given, is the parent's (a child always has its parent's format), else the one the
    extension of ``path`` names. ``block_size`` None means the format's default (VHDX 32 MiB, VHD 2 MiB)
    or, for a VHD child, the parent's.
    """
    path = str(path)
    if disk_format is None and parent is not None:
        layer = open_layer(parent, metadata_only=True)
        disk_format = layer.format_name
        layer.close()
    disk_format = disk_format or format_of_path(path)
    if disk_format == "vhd":
        if logical_sector_size != 512:
            raise VirtualDiskError(path, "a VHD has 512-byte sectors; %r was asked for" % (logical_sector_size,),
                                   hint="Use VHDX for 4096-byte logical sectors.")
        return create_vhd(path, virtual_size, block_size, parent, parent_absolute_path, open_writer)
    if disk_format == "vhdx":
        return create_vhdx(path, virtual_size, block_size or 32 * MiB, logical_sector_size, parent=parent,
                           parent_absolute_path=parent_absolute_path, open_writer=open_writer)
    raise VirtualDiskError(path, "cannot tell which disk format to create (format %r)" % (disk_format,),
                           hint="Name the file .vhdx/.avhdx or .vhd/.avhd, or pass disk_format 'vhdx' or 'vhd'.")


def open_disk_for_write(path):
    """Open an existing VHDX/AVHDX or VHD/AVHD for random-access writes (format from the file's signature)."""
    layer = open_layer(path)
    disk_format = layer.format_name
    layer.close()
    return VhdWriter(path) if disk_format == "vhd" else VhdxWriter(path)


def _write_whole_image(path, create, source, virtual_size, block_size):
    """Stream ``source`` into a new file made by ``create(partial_path)``, skipping all-zero blocks."""
    read_at = source if callable(source) else source.read
    path = str(path)
    partial = path + ".partial"
    if os.path.exists(partial):
        os.unlink(partial)
    allocated = 0
    try:
        with create(partial) as writer:
            zero_block = bytes(block_size)
            for offset in range(0, virtual_size, block_size):
                length = min(block_size, virtual_size - offset)
                data = read_at(offset, length)
                if len(data) != length:
                    raise VirtualDiskError(path, "the source returned %d bytes at offset %d, expected %d"
                                           % (len(data), offset, length), hint="The source image is shorter than the disk.")
                if data == zero_block[:length]:
                    continue
                writer.write(offset, data)
                allocated += length
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
    return {"path": path, "virtual_size": virtual_size, "allocated_bytes": allocated}


def write_vhdx_from(path, source, virtual_size, block_size=32 * MiB, logical_sector_size=512,
                    physical_sector_size=4096):
    """Write a whole image into a new dynamic VHDX at ``path``, skipping all-zero blocks.

    ``source`` is ``read_at(offset, length) -> bytes`` or an object with such a ``read`` method.
    The file is built as ``path + '.partial'`` and renamed at the end, so ``path`` never holds a half
    file. Returns {path, virtual_size, allocated_bytes}.
    """
    return _write_whole_image(
        path, lambda partial: create_vhdx(partial, virtual_size, block_size, logical_sector_size, physical_sector_size),
        source, virtual_size, block_size)


def write_vhd_from(path, source, virtual_size, block_size=VHD_DEFAULT_BLOCK_SIZE):
    """Like ``write_vhdx_from`` but into a new dynamic VHD (for Windows Server 2008/2008 R2 hosts)."""
    return _write_whole_image(path, lambda partial: create_vhd(partial, virtual_size, block_size),
                              source, virtual_size, block_size)


def disk_info(path):
    """Describe one VHDX/AVHDX/VHD file (its parent only found, by the linkage in both files' metadata)."""
    layer = open_layer(path, metadata_only=True)
    try:
        info = layer.info()
        parent_path = None
        if layer.has_parent:
            try:
                parent = _open_parent(layer, None, {os.path.realpath(layer.path)}, metadata_only=True)
                parent_path = parent.path
                parent.close()
            except VirtualDiskError:
                parent_path = None
        info["parent_path"] = parent_path
        return info
    finally:
        layer.close()
