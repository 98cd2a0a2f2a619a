# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""v1 methods (``root\\virtualization``): snapshots on the management service, GetVirtualHardDiskInfo.

- CreateVirtualSystemSnapshot(SourceSystem): the VM must be running, off or saved (else 32775); a standard
  checkpoint freezes every disk (lab_vm.freeze; .avhd children over VHDs). The new snapshot VSSD is
  reachable from the job (Msvm_AffectedJobElement, ElementEffects 5).
- RemoveVirtualSystemSnapshot(SnapshotSettingData): merges (lab_vm.remove_checkpoint).
- GetVirtualSystemImportSettingData(ImportDirectory) / ImportVirtualSystemEx(ImportDirectory, ImportSettingData): the
  2008 R2 import (NOT in the schema; signatures from the 2008 R2 class reference, the settings class as Microsoft's
  Hyper-V blog dumps it). The lab's export directory holds config.json (the .exp stand-in) and "Virtual Hard Disks".
- GetVirtualHardDiskInfo(Path): embedded Msvm_VirtualHardDiskInfo of a VHD; a VHDX is "Not Supported" (32770:
  v1 is VHD only, schema), a missing file 32779.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ntpath
import os

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError, VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import NAMESPACE_V1
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_disks, lab_vm
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import new_guid
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_methods_v2 import checkpoint_name
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_methods_vsms import Refused, disk_problems, read_definition, register
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_model import format_instance_xml
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_v1 import SETTING_SNAPSHOT, cs_path, vssd_path
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_world import vm_guid

NS = NAMESPACE_V1
JOB_SNAPSHOT, JOB_DELETE_SNAPSHOT, JOB_IMPORT = 70, 72, 61
CONFIGURATION_FILE = "config.json"   # the lab's stand-in for the export's "Virtual Machines\<GUID>.exp"
INFO_TYPES = {"Type": "uint16", "FileSize": "uint64", "MaxInternalSize": "uint64", "InSavedState": "boolean", "InUse": "boolean",
              "ParentPath": "string"}


def create_virtual_system_snapshot(call):
    path = call.arg("SourceSystem")
    instance = call.model.get(path) if path else None
    vm = call.world.vm_by_guid(instance["Name"]) if instance and instance["__CLASS"] == "Msvm_ComputerSystem" else None
    if vm is None:
        return call.finish(32773)
    if vm["state"] not in ("Running", "Off", "Saved"):
        return call.finish(32775)
    layout = call.world.layout
    with layout.vm_lock(vm["id"]):
        vm = layout.read_vm(vm["id"])
        cp = lab_vm.freeze(layout, vm, checkpoint_name(call.world, vm), "Standard")
        layout.write_vm(vm)
    return call.job(JOB_SNAPSHOT, [(cs_path(call.world, vm_guid(vm)), [1]), (vssd_path(call.world, cp["id"]), [5])],
                    SnapshotSettingData=None)


def remove_virtual_system_snapshot(call):
    path = call.arg("SnapshotSettingData")
    instance = call.model.get(path) if path else None
    if instance is None or instance["__CLASS"] != "Msvm_VirtualSystemSettingData" or instance["SettingType"] != SETTING_SNAPSHOT:
        return call.finish(32773)
    vm = call.world.vm_by_guid(instance["SystemName"])
    layout = call.world.layout
    with layout.vm_lock(vm["id"]):
        vm = layout.read_vm(vm["id"])
        cp = lab_vm.find_checkpoint(vm, instance["InstanceID"].split(":", 1)[1].lower())
        if cp is None:
            return call.finish(32773)
        lab_vm.remove_checkpoint(layout, vm, cp)
        layout.write_vm(vm)
    return call.job(JOB_DELETE_SNAPSHOT)


def get_virtual_hard_disk_info(call):
    path = call.arg("Path")
    if not isinstance(path, str) or not path:
        return call.finish(32773)
    world = call.world
    local = world.local(path)
    if not local or not os.path.isfile(local):
        return call.finish(32779)
    try:
        facts = lab_disks.describe(local)
    except (VirtualDiskError, OSError, ValueError):
        return call.finish(32768)
    if facts["format"] != "vhd":
        return call.finish(32770)
    in_use = any(disk["current"] == os.path.abspath(local) and vm["state"] == "Running" for vm in world.vms for disk in vm["disks"])
    props = {"Type": {"fixed": 2, "dynamic": 3, "differencing": 4}[facts["type"]], "FileSize": os.path.getsize(local),
             "MaxInternalSize": facts["virtual_size"], "InSavedState": False, "InUse": in_use,
             "ParentPath": world.win(facts["parent_path"]) if facts.get("parent_path") else None}
    return call.finish(0, Info=format_instance_xml("Msvm_VirtualHardDiskInfo", props, INFO_TYPES))


def _import_directory(call):
    """(windows directory, lab configuration document) of the ImportDirectory argument, or (dir, None)."""
    directory = call.arg("ImportDirectory")
    if not isinstance(directory, str) or not directory:
        return directory, None
    local = call.world.local(ntpath.join(directory, CONFIGURATION_FILE))
    if not local or not os.path.isfile(local):   # an export's "Virtual Machines\<GUID>.exp" (or the runtime .xml)
        folder = call.world.local(ntpath.join(directory, "Virtual Machines"))
        found = sorted(name for name in (os.listdir(folder) if folder and os.path.isdir(folder) else [])
                       if os.path.splitext(name)[1].lower() in (".exp", ".xml"))
        local = os.path.join(folder, found[0]) if found else None
    if not local:
        return directory, None
    try:
        return directory, read_definition(local)
    except (ValueError, OSError):
        return directory, None


def get_virtual_system_import_setting_data(call):
    directory, document = _import_directory(call)
    if document is None:
        return call.finish(32779 if isinstance(directory, str) and directory else 32773)
    paths = [ntpath.join(directory, "Virtual Hard Disks", disk.get("file_name", "")) for disk in document.get("disks", [])]
    props = {"Caption": "Virtual System Import Setting Data", "CreateCopy": False, "CurrentResourcePaths": paths,
             "Description": "Microsoft Virtual System Import Setting Data", "ElementName": "Microsoft Virtual System Import Setting Data",
             "GenerateNewId": False, "InstanceID": "Microsoft:%s" % new_guid().upper(), "Name": document["name"],
             "SourceResourcePaths": paths, "TargetResourcePaths": []}
    types = {"CreateCopy": "boolean", "GenerateNewId": "boolean", "CurrentResourcePaths": "string[]", "SourceResourcePaths": "string[]",
             "TargetResourcePaths": "string[]"}
    return call.finish(0, ImportSettingData=format_instance_xml("Msvm_VirtualSystemImportSettingData", props, types))


def import_virtual_system_ex(call):
    """ImportVirtualSystemEx without a copy (CreateCopy false): the VM uses the disks at SourceResourcePaths, in the
    configuration's order and at its controller addresses. CreateCopy true is not emulated (32770)."""
    class_name, settings = call.model.embedded(NS, call.args.get("ImportSettingData"))
    directory, document = _import_directory(call)
    if document is None or class_name != "Msvm_VirtualSystemImportSettingData":
        return call.finish(32773)
    if settings.get("CreateCopy"):
        return call.finish(32770)
    sources = list(settings.get("SourceResourcePaths") or [])
    wanted = document.get("disks", [])
    if len(sources) != len(wanted):
        return call.finish(32773)
    disks = [dict(controller_type=disk.get("controller_type", "IDE"), controller_number=int(disk.get("controller_number", 0)),
                  controller_location=int(disk.get("controller_location", index)), host_resource=source)
             for index, (disk, source) in enumerate(zip(wanted, sources))]
    world = call.world
    problems = disk_problems(world, {"disks": disks})
    guid = new_guid() if settings.get("GenerateNewId") else str(document["id"]).lower()
    if not problems and world.vm_by_guid(guid) is not None:
        problems = ["A virtual machine with the identifier %s already exists on this host." % guid.upper()]
    if problems:
        return call.failed_job(JOB_IMPORT, 32768, "; ".join(problems))
    try:
        vm = register(world, dict(document, id=guid, name=settings.get("Name") or document["name"]), disks)
    except (Refused, HyperVBackupError) as exc:
        return call.failed_job(JOB_IMPORT, 32768, str(exc))
    return call.job(JOB_IMPORT, [(cs_path(world, vm["id"].upper()), [5])])


METHODS = {
    (NS, "Msvm_VirtualSystemManagementService", "GetVirtualSystemImportSettingData"):
        (get_virtual_system_import_setting_data, ("ImportDirectory",)),
    (NS, "Msvm_VirtualSystemManagementService", "ImportVirtualSystemEx"): (import_virtual_system_ex, ("ImportDirectory", "ImportSettingData")),
    (NS, "Msvm_VirtualSystemManagementService", "CreateVirtualSystemSnapshot"): (create_virtual_system_snapshot, ("SourceSystem",)),
    (NS, "Msvm_VirtualSystemManagementService", "RemoveVirtualSystemSnapshot"):
        (remove_virtual_system_snapshot, ("SnapshotSettingData",)),
    (NS, "Msvm_ImageManagementService", "GetVirtualHardDiskInfo"): (get_virtual_hard_disk_info, ("Path",)),
}
