# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One lab VM: its vm.json document, how it is reported, and the disk mechanics of checkpoints.

The caller holds the VM's lock (``LabLayout.vm_lock``) around every function that changes files.

Disk bookkeeping per virtual disk (``vm["disks"][i]``): ``base`` (the first file), ``current`` (the
file the guest writes to), and ``files`` {path: {parent, from_seq, to_seq, pending_merge}} where the
``seq`` interval says which change-tracking records went into that file (``lab_rct``). A checkpoint
freezes ``current`` (to_seq = now) and puts a new differencing child on top: .avhdx over a VHDX,
.avhd over a VHD (Windows Server 2008 R2 disks), as Hyper-V names them. Removing the newest
checkpoint merges its child into the frozen parent; removing an older one leaves its child in the
chain marked ``pending_merge`` (the way Hyper-V defers a merge it cannot do yet) and it is merged as
soon as it is the top file again, so the guest's data is never lost.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ntpath
import os

from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_disks, lab_rct
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import (
    ERAS, INTEGRATION_SERVICES, host_faults, new_guid, utc_now, version_tuple, write_json_atomic)
# A recovery point whose name starts with this prefix was created by this collection (the real
# host's script applies the same rule).
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.recovery_points import TAG_PREFIX as RECOVERY_POINT_TAG_PREFIX

VSS_SERVICE = "VSS"
SNAPSHOTS_DIR = "Snapshots"
CONFIG_FILE = "config.json"
VIRTUAL_MACHINES_DIR = "Virtual Machines"


def is_ours(name):
    return str(name or "").startswith(RECOVERY_POINT_TAG_PREFIX)


def windows_vm_dir(host_doc, vm):
    """Where this VM would live on a real host (display only)."""
    if vm.get("csv"):
        return ntpath.join(vm["csv"], vm["name"])
    return ntpath.join("C:\\Hyper-V", vm["name"])


def windows_path_of(host_doc, vm, path):
    return ntpath.join(windows_vm_dir(host_doc, vm), os.path.basename(os.path.dirname(path)), os.path.basename(path))


def new_vm_document(vm_id, name, generation=2, configuration_version="9.0", state="Running", csv=None,
                    scsi_controllers=1, memory_bytes=2 * 1024 ** 3, processor_count=2, integration_services=None):
    services = []
    overrides = dict((item["name"], item) for item in integration_services or [])
    for service in INTEGRATION_SERVICES:
        item = overrides.get(service, {})
        enabled = item.get("enabled")
        services.append({"name": service, "enabled": True if enabled is None else bool(enabled),
                         "operational_status": item.get("operational_status") or "OK"})
    return {"id": vm_id, "name": name, "generation": int(generation), "configuration_version": str(configuration_version),
            "state": state, "csv": csv, "scsi_controllers": int(scsi_controllers), "memory_bytes": int(memory_bytes),
            "processor_count": int(processor_count), "integration_services": services, "faults": [], "disks": [],
            "checkpoints": [], "reference_points": [], "created": utc_now()}


def controller_slot(vm, index):
    """(type, number, location) of the index-th disk: Gen 1 boots from IDE 0, Gen 2 has SCSI only."""
    if vm["generation"] == 1 and index < 2:
        return "IDE", 0, index
    if vm["generation"] == 1 and vm["scsi_controllers"] == 0:
        return "IDE", 1, index - 2
    first_scsi = 2 if vm["generation"] == 1 else 0
    return "SCSI", 0, index - first_scsi


def add_disk(vm, path, facts):
    """Record a new base disk file (``facts`` from lab_disks.describe) in the VM document; returns the disk entry.

    The disk id is the file's own VirtualDiskId (a copy of an image already attached gets a new one).
    """
    ctype, number, location = controller_slot(vm, len(vm["disks"]))
    disk_id = facts["disk_id"]
    if disk_id in [disk["disk_id"] for disk in vm["disks"]]:
        disk_id = new_guid()
    disk = {"disk_id": disk_id, "base": path, "current": path, "format": facts["format"], "base_type": facts["type"],
            "virtual_size": facts["virtual_size"], "block_size": facts["block_size"],
            "logical_sector_size": facts["logical_sector_size"], "controller_type": ctype,
            "controller_number": number, "controller_location": location, "rct_file": lab_rct.rct_path_for(path),
            "files": {path: {"parent": None, "from_seq": 0, "to_seq": None, "pending_merge": False}}}
    vm["disks"].append(disk)
    return disk


def chain_of(disk, path):
    """[path, parent, ..., base] following the recorded parents."""
    chain = [path]
    while disk["files"][chain[-1]]["parent"]:
        chain.append(disk["files"][chain[-1]]["parent"])
    return chain


def disk_result(host_doc, vm, disk, path=None):
    """DISK_SHAPE for ``path`` (default: the current file) plus windows_path for display."""
    path = path or disk["current"]
    chain = chain_of(disk, path)
    is_child = len(chain) > 1
    return {"path": path, "windows_path": windows_path_of(host_doc, vm, path), "format": disk["format"],
            "type": "differencing" if is_child else disk.get("base_type", "dynamic"), "virtual_size": disk["virtual_size"],
            "block_size": disk["block_size"], "logical_sector_size": disk["logical_sector_size"], "disk_id": disk["disk_id"],
            "controller_type": disk["controller_type"], "controller_number": disk["controller_number"],
            "controller_location": disk["controller_location"], "parent_chain": chain[1:]}


def integration_services(host_doc, vm):
    """The integration services a host lists for the VM, with faults applied."""
    faults = host_faults(host_doc, vm)
    out = []
    for item in vm["integration_services"]:
        if item["name"] == VSS_SERVICE and "integration_missing" in faults:
            continue
        status = item["operational_status"]
        if not item["enabled"]:
            status = "Disabled"
        elif item["name"] == VSS_SERVICE and "integration_no_contact" in faults:
            status = "NoContact"
        out.append({"name": item["name"], "enabled": item["enabled"], "operational_status": status})
    return out


def checkpoint_summary(cp):
    return {"id": cp["id"], "name": cp["name"], "type": cp["type"], "created": cp["created"], "ours": is_ours(cp["name"])}


def vm_result(layout, host_doc, vm):
    """VM_SHAPE."""
    return {"id": vm["id"], "name": vm["name"], "generation": vm["generation"],
            "configuration_version": vm["configuration_version"], "state": vm["state"],
            "path": layout.vm_dir(vm["id"]), "windows_path": windows_vm_dir(host_doc, vm),
            "clustered": bool(vm.get("csv")) and bool(host_doc.get("cluster")), "csv_path": vm.get("csv"),
            "scsi_controllers": vm["scsi_controllers"], "integration_services": integration_services(host_doc, vm),
            "disks": [disk_result(host_doc, vm, disk) for disk in vm["disks"]],
            "checkpoints": [checkpoint_summary(cp) for cp in vm["checkpoints"]],
            "reference_points": [dict(rp, type="RCT") for rp in vm["reference_points"]]}


def recovery_point_result(layout, host_doc, vm, cp):
    """RECOVERY_POINT_SHAPE (disk path = the frozen file)."""
    disks = []
    for disk in vm["disks"]:
        frozen = cp["disks"].get(disk["disk_id"])
        if frozen:
            disks.append(disk_result(host_doc, vm, disk, frozen["frozen"]))
    return {"id": cp["id"], "vm_id": vm["id"], "vm_name": vm["name"], "name": cp["name"], "method": cp.get("method"),
            "consistency": cp.get("consistency"), "created": cp["created"], "ours": is_ours(cp["name"]), "disks": disks,
            "configuration": {"files": [cp["configuration_file"]], "configuration_version": cp["configuration"]["configuration_version"],
                              "generation": cp["configuration"]["generation"]}}


def configuration_document(vm):
    """What the lab's config.json (standing in for the .vmcx) holds."""
    return {"id": vm["id"], "name": vm["name"], "generation": vm["generation"],
            "configuration_version": vm["configuration_version"], "memory_bytes": vm["memory_bytes"],
            "processor_count": vm["processor_count"], "scsi_controllers": vm["scsi_controllers"],
            "integration_services": [dict(item) for item in vm["integration_services"]],
            "disks": [{"disk_id": disk["disk_id"], "file_name": os.path.basename(disk["base"]),
                       "virtual_size": disk["virtual_size"], "block_size": disk["block_size"],
                       "logical_sector_size": disk["logical_sector_size"], "controller_type": disk["controller_type"],
                       "controller_number": disk["controller_number"], "controller_location": disk["controller_location"]}
                      for disk in vm["disks"]]}


def configuration_extension(vm):
    """Where Hyper-V keeps the configuration: .xml up to version 5.0 (2008 R2 .. 2012 R2), .vmcx from 6.x on."""
    version = vm.get("configuration_version") or "5.0"
    return ".xml" if version_tuple(version) <= (5, 0) else ".vmcx"


def configuration_file(vm):
    """The configuration file relative to the VM folder, as Windows names it: Virtual Machines\\<GUID>.vmcx|.xml."""
    return os.path.join(VIRTUAL_MACHINES_DIR, vm["id"].upper() + configuration_extension(vm))


def save_configuration(layout, vm):
    """Write config.json and, with the same (lab, JSON) content, the file under the name Windows gives it."""
    document = configuration_document(vm)
    write_json_atomic(os.path.join(layout.vm_dir(vm["id"]), CONFIG_FILE), document)
    folder = os.path.join(layout.vm_dir(vm["id"]), VIRTUAL_MACHINES_DIR)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    write_json_atomic(os.path.join(layout.vm_dir(vm["id"]), configuration_file(vm)), document)
    for extension in (".xml", ".vmcx"):   # a raised configuration version changes the format
        stale = os.path.join(folder, vm["id"].upper() + extension)
        if extension != configuration_extension(vm) and os.path.exists(stale):
            os.unlink(stale)


def config_version_supported(host_doc, version):
    return version_tuple(version) <= version_tuple(ERAS[host_doc["era"]]["max_config"])


# --- guest writes, checkpoints, merges (caller holds the VM lock) ----------------------------

def guest_write(disk, seed, planned):
    """Write churn data into the disk's current file (VHDX or VHD) and record it for RCT; returns the ranges."""
    tracking = lab_rct.load(disk["rct_file"], disk["disk_id"])
    lab_disks.write_ranges(disk["current"], seed, planned)
    lab_rct.record_writes(tracking, planned)
    lab_rct.save(disk["rct_file"], tracking)
    return [{"offset": offset, "length": length} for offset, length in planned]


def freeze(layout, vm, name, cp_type, method=None, consistency=None):
    """Create a checkpoint: every disk's current file is frozen and gets a new .avhdx (or .avhd) child."""
    cp_id = new_guid()
    created = utc_now()
    cp = {"id": cp_id, "name": name, "type": cp_type, "created": created, "method": method, "consistency": consistency,
          "disks": {}}
    made = []
    try:
        for disk in vm["disks"]:
            frozen = disk["current"]
            child = lab_disks.child_disk_path(disk["base"], frozen, cp_id)
            lab_disks.create_child(frozen, child)
            made.append(child)
            seq = lab_rct.load(disk["rct_file"], disk["disk_id"])["sequence"]
            cp["disks"][disk["disk_id"]] = {"frozen": frozen, "child": child, "freeze_seq": seq}
        snapshots = os.path.join(layout.vm_dir(vm["id"]), SNAPSHOTS_DIR)
        os.makedirs(snapshots, mode=0o700, exist_ok=True)
        cp["configuration_file"] = os.path.join(snapshots, cp_id.upper() + configuration_extension(vm))
        cp["configuration"] = configuration_document(vm)
        write_json_atomic(cp["configuration_file"], cp["configuration"])
    except BaseException:
        for child in made:
            if os.path.exists(child):
                os.unlink(child)
        raise
    for disk in vm["disks"]:
        entry = cp["disks"][disk["disk_id"]]
        disk["files"][entry["frozen"]]["to_seq"] = entry["freeze_seq"]
        disk["files"][entry["child"]] = {"parent": entry["frozen"], "from_seq": entry["freeze_seq"], "to_seq": None,
                                         "pending_merge": False}
        disk["current"] = entry["child"]
    vm["checkpoints"].append(cp)
    return cp


def _merge_top(disk, tracking):
    """Merge the current file into its parent; the parent becomes current again."""
    child = disk["current"]
    info = disk["files"][child]
    parent = info["parent"]
    ranges = [(first * lab_rct.GRANULE, (end - first) * lab_rct.GRANULE)
              for seq, first, end in tracking["records"] if info["from_seq"] < seq]
    ranges = [(offset, min(length, disk["virtual_size"] - offset)) for offset, length in _merge_ranges(ranges)]
    lab_disks.merge_child(child, parent, ranges)
    del disk["files"][child]
    disk["files"][parent]["to_seq"] = None
    disk["current"] = parent


def _merge_ranges(ranges):
    merged = []
    for offset, length in sorted(ranges):
        if merged and offset <= merged[-1][0] + merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], offset + length - merged[-1][0])
        else:
            merged.append([offset, length])
    return [tuple(item) for item in merged]


def _children(disk, path):
    return [child for child, info in disk["files"].items() if info["parent"] == path]


def _frozen_by_other(vm, disk, path, cp_id):
    return any(other["id"] != cp_id and (other["disks"].get(disk["disk_id"]) or {}).get("frozen") == path for other in vm["checkpoints"])


def remove_checkpoint(layout, vm, cp):
    """Take a checkpoint away; its child merges into the frozen parent now or when it is on top again.

    After an apply (``apply_checkpoint``) a frozen file can have two children (the branch of a later checkpoint and the
    VM's new current file): it is merged into neither until one branch is gone (deleting a checkpoint whose branch was
    discarded by an apply deletes the file only that checkpoint kept), so a checkpoint's state never changes under it.
    """
    for disk in vm["disks"]:
        entry = cp["disks"].get(disk["disk_id"])
        if not entry:
            continue
        if entry["child"] in disk["files"]:
            disk["files"][entry["child"]]["pending_merge"] = True
        else:
            # the checkpoint's branch was discarded by an apply: its file (and parents only it kept) may be unused now
            _prune(vm, disk, entry["frozen"], cp["id"])
        tracking = lab_rct.load(disk["rct_file"], disk["disk_id"])
        while disk["files"][disk["current"]]["pending_merge"] and len(_children(disk, disk["files"][disk["current"]]["parent"])) == 1:
            _merge_top(disk, tracking)
    vm["checkpoints"] = [item for item in vm["checkpoints"] if item["id"] != cp["id"]]
    if cp.get("configuration_file") and os.path.exists(cp["configuration_file"]):
        os.unlink(cp["configuration_file"])


def apply_checkpoint(vm, cp):
    """Make the VM's disks the checkpoint's state, as ApplySnapshot does: on every disk the current file (the VM's
    "Now", which no checkpoint froze) is discarded with what the guest wrote since, and a new differencing child of
    the file the checkpoint froze becomes current (a new file with its own VirtualDiskId and a new name).

    Change tracking is left alone: the ids issued before stay valid and the blocks the apply reverted are not reported
    as changed. Whether Windows keeps the ids valid after an apply is UNCONFIRMED (not documented); this is the worst
    case for a backup, in which only the disk identity check (backup_planning.identity_problem) notices the rollback.
    The lab's checkpoints hold no memory state, so the VM is Off afterwards, as after applying a production
    checkpoint. Returns the discarded files.
    """
    discarded = []
    made = []
    try:
        for disk in vm["disks"]:
            entry = cp["disks"].get(disk["disk_id"])
            if entry:
                child = lab_disks.child_disk_path(disk["base"], entry["frozen"], new_guid())
                lab_disks.create_child(entry["frozen"], child)
                made.append((disk, entry, child))
    except BaseException:
        for _disk, _entry, child in made:
            if os.path.exists(child):
                os.unlink(child)
        raise
    for disk, entry, child in made:
        old = disk["current"]
        seq = lab_rct.load(disk["rct_file"], disk["disk_id"])["sequence"]
        disk["files"][child] = {"parent": entry["frozen"], "from_seq": seq, "to_seq": None, "pending_merge": False}
        disk["current"] = child
        entry["child"] = child      # deleting the checkpoint now merges the VM's new file into the frozen one
        discarded.extend(_prune(vm, disk, old))
    vm["state"] = "Off"
    return discarded


def _prune(vm, disk, path, leaving_cp_id=None):
    """Delete ``path`` and then its parents while no file builds on them, no checkpoint (but the one being deleted)
    froze them and they are not current; the base file always stays. Returns the deleted files."""
    deleted = []
    while path in disk["files"] and disk["files"][path]["parent"] is not None and path != disk["current"] \
            and not _children(disk, path) and not _frozen_by_other(vm, disk, path, leaving_cp_id):
        parent = disk["files"].pop(path)["parent"]
        deleted.append(path)
        if os.path.exists(path):
            os.unlink(path)
        path = parent
    return deleted


def find_checkpoint(vm, cp_id):
    for cp in vm["checkpoints"]:
        if cp["id"] == cp_id:
            return cp
    return None


def file_interval(vm, path):
    """(disk, file info) for a path that is part of one of the VM's disk chains, else (None, None)."""
    for disk in vm["disks"]:
        if path in disk["files"]:
            return disk, disk["files"][path]
    return None, None
