# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab host's file system as Windows paths, its clock, and the bridge's file calls.

Windows paths and local files map one to one (``to_windows`` / ``to_local``), through ``path_map``:

==========================================  ===========================================================
``C:\\``                                    ``<lab>/<host>/drives/C/`` (ProgramData, restore targets,
                                            everything that is not a VM folder)
``C:\\Hyper-V\\<vm id>``                    ``<lab>/<host>/vms/<vm id>`` (a VM not on a CSV)
``<CSV path>\\<vm id>``                     ``<lab>/<host>/vms/<vm id>`` (a VM on that CSV, e.g.
                                            ``C:\\ClusterStorage\\Volume1\\<vm id>``)
``\\\\?\\GLOBALROOT\\Device\\HarddiskVolumeShadowCopy<N>``  the frozen volume of a shadow copy (lab_vss)
``<X>:\\`` (not C)                          a shadow copy exposed at a drive letter (lab_vss)
==========================================  ===========================================================

VM folders are named by the VM id, not its name, so a rename, two VMs of one name, a migration (the
folder moves to the other host's ``vms``) or an import keep every path unambiguous. A shadow copy
exposed at a folder (``expose %a% C:\\ProgramData\\...\\m0``) is a symbolic link at that folder to the
frozen volume, so it is reachable through the ``C:\\`` entry even with a path map taken before the
exposure (what the backup engine holds). The longest prefix wins; prefixes match case-insensitively on
whole components; below the prefix an existing file or folder is found case-insensitively too, as
Windows would. ``..`` / ``.`` components, other drives and UNC paths are refused like Windows refuses a
path it cannot find (0x80070003).

Lab-internal files (``vm.json``, ``.lock``, ``.tmp-*``) are not listed and cannot be written or removed.
Shadow copies are read-only (0x80070013, the media is write protected). Times are the **lab host's
clock**: real time plus ``host.json`` ``clock_offset_seconds`` (``host_now``); ``write_file`` sets the
file's modification time from it and ``list_directory`` reports modification times as stored, so files
written through the bridge carry host-clock times (files the lab itself changes, like guest writes into
disks, carry the real clock).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import datetime
import errno
import hashlib
import json
import ntpath
import os
import tempfile
import time

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import BridgeError
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import ERAS, make_private_dir

DRIVES_DIR = "drives"
VSS_DIR = "vss"                       # <host>/vss: shadows.json, shadows/<shadow id>/ (lab_vss)
SHADOWS_FILE = "shadows.json"
SHADOWS_DIR = "shadows"
SYSTEM_DRIVE = "C:"
VM_ROOT = "C:\\Hyper-V"
PROGRAM_DATA = "C:\\ProgramData"
SHADOW_DEVICE_PREFIX = "\\\\?\\GLOBALROOT\\Device\\HarddiskVolumeShadowCopy"
INTERNAL_NAMES = ("vm.json", ".lock")

# HRESULTs of the Win32 errors a Windows file call gives (HRESULT_FROM_WIN32).
E_PATH_NOT_FOUND = 0x80070003         # ERROR_PATH_NOT_FOUND
E_ACCESS_DENIED = 0x80070005          # ERROR_ACCESS_DENIED
E_WRITE_PROTECT = 0x80070013          # ERROR_WRITE_PROTECT
E_INVALID_NAME = 0x8007007B           # ERROR_INVALID_NAME
E_DIR_NOT_EMPTY = 0x80070091          # ERROR_DIR_NOT_EMPTY
E_DIRECTORY = 0x8007010B              # ERROR_DIRECTORY ("The directory name is invalid")
_INVALID_CHARACTERS = set('<>:"|?*') | set(chr(code) for code in range(32))


def _path_not_found(path, why=""):
    return BridgeError("Could not find a part of the path '%s'.%s" % (path, (" " + why) if why else ""), code=E_PATH_NOT_FOUND,
                       category="not_found")


# --- the clock ---------------------------------------------------------------------------------

def host_time(layout, host_doc=None):
    """The lab host's clock as seconds since the epoch: real time + clock_offset_seconds."""
    if host_doc is None:
        host_doc = layout.read_host()
    return time.time() + float(host_doc.get("clock_offset_seconds") or 0)


def dmtf(seconds):
    """Seconds since the epoch -> the DMTF datetime string WMI uses (UTC, ``+000``)."""
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return stamp.strftime("%Y%m%d%H%M%S.%f") + "+000"


def host_now(layout, host_doc=None):
    """The lab host's current time as a DMTF string."""
    return dmtf(host_time(layout, host_doc))


def host_environment(layout):
    """What the bridge's host_environment() returns for the lab host."""
    host_doc = layout.read_host()
    return {"ps_version": ERAS[host_doc["era"]].get("ps_version", "2.0"), "program_data": PROGRAM_DATA,
            "computer_name": host_doc["name"].upper(), "now": host_now(layout, host_doc)}


# --- the map -------------------------------------------------------------------------------------

def drive_dir(layout, letter="C"):
    return os.path.join(layout.host_dir, DRIVES_DIR, letter.upper())


def vss_dir(layout):
    return os.path.join(layout.host_dir, VSS_DIR)


def shadow_dir(layout, shadow_id):
    """Where the frozen volume of a shadow copy lives (its root is the volume's root)."""
    return os.path.join(vss_dir(layout), SHADOWS_DIR, str(shadow_id).strip("{}").lower())


def read_shadows(layout):
    """The shadow copy registry lab_vss keeps: {"next_device": int, "shadows": [record]}."""
    try:
        with open(os.path.join(vss_dir(layout), SHADOWS_FILE)) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {"next_device": 1, "shadows": []}


def vm_windows_dir(vm):
    """The Windows folder of a VM: ``<CSV>\\<vm id>`` on a CSV, else ``C:\\Hyper-V\\<vm id>``."""
    if vm.get("csv"):
        return ntpath.join(vm["csv"].rstrip("\\"), vm["id"])
    return ntpath.join(VM_ROOT, vm["id"])


def cluster_storage(layout, host_doc=None):
    """{<CSV>\\hyperv.backup: local directory} shared by every lab host of the same cluster: a CSV is one volume that
    all nodes see, so what one node writes there (a queue lease) the others read. Unclustered hosts: {}."""
    try:
        doc = host_doc or layout.read_host()
    except (OSError, ValueError):
        return {}
    cluster = (doc.get("cluster") or {}).get("name")
    if not cluster:
        return {}
    out = {}
    for csv in doc.get("csvs") or []:
        digest = hashlib.sha1(("%s|%s" % (cluster.lower(), str(csv).rstrip("\\").lower())).encode("utf-8")).hexdigest()[:16]
        out[ntpath.join(str(csv).rstrip("\\"), "hyperv.backup")] = os.path.join(
            layout.lab_directory, ".clusters", "csv-" + digest, "hyperv.backup")
    return out


def path_map(layout):
    """{Windows prefix: local directory} for everything the lab host has; read fresh on every call."""
    mapping = {SYSTEM_DRIVE + "\\": drive_dir(layout)}
    for vm_id in layout.vm_ids():
        try:
            vm = layout.read_vm(vm_id)
        except (OSError, ValueError):   # removed or migrated while listing
            continue
        mapping[vm_windows_dir(vm)] = layout.vm_dir(vm_id)
    for csv, local in cluster_storage(layout).items():
        mapping[csv] = local
    for record in read_shadows(layout)["shadows"]:
        local = shadow_dir(layout, record["id"])
        mapping[record["device_object"]] = local
        exposed = record.get("exposed_name") or ""
        if len(exposed.rstrip("\\")) == 2:   # a drive letter; folders are symbolic links under C:\
            mapping[exposed.rstrip("\\") + "\\"] = local
    return mapping


def _components(windows_path):
    """Validate an absolute Windows path; returns (prefix-comparable text, [components])."""
    text = str(windows_path or "").replace("/", "\\")
    if text.startswith("\\\\?\\GLOBALROOT\\"):
        parts = [part for part in text[len("\\\\?\\"):].split("\\") if part]
        head = "\\\\?"
    elif len(text) >= 2 and text[1] == ":" and text[0].isalpha() and (len(text) == 2 or text[2] == "\\"):
        parts = [part for part in text[2:].split("\\") if part]
        head = text[0].upper() + ":"
    else:
        raise _path_not_found(windows_path, "Only absolute local paths (X:\\...) are known on the host.")
    for part in parts:
        if part in (".", ".."):
            raise _path_not_found(windows_path, "'.' and '..' components are refused.")
        if set(part) & _INVALID_CHARACTERS:
            raise BridgeError("The filename, directory name, or volume label syntax is incorrect: '%s'." % windows_path,
                              code=E_INVALID_NAME)
    return head, parts


def _split_prefix(prefix):
    head, parts = _components(prefix)
    return [head.lower()] + [part.lower() for part in parts]


def _resolve_case(directory, parts):
    """Join ``parts`` under ``directory``, taking an existing entry whose name matches case-insensitively."""
    path = directory
    for part in parts:
        candidate = os.path.join(path, part)
        if not os.path.lexists(candidate) and os.path.isdir(path):
            folded = part.casefold()
            matches = sorted(name for name in os.listdir(path) if name.casefold() == folded)
            if matches:
                candidate = os.path.join(path, matches[0])
        path = candidate
    return path


def to_local(layout, windows_path, mapping=None):
    """The local path of a Windows path on the lab host; BridgeError 0x80070003 outside the map."""
    head, parts = _components(windows_path)
    wanted = [head.lower()] + [part.lower() for part in parts]
    best = None
    for prefix, local in (mapping if mapping is not None else path_map(layout)).items():
        key = _split_prefix(prefix)
        if wanted[:len(key)] == key and (best is None or len(key) > len(best[0])):
            best = (key, local)
    if best is None:
        raise _path_not_found(windows_path)
    return _resolve_case(best[1], parts[len(best[0]) - 1:])


def to_windows(layout, local_path, mapping=None):
    """The Windows path of a local file of the lab host (the inverse of ``to_local``); BridgeError outside it."""
    path = os.path.abspath(local_path)
    best = None
    for prefix, local in (mapping if mapping is not None else path_map(layout)).items():
        local = os.path.abspath(local)
        if path == local or path.startswith(local + os.sep):
            # Longest local directory wins; between two names of one shadow copy the exposed one wins.
            rank = (len(local), not prefix.startswith("\\\\?\\"))
            if best is None or rank > best[0]:
                best = (rank, prefix, local)
    if best is None:
        raise _path_not_found(local_path, "The file is not on the lab host %s." % layout.host)
    rest = [part for part in path[len(best[2]):].split(os.sep) if part]
    return ntpath.join(best[1], *rest) if rest else best[1]


# --- file calls ----------------------------------------------------------------------------------

def _is_internal(local_path):
    name = os.path.basename(local_path)
    return name in INTERNAL_NAMES or name.startswith(".tmp-")


def _is_shadow(layout, local_path):
    real = os.path.realpath(local_path)
    root = os.path.realpath(os.path.join(vss_dir(layout), SHADOWS_DIR))
    return real == root or real.startswith(root + os.sep)


def _writable(layout, windows_path):
    local = to_local(layout, windows_path)
    if _is_shadow(layout, local):
        raise BridgeError("The media is write protected: '%s' is on a shadow copy." % windows_path, code=E_WRITE_PROTECT,
                          category="failed")
    if _is_internal(local):
        raise BridgeError("Access to the path '%s' is denied." % windows_path, code=E_ACCESS_DENIED, category="failed")
    return local


def read_file(layout, path, max_bytes):
    """The file's bytes, or None when it does not exist; BridgeError for a folder or a file over ``max_bytes``."""
    local = to_local(layout, path)
    if os.path.isdir(local):
        raise BridgeError("Access to the path '%s' is denied (it is a directory)." % path, code=E_ACCESS_DENIED)
    try:
        with open(local, "rb") as handle:
            data = handle.read(int(max_bytes) + 1)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    if len(data) > int(max_bytes):
        raise BridgeError("The file '%s' is larger than the %d bytes asked for." % (path, int(max_bytes)), code="too_large")
    return data


def write_file(layout, path, data, exclusive=False):
    """Write ``data`` atomically (temporary name, then rename; parents created); returns {modified, now}.

    ``exclusive``: fail with BridgeError code "exists" when the file exists (create-new, for lock files):
    the complete file is linked into place, which fails atomically if the name is taken.
    """
    host_doc = layout.read_host()
    local = _writable(layout, path)
    directory = os.path.dirname(local)
    try:
        make_private_dir(directory)
    except (FileExistsError, NotADirectoryError):
        raise _path_not_found(path, "A part of the path is a file.")
    if os.path.isdir(local):
        raise BridgeError("Access to the path '%s' is denied (it is a directory)." % path, code=E_ACCESS_DENIED)
    stamp = host_time(layout, host_doc)
    fd, temp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data if isinstance(data, bytes) else str(data).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.utime(temp, (stamp, stamp))
        if exclusive:
            try:
                os.link(temp, local)
            except FileExistsError:
                raise BridgeError("The file '%s' already exists." % path, code="exists", category="busy")
            os.unlink(temp)
        else:
            os.replace(temp, local)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return {"modified": dmtf(stamp), "now": host_now(layout, host_doc)}


def remove_file(layout, path):
    """Delete a file (or an empty folder, as Directory.Delete(path, false)); False when it was already gone."""
    local = _writable(layout, path)
    if os.path.islink(local) and os.path.isdir(local):
        raise BridgeError("Access to the path '%s' is denied: a shadow copy is exposed there." % path, code=E_ACCESS_DENIED)
    try:
        if os.path.isdir(local):
            os.rmdir(local)
        else:
            os.unlink(local)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ENOTEMPTY:
            raise BridgeError("The directory is not empty: '%s'." % path, code=E_DIR_NOT_EMPTY)
        if exc.errno == errno.ENOTDIR:
            return False
        raise
    return True


def list_directory(layout, path):
    """{"now", "entries": [{name, directory, length, modified}]} of a folder; no entries when it does not exist."""
    host_doc = layout.read_host()
    local = to_local(layout, path)
    entries = []
    if os.path.isfile(local):
        raise BridgeError("The directory name is invalid: '%s'." % path, code=E_DIRECTORY)
    if os.path.isdir(local):
        for entry in sorted(os.scandir(local), key=lambda item: item.name.lower()):
            if _is_internal(entry.path):
                continue
            try:
                info = entry.stat()
            except FileNotFoundError:   # removed while listing
                continue
            directory = entry.is_dir()
            entries.append({"name": entry.name, "directory": directory, "length": 0 if directory else info.st_size,
                            "modified": dmtf(info.st_mtime)})
    return {"now": host_now(layout, host_doc), "entries": entries}
