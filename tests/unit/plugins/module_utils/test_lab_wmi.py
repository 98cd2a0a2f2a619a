"""LabBridge: the backup call sequence of hyperv_wmi.md section 3 (reference points and RCT) per era and locale,
and what Windows refuses (unknown class / property / method / parameter per era, unchangeable properties)."""
import os

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import (
    NAMESPACE_CIMV2, NAMESPACE_V1, NAMESPACE_V2, WBEM_E_INVALID_CLASS, WBEM_E_INVALID_METHOD, WBEM_E_INVALID_METHOD_PARAMETERS,
    WBEM_E_INVALID_NAMESPACE, WBEM_E_INVALID_QUERY, WBEM_E_METHOD_NOT_IMPLEMENTED, WBEM_E_NOT_FOUND, BridgeError, Embedded, Ref)
from ansible_collections.hyperv.backup.plugins.module_utils.host.cim_xml import parse_instance
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin, lab_rct
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge import LabBridge
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_model import format_path, parse_path

from test_lab_helpers import MiB, build_host, granule_ranges

V2 = NAMESPACE_V2
TAG = "hyperv.backup:run-1"
RECOVERY = "Microsoft:Hyper-V:Snapshot:Recovery"


class Wmi:
    """The calls hyperv/ makes, written out as hyperv_wmi.md section 3 describes them."""

    def __init__(self, bridge, namespace=V2):
        self.bridge = bridge
        self.ns = namespace

    def one(self, class_name, **where):
        found = self.bridge.query(self.ns, class_name, where=where or None)
        assert len(found) == 1, found
        return found[0]

    def service(self, class_name):
        return self.one(class_name)["__PATH"]

    def vm(self, name):
        return self.one("Msvm_ComputerSystem", ElementName=name)

    def settings(self, vm):
        found = self.bridge.associators(self.ns, vm["__PATH"], "Msvm_SettingsDefineState", "Msvm_VirtualSystemSettingData")
        assert len(found) == 1
        return found[0]

    def invoke(self, class_name, method, **arguments):
        return self.bridge.invoke(self.ns, self.service(class_name), method, arguments)

    def ok(self, result):
        assert result["ReturnValue"] in (0, 4096), result
        if result["ReturnValue"] == 4096:
            assert result["job"]["JobState"] in (7, 32768) and result["job"]["ErrorCode"] == 0, result["job"]
        return result

    def recovery_checkpoint(self, vm, consistency=1):
        settings = Embedded("Msvm_VirtualSystemSnapshotSettingData",
                            {"ConsistencyLevel": consistency, "IgnoreNonSnapshottableDisks": True})
        result = self.ok(self.invoke("Msvm_VirtualSystemSnapshotService", "CreateSnapshot", AffectedSystem=Ref(vm["__PATH"]),
                                     SnapshotSettings=settings, SnapshotType=32768))
        # the VM is affected too (issue 11 point 11: never take the first affected element blindly)
        assert [item["__CLASS"] for item in result["affected"]][0] == "Msvm_ComputerSystem"
        created = [item for item in result["affected"] if item["__CLASS"] == "Msvm_VirtualSystemSettingData"
                   and 5 in item["ElementEffects"]]
        assert len(created) == 1 and created[0]["VirtualSystemType"] == RECOVERY
        return created[0]

    def rename(self, settings_path, name):
        return self.ok(self.invoke("Msvm_VirtualSystemManagementService", "ModifySystemSettings",
                                   SystemSettings=Embedded("Msvm_VirtualSystemSettingData", {"ElementName": name},
                                                           based_on=settings_path)))

    def disks(self, settings):
        return self.bridge.associators(self.ns, settings["__PATH"], "Msvm_VirtualSystemSettingDataComponent",
                                       "Msvm_StorageAllocationSettingData")

    def vhd_settings(self, path):
        result = self.ok(self.invoke("Msvm_ImageManagementService", "GetVirtualHardDiskSettingData", Path=path))
        return parse_instance(result["out"]["SettingData"])

    def changes(self, path, limit_id, size):
        offset, ranges, pages = 0, [], 0
        while offset < size:
            result = self.ok(self.invoke("Msvm_ImageManagementService", "GetVirtualDiskChanges", Path=path, LimitId=limit_id,
                                         TargetSnapshotId="", ByteOffset=offset, ByteLength=size - offset))
            out = result["out"]
            assert out["ProcessedByteLength"] > 0
            ranges.extend(zip(out["ChangedByteOffsets"], out["ChangedByteLengths"]))
            offset += out["ProcessedByteLength"]
            pages += 1
        merged = []
        for start, length in ranges:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1][1] += length
            else:
                merged.append([start, length])
        return [tuple(item) for item in merged], pages

    def convert(self, snapshot):
        result = self.ok(self.invoke("Msvm_VirtualSystemSnapshotService", "ConvertToReferencePoint",
                                     AffectedSnapshot=Ref(snapshot["__PATH"])))
        created = [item for item in result["affected"] if item["__CLASS"] == "Msvm_VirtualSystemReferencePoint"]
        assert len(created) == 1 and created[0]["ElementEffects"] == [5]
        return created[0]

    def points(self, vm):
        return self.bridge.associators(self.ns, vm["__PATH"], "Msvm_ReferencePointOfVirtualSystem")


def local(bridge, windows_path):
    from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_files
    return lab_files.to_local(bridge.layout, windows_path)


@pytest.mark.parametrize("era", ["2016", "2019", "2022", "2025"])
@pytest.mark.parametrize("locale", ["en-US", "de-DE"])
def test_section_3_full_then_rct_incremental(tmp_path, era, locale):
    layout, _transport, _ids = build_host(tmp_path, era=era, vms=("web01",), locale=locale, disks=2)
    bridge = LabBridge(str(tmp_path), "hv01")
    wmi = Wmi(bridge)
    # 1. find the VM and its current settings
    vm = wmi.vm("web01")
    assert vm["Caption"] == "Virtual Machine" and len(vm["Name"]) == 36
    current = wmi.settings(vm)
    assert current["VirtualSystemType"] == "Microsoft:Hyper-V:System:Realized"
    assert current["Version"] and current["VirtualSystemSubType"] == "Microsoft:Hyper-V:SubType:2"
    # 2. recovery checkpoint, 3. tagged through ModifySystemSettings; the VM keeps its name
    snapshot = wmi.recovery_checkpoint(vm)
    wmi.rename(snapshot["__PATH"], TAG)
    snapshots = bridge.associators(V2, vm["__PATH"], "Msvm_SnapshotOfVirtualSystem")
    assert [(item["ElementName"], item["VirtualSystemType"]) for item in snapshots] == [(TAG, RECOVERY)]
    assert wmi.vm("web01")["ElementName"] == "web01"
    # 4. configuration file and disks of the checkpoint map to real files
    config = snapshot["ConfigurationDataRoot"] + "\\" + snapshot["ConfigurationFile"]
    assert os.path.isfile(local(bridge, config))
    first_disks = wmi.disks(snapshot)
    assert len(first_disks) == 2
    for sasd in first_disks:
        assert sasd["ResourceSubType"] == "Microsoft:Hyper-V:Virtual Hard Disk" and sasd["ResourceType"] == 31
        facts = wmi.vhd_settings(sasd["HostResource"][0])
        assert facts["Format"] == 3 and facts["MaxInternalSize"] == 64 * MiB and facts["VirtualDiskId"]
    # 6. convert: the snapshot goes away, the reference point has no creation time
    point = wmi.convert(snapshot)
    assert "CreationTime" not in point
    assert bridge.associators(V2, vm["__PATH"], "Msvm_SnapshotOfVirtualSystem") == []
    assert point["ReferencePointType"] == 2
    assert len(point["ResilientChangeTrackingIdentifiers"]) == len(point["VirtualDiskIdentifiers"]) == 2
    # 5. next backup: the guest writes, a new checkpoint, changes since the point per disk
    churned = lab_admin.churn(layout, "web01", seed=7, writes=5, write_size=8192, disk=1)
    second = wmi.recovery_checkpoint(vm)
    second_disks = wmi.disks(second)
    for index, disk_instance_id in enumerate(point["VirtualDiskIdentifiers"]):
        sasd = wmi.one("Msvm_StorageAllocationSettingData", InstanceID=disk_instance_id)   # the VM's disk
        frozen = [item for item in second_disks if item["InstanceID"].split("\\", 1)[1] == sasd["InstanceID"].split("\\", 1)[1]][0]
        ranges, pages = wmi.changes(frozen["HostResource"][0], point["ResilientChangeTrackingIdentifiers"][index], 64 * MiB)
        assert pages == 1
        assert ranges == (granule_ranges(churned["writes"]) if index == 1 else [])
    # 7. convert the new one, destroy the old point: its ids stop working
    newer = wmi.convert(second)
    wmi.ok(wmi.invoke("Msvm_VirtualSystemReferencePointService", "DestroyReferencePoint",
                      AffectedReferencePoint=Ref(point["__PATH"])))
    assert [item["InstanceID"] for item in wmi.points(vm)] == [newer["InstanceID"]]
    sasd = wmi.one("Msvm_StorageAllocationSettingData", InstanceID=point["VirtualDiskIdentifiers"][0])
    failed = wmi.invoke("Msvm_ImageManagementService", "GetVirtualDiskChanges", Path=sasd["HostResource"][0],
                        LimitId=point["ResilientChangeTrackingIdentifiers"][0], TargetSnapshotId="", ByteOffset=0,
                        ByteLength=64 * MiB)
    assert failed["ReturnValue"] == 4096 and failed["job"]["JobState"] == 10
    assert lab_rct.ERROR_VHD_MISSING_CHANGE_TRACKING_INFORMATION in failed["job"]["ErrorDescription"]


def test_paging_and_the_strict_byte_length_quirk(tmp_path):
    size = 2560 * MiB
    layout, _transport, _ids = build_host(tmp_path, era="2019", vms=("web01",), size=size)
    bridge = LabBridge(str(tmp_path), "hv01")
    wmi = Wmi(bridge)
    point = wmi.convert(wmi.recovery_checkpoint(wmi.vm("web01")))
    churned = lab_admin.churn(layout, "web01", seed=3, offsets=[0, 1100 * MiB, size - 65536], write_size=4096)
    path = wmi.disks(wmi.settings(wmi.vm("web01")))[0]["HostResource"][0]
    rct_id = point["ResilientChangeTrackingIdentifiers"][0]
    ranges, pages = wmi.changes(path, rct_id, size)
    assert pages == 3 and ranges == granule_ranges(churned["writes"])
    # size - offset is accepted by default; the documented reading ("less than the size") is a host quirk
    host_doc = layout.read_host()
    host_doc["quirks"] = ["byte_length_strict"]
    layout.write_host(host_doc)
    arguments = dict(Path=path, LimitId=rct_id, TargetSnapshotId="", ByteOffset=0, ByteLength=size)
    assert wmi.invoke("Msvm_ImageManagementService", "GetVirtualDiskChanges", **arguments)["ReturnValue"] == 32773
    arguments["ByteLength"] = size - 512
    assert wmi.invoke("Msvm_ImageManagementService", "GetVirtualDiskChanges", **arguments)["ReturnValue"] == 0


def test_object_paths_as_windows_prints_them():
    path = format_path("HV01", V2, "Msvm_VirtualSystemReferencePoint",
                       {"VirtualSystemIdentifier": "A1", "InstanceID": 'Microsoft:X\\Y"z'})
    assert path == ('\\\\HV01\\root\\virtualization\\v2:Msvm_VirtualSystemReferencePoint.InstanceID="Microsoft:X\\\\Y\\"z",'
                    'VirtualSystemIdentifier="A1"')
    assert parse_path(path) == (V2, "Msvm_VirtualSystemReferencePoint", {"InstanceID": 'Microsoft:X\\Y"z', "VirtualSystemIdentifier": "A1"})


def test_keys_of_real_paths(tmp_path):
    build_host(tmp_path, era="2022", vms=("web01",))
    wmi = Wmi(LabBridge(str(tmp_path), "hv01"))
    vm = wmi.vm("web01")
    assert vm["__PATH"] == '\\\\HV01\\root\\virtualization\\v2:Msvm_ComputerSystem.CreationClassName="Msvm_ComputerSystem",Name="%s"' % vm["Name"]
    assert wmi.service("Msvm_VirtualSystemManagementService") == (
        '\\\\HV01\\root\\virtualization\\v2:Msvm_VirtualSystemManagementService.CreationClassName='
        '"Msvm_VirtualSystemManagementService",Name="vmms",SystemCreationClassName="Msvm_ComputerSystem",SystemName="HV01"')
    host = wmi.one("Msvm_ComputerSystem", Caption="Hosting Computer System")
    assert host["Name"] == "HV01"
    component = wmi.bridge.associators(V2, vm["__PATH"], "Msvm_SystemDevice", "Msvm_VssComponent")[0]
    assert component["DeviceID"] == "Microsoft:5CED1297-4598-4915-A5FC-AD21BB4D02A4" and component["SystemName"] == vm["Name"]
    assert wmi.bridge.associators(V2, component["__PATH"], "Msvm_ElementSettingData")[0]["InstanceID"] == (
        "Microsoft:%s\\5CED1297-4598-4915-A5FC-AD21BB4D02A4" % vm["Name"])
    sasd = wmi.disks(wmi.settings(vm))[0]
    drive = wmi.one("Msvm_ResourceAllocationSettingData", InstanceID=sasd["InstanceID"][:-1] + "D")
    assert sasd["Parent"] == drive["__PATH"] and drive["AddressOnParent"] == "0"
    assert sasd["InstanceID"].startswith("Microsoft:%s\\" % vm["Name"]) and sasd["InstanceID"].endswith("\\L")


@pytest.mark.parametrize("era", ["2012", "2012r2"])
def test_before_2016_there_are_no_reference_points_nor_recovery_snapshots(tmp_path, era):
    build_host(tmp_path, era=era, vms=("web01",))
    bridge = LabBridge(str(tmp_path), "hv01")
    wmi = Wmi(bridge)
    vm = wmi.vm("web01")
    for call in (lambda: bridge.query(V2, "Msvm_VirtualSystemReferencePoint"),
                 lambda: bridge.associators(V2, vm["__PATH"], "Msvm_ReferencePointOfVirtualSystem"),
                 lambda: bridge.query(V2, "Msvm_VirtualSystemReferencePointService"),
                 lambda: wmi.recovery_checkpoint(vm)):   # the settings class is 2016+: the client cannot build it
        with pytest.raises(BridgeError) as info:
            call()
        assert info.value.code == WBEM_E_INVALID_CLASS
    snapshot_service = "Msvm_VirtualSystemSnapshotService"
    assert wmi.invoke(snapshot_service, "CreateSnapshot", AffectedSystem=Ref(vm["__PATH"]), SnapshotType=32768)["ReturnValue"] == 1
    for method in ("ConvertToReferencePoint",):
        with pytest.raises(BridgeError) as info:
            wmi.invoke(snapshot_service, method, AffectedSnapshot=Ref(vm["__PATH"]))
        assert info.value.code == WBEM_E_INVALID_METHOD
    with pytest.raises(BridgeError) as info:
        wmi.invoke("Msvm_ImageManagementService", "GetVirtualDiskChanges", Path="C:\\x.vhdx")
    assert info.value.code == WBEM_E_INVALID_METHOD
    # a standard checkpoint works (SnapshotType 2, no settings)
    result = wmi.ok(wmi.invoke(snapshot_service, "CreateSnapshot", AffectedSystem=Ref(vm["__PATH"]), SnapshotType=2))
    created = [item for item in result["affected"] if 5 in item["ElementEffects"]][0]
    assert created["VirtualSystemType"] == "Microsoft:Hyper-V:Snapshot:Realized"
    disk = wmi.disks(created)[0]["HostResource"][0]
    facts = wmi.vhd_settings(disk)
    if era == "2012":   # VirtualDiskId came with 2012 R2; VirtualSystemSubType too
        assert "VirtualDiskId" not in facts
        with pytest.raises(BridgeError) as info:
            bridge.query(V2, "Msvm_VirtualSystemSettingData", properties=["VirtualSystemSubType"])
        assert info.value.code == WBEM_E_INVALID_QUERY
        assert "VirtualSystemSubType" not in wmi.settings(vm)
    else:
        assert facts["VirtualDiskId"]
        with pytest.raises(BridgeError) as info:
            bridge.query(NAMESPACE_V1, "Msvm_ComputerSystem")
        assert info.value.code == WBEM_E_INVALID_NAMESPACE


def test_refusals(tmp_path):
    build_host(tmp_path, era="2022", vms=("web01",))
    bridge = LabBridge(str(tmp_path), "hv01")
    wmi = Wmi(bridge)
    vm = wmi.vm("web01")

    def code(call):
        with pytest.raises(BridgeError) as info:
            call()
        return info.value.code
    assert code(lambda: bridge.query(V2, "Msvm_NoSuchClass")) == WBEM_E_INVALID_CLASS
    assert code(lambda: bridge.query(V2, "Msvm_ComputerSystem", where={"NoSuchProperty": 1})) == WBEM_E_INVALID_QUERY
    assert code(lambda: bridge.query(V2, "Msvm_VirtualSystemReferencePoint", properties=["CreationTime"])) == WBEM_E_INVALID_QUERY
    assert code(lambda: bridge.query("root\\nothing", "Msvm_ComputerSystem")) == WBEM_E_INVALID_NAMESPACE
    assert code(lambda: bridge.query(NAMESPACE_V1, "Msvm_ComputerSystem")) == WBEM_E_INVALID_NAMESPACE
    assert code(lambda: wmi.invoke("Msvm_VirtualSystemSnapshotService", "TakeSnapshot")) == WBEM_E_INVALID_METHOD
    assert code(lambda: wmi.invoke("Msvm_VirtualSystemSnapshotService", "CreateSnapshot", AffectedVM=Ref(vm["__PATH"]))) == \
        WBEM_E_INVALID_METHOD_PARAMETERS
    assert code(lambda: wmi.invoke("Msvm_VirtualSystemManagementService", "DefineSystem")) == WBEM_E_METHOD_NOT_IMPLEMENTED
    assert code(lambda: wmi.rename(wmi.settings(vm)["__PATH"].replace(vm["Name"], "00000000-0000-0000-0000-000000000000"),
                                   "x")) == WBEM_E_NOT_FOUND
    # editing a copy is never an error, as long as the class has the property; the method honours only ElementName
    current = wmi.settings(vm)
    result = wmi.ok(wmi.invoke("Msvm_VirtualSystemManagementService", "ModifySystemSettings",
                               SystemSettings=Embedded("Msvm_VirtualSystemSettingData", {"Version": "1.0", "ElementName": "web02"},
                                                       based_on=current["__PATH"])))
    assert result["job"]["JobState"] == 7
    renamed = wmi.settings(vm)
    assert (renamed["ElementName"], renamed["Version"]) == ("web02", current["Version"])
    assert wmi.vm("web02")["Name"] == vm["Name"]
    unknown = Embedded("Msvm_VirtualSystemSettingData", {"NoSuchProperty": 1}, based_on=current["__PATH"])
    assert code(lambda: wmi.invoke("Msvm_VirtualSystemManagementService", "ModifySystemSettings", SystemSettings=unknown)) == \
        WBEM_E_NOT_FOUND
    too_long = wmi.invoke("Msvm_VirtualSystemManagementService", "ModifySystemSettings",
                          SystemSettings=Embedded("Msvm_VirtualSystemSettingData", {"ElementName": "x" * 101}, based_on=current["__PATH"]))
    assert too_long["ReturnValue"] == 4
    # a standard checkpoint is no recovery snapshot: it cannot be converted
    result = wmi.ok(wmi.invoke("Msvm_VirtualSystemSnapshotService", "CreateSnapshot", AffectedSystem=Ref(vm["__PATH"]),
                               SnapshotType=2))
    standard = [item for item in result["affected"] if 5 in item["ElementEffects"]][0]
    assert wmi.invoke("Msvm_VirtualSystemSnapshotService", "ConvertToReferencePoint",
                      AffectedSnapshot=Ref(standard["__PATH"]))["ReturnValue"] == 6
    # the VSS integration service is switched through ModifyResourceSettings on its setting data
    component = bridge.associators(V2, vm["__PATH"], "Msvm_SystemDevice", "Msvm_VssComponent")[0]
    setting = bridge.associators(V2, component["__PATH"], "Msvm_ElementSettingData")[0]
    wmi.ok(wmi.invoke("Msvm_VirtualSystemManagementService", "ModifyResourceSettings",
                      ResourceSettings=[Embedded("Msvm_VssComponentSettingData", {"EnabledState": 3}, based_on=setting["__PATH"])]))
    assert bridge.associators(V2, vm["__PATH"], "Msvm_SystemDevice", "Msvm_VssComponent")[0]["EnabledState"] == 3


def test_jobs_are_kept_five_minutes(tmp_path, monkeypatch):
    build_host(tmp_path, era="2016", vms=("web01",))
    bridge = LabBridge(str(tmp_path), "hv01")
    wmi = Wmi(bridge)
    snapshot = wmi.recovery_checkpoint(wmi.vm("web01"))
    jobs = bridge.query(V2, "Msvm_ConcreteJob")
    assert len(jobs) == 1 and jobs[0]["TimeBeforeRemoval"] == "00000000000500.000000:000"
    assert bridge.associators(V2, jobs[0]["__PATH"], "Msvm_AffectedJobElement", "Msvm_VirtualSystemSettingData")[0]["__PATH"] == \
        snapshot["__PATH"]
    import time
    later = time.time() + 301
    monkeypatch.setattr(time, "time", lambda: later)
    assert bridge.query(V2, "Msvm_ConcreteJob") == []


def test_host_classes(tmp_path):
    build_host(tmp_path, era="2019", vms=(), hardware_vss_provider=True, locale="de-DE")
    bridge = LabBridge(str(tmp_path), "hv01")
    os_info = bridge.query(NAMESPACE_CIMV2, "Win32_OperatingSystem")[0]
    assert (os_info["Version"], os_info["BuildNumber"]) == ("10.0.17763", "17763")
    assert [item["Type"] for item in bridge.query(NAMESPACE_CIMV2, "Win32_ShadowProvider")] == [1, 3]
    assert bridge.query(NAMESPACE_CIMV2, "Win32_ShadowCopy") == []
    with pytest.raises(BridgeError) as info:
        bridge.query(NAMESPACE_CIMV2, "Win32_OperatingSystem", properties=["CSName"])
    assert info.value.code == WBEM_E_INVALID_QUERY


def test_every_reported_windows_path_maps_back_through_path_map(tmp_path):
    from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_files
    layout, _transport, _ids = build_host(tmp_path, era="2019", vms=("web01", {"name": "csv01", "csv": "C:\\ClusterStorage\\Volume1"}),
                                          cluster={"name": "CL1"}, csvs=["C:\\ClusterStorage\\Volume1"])
    bridge = LabBridge(str(tmp_path), "hv01")
    wmi = Wmi(bridge)
    wmi.recovery_checkpoint(wmi.vm("csv01"))
    mapping = bridge.path_map
    paths = [sasd["HostResource"][0] for sasd in bridge.query(V2, "Msvm_StorageAllocationSettingData")]
    paths += [vssd["ConfigurationDataRoot"] + "\\" + vssd["ConfigurationFile"] for vssd in bridge.query(V2, "Msvm_VirtualSystemSettingData")]
    assert len(paths) == 6 and any(path.startswith("C:\\ClusterStorage\\Volume1\\") for path in paths)
    for path in paths:
        assert os.path.isfile(lab_files.to_local(layout, path, mapping=mapping)), path
