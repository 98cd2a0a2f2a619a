"""LabBridge on Windows Server 2008 R2 and 2012: the v1 namespace root\\virtualization (hyperv_wmi.md section 6),
both namespaces on 2012, and the planned-system import of v2 (restore with register)."""
import json
import os
import shutil

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import (
    NAMESPACE_V1, NAMESPACE_V2, WBEM_E_INVALID_CLASS, WBEM_E_INVALID_METHOD, WBEM_E_INVALID_NAMESPACE, BridgeError, Embedded, Ref)
from ansible_collections.hyperv.backup.plugins.module_utils.host.cim_xml import parse_instance
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin, lab_files
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge import LabBridge

from test_lab_helpers import MiB, build_host, read_all
from test_lab_wmi import Wmi


@pytest.mark.parametrize("era", ["2008r2", "2012"])
def test_section_6_v1_snapshot_sequence(tmp_path, era):
    layout, _transport, _ids = build_host(tmp_path, era=era, vms=("web01",))
    bridge = LabBridge(str(tmp_path), "hv01")
    wmi = Wmi(bridge, NAMESPACE_V1)
    vm = wmi.vm("web01")
    assert vm["EnabledState"] == 2
    current = [item for item in bridge.associators(NAMESPACE_V1, vm["__PATH"], "Msvm_SettingsDefineState")
               if item["SettingType"] == 3]
    assert len(current) == 1 and current[0]["VirtualSystemType"] == 301 and "ConfigurationDataRoot" not in current[0]
    globals_ = wmi.one("Msvm_VirtualSystemGlobalSettingData", SystemName=vm["Name"])
    assert globals_["InstanceID"] == "Microsoft:%s\\Global" % vm["Name"]
    assert os.path.isdir(lab_files.to_local(layout, globals_["ExternalDataRoot"]))
    images = [item for item in bridge.associators(NAMESPACE_V1, current[0]["__PATH"], "Msvm_VirtualSystemSettingDataComponent")
              if item["ResourceSubType"] == "Microsoft Virtual Hard Disk"]
    assert len(images) == 1
    path = images[0]["Connection"][0]
    result = wmi.invoke("Msvm_VirtualSystemManagementService", "CreateVirtualSystemSnapshot", SourceSystem=Ref(vm["__PATH"]))
    wmi.ok(result)
    snapshot = [item for item in result["affected"] if item["__CLASS"] == "Msvm_VirtualSystemSettingData"][0]
    assert snapshot["SettingType"] == 5
    listed = bridge.query(NAMESPACE_V1, "Msvm_VirtualSystemSettingData", where={"SystemName": vm["Name"], "SettingType": 5})
    assert [item["InstanceID"] for item in listed] == [snapshot["InstanceID"]]
    frozen = [item for item in bridge.associators(NAMESPACE_V1, snapshot["__PATH"], "Msvm_VirtualSystemSettingDataComponent")
              if item["ResourceSubType"] == "Microsoft Virtual Hard Disk"][0]["Connection"][0]
    assert frozen == path
    child = [item for item in bridge.associators(NAMESPACE_V1, current[0]["__PATH"], "Msvm_VirtualSystemSettingDataComponent")
             if item["ResourceSubType"] == "Microsoft Virtual Hard Disk"][0]["Connection"][0]
    info = wmi.invoke("Msvm_ImageManagementService", "GetVirtualHardDiskInfo", Path=child)
    if era == "2008r2":
        assert child.endswith(".avhd")
        parsed = parse_instance(wmi.ok(info)["out"]["Info"])
        assert parsed["Type"] == 4 and parsed["ParentPath"] == path and parsed["MaxInternalSize"] == 64 * MiB
    else:   # 2012 creates VHDX disks; v1 knows VHD only
        assert info["ReturnValue"] == 32770
    wmi.ok(wmi.invoke("Msvm_VirtualSystemManagementService", "RemoveVirtualSystemSnapshot",
                      SnapshotSettingData=Ref(snapshot["__PATH"])))
    assert lab_admin.find_vm(layout, "web01")["checkpoints"] == []
    for class_name in ("Msvm_VirtualSystemReferencePoint", "Msvm_StorageAllocationSettingData", "Msvm_VirtualSystemSnapshotService",
                       "Msvm_PlannedComputerSystem"):
        with pytest.raises(BridgeError) as refused:
            bridge.query(NAMESPACE_V1, class_name)
        assert refused.value.code == WBEM_E_INVALID_CLASS
    with pytest.raises(BridgeError) as refused:
        wmi.invoke("Msvm_ImageManagementService", "GetVirtualHardDiskSettingData", Path=path)
    assert refused.value.code == WBEM_E_INVALID_METHOD
    if era == "2008r2":
        with pytest.raises(BridgeError) as refused:
            bridge.query(NAMESPACE_V2, "Msvm_ComputerSystem")
        assert refused.value.code == WBEM_E_INVALID_NAMESPACE
    else:   # both namespaces on 2012, the same VM in each
        assert Wmi(bridge).vm("web01")["Name"] == vm["Name"]


@pytest.mark.parametrize("era", ["2012", "2022"])
def test_import_planned_system_with_disks_at_their_addresses(tmp_path, era):
    layout, _transport, _ids = build_host(tmp_path, era=era, vms=({"name": "src01", "generation": 1, "disks": [{"size": 8 * MiB}] * 3},))
    lab_admin.churn(layout, "src01", seed=5, writes=3, write_size=4096, disk=2)
    source = lab_admin.find_vm(layout, "src01")
    bridge = LabBridge(str(tmp_path), "hv01")
    wmi = Wmi(bridge)
    # a restore puts the configuration and the disks somewhere on the host (C:\ maps into the lab)
    restore = lab_files.to_local(layout, "C:\\Restore\\src01")
    os.makedirs(os.path.join(restore, "Virtual Hard Disks"))
    shutil.copyfile(os.path.join(layout.vm_dir(source["id"]), "config.json"), os.path.join(restore, "config.json"))
    for disk in source["disks"]:
        shutil.copyfile(disk["current"], os.path.join(restore, "Virtual Hard Disks", "restored-" + os.path.basename(disk["base"])))
    result = wmi.ok(wmi.invoke("Msvm_VirtualSystemManagementService", "ImportSystemDefinition",
                               SystemDefinitionFile="C:\\Restore\\src01\\config.json", SnapshotFolder="C:\\Restore\\src01",
                               GenerateNewSystemIdentifier=True))
    planned = [item for item in result["affected"] if item["__CLASS"] == "Msvm_PlannedComputerSystem"][0]
    planned_settings = wmi.bridge.associators(NAMESPACE_V2, planned["__PATH"], "Msvm_SettingsDefineState")[0]
    assert planned_settings["VirtualSystemType"] == "Microsoft:Hyper-V:System:Planned"
    validate = wmi.invoke("Msvm_VirtualSystemManagementService", "ValidatePlannedSystem", PlannedSystem=Ref(planned["__PATH"]))
    assert validate["job"]["JobState"] == 10 and "0x80070002" in validate["job"]["ErrorDescription"]
    # point every disk at its restored file, matched by controller address, in reverse order on purpose
    sasds = wmi.disks(planned_settings)
    drives = dict((item["__PATH"], item) for item in wmi.bridge.associators(
        NAMESPACE_V2, planned_settings["__PATH"], "Msvm_VirtualSystemSettingDataComponent", "Msvm_ResourceAllocationSettingData"))
    changes = []
    for sasd in reversed(sasds):
        drive = drives[sasd["Parent"]]
        controller = drives[drive["Parent"]]
        ctype = "IDE" if controller["ResourceSubType"].endswith("IDE Controller") else "SCSI"
        wanted = [disk for disk in source["disks"] if disk["controller_location"] == int(drive["AddressOnParent"])
                  and disk["controller_type"] == ctype and str(disk["controller_number"]) == str(controller["Address"] or 0)][0]
        target = "C:\\Restore\\src01\\Virtual Hard Disks\\restored-" + os.path.basename(wanted["base"])
        changes.append(Embedded("Msvm_StorageAllocationSettingData", {"HostResource": [target]}, based_on=sasd["__PATH"]))
    wmi.ok(wmi.invoke("Msvm_VirtualSystemManagementService", "ModifyResourceSettings", ResourceSettings=changes))
    wmi.ok(wmi.invoke("Msvm_VirtualSystemManagementService", "ValidatePlannedSystem", PlannedSystem=Ref(planned["__PATH"])))
    realized = wmi.ok(wmi.invoke("Msvm_VirtualSystemManagementService", "RealizePlannedSystem", PlannedSystem=Ref(planned["__PATH"])))
    vm = [item for item in realized["affected"] if item["__CLASS"] == "Msvm_ComputerSystem"][0]
    assert vm["Name"] == planned["Name"] != source["id"].upper() and vm["ElementName"] == "src01"
    assert wmi.bridge.query(NAMESPACE_V2, "Msvm_PlannedComputerSystem") == []
    imported = lab_admin.find_vm(layout, vm["Name"].lower())
    for disk, original in zip(sorted(imported["disks"], key=lambda d: d["controller_location"] + 10 * d["controller_number"]),
                              sorted(source["disks"], key=lambda d: d["controller_location"] + 10 * d["controller_number"])):
        assert (disk["controller_type"], disk["controller_number"], disk["controller_location"]) == \
            (original["controller_type"], original["controller_number"], original["controller_location"])
        assert read_all(disk["current"]) == read_all(original["current"])
    with open(os.path.join(restore, "config.json")) as handle:
        assert json.load(handle)["name"] == "src01"


def test_2008r2_import_virtual_system_ex(tmp_path):
    """The v1 import (not in the schema: ImportVirtualSystemEx as the 2008 R2 class reference documents it)."""
    from ansible_collections.hyperv.backup.plugins.module_utils.host.cim_xml import format_instance
    layout, _transport, _ids = build_host(tmp_path, era="2008r2", vms=("web01",))
    lab_admin.churn(layout, "web01", seed=9, writes=2, write_size=4096)
    source = lab_admin.find_vm(layout, "web01")
    export = lab_files.to_local(layout, "C:\\Export\\web01")
    os.makedirs(os.path.join(export, "Virtual Hard Disks"))
    shutil.copyfile(os.path.join(layout.vm_dir(source["id"]), "config.json"), os.path.join(export, "config.json"))
    restored = os.path.join(export, "Virtual Hard Disks", "restored.vhd")
    shutil.copyfile(source["disks"][0]["current"], restored)
    wmi = Wmi(LabBridge(str(tmp_path), "hv01"), NAMESPACE_V1)
    got = wmi.ok(wmi.invoke("Msvm_VirtualSystemManagementService", "GetVirtualSystemImportSettingData", ImportDirectory="C:\\Export\\web01"))
    settings = parse_instance(got["out"]["ImportSettingData"])
    assert settings.pop("__CLASS") == "Msvm_VirtualSystemImportSettingData" and settings["Name"] == "web01"
    settings.update(GenerateNewId=True, Name="web01-restored", SourceResourcePaths=["C:\\Export\\web01\\Virtual Hard Disks\\restored.vhd"])
    text = format_instance("Msvm_VirtualSystemImportSettingData", settings,
                           {"CreateCopy": "boolean", "GenerateNewId": "boolean", "SourceResourcePaths": "string[]",
                            "CurrentResourcePaths": "string[]", "TargetResourcePaths": "string[]"})
    result = wmi.ok(wmi.invoke("Msvm_VirtualSystemManagementService", "ImportVirtualSystemEx", ImportDirectory="C:\\Export\\web01",
                               ImportSettingData=text))
    vm = [item for item in result["affected"] if item["__CLASS"] == "Msvm_ComputerSystem"][0]
    assert vm["ElementName"] == "web01-restored" and vm["Name"] != source["id"].upper() and vm["EnabledState"] == 3
    imported = lab_admin.find_vm(layout, "web01-restored")
    assert imported["disks"][0]["current"] == restored
    assert read_all(restored) == read_all(source["disks"][0]["current"])
