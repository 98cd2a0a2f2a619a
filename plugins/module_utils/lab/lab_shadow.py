# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shadow copies of the lab host's volumes: the registry, the frozen copies, the creation window.

A shadow copy is a frozen copy of one volume's files, made at one moment for the whole set: the
lab holds every VM lock of the host (sorted by id; a guest write holds its VM's lock) while it copies,
so a set is consistent across its volumes and VMs. Files are copied sparsely (only the data ranges,
SEEK_DATA / SEEK_HOLE, with ``os.copy_file_range``): lab disks are sparse VHDX/VHD files and their
zeros are never materialised. The copy lives at ``<host>/vss/shadows/<shadow id>/`` with the volume's
root as its root; ``shadows.json`` beside it lists every shadow copy (what Win32_ShadowCopy reports).

Volumes: ``C:\\`` and each CSV of ``host.json`` (a mount-folder volume, e.g. ``C:\\ClusterStorage\\Volume1\\``);
a file belongs to the volume with the longest matching prefix of its Windows path.

Creation window: VSS allows one shadow copy set creation at a time per host, from StartSnapshotSet to
the return of DoSnapshotSet (hyperv_wmi.md section 7; also with a hardware provider, since it is VSS
that serialises). The lab holds an ``flock`` on ``vss/creation.lock`` during that window (released by
the kernel if the process dies) and writes ``vss/creating.json`` naming the holder, so a second process
sees who holds it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import errno
import fcntl
import json
import ntpath
import os
import shutil
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_files, lab_frozen
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import (
    HARDWARE_VSS_PROVIDER, SOFTWARE_VSS_PROVIDER, LabLayout, file_lock, make_private_dir, write_json_atomic)

CREATION_LOCK = "creation.lock"
CREATION_MARKER = "creating.json"
_CHUNK = 8 * 1024 * 1024


class SetInProgress(Exception):
    """Another shadow copy set is being created on this host (VSS_E_SNAPSHOT_SET_IN_PROGRESS)."""


# --- volumes -------------------------------------------------------------------------------------

def volumes(host_doc):
    """Windows names of the host's volumes, each ending in '\\': C:\\ and the CSVs."""
    return ["C:\\"] + [csv.rstrip("\\") + "\\" for csv in host_doc.get("csvs") or []]


def volume_of(host_doc, windows_path):
    """The volume (from ``volumes``) holding a Windows path, or None."""
    wanted = windows_path.lower().rstrip("\\") + "\\"
    best = None
    for volume in volumes(host_doc):
        if wanted.startswith(volume.lower()) and (best is None or len(volume) > len(best)):
            best = volume
    return best


def volume_guid_name(host_name, volume):
    """A stable \\\\?\\Volume{GUID}\\ name for a lab volume (what Win32_ShadowCopy.VolumeName holds)."""
    guid = uuid.uuid5(uuid.NAMESPACE_URL, "hyperv-lab:%s:%s" % (host_name.lower(), volume.lower()))
    return "\\\\?\\Volume{%s}\\" % guid


def provider_for(host_doc, wanted_id=None):
    """The provider a shadow copy uses: the one asked for, else the hardware one when installed, else software."""
    known = [SOFTWARE_VSS_PROVIDER] + ([HARDWARE_VSS_PROVIDER] if host_doc.get("hardware_vss_provider") else [])
    if wanted_id:
        for provider in known:
            if provider["id"].strip("{}").lower() == wanted_id.strip("{}").lower():
                return provider
        return None
    return known[-1]


# --- the registry --------------------------------------------------------------------------------

@contextlib.contextmanager
def registry(layout):
    """Hold the registry lock and yield the registry document; it is written back when the block ends."""
    directory = lab_files.vss_dir(layout)
    make_private_dir(directory)
    with file_lock(directory):
        document = lab_files.read_shadows(layout)
        before = json.dumps(document, sort_keys=True)
        yield document
        if json.dumps(document, sort_keys=True) != before:
            write_json_atomic(os.path.join(directory, lab_files.SHADOWS_FILE), document)


def other_cluster_shadows(layout, host_doc):
    """Shadow copies of the other lab hosts of this host's cluster (a CSV is shared storage)."""
    cluster = (host_doc.get("cluster") or {}).get("name")
    if not cluster or not os.path.isdir(layout.lab_directory):
        return []
    out = []
    for name in sorted(os.listdir(layout.lab_directory)):
        other = LabLayout(layout.lab_directory, name) if not name.startswith(".") else None
        if other is None or name == layout.host or not other.exists():
            continue
        try:
            if (other.read_host().get("cluster") or {}).get("name") == cluster:
                out.extend(dict(record, host=name) for record in lab_files.read_shadows(other)["shadows"])
        except (OSError, ValueError):
            continue
    return out


# --- the creation window -------------------------------------------------------------------------

class CreationWindow:
    """StartSnapshotSet .. DoSnapshotSet: one per host at a time. ``open`` raises SetInProgress if taken."""

    def __init__(self, layout):
        self.layout = layout
        self.fd = None

    def open(self, set_id):
        directory = lab_files.vss_dir(self.layout)
        make_private_dir(directory)
        fd = os.open(os.path.join(directory, CREATION_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = {}
            with contextlib.suppress(OSError, ValueError):
                with open(os.path.join(directory, CREATION_MARKER)) as handle:
                    holder = json.load(handle)
            raise SetInProgress("shadow copy set %s is being created (process %s, since %s)"
                                % (holder.get("set_id", "?"), holder.get("pid", "?"), holder.get("started", "?")))
        self.fd = fd
        write_json_atomic(os.path.join(directory, CREATION_MARKER),
                          {"pid": os.getpid(), "set_id": set_id, "started": lab_files.host_now(self.layout)})

    def close(self):
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(lab_files.vss_dir(self.layout), CREATION_MARKER))
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    @property
    def is_open(self):
        return self.fd is not None


# --- freezing ------------------------------------------------------------------------------------

def sparse_copy(source, target):
    """Copy a file's data ranges only (holes stay holes); the copy keeps the size and modification time."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:   # only a hole is left
                    break
                raise
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            _copy_range(src.fileno(), dst.fileno(), start, end)
            offset = end
        dst.truncate(size)
    shutil.copystat(source, target)


def _copy_range(src_fd, dst_fd, start, end):
    position = start
    while position < end:
        length = min(_CHUNK, end - position)
        try:
            done = os.copy_file_range(src_fd, dst_fd, length, position, position)
        except (AttributeError, OSError):
            data = os.pread(src_fd, length, position)
            done = os.pwrite(dst_fd, data, position) if data else 0
        if done <= 0:
            break
        position += done


def _files_of_volume(layout, host_doc, volume, mapping):
    """[(local file, path relative to the volume root as a list)] of every file on ``volume``."""
    out = []
    for prefix, local_root in mapping.items():
        if prefix.startswith("\\\\") or (len(prefix.rstrip("\\")) == 2 and prefix[0].upper() != "C"):
            continue   # shadow copies themselves are not on a volume
        for directory, dirnames, filenames in os.walk(local_root):
            dirnames[:] = [name for name in dirnames if not os.path.islink(os.path.join(directory, name))]
            for name in filenames:
                local = os.path.join(directory, name)
                if os.path.islink(local) or name in lab_files.INTERNAL_NAMES or name.startswith(".tmp-"):
                    continue
                rel = [part for part in os.path.relpath(local, local_root).split(os.sep) if part]
                windows = ntpath.join(prefix, *rel)
                if volume_of(host_doc, windows) != volume:
                    continue
                inside = windows[len(volume):] if windows.lower().startswith(volume.lower()) else None
                if inside is not None:
                    out.append((local, [part for part in inside.split("\\") if part]))
    return out


@contextlib.contextmanager
def all_vm_locks(layout):
    """Hold the lock of every VM of the host (sorted by id, so two holders never deadlock)."""
    with contextlib.ExitStack() as stack:
        for vm_id in layout.vm_ids():
            with contextlib.suppress(FileNotFoundError):
                stack.enter_context(layout.vm_lock(vm_id))
        yield


def freeze_volumes(layout, host_doc, shadow_ids):
    """Copy each volume's files into its shadow directory at one moment; {volume: shadow id} -> None."""
    made = []
    try:
        with all_vm_locks(layout):
            mapping = lab_files.path_map(layout)
            for volume, shadow_id in shadow_ids.items():
                root = lab_files.shadow_dir(layout, shadow_id)
                make_private_dir(root)
                made.append(root)
                for local, rel in _files_of_volume(layout, host_doc, volume, mapping):
                    target = os.path.join(root, *rel)
                    make_private_dir(os.path.dirname(target))
                    try:
                        sparse_copy(local, target)
                    except FileNotFoundError:   # removed while copying (a temporary file)
                        continue
            lab_frozen.keep_shadow_set(layout, host_doc, shadow_ids)   # tests only (HYPERV_LAB_KEEP_FROZEN)
    except BaseException:
        for root in made:
            shutil.rmtree(root, ignore_errors=True)
        raise


def discard(layout, record):
    """Remove a shadow copy's files and its exposure (a folder exposure becomes an empty folder again)."""
    exposed = record.get("exposed_name")
    if exposed and len(exposed.rstrip("\\")) > 2:
        local = lab_files.to_local(layout, exposed.rstrip("\\"))
        if os.path.islink(local):
            os.unlink(local)
            make_private_dir(local)
    shutil.rmtree(lab_files.shadow_dir(layout, record["id"]), ignore_errors=True)


def expose_at_folder(layout, record, folder):
    """Make ``folder`` (an existing empty folder) show the shadow copy's volume; raises ValueError if it cannot."""
    local = lab_files.to_local(layout, folder)
    if not os.path.isdir(local) or os.path.islink(local):
        raise ValueError("the mount folder %s does not exist" % folder)
    if os.listdir(local):
        raise ValueError("the mount folder %s is not empty" % folder)
    os.rmdir(local)
    os.symlink(lab_files.shadow_dir(layout, record["id"]), local)
