# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Instances and associations of ``root\\virtualization\\v2`` built from the lab's files.

Mapping (lab -> WMI):
- host -> Msvm_ComputerSystem (Caption "Hosting Computer System", Name = computer name) and the
  services vmms / vssnapsvc / vhdsvc / reference point service (2016+), with their settings.
- vm.json -> Msvm_ComputerSystem (Name = VM GUID) + its realized Msvm_VirtualSystemSettingData and the
  setting components: controller and drive RASDs, one SASD per disk (HostResource = Windows path of the
  disk's current file), Msvm_VssComponentSettingData; Msvm_VssComponent (runtime state).
- a checkpoint -> a snapshot VSSD (Snapshot:Realized, or Snapshot:Recovery for recovery checkpoints) with
  its own components whose SASDs point at the files the checkpoint froze.
- a reference point -> Msvm_VirtualSystemReferencePoint (2016+): no creation time, as on Windows.
- a pass-through disk (``vm["passthrough_disks"]``) -> a "Microsoft:Hyper-V:Physical Disk Drive" RASD
  whose HostResource is the path of a host Msvm_DiskDrive (a class the lab does not emulate); no SASD.
- fault ``integration_missing`` -> no Msvm_VssComponent and no Msvm_VssComponentSettingData (a guest and
  configuration without the backup component); ``integration_no_contact`` -> OperationalStatus [12].
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import NAMESPACE_V2
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_vm
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_classes import all_properties
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_model import dmtf, format_path
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_world import (
    VSS_IC_GUID, controller_id, controllers_of, drive_id, image_id, settings_id, slot_of, vm_guid, vss_settings_id)

NS = NAMESPACE_V2
STATES = {"Running": 2, "Off": 3, "Saved": 6, "Paused": 9}
OPERATIONAL = {"OK": 2, "Degraded": 3, "Error": 7, "NoContact": 12, "LostCommunication": 13, "Disabled": 2}
CONSISTENCY_LEVELS = {"application": 1, "crash": 2}
SERVICES = (("Msvm_VirtualSystemManagementService", "vmms", "Hyper-V Virtual System Management Service", ""),
            ("Msvm_VirtualSystemSnapshotService", "vssnapsvc", "Hyper-V Virtual System Snapshot Service", ""),
            ("Msvm_ImageManagementService", "vhdsvc", "Hyper-V Image Management Service", ""),
            # UNCONFIRMED: the Name of the reference point service (the schema does not say).
            ("Msvm_VirtualSystemReferencePointService", "vrpsvc", "Hyper-V Virtual System Reference Point Service", "2016"))
VSS_NAMES = {"en-US": "Backup (volume checkpoint)", "de-DE": "Sicherung (Volumeprüfpunkt)"}


def ic_name(world, guid=VSS_IC_GUID):
    """The localised display name of an integration component (lab_locale of helper H3 when present)."""
    try:
        from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_locale
        return lab_locale.integration_service_name(world.locale, guid)
    except (ImportError, AttributeError, KeyError):
        return VSS_NAMES.get(world.locale, VSS_NAMES["en-US"])


def path_of(world, class_name, **keys):
    return format_path(world.computer, NS, class_name, keys)


def cs_path(world, name, class_name="Msvm_ComputerSystem"):
    return path_of(world, class_name, CreationClassName=class_name, Name=name)


def vssd_path(world, guid):
    return path_of(world, "Msvm_VirtualSystemSettingData", InstanceID=settings_id(guid))


# --- providers -------------------------------------------------------------------------------------

def computer_systems(world):
    rows = [{"CreationClassName": "Msvm_ComputerSystem", "Name": world.computer, "ElementName": world.computer,
             "Caption": "Hosting Computer System", "Description": "Microsoft Hosting Computer System", "EnabledState": 2,
             "HealthState": 5, "OperationalStatus": [2], "RequestedState": 12}]
    for vm in world.vms:
        rows.append({"CreationClassName": "Msvm_ComputerSystem", "Name": vm_guid(vm), "ElementName": vm["name"],
                     "Caption": "Virtual Machine", "Description": "Microsoft Virtual Computer System",
                     "EnabledState": STATES.get(vm["state"], 0), "EnabledDefault": 3, "HealthState": 5,
                     "OperationalStatus": [2], "InstallDate": dmtf(vm.get("created")), "ReplicationMode": 0,
                     "EnhancedSessionModeState": 3, "RequestedState": 12})
    return rows


def planned_systems(world):
    return [{"CreationClassName": "Msvm_PlannedComputerSystem", "Name": planned["id"].upper(), "ElementName": planned["name"],
             "EnabledState": 3, "Caption": "Planned Virtual Machine", "Description": "Microsoft Planned Virtual Machine"}
            for planned in world.planned]


def _vssd(world, vm, guid, vtype, name, created, version, config_file, parent, root=None):
    vm_dir = root or world.layout.vm_dir(vm["id"])
    return {"InstanceID": settings_id(guid), "ElementName": name, "VirtualSystemIdentifier": vm_guid(vm),
            "VirtualSystemType": vtype, "Version": version, "CreationTime": dmtf(created),
            "VirtualSystemSubType": "Microsoft:Hyper-V:SubType:%d" % int(vm.get("generation", 2)),
            "ConfigurationDataRoot": world.win(vm_dir), "ConfigurationFile": config_file,
            "SnapshotDataRoot": world.win(vm_dir), "LogDataRoot": world.win(vm_dir), "SuspendDataRoot": world.win(vm_dir),
            "SwapFileDataRoot": world.win(vm_dir), "ConfigurationID": vm_guid(vm), "Parent": parent, "Notes": [],
            "IsSaved": vm.get("state") == "Saved", "Caption": "Virtual Machine" if vtype.endswith("System:Realized") else "Snapshot",
            "Description": ("Active settings for the virtual machine" if vtype.startswith("Microsoft:Hyper-V:System")
                            else "Snapshot settings for the virtual machine"),
            "SecureBootEnabled": int(vm.get("generation", 2)) == 2, "UserSnapshotType": 3}


def snapshot_type(cp):
    return "Microsoft:Hyper-V:Snapshot:Recovery" if cp["type"] == "Recovery" else "Microsoft:Hyper-V:Snapshot:Realized"


def settings(world):
    rows = []
    for vm in world.vms:
        vm_dir = world.layout.vm_dir(vm["id"])
        parent = None
        for cp in vm["checkpoints"]:
            config = os.path.relpath(cp["configuration_file"], vm_dir).replace(os.sep, "\\") if cp.get("configuration_file") else None
            rows.append(_vssd(world, vm, cp["id"].upper(), snapshot_type(cp), cp["name"], cp["created"],
                              cp.get("configuration", {}).get("configuration_version", vm["configuration_version"]), config, parent))
            parent = vssd_path(world, cp["id"].upper())
        rows.append(_vssd(world, vm, vm_guid(vm), "Microsoft:Hyper-V:System:Realized", vm["name"], vm.get("created"),
                          vm["configuration_version"], lab_vm.configuration_file(vm).replace(os.sep, "\\"), parent))
    for planned in world.planned:
        rows.append(_vssd(world, planned, planned["id"].upper(), "Microsoft:Hyper-V:System:Planned", planned["name"],
                          planned.get("created"), planned["configuration_version"], os.path.basename(planned["definition_local"]),
                          None, root=os.path.dirname(planned["definition_local"])))
    return rows


def component_rows(world, vm, owner_guid, files, include_vss=True):
    """RASD / SASD / VSS setting rows of one VSSD; ``files`` = {disk_id: host file} (None: no image)."""
    rasds, sasds, others = [], [], []
    for ctype, number in controllers_of(vm):
        rasds.append({"InstanceID": controller_id(owner_guid, vm, ctype, number),
                      "ElementName": "%s Controller" % ("IDE" if ctype == "IDE" else "SCSI"),
                      "ResourceType": 5 if ctype == "IDE" else 6,
                      "ResourceSubType": "Microsoft:Hyper-V:Emulated IDE Controller" if ctype == "IDE"
                      else "Microsoft:Hyper-V:Synthetic SCSI Controller",
                      "Address": str(number) if ctype == "IDE" else None, "Caption": "Controller",
                      "VirtualSystemIdentifiers": ["{%s}" % vm_guid(vm)]})

    def ctrl_path(slot):
        return path_of(world, "Msvm_ResourceAllocationSettingData", InstanceID=controller_id(owner_guid, vm, slot[0], slot[1]))
    for disk in vm.get("disks", []):
        slot = slot_of(disk)
        drive = drive_id(owner_guid, vm, slot)
        rasds.append({"InstanceID": drive, "ElementName": "Hard Drive", "ResourceType": 17,
                      "ResourceSubType": "Microsoft:Hyper-V:Synthetic Disk Drive", "Parent": ctrl_path(slot),
                      "AddressOnParent": str(slot[2]), "Caption": "Hard Drive"})
        host_file = files.get(disk["disk_id"])
        if host_file:
            sasds.append({"InstanceID": image_id(owner_guid, vm, slot), "ElementName": "Hard Disk Image",
                          "ResourceType": 31, "ResourceSubType": "Microsoft:Hyper-V:Virtual Hard Disk",
                          "Parent": path_of(world, "Msvm_ResourceAllocationSettingData", InstanceID=drive),
                          "HostResource": [world.win(host_file) if not str(host_file).startswith("win:") else host_file[4:]],
                          "Access": 3, "Caption": "Hard Disk Image", "AddressOnParent": None})
    for item in vm.get("passthrough_disks", []):
        slot = slot_of(item)
        rasds.append({"InstanceID": drive_id(owner_guid, vm, slot), "ElementName": "Hard Drive", "ResourceType": 17,
                      "ResourceSubType": "Microsoft:Hyper-V:Physical Disk Drive", "Parent": ctrl_path(slot),
                      "AddressOnParent": str(slot[2]), "Caption": "Hard Drive",
                      "HostResource": [path_of(world, "Msvm_DiskDrive", CreationClassName="Msvm_DiskDrive",
                                               DeviceID="Microsoft:%s" % item["disk_guid"],
                                               SystemCreationClassName="Msvm_ComputerSystem", SystemName=world.computer)]})
    if include_vss and "integration_missing" not in world.faults(vm):
        stored = [item for item in vm.get("integration_services", []) if item["name"] == lab_vm.VSS_SERVICE]
        enabled = stored[0]["enabled"] if stored else True
        others.append({"InstanceID": vss_settings_id(owner_guid), "ElementName": ic_name(world), "Caption": ic_name(world),
                       "EnabledState": 2 if enabled else 3, "ResourceType": 1,
                       "OtherResourceType": "Microsoft:Hyper-V:VSS Component", "ConsumerVisibility": 3})
    return rasds, sasds, others


def _all_components(world):
    """{owner guid: (rasds, sasds, vss)} for every VM, checkpoint and planned system."""
    out = {}
    for vm in world.vms:
        out[vm_guid(vm)] = component_rows(world, vm, vm_guid(vm), dict((d["disk_id"], d["current"]) for d in vm["disks"]))
        for cp in vm["checkpoints"]:
            frozen = dict((disk_id, entry["frozen"]) for disk_id, entry in cp.get("disks", {}).items())
            out[cp["id"].upper()] = component_rows(world, vm, cp["id"].upper(), frozen)
    for planned in world.planned:
        files = dict((disk["disk_id"], "win:" + disk["host_resource"]) for disk in planned["disks"] if disk.get("host_resource"))
        out[planned["id"].upper()] = component_rows(world, planned, planned["id"].upper(), files, include_vss=False)
    return out


def rasd_rows(world):
    return [row for rasds, _sasds, _others in _all_components(world).values() for row in rasds]


def sasd_rows(world):
    return [row for _rasds, sasds, _others in _all_components(world).values() for row in sasds]


def vss_setting_rows(world):
    return [row for _rasds, _sasds, others in _all_components(world).values() for row in others]


def vss_components(world):
    rows = []
    for vm in world.vms:
        if "integration_missing" in world.faults(vm):
            continue
        stored = [item for item in vm.get("integration_services", []) if item["name"] == lab_vm.VSS_SERVICE]
        enabled = stored[0]["enabled"] if stored else True
        status = stored[0]["operational_status"] if stored else "OK"
        if "integration_no_contact" in world.faults(vm):
            status = "NoContact"
        rows.append({"CreationClassName": "Msvm_VssComponent", "DeviceID": "Microsoft:%s" % VSS_IC_GUID,
                     "SystemCreationClassName": "Msvm_ComputerSystem", "SystemName": vm_guid(vm), "ElementName": ic_name(world),
                     "Caption": ic_name(world), "EnabledState": 2 if enabled else 3, "EnabledDefault": 2,
                     "OperationalStatus": [OPERATIONAL.get(status, 2)], "HealthState": 5, "RequestedState": 12,
                     "Name": ic_name(world)})
    return rows


def services(world):
    return [{"CreationClassName": cls, "Name": name, "SystemCreationClassName": "Msvm_ComputerSystem",
             "SystemName": world.computer, "ElementName": element, "Caption": element, "EnabledState": 2, "HealthState": 5,
             "Started": True, "StartMode": "Auto", "Status": "OK", "_class": cls, "_since": since}
            for cls, name, element, since in SERVICES]


def service_provider(class_name):
    known = set(all_properties(NS, class_name))

    def provide(world):
        return [dict((key, value) for key, value in row.items() if key in known)
                for row in services(world) if row["_class"] == class_name]
    return provide


def service_settings(world):
    # Hyper-V's defaults; C:\ maps to the lab host's system drive directory (lab_files).
    return [{"InstanceID": "Microsoft:%s" % world.computer, "ElementName": "Hyper-V", "Caption": "Hyper-V Settings",
             "DefaultExternalDataRoot": "C:\\ProgramData\\Microsoft\\Windows\\Hyper-V",
             "DefaultVirtualHardDiskPath": "C:\\Users\\Public\\Documents\\Hyper-V\\Virtual Hard Disks",
             "NumaSpanningEnabled": True, "EnhancedSessionModeEnabled": False}]


def reference_point_rows(world):
    rows = []
    for vm in world.vms:
        for point in vm.get("reference_points", []):
            rows.append(reference_point_props(vm, point))
    return rows


def reference_point_props(vm, point):
    kind = int(point.get("type", 2))
    if point.get("disk_instance_ids") is not None:
        disk_ids, rct_ids = list(point["disk_instance_ids"]), list(point.get("rct_list") or [])
    else:   # points recorded before the WMI emulation: the VM's disks in order
        owner = vm_guid(vm)
        disk_ids = [image_id(owner, vm, slot_of(disk)) for disk in vm["disks"] if disk["disk_id"] in point.get("rct_ids", {})]
        rct_ids = [point["rct_ids"][disk["disk_id"]] for disk in vm["disks"] if disk["disk_id"] in point.get("rct_ids", {})]
    return {"InstanceID": point_instance_id(point), "VirtualSystemIdentifier": vm_guid(vm), "ReferencePointType": kind,
            "ConsistencyLevel": CONSISTENCY_LEVELS.get(point.get("consistency"), 2), "HasAssociatedData": kind == 1,
            "ResilientChangeTrackingIdentifiers": rct_ids if kind == 2 else [], "VirtualDiskIdentifiers": disk_ids}


def point_instance_id(point):
    """UNCONFIRMED format (the schema says so); the lab uses "Microsoft:<GUID>"."""
    return "Microsoft:%s" % point["id"].upper()


def jobs(world):
    return [world.jobs.properties(doc) for doc in world.jobs.all() if doc["namespace"].lower() == NS.lower()]


PROVIDERS = {
    "Msvm_ComputerSystem": computer_systems,
    "Msvm_PlannedComputerSystem": planned_systems,
    "Msvm_VirtualSystemSettingData": settings,
    "Msvm_ResourceAllocationSettingData": rasd_rows,
    "Msvm_StorageAllocationSettingData": sasd_rows,
    "Msvm_VssComponentSettingData": vss_setting_rows,
    "Msvm_VssComponent": vss_components,
    "Msvm_VirtualSystemManagementServiceSettingData": service_settings,
    "Msvm_VirtualSystemReferencePoint": reference_point_rows,
    "Msvm_ConcreteJob": jobs,
}
for _cls, _name, _element, _since in SERVICES:
    PROVIDERS[_cls] = service_provider(_cls)


# --- associations ------------------------------------------------------------------------------------

def _guid_of_cs(instance):
    return instance.get("Name")


def assoc_settings_define_state(model, source):
    world = model.world
    cls = source["__CLASS"]
    if cls in ("Msvm_ComputerSystem", "Msvm_PlannedComputerSystem"):
        if world.vm_by_guid(source["Name"]) is None and world.planned_by_guid(source["Name"]) is None:
            return []
        found = model.get(vssd_path(world, source["Name"]))
        return [found] if found else []
    if cls == "Msvm_VirtualSystemSettingData" and source["VirtualSystemType"] in (
            "Microsoft:Hyper-V:System:Realized", "Microsoft:Hyper-V:System:Planned"):
        planned = source["VirtualSystemType"].endswith("Planned")
        found = model.get(cs_path(world, source["VirtualSystemIdentifier"] if not planned
                                  else source["InstanceID"].split(":", 1)[1],
                                  "Msvm_PlannedComputerSystem" if planned else "Msvm_ComputerSystem"))
        return [found] if found else []
    return []


def _snapshots_of(model, guid):
    return [item for item in model.instances(NS, "Msvm_VirtualSystemSettingData")
            if item["VirtualSystemIdentifier"] and item["VirtualSystemIdentifier"].lower() == guid.lower()
            and str(item["VirtualSystemType"]).startswith("Microsoft:Hyper-V:Snapshot")]


def assoc_snapshot_of(model, source):
    if source["__CLASS"] == "Msvm_ComputerSystem":
        return _snapshots_of(model, source["Name"])
    if source["__CLASS"] == "Msvm_VirtualSystemSettingData" and str(source["VirtualSystemType"]).startswith("Microsoft:Hyper-V:Snapshot"):
        found = model.get(cs_path(model.world, source["VirtualSystemIdentifier"]))
        return [found] if found else []
    return []


def assoc_most_current(model, source):
    if source["__CLASS"] != "Msvm_ComputerSystem":
        return []
    vm = model.world.vm_by_guid(source["Name"])
    if vm is None or not vm["checkpoints"]:
        return []
    found = model.get(vssd_path(model.world, vm["checkpoints"][-1]["id"].upper()))
    return [found] if found else []


def assoc_reference_points(model, source):
    if source["__CLASS"] == "Msvm_ComputerSystem":
        return [item for item in model.instances(NS, "Msvm_VirtualSystemReferencePoint")
                if item["VirtualSystemIdentifier"].lower() == source["Name"].lower()]
    if source["__CLASS"] == "Msvm_VirtualSystemReferencePoint":
        found = model.get(cs_path(model.world, source["VirtualSystemIdentifier"]))
        return [found] if found else []
    return []


def assoc_components(model, source):
    if source["__CLASS"] != "Msvm_VirtualSystemSettingData":
        return []
    prefix = (source["InstanceID"] + "\\").lower()
    out = []
    for cls in ("Msvm_ResourceAllocationSettingData", "Msvm_StorageAllocationSettingData", "Msvm_VssComponentSettingData"):
        out.extend(item for item in model.instances(NS, cls) if item["InstanceID"].lower().startswith(prefix))
    return out


def assoc_affected(model, source):
    if source["__CLASS"] != "Msvm_ConcreteJob":
        return []
    for doc in model.world.jobs.all():
        if doc["InstanceID"] == source["InstanceID"]:
            found = [model.get(path) for path, _effects in doc["affected"]]
            return [item for item in found if item is not None]
    return []


def assoc_system_device(model, source):
    if source["__CLASS"] == "Msvm_ComputerSystem":
        return [item for item in model.instances(NS, "Msvm_VssComponent") if item["SystemName"].lower() == source["Name"].lower()]
    if source["__CLASS"] == "Msvm_VssComponent":
        found = model.get(cs_path(model.world, source["SystemName"]))
        return [found] if found else []
    return []


def assoc_element_setting(model, source):
    if source["__CLASS"] == "Msvm_VssComponent":
        wanted = vss_settings_id(source["SystemName"]).lower()
        return [item for item in model.instances(NS, "Msvm_VssComponentSettingData") if item["InstanceID"].lower() == wanted]
    if source["__CLASS"] == "Msvm_VirtualSystemManagementService":
        return model.instances(NS, "Msvm_VirtualSystemManagementServiceSettingData")
    return []


ASSOCIATIONS = {
    "Msvm_SettingsDefineState": assoc_settings_define_state,
    "Msvm_SnapshotOfVirtualSystem": assoc_snapshot_of,
    "Msvm_MostCurrentSnapshotInBranch": assoc_most_current,
    "Msvm_ReferencePointOfVirtualSystem": assoc_reference_points,
    "Msvm_VirtualSystemSettingDataComponent": assoc_components,
    "Msvm_AffectedJobElement": assoc_affected,
    "Msvm_SystemDevice": assoc_system_device,
    "Msvm_ElementSettingData": assoc_element_setting,
}
