# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The local store: repository objects as files under a directory (the interface: repository_store.py).

Files are 0600 and directories 0700; ``put`` writes a temp name in the same directory, fsyncs, renames (a chunk
is not fsynced there: its writeback is started at once, and ``flush`` fsyncs it before the manifest that names it);
directories touched are fsynced by ``flush``. The locks are flocks on files under ``locks/``, released by the
kernel when their holder dies. ``make_private_dirs`` also serves the other local files of a repository (its
directories at creation, key exports).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import concurrent.futures
import contextlib
import errno
import fcntl
import json
import os
import sys
import threading
import time
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_store import (
    LockHeld, ObjectInfo, _owner_text, _StoreClock,
)


def make_private_dirs(directory):
    """Create ``directory`` and any missing parents as 0700 (os.makedirs gives parents the default mode)."""
    missing = []
    while directory and not os.path.isdir(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass


def _write_all(fd, parts):
    """Write every buffer of ``parts`` in order (os.writev, resuming after short writes)."""
    views = [memoryview(part).cast("B") for part in parts if len(part)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


# What to do about the storage errors a repository directory meets in practice.
_FS_HINTS = {
    errno.ENOSPC: ("no space left on the repository's filesystem",
                   "Free space there (prune old backups with hyperv_backup_repository state=pruned, or grow the volume), "
                   "then run the backup again; the failed backup is not visible and its chunks are reclaimed by GC."),
    errno.EDQUOT: ("the disk quota of the repository's filesystem is exhausted",
                   "Raise the quota or prune old backups, then run the backup again."),
    errno.EROFS: ("the repository's filesystem is read-only",
                  "Remount it read-write (restore, list and verify work from a read-only repository; backups and prune "
                  "need to write)."),
    errno.EACCES: ("permission denied",
                   "Run the module as the user that owns the repository directory, or fix its ownership (files 0600, "
                   "directories 0700)."),
    errno.EPERM: ("operation not permitted",
                  "Check the ownership and attributes (immutable, append-only) of the repository directory."),
}


def filesystem_error(err, action, path):
    """A RepositoryError for an OSError met while ``action`` on ``path``: what happened and what to do."""
    problem, hint = _FS_HINTS.get(err.errno, (err.strerror or str(err),
                                              "Check the repository's storage (mount, permissions, free space)."))
    return RepositoryError("Cannot %s %s: %s (%s)." % (action, path, problem, errno.errorcode.get(err.errno, err.errno)),
                           hint=hint, path=path, errno=err.errno)


FLUSH_THREADS = 16
SYNC_FILE_RANGE_WRITE = 2       # <linux/fs.h>: start writeback of the range's dirty pages, do not wait for it


def _load_sync_file_range():
    """libc's sync_file_range(2), or None (not Linux, or a libc without it). Python's os module does not offer it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (ImportError, OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def start_writeback(fd):
    """Ask the kernel to start writing ``fd``'s dirty pages to the device now, without waiting (Linux).

    A lazily written chunk is fsynced by ``flush`` at commit. Without this, the kernel keeps a backup's chunks in memory
    until that fsync or its dirty thresholds (10 % of memory by default: GiBs on a proxy), so the device sat idle
    during the copy and then wrote everything at the end; started here, the device writes while the next chunks
    are read and compressed, and the fsync at commit finds little left. It changes no guarantee: durability still
    comes from that fsync. Borg starts its segment writeback the same way. Best effort: True if the kernel took the
    request, False if it refused it or the call is not available, never an exception.
    """
    if _sync_file_range is None:
        return False
    return _sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) == 0


def _fsync_path(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return          # removed since (a chunk deleted by GC after its writer died)
    try:
        os.fsync(fd)
    except OSError as err:
        raise filesystem_error(err, "flush", path)
    finally:
        os.close(fd)


class LocalStore(_StoreClock):
    """Objects as files under a directory."""

    kind = "local"

    def __init__(self, root, create=False):
        self._init_clock()
        self.root = os.path.abspath(str(root))
        self.location = self.root
        self._dirty_dirs = set()
        self._unsynced = []
        self._dirty_lock = threading.Lock()
        self._known_dirs = set()
        if create:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            os.chmod(self.root, 0o700)

    def _path(self, key):
        parts = key.split("/")
        if any(part in ("", ".", "..") for part in parts):
            # Keys are built from ids the callers check; this is the last line of defence, so that no key can ever
            # name a file outside the repository directory (or the config, from status/../config).
            raise RepositoryError("Refusing the object key %r of repository %s: it is not a plain relative name." % (key, self.root),
                                  hint="This is a bug or a hostile id; report it with the task that caused it.", key=key)
        return os.path.join(self.root, *parts)

    def _ensure_dir(self, directory):
        if directory in self._known_dirs:
            return
        make_private_dirs(directory)
        self._known_dirs.add(directory)

    def put(self, key, data, retain_until=None, durable=True):
        """Write atomically: temp name, rename; fsync now (``durable``) or in the next ``flush`` (batched)."""
        path = self._path(key)
        directory = os.path.dirname(path)
        try:
            self._ensure_dir(directory)
            tmp = os.path.join(directory, ".tmp-%s" % uuid.uuid4().hex)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                try:
                    _write_all(fd, data if isinstance(data, (list, tuple)) else [data])
                    if durable:
                        os.fsync(fd)
                    else:
                        start_writeback(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, path)
            except BaseException:
                # Nothing half-written stays behind, not even under the temporary name (a full directory can
                # also fail the rename).
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as err:
            raise filesystem_error(err, "write", path)
        with self._dirty_lock:
            self._dirty_dirs.add(directory)
            if not durable:
                self._unsynced.append(path)

    def flush(self):
        """Make everything written so far durable: fsync of the files written lazily, then of the directories.

        Chunks are written without an fsync each and synced here in one batch before the manifest that refers to
        them is written: the kernel then writes them back together, which is several times faster on this kind of
        disk than one synchronous flush per chunk, with the same guarantee at commit.
        """
        with self._dirty_lock:
            dirs, self._dirty_dirs = self._dirty_dirs, set()
            files, self._unsynced = self._unsynced, []
        # Files first, then the directories that name them. The fsyncs of one group run concurrently: the
        # filesystem then commits them in a few journal transactions instead of one per file.
        for group in (files, sorted(dirs)):
            if len(group) > 4:
                with concurrent.futures.ThreadPoolExecutor(FLUSH_THREADS) as pool:
                    list(pool.map(_fsync_path, group))
            else:
                for path in group:
                    _fsync_path(path)

    def get(self, key):
        try:
            with open(self._path(key), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise KeyError(key)

    def stat(self, key):
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix):
        """Yield ObjectInfo for every object whose key starts with ``prefix`` (a directory path ending in /)."""
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        for directory, _dirs, files in os.walk(base):
            rel = os.path.relpath(directory, self.root)
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = name if rel == "." else "/".join(rel.split(os.sep) + [name])
                try:
                    st = os.stat(os.path.join(directory, name))
                except FileNotFoundError:
                    continue
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    def list_temporary(self, prefix, older_than):
        """Temp files left by a crash (never visible as objects); GC removes those older than ``older_than``."""
        base = self._path(prefix.rstrip("/"))
        for directory, _dirs, files in os.walk(base):
            for name in files:
                path = os.path.join(directory, name)
                if name.startswith(".tmp-"):
                    try:
                        if os.stat(path).st_mtime < older_than:
                            yield path
                    except FileNotFoundError:
                        continue

    def remove_temporary(self, path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def delete(self, key):
        try:
            os.unlink(self._path(key))
            return True
        except FileNotFoundError:
            return False
        except OSError as err:
            raise filesystem_error(err, "delete", self._path(key))

    def delete_prefix(self, prefix):
        for info in list(self.list(prefix)):
            self.delete(info.key)
        with contextlib.suppress(OSError):
            os.rmdir(self._path(prefix.rstrip("/")))

    def touch(self, key, retain_until=None):
        """Mark an existing object as used now; False if it is gone."""
        try:
            os.utime(self._path(key))
            return True
        except FileNotFoundError:
            return False
        except OSError as err:
            raise filesystem_error(err, "mark as used", self._path(key))

    def renew(self, key, data=None, etag=None):
        """Refresh the mtime of an object that must still exist; False if it is gone (utime never creates a file)."""
        return self.touch(key)

    def list_versions(self, key):
        """A local directory keeps no earlier versions of an object."""
        raise RepositoryError("Repository %s is a local directory: it keeps no earlier versions of %s to recover from." % (self.root, key),
                              hint="Restore the file from a copy of the directory, or write the config back from a key export "
                                   "(state: key_imported with key_file).", location=self.root)

    def get_version(self, key, version_id):
        return self.list_versions(key)

    def _storage_time(self):
        """The filesystem's clock: the mtime of a file created now (on NFS the server's). A repository that cannot
        be written (read-only mount: listing, restore, verify) falls back to the kernel clock, the same clock on a
        local disk."""
        directory = self._path("locks")
        path = os.path.join(directory, ".tmp-clock-%s" % uuid.uuid4().hex)
        try:
            self._ensure_dir(directory)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return time.time()
        try:
            return os.fstat(fd).st_mtime
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)

    def probe_conditional_writes(self):
        """Nothing to probe: local files are renamed into place and locked with flock."""

    @contextlib.contextmanager
    def _flock(self, name, mode):
        path = self._path("locks/" + name)
        fd = self._open_lock_file(path)
        try:
            fcntl.flock(fd, mode)
            yield fd
        finally:
            os.close(fd)

    def _open_lock_file(self, path):
        """The lock file, created if needed; on a read-only repository an existing one is opened read-only
        (flock works on it), so restores and verify still take their shared locks."""
        try:
            self._ensure_dir(os.path.dirname(path))
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            if err.errno in (errno.EROFS, errno.EACCES) and os.path.exists(path):
                try:
                    return os.open(path, os.O_RDONLY)
                except OSError:
                    pass
            raise filesystem_error(err, "open the lock file", path)

    @contextlib.contextmanager
    def sweeping(self, purpose):
        """The sweeping marker, with an exclusive flock on ``locks/sweep-holder`` held from before it is written until
        after it is removed: a writer that finds the marker but can take the flock knows that GC died (the kernel
        released its flock) and does not wait for the marker to expire."""
        # Both context managers release in their own ``finally``; pylint cannot see that through super().
        with self._flock("sweep-holder", fcntl.LOCK_EX):
            with super(LocalStore, self).sweeping(purpose) as heartbeat:  # pylint: disable=contextmanager-generator-missing-cleanup
                yield heartbeat

    def _sweeper_gone(self):
        fd = self._open_lock_file(self._path("locks/sweep-holder"))
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    return False        # held: the GC that wrote the marker is alive
                raise
            # Free: no GC is sweeping. One that starts after this takes the flock first and then lists the sessions,
            # and our marker is already written: it sees us and defers.
            return True
        finally:
            os.close(fd)

    def chunk_guard(self):
        """Shared section for a writer's "exists? then touch" on a chunk."""
        return self._flock("chunks", fcntl.LOCK_SH)

    def sweep_guard(self):
        """Exclusive section for GC's "re-check age, then delete" on chunks."""
        return self._flock("chunks", fcntl.LOCK_EX)

    @contextlib.contextmanager
    def exclusive_lock(self, name, purpose, wait_seconds=0, ttl_seconds=None):
        """Hold the repository-wide lock ``name`` (flock: released by the kernel if the holder dies)."""
        path = self._path("locks/" + name)
        fd = self._open_lock_file(path)
        try:
            deadline = time.monotonic() + wait_seconds
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as err:
                    if err.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                        raise LockHeld(holder or "another process")
                    self.sleep(0.2)
            # The owner note only helps a person who finds the lock held; the flock is the lock. On a full
            # disk the note cannot be written, and prune/GC (which frees space) must still run.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps({"owner": _owner_text(), "purpose": purpose, "since": self.clock()}).encode(), 0)
            yield
        finally:
            os.close(fd)
