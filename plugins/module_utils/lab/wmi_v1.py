# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Instances and associations of the v1 namespace ``root\\virtualization`` (Windows Server 2008 R2 and 2012).

v1 differs from v2 (schema "v1" part): VSSD has SettingType (3 = the VM's current settings) and a numeric
VirtualSystemType 301; global settings are Msvm_VirtualSystemGlobalSettingData ("Microsoft:<GUID>\\Global");
disks are Msvm_ResourceAllocationSettingData with subtypes without "Hyper-V:" ("Microsoft Virtual Hard
Disk", ...) and there is no SASD; no snapshot service, reference points, RCT or recovery snapshots.

Lab choices, UNCONFIRMED: a checkpoint's VSSD has SettingType 5 (the schema does not know the value);
the path of a disk image is in ``Connection[0]`` of its RASD (what os-win's v1 code set and read), with
HostResource null; ResourceType of the image RASD is null; snapshots are found by querying
Msvm_VirtualSystemSettingData WHERE SystemName='<VM GUID>' AND SettingType=5 (v1's snapshot
associations, Msvm_PreviousSettingData / Msvm_ParentChildSettingData, are not emulated).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import NAMESPACE_V1
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_model import dmtf, format_path
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_world import (
    controller_id, controllers_of, drive_id, image_id, settings_id, slot_of, vm_guid)

NS = NAMESPACE_V1
STATES = {"Running": 2, "Off": 3, "Saved": 32769, "Paused": 32768}
SETTING_CURRENT = 3
SETTING_SNAPSHOT = 5
VIRTUAL_SYSTEM_TYPE = 301
JOB_PROPERTIES = ("InstanceID", "JobState", "ErrorCode", "ErrorDescription", "ErrorSummaryDescription", "JobType", "PercentComplete",
                  "TimeSubmitted", "StartTime", "TimeBeforeRemoval", "Caption", "JobStatus", "ElementName", "Description")


def path_of(world, class_name, **keys):
    return format_path(world.computer, NS, class_name, keys)


def cs_path(world, name):
    return path_of(world, "Msvm_ComputerSystem", CreationClassName="Msvm_ComputerSystem", Name=name)


def vssd_path(world, guid):
    return path_of(world, "Msvm_VirtualSystemSettingData", InstanceID=settings_id(guid))


def computer_systems(world):
    rows = [{"CreationClassName": "Msvm_ComputerSystem", "Name": world.computer, "ElementName": world.computer,
             "Caption": "Hosting Computer System", "Description": "Microsoft Hosting Computer System", "EnabledState": 2,
             "HealthState": 5, "OperationalStatus": [2]}]
    for vm in world.vms:
        rows.append({"CreationClassName": "Msvm_ComputerSystem", "Name": vm_guid(vm), "ElementName": vm["name"],
                     "Caption": "Virtual Machine", "Description": "Microsoft Virtual Machine",
                     "EnabledState": STATES.get(vm["state"], 0), "HealthState": 5, "OperationalStatus": [2],
                     "InstallDate": dmtf(vm.get("created"))})
    return rows


def settings(world):
    rows = []
    for vm in world.vms:
        parent = None
        for cp in vm["checkpoints"]:
            rows.append({"InstanceID": settings_id(cp["id"]), "SystemName": vm_guid(vm), "SettingType": SETTING_SNAPSHOT,
                         "VirtualSystemType": VIRTUAL_SYSTEM_TYPE, "ElementName": cp["name"], "CreationTime": dmtf(cp["created"]),
                         "Notes": "", "Parent": parent})
            parent = vssd_path(world, cp["id"])
        rows.append({"InstanceID": settings_id(vm_guid(vm)), "SystemName": vm_guid(vm), "SettingType": SETTING_CURRENT,
                     "VirtualSystemType": VIRTUAL_SYSTEM_TYPE, "ElementName": vm["name"], "CreationTime": dmtf(vm.get("created")),
                     "Notes": "", "Parent": parent})
    return rows


def global_settings(world):
    rows = []
    for vm in world.vms:
        vm_dir = world.win(world.layout.vm_dir(vm["id"]))
        rows.append({"InstanceID": "Microsoft:%s\\Global" % vm_guid(vm), "SystemName": vm_guid(vm), "ElementName": vm["name"],
                     "VirtualSystemType": VIRTUAL_SYSTEM_TYPE, "SettingType": 32768, "CreationTime": dmtf(vm.get("created")),
                     "ExternalDataRoot": vm_dir, "SnapshotDataRoot": vm_dir, "AutomaticStartupAction": 1,
                     "AutomaticShutdownAction": 1, "AutomaticRecoveryAction": 1,
                     # Version (listed by the v1 class page): the lab VM's configuration version ("5.0" on 2008 R2 in the
                     # lab; what a real 2008 R2 host puts here is UNCONFIRMED, and inventory reports an empty one as null).
                     "Version": vm.get("configuration_version")})
    return rows


def _components(world, vm, owner, files):
    rows = []
    for ctype, number in controllers_of(vm):
        rows.append({"InstanceID": controller_id(owner, vm, ctype, number), "ElementName": "%s Controller" % ctype,
                     "ResourceType": 5 if ctype == "IDE" else 6, "Address": str(number) if ctype == "IDE" else None,
                     "ResourceSubType": "Microsoft Emulated IDE Controller" if ctype == "IDE" else "Microsoft Synthetic SCSI Controller"})

    def ctrl(slot):
        return path_of(world, "Msvm_ResourceAllocationSettingData", InstanceID=controller_id(owner, vm, slot[0], slot[1]))
    for disk in vm["disks"]:
        slot = slot_of(disk)
        drive = drive_id(owner, vm, slot)
        rows.append({"InstanceID": drive, "ElementName": "Hard Drive", "ResourceType": 17, "Parent": ctrl(slot),
                     "ResourceSubType": "Microsoft Synthetic Disk Drive", "Address": str(slot[2])})
        if files.get(disk["disk_id"]):
            rows.append({"InstanceID": image_id(owner, vm, slot), "ElementName": "Hard Disk Image", "ResourceType": None,
                         "ResourceSubType": "Microsoft Virtual Hard Disk", "Connection": [world.win(files[disk["disk_id"]])],
                         "Parent": path_of(world, "Msvm_ResourceAllocationSettingData", InstanceID=drive)})
    for item in vm.get("passthrough_disks", []):
        slot = slot_of(item)
        rows.append({"InstanceID": drive_id(owner, vm, slot), "ElementName": "Hard Drive", "ResourceType": 17, "Parent": ctrl(slot),
                     "ResourceSubType": "Microsoft Physical Disk Drive", "Address": str(slot[2]),
                     "HostResource": [path_of(world, "Msvm_DiskDrive", CreationClassName="Msvm_DiskDrive",
                                              DeviceID="Microsoft:%s" % item["disk_guid"],
                                              SystemCreationClassName="Msvm_ComputerSystem", SystemName=world.computer)]})
    return rows


def rasds(world):
    rows = []
    for vm in world.vms:
        rows.extend(_components(world, vm, vm_guid(vm), dict((d["disk_id"], d["current"]) for d in vm["disks"])))
        for cp in vm["checkpoints"]:
            frozen = dict((disk_id, entry["frozen"]) for disk_id, entry in cp.get("disks", {}).items())
            rows.extend(_components(world, vm, cp["id"].upper(), frozen))
    return rows


def _service(class_name, name, element):
    def provide(world):
        return [{"CreationClassName": class_name, "Name": name, "SystemCreationClassName": "Msvm_ComputerSystem",
                 "SystemName": world.computer, "ElementName": element, "Caption": element, "EnabledState": 2, "HealthState": 5,
                 "Started": True, "StartMode": "Auto", "Status": "OK"}]
    return provide


def jobs(world):
    out = []
    for doc in world.jobs.all():
        if doc["namespace"].lower() == NS.lower():
            props = world.jobs.properties(doc)
            out.append(dict((key, props[key]) for key in JOB_PROPERTIES))
    return out


PROVIDERS = {
    "Msvm_ComputerSystem": computer_systems,
    "Msvm_VirtualSystemSettingData": settings,
    "Msvm_VirtualSystemGlobalSettingData": global_settings,
    "Msvm_ResourceAllocationSettingData": rasds,
    "Msvm_VirtualSystemManagementService": _service("Msvm_VirtualSystemManagementService", "vmms",
                                                    "Virtual System Management Service"),
    "Msvm_ImageManagementService": _service("Msvm_ImageManagementService", "vhdsvc", "Image Management Service"),
    "Msvm_ConcreteJob": jobs,
}


def assoc_settings_define_state(model, source):
    world = model.world
    if source["__CLASS"] == "Msvm_ComputerSystem" and world.vm_by_guid(source["Name"]) is not None:
        found = model.get(vssd_path(world, source["Name"]))
        return [found] if found else []
    if source["__CLASS"] == "Msvm_VirtualSystemSettingData" and source["SettingType"] == SETTING_CURRENT:
        found = model.get(cs_path(world, source["SystemName"]))
        return [found] if found else []
    return []


def assoc_components(model, source):
    if source["__CLASS"] != "Msvm_VirtualSystemSettingData":
        return []
    prefix = (source["InstanceID"] + "\\").lower()
    return [item for item in model.instances(NS, "Msvm_ResourceAllocationSettingData") if item["InstanceID"].lower().startswith(prefix)]


def assoc_affected(model, source):
    if source["__CLASS"] != "Msvm_ConcreteJob":
        return []
    for doc in model.world.jobs.all():
        if doc["InstanceID"] == source["InstanceID"]:
            return [item for item in (model.get(path) for path, _effects in doc["affected"]) if item is not None]
    return []


ASSOCIATIONS = {
    "Msvm_SettingsDefineState": assoc_settings_define_state,
    "Msvm_VirtualSystemSettingDataComponent": assoc_components,
    "Msvm_AffectedJobElement": assoc_affected,
}
