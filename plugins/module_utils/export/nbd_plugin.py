# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The inside of an export: nbdkit's Python plugin serving one disk of a backup read-only (hyperv_backup_export).

This file runs in the nbdkit process, under the Python that nbdkit-plugin-python is built against (Debian's
/usr/bin/python3), not in the module's interpreter. nbdkit loads a small bootstrap script (written by
nbd_export.py) that puts a private copy of the collection's module_utils and the module interpreter's
site-packages on ``sys.path`` and takes its callbacks from ``callbacks()`` here.

The callbacks (nbdkit-python-plugin(3), API_VERSION 2): ``config`` receives one key, ``settings``, the path of a
0600 JSON file with the repository location, its passphrase and S3 keys; ``config_complete`` reads it and removes it
at once, so no secret is on the command line, in ``ps`` or left on disk. ``get_ready`` opens the repository and the
disk before nbdkit binds its port, so a wrong passphrase or a missing backup stops nbdkit with a message instead of
serving errors. Reads go through the repository's DiskReader (every chunk checked against its id) behind a small
shared cache of whole chunks; zero chunks are reported as holes (``extents``) so clients skip them.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import json
import os
import sys
import threading

SETTINGS_KEY = "settings"
CACHED_CHUNKS = 32          # whole chunks kept for neighbouring reads (qemu reads 64 KiB .. 2 MiB at a time)
_STATE = {}


class ExportedDisk:
    """One disk of one backup as a read-only block device: ``size``, ``pread(offset, length)``, ``extents``.

    Safe for nbdkit's parallel thread model: each thread reads through its own DiskReader (they keep the last
    chunk), the shared cache is guarded by a lock, and the manifest's index reader has its own lock."""

    def __init__(self, repo, backup_id, disk_key, cached_chunks=CACHED_CHUNKS):
        self.repo = repo
        first = repo.open_disk_reader(backup_id, disk_key)
        self.manifest = first.manifest
        self.record = first.record
        self.backup_id = backup_id
        self.disk_key = disk_key
        self.size = first.virtual_size
        self.chunk_size = first.chunk_size
        self._cached_chunks = cached_chunks
        self._cache = collections.OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._reader_class = type(first)
        self.chunks_read = 0

    def _reader(self):
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = self._reader_class(self.repo, self.record, self.manifest)
        return reader

    def _chunk(self, index):
        with self._lock:
            data = self._cache.get(index)
            if data is not None:
                self._cache.move_to_end(index)
                return data
        start = index * self.chunk_size
        data = self._reader().read(start, self.manifest.chunk_length(index))
        with self._lock:
            self.chunks_read += 1
            self._cache[index] = data
            while len(self._cache) > self._cached_chunks:
                self._cache.popitem(last=False)
        return data

    def pread(self, offset, length):
        """Bytes [offset, offset+length) of the disk; RepositoryError (from DiskReader) outside it or on a bad chunk."""
        if offset < 0 or length < 0 or offset + length > self.size:
            return self._reader().read(offset, length)      # raises the reader's "outside disk" error
        parts = []
        end = offset + length
        while offset < end:
            index = offset // self.chunk_size
            data = self._chunk(index)
            start = offset - index * self.chunk_size
            piece = data[start:start + (end - offset)]
            parts.append(piece)
            offset += len(piece)
        return b"".join(parts)

    def extents(self, offset, length):
        """[(offset, length, is_zero)] covering [offset, offset+length), one run per change between data and zeros."""
        end = min(offset + length, self.size)
        runs = []
        position = offset
        while position < end:
            index = position // self.chunk_size
            run_end = min(end, (index + 1) * self.chunk_size)
            zero = self.manifest.chunk_id(index) is None
            if runs and runs[-1][2] == zero:
                runs[-1] = (runs[-1][0], run_end - runs[-1][0], zero)
            else:
                runs.append((position, run_end - position, zero))
            position = run_end
        return runs


def read_settings(path):
    """The export's settings (JSON) from ``path``, which is removed at once: it holds the repository secrets."""
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def add_python_paths(settings):
    """Put the module interpreter's site-packages ahead of nbdkit's Python's own packages (after its standard library).

    The repository's libraries then come from where the module found them, never half from there and half from the
    Debian packages (a Debian urllib3 1.26 under the venv's botocore fails to import). Only when the versions agree:
    extension modules such as blake3 and zstandard are built per Python minor version; otherwise nbdkit's Python's
    own packages are used and a missing one fails with an ImportError in nbdkit's log."""
    wanted = tuple(settings.get("python_version") or ())[:2]
    if wanted != tuple(sys.version_info[:2]):
        return
    paths = [p for p in settings.get("python_paths") or () if p not in sys.path and os.path.isdir(p)]
    position = next((i for i, p in enumerate(sys.path) if os.path.basename(p.rstrip("/")) in ("site-packages", "dist-packages")),
                    len(sys.path))
    sys.path[position:position] = paths


def open_export(settings):
    """The ExportedDisk the settings describe (opens the repository; RepositoryError on a wrong passphrase etc.)."""
    from ansible_collections.hyperv.backup.plugins.module_utils.repository.process_hardening import harden_process
    from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
    harden_process()            # the unwrapped keys live in this process now: no core dumps, no ptrace by others
    repo = Repository.open(settings["repository"], passphrase=settings.get("passphrase"),
                           s3_options=settings.get("s3_options"))
    return ExportedDisk(repo, settings["backup_id"], settings["disk_key"])


# --- nbdkit callbacks (names and signatures as nbdkit-python-plugin(3) wants them, installed by the bootstrap) ---------

def _nbdkit():
    import nbdkit           # only inside the nbdkit process  pylint: disable=import-error
    return nbdkit


def config(key, value):
    if key != SETTINGS_KEY:
        raise ValueError("unknown parameter %r (this plugin takes only %s=FILE)" % (key, SETTINGS_KEY))
    _STATE["settings"] = read_settings(value)


def config_complete():
    if "settings" not in _STATE:
        raise ValueError("%s=FILE is required" % SETTINGS_KEY)
    add_python_paths(_STATE["settings"])


def get_ready():
    settings = _STATE["settings"]
    try:
        _STATE["disk"] = open_export(settings)
    except Exception as err:
        # one line in nbdkit's log, which the module shows; the message never contains the secrets
        sys.stderr.write("hyperv_backup_export: cannot open backup %s disk %s: %s\n" % (
            settings.get("backup_id"), settings.get("disk_key"), err))
        raise
    _STATE["export_name"] = settings["export_name"]
    for secret in ("passphrase", "s3_options"):
        settings.pop(secret, None)


def thread_model():
    return _nbdkit().THREAD_MODEL_PARALLEL


def list_exports(readonly, is_tls):       # pylint: disable=unused-argument  # nbdkit passes them
    return [(_STATE["export_name"], "backup %s, disk %s" % (_STATE["disk"].backup_id, _STATE["disk"].disk_key))]


def default_export(readonly, is_tls):     # pylint: disable=unused-argument  # nbdkit passes them
    return _STATE["export_name"]


def open_connection(readonly):            # pylint: disable=unused-argument  # always read-only (can_write)
    name = _nbdkit().export_name()
    if name not in ("", _STATE["export_name"]):
        raise ValueError("no export named %r here (this server exports %r)" % (name, _STATE["export_name"]))
    return _STATE["disk"]


def get_size(handle):
    return handle.size


def can_write(handle):                    # pylint: disable=unused-argument  # never writable
    return False


def can_multi_conn(handle):               # pylint: disable=unused-argument  # read-only: every connection sees the same
    return True


def can_extents(handle):                  # pylint: disable=unused-argument
    return True


def pread(handle, buf, offset, flags):    # pylint: disable=unused-argument  # flags is always 0 for pread
    buf[:] = handle.pread(offset, len(buf))


def extents(handle, count, offset, flags):  # pylint: disable=unused-argument  # REQ_ONE: returning more is allowed
    nbdkit = _nbdkit()
    zero = nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO
    return [(start, length, zero if is_zero else 0) for start, length, is_zero in handle.extents(offset, count)]


def callbacks():
    """The plugin's callbacks by the names nbdkit looks up in ``__main__``."""
    return {"API_VERSION": 2, "config": config, "config_complete": config_complete, "get_ready": get_ready,
            "thread_model": thread_model, "list_exports": list_exports, "default_export": default_export,
            "open": open_connection, "get_size": get_size, "can_write": can_write, "can_multi_conn": can_multi_conn,
            "can_extents": can_extents, "pread": pread, "extents": extents}
