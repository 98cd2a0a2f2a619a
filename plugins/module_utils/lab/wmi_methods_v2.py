# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Methods of the v2 snapshot, reference point and image services, over the lab's disk mechanics.

- CreateSnapshot (SnapshotType 2 standard, 32768 recovery from 2016) freezes every disk with
  ``lab_vm.freeze`` (differencing child on top); DestroySnapshot merges (``lab_vm.remove_checkpoint``).
- ConvertToReferencePoint (2016+, recovery snapshots only) issues the disks' RCT ids (``lab_rct``),
  removes the snapshot and records the reference point with its VirtualDiskIdentifiers (SASD
  InstanceIDs) and ResilientChangeTrackingIdentifiers in the same order; DestroyReferencePoint forgets them
  (for every point holding the same id, unless the host quirk rct_id_per_reference_point gives each point its own).
- GetVirtualHardDiskSettingData reads the real disk file; GetVirtualDiskChanges pages the lab's RCT
  records (at most 1 GiB of virtual space per call, ``lab_rct.MAX_PAGE_BYTES``).

Return codes: the snapshot service uses the generic CIM family (4 Invalid Parameter, 6 Invalid Type, 1 Not
Supported); the image and reference point services the Hyper-V family (32773 Invalid parameter, 32779 File
not found). Long-running methods answer 4096 with a finished job; failures are failed jobs (JobState 10)
whose ErrorDescription carries the Windows error text and HRESULT.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import os

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import NAMESPACE_V2
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_disks, lab_frozen, lab_rct, lab_vm
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import RCT_ID_PER_REFERENCE_POINT, new_guid, version_tuple
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_model import format_instance_xml
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_classes import available, era_properties
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_v2 import cs_path, ic_name, point_instance_id, path_of, vssd_path
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_world import image_id, slot_of, vm_guid

NS = NAMESPACE_V2
SNAPSHOT_STANDARD = 2
SNAPSHOT_RECOVERY = 32768
JOB_SNAPSHOT, JOB_DELETE_SNAPSHOT, JOB_CONVERT, JOB_DELETE_POINT = 70, 72, 200, 202
RCT_MIN_CONFIGURATION_VERSION = "6.2"
RCT_MIN_CLUSTER_LEVEL = 9
ERROR_NOT_FOUND = "0x80070490"
ERROR_CHANGE_TRACKING_DISABLED = "0xC03A002A"
VHDSD_TYPES = {"BlockSize": "uint32", "Format": "uint16", "LogicalSectorSize": "uint32", "PhysicalSectorSize": "uint32",
               "MaxInternalSize": "uint64", "Type": "uint16", "Path": "string", "ParentPath": "string",
               "VirtualDiskId": "string", "InstanceID": "string", "ElementName": "string"}
DATE_FORMATS = {"en-US": "%m/%d/%Y - %I:%M:%S %p", "de-DE": "%d.%m.%Y - %H:%M:%S"}


def _vm_of(call, path, kind):
    """(instance, vm) of a VM / snapshot / reference point path, or (None, None)."""
    instance = call.model.get(path) if path else None
    if instance is None:
        return None, None
    if kind == "system" and instance["__CLASS"] == "Msvm_ComputerSystem":
        return instance, call.world.vm_by_guid(instance["Name"])
    if kind == "snapshot" and instance["__CLASS"] == "Msvm_VirtualSystemSettingData" \
            and str(instance["VirtualSystemType"]).startswith("Microsoft:Hyper-V:Snapshot"):
        return instance, call.world.vm_by_guid(instance["VirtualSystemIdentifier"])
    if kind == "point" and instance["__CLASS"] == "Msvm_VirtualSystemReferencePoint":
        return instance, call.world.vm_by_guid(instance["VirtualSystemIdentifier"])
    return instance, None


def checkpoint_name(world, vm):
    """What Hyper-V names a new checkpoint: "<VM> - (<local date>)" in the host's date format."""
    now = datetime.datetime.now()
    return "%s - (%s)" % (vm["name"], now.strftime(DATE_FORMATS.get(world.locale, DATE_FORMATS["en-US"])))


def guest_vss_problem(world, vm):
    """Why an application-consistent checkpoint of ``vm`` is impossible, or None."""
    if vm["state"] != "Running":
        return None
    if "integration_missing" in world.faults(vm):
        return "the backup integration service is not installed in the guest"
    stored = [item for item in vm["integration_services"] if item["name"] == lab_vm.VSS_SERVICE]
    if stored and not stored[0]["enabled"]:
        return "the '%s' integration service is disabled" % ic_name(world)
    if "integration_no_contact" in world.faults(vm) or (stored and stored[0]["operational_status"] != "OK"):
        return "the '%s' integration service is not responding" % ic_name(world)
    return None


def create_snapshot(call):
    # The client builds the embedded settings before it calls (a class the era lacks fails there).
    settings_class, settings = call.model.embedded(NS, call.args.get("SnapshotSettings"))
    _instance, vm = _vm_of(call, call.arg("AffectedSystem"), "system")
    if vm is None:
        return call.finish(4)
    snapshot_type = call.arg("SnapshotType", SNAPSHOT_STANDARD)
    if snapshot_type not in (SNAPSHOT_STANDARD, SNAPSHOT_RECOVERY) or (
            snapshot_type == SNAPSHOT_RECOVERY and not available("2016", call.world.era)):
        return call.finish(1)
    if settings_class not in (None, "Msvm_VirtualSystemSnapshotSettingData"):
        return call.finish(6)
    settings = settings or {}
    level = settings.get("ConsistencyLevel") or 1
    if level not in (1, 2):
        return call.finish(4)
    world = call.world
    if snapshot_type == SNAPSHOT_RECOVERY and "recovery_point_fails" in world.faults(vm):
        return call.failed_job(JOB_SNAPSHOT, 32768, "Failed to create VM recovery checkpoint for '%s' (Virtual machine ID %s). "
                               "Error code: 32768 (lab fault 'recovery_point_fails')." % (vm["name"], vm_guid(vm)))
    if vm.get("passthrough_disks") and not settings.get("IgnoreNonSnapshottableDisks"):
        return call.failed_job(JOB_SNAPSHOT, 32768, "Could not create checkpoint for virtual machine '%s': the virtual machine "
                               "has pass-through disks, which cannot be checkpointed. (Virtual machine ID %s)"
                               % (vm["name"], vm_guid(vm)))
    consistency = "crash"
    if vm["state"] == "Running" and (snapshot_type == SNAPSHOT_RECOVERY or available("2016", world.era)):
        problem = guest_vss_problem(world, vm)
        if problem and level == 1 and snapshot_type == SNAPSHOT_RECOVERY:
            return call.failed_job(JOB_SNAPSHOT, 32768, "Could not create backup checkpoint for virtual machine '%s': %s. "
                                   "Element not found. (%s). (Virtual machine ID %s)"
                                   % (vm["name"], problem, ERROR_NOT_FOUND, vm_guid(vm)))
        consistency = "application" if not problem and level == 1 else "crash"
    layout = world.layout
    with layout.vm_lock(vm["id"]):
        vm = layout.read_vm(vm["id"])
        cp = lab_vm.freeze(layout, vm, checkpoint_name(world, vm), "Recovery" if snapshot_type == SNAPSHOT_RECOVERY else "Standard",
                           method="rct" if snapshot_type == SNAPSHOT_RECOVERY else None, consistency=consistency)
        layout.write_vm(vm)
        lab_frozen.keep_checkpoint(layout, vm, cp)   # tests only (HYPERV_LAB_KEEP_FROZEN): the disks as frozen now
    affected = [(cs_path(world, vm_guid(vm)), [1]), (vssd_path(world, cp["id"].upper()), [5])]
    return call.job(JOB_SNAPSHOT, affected, ResultingSnapshot=None)


def destroy_snapshot(call):
    instance, vm = _vm_of(call, call.arg("AffectedSnapshot"), "snapshot")
    if vm is None:
        return call.finish(4)
    layout = call.world.layout
    with layout.vm_lock(vm["id"]):
        vm = layout.read_vm(vm["id"])
        cp = lab_vm.find_checkpoint(vm, instance["InstanceID"].split(":", 1)[1].lower())
        if cp is None:
            return call.finish(4)
        lab_vm.remove_checkpoint(layout, vm, cp)
        layout.write_vm(vm)
    return call.job(JOB_DELETE_SNAPSHOT)


def change_tracking_problems(world, vm):
    """Why the VM's disks have no resilient change tracking (2016+, VHDX, version 6.2+, cluster level 9+)."""
    problems = []
    if version_tuple(vm["configuration_version"]) < version_tuple(RCT_MIN_CONFIGURATION_VERSION):
        problems.append("configuration version %s is older than %s" % (vm["configuration_version"], RCT_MIN_CONFIGURATION_VERSION))
    cluster = world.host_doc.get("cluster")
    if vm.get("csv") and cluster and cluster.get("functional_level") is not None \
            and int(cluster["functional_level"]) < RCT_MIN_CLUSTER_LEVEL:
        problems.append("the cluster functional level is %s" % cluster["functional_level"])
    problems.extend("%s is not a VHDX" % os.path.basename(disk["base"]) for disk in vm["disks"] if disk["format"] != "vhdx")
    return problems


def convert_to_reference_point(call):
    instance, vm = _vm_of(call, call.arg("AffectedSnapshot"), "snapshot")
    if vm is None:
        return call.finish(4)
    if instance["VirtualSystemType"] != "Microsoft:Hyper-V:Snapshot:Recovery":
        return call.finish(6)
    world = call.world
    problems = change_tracking_problems(world, vm)
    if problems:
        message = "Failed to convert the checkpoint of '%s' to a reference point: resilient change tracking is not enabled (%s). (%s)"
        return call.failed_job(JOB_CONVERT, 32768, message % (vm["name"], "; ".join(problems), ERROR_CHANGE_TRACKING_DISABLED))
    layout = world.layout
    # Issue 12 point 7: an unchanged disk gets its id again unless the host has per-reference-point ids (lab_rct).
    per_point = RCT_ID_PER_REFERENCE_POINT in world.quirks()
    with layout.vm_lock(vm["id"]):
        vm = layout.read_vm(vm["id"])
        cp = lab_vm.find_checkpoint(vm, instance["InstanceID"].split(":", 1)[1].lower())
        if cp is None:
            return call.finish(4)
        rct_ids = {}
        for disk in vm["disks"]:
            entry = cp["disks"][disk["disk_id"]]
            tracking = lab_rct.load(disk["rct_file"], disk["disk_id"])
            rct_ids[disk["disk_id"]] = lab_rct.issue_id(tracking, entry["freeze_seq"], per_point)
            lab_rct.save(disk["rct_file"], tracking)
        lab_vm.remove_checkpoint(layout, vm, cp)
        point = {"id": new_guid(), "vm_id": vm["id"], "created": cp["created"], "consistency": cp["consistency"],
                 "rct_ids": rct_ids, "type": 2,
                 "disk_instance_ids": [image_id(vm_guid(vm), vm, slot_of(disk)) for disk in vm["disks"]],
                 "rct_list": [rct_ids[disk["disk_id"]] for disk in vm["disks"]]}
        vm["reference_points"].append(point)
        layout.write_vm(vm)
    path = path_of(world, "Msvm_VirtualSystemReferencePoint", InstanceID=point_instance_id(point),
                   VirtualSystemIdentifier=vm_guid(vm))
    return call.job(JOB_CONVERT, [(path, [5])], ResultingReferencePoint=None)


def destroy_reference_point(call):
    instance, vm = _vm_of(call, call.arg("AffectedReferencePoint"), "point")
    if vm is None:
        return call.finish(32773)
    layout = call.world.layout
    wanted = instance["InstanceID"].lower()
    with layout.vm_lock(vm["id"]):
        vm = layout.read_vm(vm["id"])
        points = [point for point in vm["reference_points"] if point_instance_id(point).lower() == wanted]
        if not points:
            return call.finish(32773)
        for disk in vm["disks"]:
            rct_id = points[0].get("rct_ids", {}).get(disk["disk_id"])
            if rct_id:
                tracking = lab_rct.load(disk["rct_file"], disk["disk_id"])
                lab_rct.forget_id(tracking, rct_id, "its reference point %s was destroyed" % instance["InstanceID"])
                lab_rct.save(disk["rct_file"], tracking)
        vm["reference_points"] = [point for point in vm["reference_points"] if point is not points[0]]
        layout.write_vm(vm)
    return call.job(JOB_DELETE_POINT)


def _local_disk(call):
    """(windows path, local path) of the Path argument; local None when the file does not exist."""
    path = call.arg("Path")
    if not isinstance(path, str) or not path:
        return path, None
    local = call.world.local(path)
    return path, (local if local and os.path.isfile(local) else None)


def get_virtual_hard_disk_setting_data(call):
    path, local = _local_disk(call)
    if not isinstance(path, str) or not path:
        return call.finish(32773)
    if local is None:
        return call.finish(32779)
    try:
        facts = lab_disks.describe(local)
    except (VirtualDiskError, OSError, ValueError):
        return call.finish(32768)
    world = call.world
    props = {"Path": path, "Format": 3 if facts["format"] == "vhdx" else 2,
             "Type": {"fixed": 2, "dynamic": 3, "differencing": 4}[facts["type"]], "MaxInternalSize": facts["virtual_size"],
             "BlockSize": facts["block_size"], "LogicalSectorSize": facts["logical_sector_size"],
             "PhysicalSectorSize": facts.get("physical_sector_size") or facts["logical_sector_size"],
             "ParentPath": world.win(facts["parent_path"]) if facts.get("parent_path") else None,
             "VirtualDiskId": facts["disk_id"].upper()}
    names = era_properties(NS, "Msvm_VirtualHardDiskSettingData", world.era)
    props = dict((key, value) for key, value in props.items() if key in names)   # VirtualDiskId: 2012 R2 and later
    types = dict((key, VHDSD_TYPES[key]) for key in props)
    return call.finish(0, SettingData=format_instance_xml("Msvm_VirtualHardDiskSettingData", props, types))


def _owner(world, local):
    for vm in world.vms:
        disk, info = lab_vm.file_interval(vm, os.path.abspath(local))
        if disk is not None:
            return vm, disk, info
    return None, None, None


def _change_source(call):
    """What every page of GetVirtualDiskChanges needs before its window: an answer when the call is refused, or
    (virtual size, whether the host has the strict ByteLength reading, the page function of lab_rct). Within one
    invoke_paged round trip it is looked up once (``call.memo``): the pages read the same frozen disk, whose change
    records do not move while the checkpoint holds them."""
    path, local = _local_disk(call)
    if not isinstance(path, str) or not path or not isinstance(call.arg("LimitId"), str):
        return call.finish(32773), None
    if local is None:
        return call.finish(32779), None
    world = call.world
    vm, disk, info = _owner(world, local)
    if vm is None:
        return call.failed_job(0, 32768, "Resilient change tracking is not enabled for %s. (%s)" % (path, ERROR_CHANGE_TRACKING_DISABLED)), None
    if "rct_invalid" in world.faults(vm):
        return call.failed_job(0, 32768, "The specified change tracking identifier is not valid: %s (lab fault 'rct_invalid'). "
                               "(%s)" % (call.arg("LimitId"), lab_rct.ERROR_VHD_INVALID_CHANGE_TRACKING_ID)), None
    problems = change_tracking_problems(world, vm)
    if problems:
        return call.failed_job(0, 32768, "Resilient change tracking is not enabled for %s: %s. (%s)"
                               % (path, "; ".join(problems), ERROR_CHANGE_TRACKING_DISABLED)), None
    with world.layout.vm_lock(vm["id"]):
        tracking = lab_rct.load(disk["rct_file"], disk["disk_id"])
    try:
        since = lab_rct.lookup(tracking, call.arg("LimitId"))
    except lab_rct.RctLookupError as exc:
        return call.failed_job(0, 32768, "%s. (%s)" % (exc, exc.windows_error)), None
    upto = tracking["sequence"] if info["to_seq"] is None else info["to_seq"]
    return None, (disk["virtual_size"], "byte_length_strict" in world.quirks(), lab_rct.window_finder(tracking, since, upto))


def get_virtual_disk_changes(call):
    # Answered once per page (65,536 times for a 64 TiB disk, 1,024 per invoke_paged round trip): the page path
    # is kept to a memo lookup, the bounds and the window.
    args = call.args
    offset, length = args.get("ByteOffset"), args.get("ByteLength")
    if offset.__class__ is not int or length.__class__ is not int:
        if not isinstance(offset, int) or not isinstance(length, int):
            return call.finish(32773)
    memo = call.memo
    key = ("GetVirtualDiskChanges", args.get("Path"), args.get("LimitId"))     # strings, never Refs
    source = None if memo is None else memo.get(key)
    if source is None:
        refused, source = _change_source(call)
        if refused is not None:
            return refused
        if memo is not None:
            memo[key] = source
    size, strict, page = source
    # Issue point 12: the documented reading ("ByteLength must be less than the size of the virtual disk")
    # is the host quirk "byte_length_strict"; by default size - offset is accepted, as public code passes it.
    if offset < 0 or length <= 0 or offset + length > size or (strict and length >= size):
        return call.finish(32773)
    processed, offsets, lengths = page(offset, length, size)
    return {"ReturnValue": 0, "out": {"ProcessedByteLength": processed, "ChangedByteOffsets": offsets,
                                      "ChangedByteLengths": lengths}}


METHODS = {
    (NS, "Msvm_VirtualSystemSnapshotService", "CreateSnapshot"):
        (create_snapshot, ("AffectedSystem", "SnapshotSettings", "SnapshotType", "ResultingSnapshot")),
    (NS, "Msvm_VirtualSystemSnapshotService", "DestroySnapshot"): (destroy_snapshot, ("AffectedSnapshot",)),
    (NS, "Msvm_VirtualSystemSnapshotService", "ConvertToReferencePoint"):
        (convert_to_reference_point, ("AffectedSnapshot", "ReferencePointSettings", "ResultingReferencePoint")),
    (NS, "Msvm_VirtualSystemReferencePointService", "DestroyReferencePoint"):
        (destroy_reference_point, ("AffectedReferencePoint",)),
    (NS, "Msvm_ImageManagementService", "GetVirtualHardDiskSettingData"): (get_virtual_hard_disk_setting_data, ("Path",)),
    (NS, "Msvm_ImageManagementService", "GetVirtualDiskChanges"):
        (get_virtual_disk_changes, ("Path", "LimitId", "TargetSnapshotId", "ByteOffset", "ByteLength")),
}
