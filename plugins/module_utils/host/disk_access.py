# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the backup proxy reaches a host's frozen disk files: a local path, a mapped mount, or SMB.

The host reports Windows paths (``C:\\ClusterStorage\\Volume1\\web01\\web01.vhdx``). The proxy reads them
  - directly when the path exists here (the lab host, whose paths are local, or storage mounted at the
    same path),
  - through ``path_map`` (a Windows prefix -> local mount point, e.g. the CSV mounted over SMB/NFS on the
    proxy), or
  - over SMB with the host's credentials (``smbclient.open_file`` on the UNC path derived from the
    Windows path: ``C:\\X`` -> ``\\\\host\\C$\\X``), as ``SmbFile`` objects with pread semantics.
``RateLimiter`` caps the read rate from the host (``read_rate_limit``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ntpath
import os
import threading
import time

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.lazy_import import LazyModule, is_installed
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk

# smbclient (smbprotocol) is imported on first use, by an SMB read: see lazy_import.
smbclient = LazyModule("smbclient")
HAS_SMBCLIENT = is_installed("smbclient")


def _norm_windows(path):
    return str(path).replace("/", "\\").rstrip("\\")


def map_path(windows_path, path_map):
    """The local path of ``windows_path`` through ``path_map`` ({windows prefix: local dir}), or None.

    Prefixes match case-insensitively on whole path components; the longest prefix wins.
    """
    wanted = _norm_windows(windows_path)
    best = None
    for prefix, local in (path_map or {}).items():
        norm = _norm_windows(prefix)
        if wanted.lower() == norm.lower() or wanted.lower().startswith(norm.lower() + "\\"):
            if best is None or len(norm) > len(best[0]):
                best = (norm, local)
    if best is None:
        return None
    rest = wanted[len(best[0]):].lstrip("\\")
    parts = [p for p in rest.split("\\") if p]
    if any(p in ("..", ".") for p in parts):
        raise HyperVBackupError("The host path %s contains '.' or '..' components; refusing to map it." % windows_path)
    return os.path.join(best[1], *parts) if parts else best[1]


def unc_path(windows_path, host):
    """The UNC path of a host-local Windows path (administrative share), or the path itself if already UNC."""
    path = _norm_windows(windows_path)
    if path.startswith("\\\\"):
        return path
    if len(path) >= 2 and path[1] == ":":
        return "\\\\%s\\%s$%s" % (host, path[0].upper(), path[2:])
    raise HyperVBackupError("Cannot derive an SMB path from the host path %r (neither C:\\... nor \\\\server\\share\\...)."
                            % windows_path, hint="Map it to a local mount with path_map.")


class DiskLocation:
    """Where to read one disk: ``kind`` local|smb and the path to open."""

    def __init__(self, kind, path, windows_path):
        self.kind = kind
        self.path = path
        self.windows_path = windows_path

    def to_dict(self):
        return {"access": self.kind, "path": self.path, "windows_path": self.windows_path}


def locate_disk(disk, host, path_map=None, smb=False):
    """Decide how to read ``disk`` (a host operation DISK dict: path, optional windows_path)."""
    reported = disk["path"]
    windows_path = disk.get("windows_path") or reported
    mapped = map_path(windows_path, path_map) if path_map else None
    if mapped:
        return DiskLocation("local", mapped, windows_path)
    if os.path.exists(reported):
        return DiskLocation("local", reported, windows_path)
    if smb:
        return DiskLocation("smb", unc_path(windows_path, host), windows_path)
    raise HyperVBackupError("The disk file %s is not readable on this proxy." % reported,
                            hint="Mount the host's storage on the proxy and set path_map, or set smb_access: true to read "
                                 "it over SMB with the host credentials.", path=reported)


def open_source_disk(location, username=None, password=None, smb_port=445):
    """A vdisk VirtualDisk for a DiskLocation (the differencing chain is followed by vdisk, over SMB too)."""
    if location.kind == "local":
        return open_disk(location.path)
    if not HAS_SMBCLIENT:
        raise HyperVBackupError("Reading %s over SMB needs the Python library smbprotocol (smbclient)." % location.path,
                                hint="pip install smbprotocol on the proxy, or mount the storage and use path_map.")
    return open_disk(location.path, opener=SmbOpener(username, password, port=smb_port))


def _smb_error(unc, err):
    return HyperVBackupError("Cannot read %s over SMB: %s." % (unc, err),
                             hint="Check that the host's administrative share is reachable (TCP 445), that the account "
                                  "may read it (a local administrator of the host), and the password.", path=unc)


class SmbOpener:
    """Opens a host's disk files over SMB for vdisk.open_disk, and finds a remote file's differencing parents.

    A parent is looked for as the parent locator says (relative path first, then the absolute Windows path
    turned into the same server's administrative share), then by file name beside the child.
    """

    def __init__(self, username=None, password=None, port=445, client=None):
        self.username = username
        self.password = password
        self.port = port
        self._client = client or smbclient

    def _session_args(self):
        return {"username": self.username, "password": self.password, "port": self.port}

    def open(self, unc):
        return SmbFile(unc, self.username, self.password, client=self._client, port=self.port)

    def exists(self, unc):
        try:
            return self._client.path.isfile(unc, **self._session_args())
        except (OSError, ValueError) as err:    # a missing file is False; access denied or no route is an error
            raise _smb_error(unc, err)
        except Exception as err:  # smbprotocol's own logon and transport errors (e.g. another host's share)
            raise _smb_error(unc, "%s: %s" % (type(err).__name__, err))

    @staticmethod
    def identity(unc):
        return ntpath.normcase(ntpath.normpath(unc))

    @staticmethod
    def parent_candidates(child_unc, hints):
        child_dir = ntpath.dirname(child_unc)
        server = child_unc.lstrip("\\").split("\\", 1)[0]
        out = []
        for kind, value in hints:
            value = value.replace("/", "\\")
            if kind == "relative":
                out.append(ntpath.normpath(ntpath.join(child_dir, value)))
            elif value.startswith(("\\\\?\\", "\\\\.\\")):
                continue        # a volume GUID path (\\?\Volume{...}) means nothing over SMB
            elif value.startswith("\\\\") or (len(value) > 2 and value[1] == ":"):
                out.append(unc_path(value, server))
        for _kind, value in hints:
            name = ntpath.basename(value.replace("/", "\\"))
            if name:
                out.append(ntpath.join(child_dir, name))
        unique = []
        for candidate in out:
            if candidate not in unique:
                unique.append(candidate)
        return unique


class SmbFile:
    """A remote file opened with smbclient, read with pread semantics (offset given, no shared position).

    One SMB handle is shared by the reader threads; the lock makes seek+read atomic.
    """

    def __init__(self, unc, username=None, password=None, client=None, port=445):
        self.path = unc
        self._client = client or smbclient
        if client is None and not HAS_SMBCLIENT:
            raise HyperVBackupError("smbprotocol is not installed; cannot open %s." % unc,
                                    hint="pip install smbprotocol on the proxy.")
        self._lock = threading.Lock()
        try:
            self._handle = self._client.open_file(unc, mode="rb", username=username, password=password, port=port,
                                                  share_access="rwd")
            self._handle.seek(0, os.SEEK_END)
            self.size = self._handle.tell()
        except (OSError, ValueError) as err:
            raise _smb_error(unc, err)
        except Exception as err:  # smbprotocol raises its own errors for logon and transport failures
            raise _smb_error(unc, "%s: %s" % (type(err).__name__, err))

    def pread_into(self, view, offset):
        """Read into ``view`` from ``offset``; the count read (0 at the end of the file)."""
        with self._lock:
            self._handle.seek(offset)
            return self._handle.readinto(view) or 0

    def pread(self, length, offset):
        """Bytes [offset, offset+length); short only at the end of the file."""
        buf = bytearray(length)
        view = memoryview(buf)
        done = 0
        while done < length:
            got = self.pread_into(view[done:], offset + done)
            if not got:
                break
            done += got
        return bytes(buf[:done])

    def close(self):
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RateLimiter:
    """A token bucket shared by the reader threads: ``acquire(n)`` blocks so the rate stays <= ``rate`` bytes/s.

    The bucket holds at most one second of tokens, so a pause does not allow a burst above the limit.
    """

    def __init__(self, rate, clock=time.monotonic, sleep=time.sleep):
        self.rate = float(rate) if rate else 0.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._last = clock()
        self.waited_seconds = 0.0

    def acquire(self, nbytes):
        if self.rate <= 0:
            return
        with self._lock:        # one waiter at a time keeps the order fair and the arithmetic simple
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= nbytes
            if self._tokens < 0:
                wait = -self._tokens / self.rate
                self.waited_seconds += wait
                self._sleep(wait)
                self._last = self._clock()
                self._tokens = 0.0
