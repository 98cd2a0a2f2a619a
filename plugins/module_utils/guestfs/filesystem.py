# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A guest file system inside one partition of a backed-up disk, read in user space, chunk by chunk.

One small interface, ``GuestFileSystem`` (``entries``, ``stat``, ``open``, ``check``), over two libraries:

- The Sleuth Kit through pytsk3 (NTFS, ext2/3/4, FAT12/16/32, exFAT): mature, maintained, reads images through
  a Python ``Img_Info`` subclass, so every read goes to the repository's DiskReader and only the chunks the
  library asks for are fetched. libfsntfs-python would cover NTFS only; libguestfs needs a kernel appliance.
- dissect.xfs (pure Python) for XFS, which the Sleuth Kit bundled with pytsk3 does not read.

``ChunkCache`` sits between the libraries and the DiskReader: it fetches whole chunks, keeps the last few (a
file system reads its metadata in small pieces, again and again) and counts what it fetched (``bytes_read``).
BitLocker, an unknown file system and a damaged one raise GuestFileSystemError naming the partition.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import io
import stat
import traceback

from ansible_collections.hyperv.backup.plugins.module_utils.guestfs.partitions import GuestFileSystemError

try:
    import pytsk3
    PYTSK3_ERROR = None
except ImportError:
    pytsk3 = None
    PYTSK3_ERROR = traceback.format_exc()
try:
    from dissect import xfs as dissect_xfs
    DISSECT_XFS_ERROR = None
except ImportError:
    dissect_xfs = None
    DISSECT_XFS_ERROR = traceback.format_exc()

CACHE_CHUNKS = 16
NTFS_RESERVED_RECORDS = 24          # MFT records 0-23 are the volume's own metadata ($MFT, $Bitmap, ...), not guest files
DIRECTORY, FILE, SYMLINK, OTHER = "directory", "file", "symlink", "other"


class ChunkCache:
    """``read(offset, length)`` over a DiskReader in whole chunks, the last ``CACHE_CHUNKS`` kept; counts what it fetched.

    ``bytes_read`` counts the stored chunks fetched from the repository (zero chunks cost nothing and are not counted).
    """

    def __init__(self, reader, cache_chunks=CACHE_CHUNKS):
        self.reader = reader
        self.virtual_size = reader.virtual_size
        self.chunk_size = reader.chunk_size
        self.bytes_read = 0
        self.chunks_read = 0
        self._cache = collections.OrderedDict()
        self._limit = cache_chunks

    def _chunk(self, index):
        data = self._cache.get(index)
        if data is not None:
            self._cache.move_to_end(index)
            return data
        start = index * self.chunk_size
        length = min(self.chunk_size, self.virtual_size - start)
        data = self.reader.read(start, length)
        if self._is_stored(index):
            self.bytes_read += length
            self.chunks_read += 1
        self._cache[index] = data
        if len(self._cache) > self._limit:
            self._cache.popitem(last=False)
        return data

    def _is_stored(self, index):
        manifest = getattr(self.reader, "manifest", None)
        if manifest is None:
            return True
        return manifest.chunk_id(index) is not None

    def read(self, offset, length):
        end = min(offset + length, self.virtual_size)
        parts = []
        while offset < end:
            index = offset // self.chunk_size
            start = offset - index * self.chunk_size
            piece = self._chunk(index)[start:start + end - offset]
            parts.append(piece)
            offset += len(piece)
        return b"".join(parts)


class PartitionFile(io.RawIOBase):
    """A read-only, seekable file over ``disk`` bytes [offset, offset+size) (what dissect.xfs reads)."""

    def __init__(self, disk, offset, size):
        super(PartitionFile, self).__init__()
        self.disk, self.offset, self.size, self.position = disk, offset, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, position, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + position)
        return self.position

    def tell(self):
        return self.position

    def read(self, size=-1):
        if size is None or size < 0:
            size = self.size - self.position
        data = self.pread(self.position, size)
        self.position += len(data)
        return data

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def pread(self, position, size):
        size = max(0, min(size, self.size - position))
        return self.disk.read(self.offset + position, size) if size else b""


class Entry:
    """One directory entry: guest ``path`` ('/' separated, from the partition's root), ``type``, ``size``, ``mtime``."""

    def __init__(self, path, kind, size, mtime, inode=None, name=None):
        self.path = path
        self.type = kind
        self.size = size
        self.mtime = mtime
        self.inode = inode
        # The name as the directory holds it: a hostile one may contain '/', which the path cannot show apart.
        self.name = path.rsplit("/", 1)[-1] if name is None else name

    def as_dict(self):
        return {"path": self.path, "type": self.type, "size": self.size, "mtime": self.mtime}


def detect_filesystem(disk, partition):
    """The file system in ``partition`` by its signature: ntfs, fat32, fat, exfat, ext4, xfs, bitlocker or None."""
    head = disk.read(partition.offset, min(4096, partition.size))
    if head[3:11] == b"-FVE-FS-":
        return "bitlocker"
    if head[3:11] == b"NTFS    ":
        return "ntfs"
    if head[3:11] == b"EXFAT   ":
        return "exfat"
    if head[82:90] == b"FAT32   ":
        return "fat32"
    if head[54:59] in (b"FAT12", b"FAT16"):
        return "fat"
    if head[:4] == b"XFSB":
        return "xfs"
    if len(head) >= 1082 and head[1080:1082] == b"\x53\xef":
        # ext4 when an ext4-only incompatible feature is on: extents (0x40), 64bit (0x80), flex_bg (0x200).
        return "ext4" if head[1024 + 0x60] & 0xC0 or head[1024 + 0x61] & 0x02 else "ext"
    return None


def open_filesystem(disk, partition, disk_label="disk"):
    """A GuestFileSystem for ``partition`` of ``disk`` (a ChunkCache); GuestFileSystemError names the partition."""
    kind = detect_filesystem(disk, partition)
    where = "%s, partition %d" % (disk_label, partition.number)
    if kind == "bitlocker":
        raise GuestFileSystemError("%s is encrypted with BitLocker; its files cannot be read from the backup." % where,
                                   hint="Restore the whole disk (hyperv_restore), attach it and unlock it with its recovery key.",
                                   partition=partition.number, filesystem="bitlocker")
    if kind is None:
        raise GuestFileSystemError("%s holds no file system this module reads (NTFS, ext2/3/4, XFS, FAT, exFAT)." % where,
                                   hint="Restore the whole disk (hyperv_restore) to read it with the guest's tools.",
                                   partition=partition.number, filesystem=None)
    if kind == "xfs":
        return XfsFileSystem(disk, partition, where)
    return TskFileSystem(disk, partition, where, kind)


def _normalise(path):
    parts = [part for part in str(path or "/").replace("\\", "/").split("/") if part not in ("", ".")]
    if ".." in parts:
        raise GuestFileSystemError("Guest path %r has a '..' part." % path, hint="Give paths from the partition's root, like /etc/hosts.")
    return "/" + "/".join(parts)


def _walkable(name):
    """A directory name that can be part of a path (a damaged or hostile one with '/' or NUL cannot be opened by path)."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


def _join(parent, name):
    return parent.rstrip("/") + "/" + name


class GuestFileSystem:
    """The interface: ``entries(path, recursive)``, ``stat(path)``, ``open(path)`` (a stream) and ``check()``."""

    kind = None

    def __init__(self, disk, partition, where):
        self.disk, self.partition, self.where = disk, partition, where

    def _error(self, problem, path=None, err=None):
        text = "%s (%s)%s: %s" % (self.where, self.kind, ", %s" % path if path else "", problem)
        if err is not None:
            text += ": %s" % (str(err).strip().splitlines() or [type(err).__name__])[-1]
        return GuestFileSystemError(text, hint="The file system in the backup is damaged or unreadable; try another backup "
                                               "or restore the whole disk and repair it in the guest.",
                                    partition=self.partition.number, filesystem=self.kind, path=path)

    def entries(self, path="/", recursive=False):
        """Entries under directory ``path`` (sorted by name; with ``recursive`` depth first); a file gives itself."""
        top = self.stat(path)
        if top.type != DIRECTORY:
            yield top
            return
        pending = [top.path]
        while pending:
            directory = pending.pop()
            children = sorted(self._children(directory), key=lambda entry: entry.path)
            yield from children
            if recursive:
                pending.extend(child.path for child in reversed(children) if child.type == DIRECTORY and _walkable(child.name))

    def check(self):
        """Walk every directory and every entry's metadata; {directories, files, bytes} or the first error raised."""
        counts = {"directories": 1, "files": 0, "bytes": 0}
        for entry in self.entries("/", recursive=True):
            if entry.type == DIRECTORY:
                counts["directories"] += 1
            else:
                counts["files"] += 1
                counts["bytes"] += entry.size
                self._check_entry(entry)
        return counts

    def _children(self, directory):
        raise NotImplementedError

    def _check_entry(self, entry):
        raise NotImplementedError

    def stat(self, path):
        raise NotImplementedError

    def open(self, path):
        raise NotImplementedError


if pytsk3 is not None:
    class _DiskImage(pytsk3.Img_Info):
        """The partition as a Sleuth Kit image: every read goes to the ChunkCache (never a file on disk)."""

        def __init__(self, partition_file):
            self._file = partition_file
            super(_DiskImage, self).__init__(url="", type=pytsk3.TSK_IMG_TYPE_EXTERNAL)

        def read(self, offset, size):      # pylint: disable=arguments-renamed  # pytsk3 names them so
            return self._file.pread(offset, size)

        def get_size(self):
            return self._file.size

        def close(self):
            return None


class TskStream(io.RawIOBase):
    """A file's data read through the Sleuth Kit, in order (``read(n)``)."""

    def __init__(self, tsk_file, size):
        super(TskStream, self).__init__()
        self._file, self.size, self.position = tsk_file, size, 0

    def readable(self):
        return True

    def read(self, size=-1):
        if size is None or size < 0:
            size = self.size - self.position
        size = min(size, self.size - self.position)
        if size <= 0:
            return b""
        data = self._file.read_random(self.position, size)
        self.position += len(data)
        return data


class TskFileSystem(GuestFileSystem):
    """NTFS, ext2/3/4, FAT and exFAT through pytsk3."""

    def __init__(self, disk, partition, where, kind):
        super(TskFileSystem, self).__init__(disk, partition, where)
        self.kind = kind
        if pytsk3 is None:
            raise GuestFileSystemError("%s: reading %s needs the Python library pytsk3, which is not installed." % (where, kind),
                                       hint="pip install pytsk3 on the machine that runs the module (see requirements.txt).", import_error=PYTSK3_ERROR)
        try:
            self._image = _DiskImage(PartitionFile(disk, partition.offset, partition.size))
            self._fs = pytsk3.FS_Info(self._image)
        except (IOError, OSError, RuntimeError) as err:
            raise self._error("the file system cannot be opened", err=err)
        self._ntfs = self._fs.info.ftype == pytsk3.TSK_FS_TYPE_NTFS

    def _entry(self, path, meta, name_meta_type=None, name=None):
        kind, size, mtime, inode = OTHER, 0, 0, None
        meta_type = meta.type if meta is not None else name_meta_type
        if meta is not None:
            size, mtime, inode = int(meta.size), int(meta.mtime) + int(getattr(meta, "mtime_nano", 0) or 0) / 1e9, int(meta.addr)
        if meta_type == pytsk3.TSK_FS_META_TYPE_DIR:
            kind = DIRECTORY
        elif meta_type == pytsk3.TSK_FS_META_TYPE_REG:
            kind = FILE
        elif meta_type == pytsk3.TSK_FS_META_TYPE_LNK:
            kind = SYMLINK
        return Entry(path, kind, size if kind != DIRECTORY else 0, mtime, inode, name)

    def _skip(self, name, meta):
        if name in (".", "..") or name.endswith("(Volume Label Entry)"):
            return True       # the Sleuth Kit shows a FAT volume label as a file
        if meta is None:
            return False
        if meta.type in (pytsk3.TSK_FS_META_TYPE_VIRT, pytsk3.TSK_FS_META_TYPE_VIRT_DIR):
            return True          # the Sleuth Kit's own $OrphanFiles, $MBR, $FAT1 ...: not in the guest
        return self._ntfs and int(meta.addr) < NTFS_RESERVED_RECORDS and int(meta.addr) != 5

    def _children(self, directory):
        try:
            handle = self._fs.open_dir(path=directory)
            for tsk_entry in handle:
                info = tsk_entry.info
                name = info.name.name.decode("utf-8", "surrogateescape")
                meta = info.meta
                if info.name.flags & pytsk3.TSK_FS_NAME_FLAG_UNALLOC or self._skip(name, meta):
                    continue
                yield self._entry(_join(directory, name), meta, info.name.type and _NAME_TO_META.get(int(info.name.type)), name)
        except (IOError, OSError, RuntimeError) as err:
            raise self._error("directory cannot be read", directory, err)

    def stat(self, path):
        path = _normalise(path)
        try:
            tsk_file = self._fs.open(path)
        except (IOError, OSError, RuntimeError) as err:
            raise GuestFileSystemError("%s (%s) has no %s (%s)." % (self.where, self.kind, path, str(err).strip().splitlines()[-1]),
                                       hint="List the partition with state=listed to see its paths.", path=path,
                                       partition=self.partition.number)
        entry = self._entry(path, tsk_file.info.meta)
        if path == "/":
            entry.type = DIRECTORY
        return entry

    def open(self, path):
        path = _normalise(path)
        entry = self.stat(path)
        try:
            return TskStream(self._fs.open(path), entry.size)
        except (IOError, OSError, RuntimeError) as err:
            raise self._error("file cannot be opened", path, err)

    def _check_entry(self, entry):
        """Open the entry's metadata and walk its data runs (MFT attributes, ext4 extent tree): all inside the volume."""
        if entry.inode is None:
            return
        limit = self._fs.info.block_count
        try:
            tsk_file = self._fs.open_meta(inode=entry.inode)
            for attribute in tsk_file:
                for run in attribute:
                    if run.len and run.addr + run.len > limit:
                        raise self._error("data run %d+%d lies outside the volume (%d blocks)" % (run.addr, run.len, limit), entry.path)
        except (IOError, OSError, RuntimeError) as err:
            raise self._error("metadata cannot be read", entry.path, err)


_NAME_TO_META = {}
if pytsk3 is not None:
    _NAME_TO_META = {int(pytsk3.TSK_FS_NAME_TYPE_DIR): pytsk3.TSK_FS_META_TYPE_DIR, int(pytsk3.TSK_FS_NAME_TYPE_REG): pytsk3.TSK_FS_META_TYPE_REG,
                     int(pytsk3.TSK_FS_NAME_TYPE_LNK): pytsk3.TSK_FS_META_TYPE_LNK}


class XfsFileSystem(GuestFileSystem):
    """XFS through dissect.xfs (the Sleuth Kit bundled with pytsk3 has no XFS)."""

    kind = "xfs"

    def __init__(self, disk, partition, where):
        super(XfsFileSystem, self).__init__(disk, partition, where)
        if dissect_xfs is None:
            raise GuestFileSystemError("%s: reading XFS needs the Python library dissect.xfs, which is not installed." % where,
                                       hint="pip install dissect.xfs on the machine that runs the module (see requirements.txt).",
                                       import_error=DISSECT_XFS_ERROR)
        try:
            self._fs = dissect_xfs.XFS(io.BufferedReader(PartitionFile(disk, partition.offset, partition.size), 65536))
        except Exception as err:      # pylint: disable=broad-except  # dissect raises its own and struct/EOF errors on damage
            raise self._error("the file system cannot be opened", err=err)

    def _entry(self, path, node, name=None):
        mode = stat.S_IFMT(node.inode.di_mode)
        kind = {stat.S_IFDIR: DIRECTORY, stat.S_IFREG: FILE, stat.S_IFLNK: SYMLINK}.get(mode, OTHER)
        return Entry(path, kind, int(node.size) if kind != DIRECTORY else 0, node.mtime_ns / 1e9, int(node.inum), name)

    def _children(self, directory):
        try:
            node = self._fs.get(directory)
            for child in node.iterdir():
                if child.filename in (".", ".."):
                    continue
                yield self._entry(_join(directory, child.filename), child, child.filename)
        except Exception as err:      # pylint: disable=broad-except  # see __init__
            raise self._error("directory cannot be read", directory, err)

    def stat(self, path):
        path = _normalise(path)
        try:
            node = self._fs.get(path)
        except Exception as err:      # pylint: disable=broad-except  # see __init__
            raise GuestFileSystemError("%s (xfs) has no %s (%s)." % (self.where, path, err), path=path, partition=self.partition.number,
                                       hint="List the partition with state=listed to see its paths.")
        return self._entry(path, node)

    def open(self, path):
        path = _normalise(path)
        try:
            return self._fs.get(path).open()
        except Exception as err:      # pylint: disable=broad-except  # see __init__
            raise self._error("file cannot be opened", path, err)

    def _check_entry(self, entry):
        try:
            node = self._fs.get_inode(entry.inode)
            if entry.type == FILE:
                list(node.dataruns)
        except Exception as err:      # pylint: disable=broad-except  # see __init__
            raise self._error("metadata cannot be read", entry.path, err)
