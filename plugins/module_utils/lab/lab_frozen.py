# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Frozen copies for tests: the content of every disk of a recovery point, as the guest saw it at that instant.

With the environment variable ``HYPERV_LAB_KEEP_FROZEN=1`` (read by the lab process that creates the point),
each time the lab creates a recovery point it writes every frozen disk, its whole chain flattened, as a sparse
raw file, so that a test can check a committed backup against the disk at its recovery point with
``qemu-img compare`` however the point was used, merged or removed afterwards:

    <lab directory>/.frozen/<point key>/<vm id>.<disk id>.raw
    <lab directory>/.frozen/<point key>/index.json   {kind, point_id, set_id, host, created, disks: [...]}

- an RCT recovery snapshot (CreateSnapshot with the recovery type, ``keep_checkpoint``; the caller holds the
  VM's lock, so no guest write lands between the freeze and the copy): key = the checkpoint's GUID, the point
  id is the snapshot's InstanceID ``Microsoft:<GUID>``;
- a shadow copy set (``keep_shadow_set``, called while ``lab_shadow.freeze_volumes`` holds every VM lock of the
  host): key = the set's GUID (a VSS point id is ``vss:<work id>:<set id>``); every disk of every VM whose
  current file is on one of the set's volumes.

``point_key(point_id)`` turns either id into its key (the last GUID in it). Each disk entry of the index has
vm_id, vm_name, disk_id, controller_type/number/location, virtual_size and file. The index is written last,
so a directory without one (a process killed while copying) is not a frozen copy. Never enabled in production:
it copies every frozen disk in full.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import BridgeError
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_files
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import make_private_dir, utc_now, write_json_atomic
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_world import settings_id
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk

ENVIRONMENT = "HYPERV_LAB_KEEP_FROZEN"
FROZEN_DIR = ".frozen"
INDEX_FILE = "index.json"
_PIECE = 4 * 1024 * 1024
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def enabled():
    return os.environ.get(ENVIRONMENT, "").strip().lower() not in ("", "0", "false", "no", "off")


def point_key(point_id):
    """The key of a recovery point id (RCT ``Microsoft:<GUID>``, VSS ``vss:<work id>:<set id>``): its last GUID."""
    found = _GUID.findall(str(point_id or ""))
    return found[-1].lower() if found else None


def frozen_root(lab_directory):
    return os.path.join(os.path.abspath(lab_directory), FROZEN_DIR)


def flatten(path, target):
    """Write the guest-visible content of the disk at ``path`` (its chain read through) to a sparse raw ``target``."""
    with open_disk(path) as disk, os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        for offset, length in disk.allocated_ranges():
            end = offset + length
            while offset < end:
                piece = disk.read(offset, min(_PIECE, end - offset))
                if piece.count(0) != len(piece):
                    os.pwrite(out.fileno(), piece, offset)
                offset += len(piece)
        out.truncate(disk.virtual_size)
        return disk.virtual_size


def _write(layout, key, index, disks):
    """Flatten ``disks`` [(vm, disk entry, local file)] into ``.frozen/<key>/`` and write its index last."""
    directory = os.path.join(frozen_root(layout.lab_directory), key)
    make_private_dir(directory)
    entries = []
    for vm, disk, local in disks:
        name = "%s.%s.raw" % (vm["id"], disk["disk_id"])
        size = flatten(local, os.path.join(directory, name))
        entries.append({"vm_id": vm["id"], "vm_name": vm["name"], "disk_id": disk["disk_id"],
                        "controller_type": disk["controller_type"], "controller_number": disk["controller_number"],
                        "controller_location": disk["controller_location"], "virtual_size": size, "file": name})
    index.update(host=layout.host, created=utc_now(), disks=entries)
    write_json_atomic(os.path.join(directory, INDEX_FILE), index)


def keep_checkpoint(layout, vm, cp):
    """After CreateSnapshot made ``cp`` (caller holds the VM lock): keep its frozen disks if it is a recovery snapshot."""
    if not enabled() or cp.get("type") != "Recovery":
        return
    disks = [(vm, disk, cp["disks"][disk["disk_id"]]["frozen"]) for disk in vm["disks"] if disk["disk_id"] in cp["disks"]]
    _write(layout, cp["id"].lower(), {"kind": "rct", "point_id": settings_id(cp["id"]), "set_id": None}, disks)


def _creating_set_id(layout, marker):
    """The shadow copy set being created (the creation window's marker, written by the process that holds it)."""
    try:
        with open(os.path.join(lab_files.vss_dir(layout), marker)) as handle:
            return json.load(handle).get("set_id")
    except (OSError, ValueError):
        return None


def keep_shadow_set(layout, host_doc, shadow_ids):
    """While ``freeze_volumes`` holds every VM lock: keep the disks of the VMs on the frozen volumes ({volume: id})."""
    if not enabled():
        return
    from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_shadow   # lab_shadow calls this module
    set_id = _creating_set_id(layout, lab_shadow.CREATION_MARKER)
    key = point_key(set_id) or point_key(sorted(shadow_ids.values())[0])
    mapping = lab_files.path_map(layout)
    disks = []
    for vm_id in layout.vm_ids():
        vm = layout.read_vm(vm_id)
        for disk in vm["disks"]:
            try:
                windows = lab_files.to_windows(layout, disk["current"], mapping)
            except BridgeError:
                continue
            if lab_shadow.volume_of(host_doc, windows) in shadow_ids:
                disks.append((vm, disk, disk["current"]))
    _write(layout, key, {"kind": "vss", "point_id": None, "set_id": set_id, "shadow_ids": dict(shadow_ids)}, disks)


def load(lab_directory, key):
    """The index of the frozen copy ``key`` in a lab directory (with ``directory``), or None."""
    directory = os.path.join(frozen_root(lab_directory), key)
    try:
        with open(os.path.join(directory, INDEX_FILE)) as handle:
            index = json.load(handle)
    except (OSError, ValueError):
        return None
    index["directory"] = directory
    return index


def all_points(lab_directory):
    """{key: index} of every complete frozen copy of a lab directory."""
    root = frozen_root(lab_directory)
    out = {}
    for key in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        index = load(lab_directory, key)
        if index is not None:
            out[key] = index
    return out
