# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Methods of the v2 Msvm_VirtualSystemManagementService: Modify*, planned-system import, DestroySystem.

What each method honours (everything else in the embedded copy is ignored, as Windows ignores it):
- ModifySystemSettings: ElementName (at most 100 characters) of a VM's, a checkpoint's or a planned VM's
  settings, chosen by the embedded InstanceID. Version, VirtualSystemType, ConfigurationFile, Parent,
  CreationTime cannot be changed this way.
- ModifyResourceSettings: Msvm_VssComponentSettingData.EnabledState (2/3) of a VM (turns the backup
  integration service on or off) and Msvm_StorageAllocationSettingData.HostResource of a planned VM's disk
  (where the restored disk is). A realized VM's disk path is not emulated (ReturnValue 1, lab limit).
- ImportSystemDefinition(SystemDefinitionFile = a configuration the lab wrote, config.json) -> planned VM
  whose disks are expected in "Virtual Hard Disks" beside the definition file; ValidatePlannedSystem checks
  every disk file; RealizePlannedSystem registers the VM with its disks at the controller addresses of the
  configuration (never by enumeration order); DestroySystem discards a planned VM.
- Msvm_VirtualSystemSnapshotService.ApplySnapshot (a standard checkpoint: the VM's disks go back to its state, a
  rolled-back disk for issue 12 point 4) lives here too, beside the other changes an administrator makes.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import ntpath
import os

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError, VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import NAMESPACE_V2
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_disks, lab_vm
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import (
    ERAS, make_private_dir, new_guid, utc_now, version_tuple, write_json_atomic)
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_v2 import cs_path
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_world import PLANNED_DIR, guid_of_settings, image_id, slot_of

NS = NAMESPACE_V2
JOB_MODIFY, JOB_MODIFY_RESOURCES, JOB_DESTROY, JOB_IMPORT, JOB_VALIDATE, JOB_REALIZE = 2, 31, 3, 61, 140, 141
JOB_APPLY_SNAPSHOT = 71
MAX_NAME = 100
FILE_NOT_FOUND = "0x80070002"
INVALID_DATA = "0x8007000D"


class Refused(Exception):
    pass


def _planned_file(world, guid):
    return os.path.join(world.layout.host_dir, PLANNED_DIR, "%s.json" % guid.lower())


def _settings_target(call, instance_id):
    found = call.model.find(NS, "Msvm_VirtualSystemSettingData", InstanceID=instance_id) if instance_id else []
    return found[0] if found else None


def modify_system_settings(call):
    class_name, props = call.model.embedded(NS, call.args.get("SystemSettings"))
    if class_name != "Msvm_VirtualSystemSettingData":
        return call.finish(4)
    target = _settings_target(call, props.get("InstanceID"))
    if target is None:
        return call.finish(4)
    name = props.get("ElementName")
    if name == target["ElementName"]:
        return call.job(JOB_MODIFY)
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        return call.finish(4)
    world, layout = call.world, call.world.layout
    guid = guid_of_settings(target["InstanceID"])
    vtype = target["VirtualSystemType"]
    if vtype == "Microsoft:Hyper-V:System:Planned":
        planned = world.planned_by_guid(guid)
        planned["name"] = name
        write_json_atomic(_planned_file(world, guid), planned)
        return call.job(JOB_MODIFY)
    vm = world.vm_by_guid(target["VirtualSystemIdentifier"])
    if vm is None:
        return call.finish(4)
    if vtype == "Microsoft:Hyper-V:System:Realized":
        with layout.host_lock():
            with layout.vm_lock(vm["id"]):
                vm = layout.read_vm(vm["id"])
                vm["name"] = name
                layout.write_vm(vm)
                lab_vm.save_configuration(layout, vm)
            host_doc = layout.read_host()
            host_doc.setdefault("vms", {})[vm["id"]] = name
            layout.write_host(host_doc)
    else:
        with layout.vm_lock(vm["id"]):
            vm = layout.read_vm(vm["id"])
            cp = lab_vm.find_checkpoint(vm, guid.lower())
            if cp is None:
                return call.finish(4)
            cp["name"] = name
            layout.write_vm(vm)
    return call.job(JOB_MODIFY)


def modify_resource_settings(call):
    items = call.args.get("ResourceSettings")
    if not isinstance(items, (list, tuple)) or not items:
        return call.finish(4)
    changes = []
    for item in items:
        class_name, props = call.model.embedded(NS, item)
        found = call.model.find(NS, class_name, InstanceID=props.get("InstanceID")) if props.get("InstanceID") else []
        if not found:
            return call.finish(4)
        changes.append((found[0], props))
    world, layout = call.world, call.world.layout
    resulting = []
    for current, props in changes:
        guid = current["InstanceID"].split(":", 1)[1].split("\\", 1)[0]
        if current["__CLASS"] == "Msvm_VssComponentSettingData" and props.get("EnabledState") != current["EnabledState"]:
            if props.get("EnabledState") not in (2, 3):
                return call.finish(4)
            vm = world.vm_by_guid(guid)
            if vm is None:
                return call.finish(5)   # a checkpoint's settings cannot be changed
            with layout.vm_lock(vm["id"]):
                vm = layout.read_vm(vm["id"])
                for service in vm["integration_services"]:
                    if service["name"] == lab_vm.VSS_SERVICE:
                        service["enabled"] = props["EnabledState"] == 2
                layout.write_vm(vm)
        elif current["__CLASS"] == "Msvm_StorageAllocationSettingData" and props.get("HostResource") != current["HostResource"]:
            planned = world.planned_by_guid(guid)
            if planned is None:
                return call.finish(1)
            wanted = props.get("HostResource") or []
            suffix = current["InstanceID"].split("\\", 1)[1]
            for disk in planned["disks"]:
                if disk["image_suffix"] == suffix:
                    disk["host_resource"] = wanted[0] if wanted else None
            write_json_atomic(_planned_file(world, guid), planned)
        resulting.append(current["__PATH"])
    return call.job(JOB_MODIFY_RESOURCES, ResultingResourceSettings=resulting)


def read_definition(local):
    with open(local) as handle:
        document = json.load(handle)
    document = document.get("document", document) if isinstance(document, dict) else None
    if not isinstance(document, dict) or not all(key in document for key in ("id", "name", "generation", "configuration_version")):
        raise ValueError("not a virtual machine configuration")
    return document


def import_system_definition(call):
    definition = call.arg("SystemDefinitionFile")
    if not isinstance(definition, str) or not definition:
        return call.finish(32773)
    world = call.world
    local = world.local(definition)
    if not local or not os.path.isfile(local):
        return call.failed_job(JOB_IMPORT, 32768, "The system cannot find the file specified: %s. (%s)" % (definition, FILE_NOT_FOUND))
    try:
        document = read_definition(local)
    except (ValueError, OSError) as exc:
        return call.failed_job(JOB_IMPORT, 32768, "%s is not a valid virtual machine configuration (%s). (%s)"
                               % (definition, exc, INVALID_DATA))
    newest = ERAS.get(world.era, {}).get("max_config")
    if newest and version_tuple(document["configuration_version"]) > version_tuple(newest):
        return call.failed_job(JOB_IMPORT, 32768, "The virtual machine configuration version %s is not supported by this host "
                               "(up to %s)." % (document["configuration_version"], newest))
    guid = new_guid() if call.arg("GenerateNewSystemIdentifier") else str(document["id"]).lower()
    if world.vm_by_guid(guid) is not None or world.planned_by_guid(guid) is not None:
        return call.failed_job(JOB_IMPORT, 32768, "A virtual machine with the identifier %s already exists on this host."
                               % guid.upper())
    owner = guid.upper()
    disks = []
    folder = ntpath.join(ntpath.dirname(definition), "Virtual Hard Disks")
    for index, disk in enumerate(document.get("disks", [])):
        slot = (disk.get("controller_type", "SCSI"), int(disk.get("controller_number", 0)), int(disk.get("controller_location", index)))
        entry = {"disk_id": disk.get("disk_id") or new_guid(), "controller_type": slot[0], "controller_number": slot[1],
                 "controller_location": slot[2], "host_resource": ntpath.join(folder, disk.get("file_name", "disk%d.vhdx" % index))}
        disks.append(entry)
    planned = {"id": guid, "name": document["name"], "generation": int(document["generation"]),
               "configuration_version": str(document["configuration_version"]),
               "scsi_controllers": int(document.get("scsi_controllers", 1)), "definition_local": local, "document": document,
               "created": utc_now(), "disks": disks}
    for disk in disks:
        disk["image_suffix"] = image_id(owner, planned, slot_of(disk)).split("\\", 1)[1]
    make_private_dir(os.path.join(world.layout.host_dir, PLANNED_DIR))
    write_json_atomic(_planned_file(world, guid), planned)
    return call.job(JOB_IMPORT, [(cs_path(world, owner, "Msvm_PlannedComputerSystem"), [5])], ImportedSystem=None)


def _planned_of(call):
    path = call.arg("PlannedSystem") or call.arg("AffectedSystem")
    instance = call.model.get(path) if path else None
    if instance is None or instance["__CLASS"] != "Msvm_PlannedComputerSystem":
        return None
    return call.world.planned_by_guid(instance["Name"])


def disk_problems(world, planned):
    problems = []
    for disk in planned["disks"]:
        if not disk.get("host_resource"):
            problems.append("a disk of the configuration has no file")
            continue
        local = world.local(disk.get("host_resource"))
        if not local or not os.path.isfile(local):
            problems.append("The system cannot find the file specified: %s (%s)" % (disk.get("host_resource"), FILE_NOT_FOUND))
            continue
        try:
            lab_disks.describe(local)
        except (VirtualDiskError, OSError, ValueError) as exc:
            problems.append("%s is not a usable virtual hard disk: %s" % (disk["host_resource"], exc))
    return problems


def validate_planned_system(call):
    planned = _planned_of(call)
    if planned is None:
        return call.finish(32773)
    problems = disk_problems(call.world, planned)
    if problems:
        return call.failed_job(JOB_VALIDATE, 32768, "; ".join(problems))
    return call.job(JOB_VALIDATE)


def realize_planned_system(call):
    planned = _planned_of(call)
    if planned is None:
        return call.finish(32773)
    world = call.world
    problems = disk_problems(world, planned)
    if problems:
        return call.failed_job(JOB_REALIZE, 32768, "; ".join(problems))
    try:
        vm = register(world, dict(planned["document"], id=planned["id"], name=planned["name"]), planned["disks"])
    except (Refused, HyperVBackupError) as exc:
        return call.failed_job(JOB_REALIZE, 32768, str(exc))
    os.unlink(_planned_file(world, planned["id"]))
    return call.job(JOB_REALIZE, [(cs_path(world, vm["id"].upper()), [5])], ResultingSystem=None)


def register(world, document, disks):
    """Register a VM from a lab configuration with its disks in place; ``disks`` carry host_resource and the address.

    Raises Refused / HyperVBackupError with the reason.
    """
    from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin   # lab_admin imports lab_host

    def refuse(_category, message, hint=None, windows_error=None):
        raise Refused(message)
    layout = world.layout
    paths = [world.local(disk["host_resource"]) for disk in disks]
    vm = lab_admin.register_vm(layout, document, [os.path.abspath(path) for path in paths], fail=refuse)
    with layout.vm_lock(vm["id"]):
        vm = layout.read_vm(vm["id"])
        for disk, wanted in zip(vm["disks"], disks):   # the configuration's addresses, not the order
            for key in ("controller_type", "controller_number", "controller_location"):
                disk[key] = wanted[key]
        layout.write_vm(vm)
        lab_vm.save_configuration(layout, vm)
    return vm


def apply_snapshot(call):
    """Msvm_VirtualSystemSnapshotService.ApplySnapshot(Snapshot): the VM's disks become the checkpoint's state
    (lab_vm.apply_checkpoint: the current differencing files are discarded, new ones start from the frozen files).

    Return codes per the class reference: 4 Invalid Parameter (no such snapshot), 4096 with a job (JobType 71,
    "Apply Virtual Machine Snapshot"). A recovery checkpoint is refused with 6 Invalid Type: it exists for a backup
    and is not listed for applying (UNCONFIRMED which code Windows answers). A running VM is not refused: Hyper-V
    Manager applies to a running VM, which vmms first saves, and the running state is lost (UNCONFIRMED for a bare
    WMI call); the VM is Off afterwards (lab_vm.apply_checkpoint).
    """
    path = call.arg("Snapshot")
    instance = call.model.get(path) if isinstance(path, str) and path else None
    if instance is None or instance["__CLASS"] != "Msvm_VirtualSystemSettingData" \
            or not str(instance["VirtualSystemType"]).startswith("Microsoft:Hyper-V:Snapshot"):
        return call.finish(4)
    if instance["VirtualSystemType"] == "Microsoft:Hyper-V:Snapshot:Recovery":
        return call.finish(6)
    vm = call.world.vm_by_guid(instance["VirtualSystemIdentifier"])
    if vm is None:
        return call.finish(4)
    layout = call.world.layout
    with layout.vm_lock(vm["id"]):
        vm = layout.read_vm(vm["id"])
        cp = lab_vm.find_checkpoint(vm, (guid_of_settings(instance["InstanceID"]) or "").lower())
        if cp is None:
            return call.finish(4)
        lab_vm.apply_checkpoint(vm, cp)
        layout.write_vm(vm)
    return call.job(JOB_APPLY_SNAPSHOT, [(cs_path(call.world, vm["id"].upper()), [5])])


def destroy_system(call):
    planned = _planned_of(call)
    if planned is not None:
        os.unlink(_planned_file(call.world, planned["id"]))
        return call.job(JOB_DESTROY)
    instance = call.model.get(call.arg("AffectedSystem")) if call.arg("AffectedSystem") else None
    if instance is None or instance["__CLASS"] != "Msvm_ComputerSystem":
        return call.finish(4)
    return call.finish(1)   # lab limit: destroying a realized VM is not emulated


METHODS = {
    (NS, "Msvm_VirtualSystemManagementService", "ModifySystemSettings"): (modify_system_settings, ("SystemSettings",)),
    (NS, "Msvm_VirtualSystemManagementService", "ModifyResourceSettings"): (modify_resource_settings, ("ResourceSettings",)),
    (NS, "Msvm_VirtualSystemManagementService", "ImportSystemDefinition"):
        (import_system_definition, ("SystemDefinitionFile", "SnapshotFolder", "GenerateNewSystemIdentifier")),
    (NS, "Msvm_VirtualSystemManagementService", "ValidatePlannedSystem"): (validate_planned_system, ("PlannedSystem",)),
    (NS, "Msvm_VirtualSystemManagementService", "RealizePlannedSystem"): (realize_planned_system, ("PlannedSystem",)),
    (NS, "Msvm_VirtualSystemManagementService", "DestroySystem"): (destroy_system, ("AffectedSystem",)),
    (NS, "Msvm_VirtualSystemSnapshotService", "ApplySnapshot"): (apply_snapshot, ("Snapshot",)),
}
