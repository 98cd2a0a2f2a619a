"""LabBridge: the lab's faults as Windows shows them through WMI, and the fixtures of issue 11 point 14
(foreign reference points, pass-through disks, a missing VHD) that must not break the inventory."""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import (
    NAMESPACE_CIMV2, NAMESPACE_V2, BridgeError, Embedded, Ref)
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin, lab_rct
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge import WBEM_E_PROVIDER_LOAD_FAILURE, LabBridge

from test_lab_helpers import build_host
from test_lab_wmi import RECOVERY, Wmi

V2 = NAMESPACE_V2


def set_host(layout, **changes):
    doc = layout.read_host()
    doc.update(changes)
    layout.write_host(doc)


def set_vm(layout, name, **changes):
    vm = lab_admin.find_vm(layout, name)
    vm.update(changes)
    layout.write_vm(vm)


@pytest.mark.parametrize("fault,category", [("unreachable", "unreachable"), ("auth_fails", "authentication")])
def test_unreachable_and_refused_hosts_fail_every_call(tmp_path, fault, category):
    layout, _transport, _ids = build_host(tmp_path, era="2022", vms=("web01",))
    set_host(layout, faults=[fault])
    bridge = LabBridge(str(tmp_path), "hv01")
    for call in (lambda: bridge.query(V2, "Msvm_ComputerSystem"), lambda: bridge.query(NAMESPACE_CIMV2, "Win32_OperatingSystem"),
                 lambda: bridge.invoke(V2, "\\\\.\\root\\virtualization\\v2:Msvm_ImageManagementService", "GetVirtualHardDiskSettingData"),
                 bridge.host_environment, lambda: bridge.read_file("C:\\ProgramData\\x", 10),
                 lambda: bridge.service("vss")):
        with pytest.raises(BridgeError) as info:
            call()
        assert info.value.category == category


def test_unknown_host_is_unreachable(tmp_path):
    with pytest.raises(BridgeError) as info:
        LabBridge(str(tmp_path), "nohost").query(V2, "Msvm_ComputerSystem")
    assert info.value.category == "unreachable"


def test_stopped_vmms_fails_hyperv_calls_only(tmp_path):
    layout, _transport, _ids = build_host(tmp_path, era="2016", vms=("web01",))
    doc = layout.read_host()
    doc["services"]["vmms"]["status"] = "Stopped"
    layout.write_host(doc)
    bridge = LabBridge(str(tmp_path), "hv01")
    with pytest.raises(BridgeError) as info:
        bridge.query(V2, "Msvm_ComputerSystem")
    assert info.value.code == WBEM_E_PROVIDER_LOAD_FAILURE and info.value.category == "service"
    assert bridge.query(NAMESPACE_CIMV2, "Win32_OperatingSystem")[0]["BuildNumber"] == "14393"


@pytest.mark.parametrize("where", ["host", "vm"])
def test_recovery_point_fails_fails_the_job(tmp_path, where):
    layout, _transport, _ids = build_host(tmp_path, era="2019", vms=("web01",))
    if where == "host":
        set_host(layout, faults=["recovery_point_fails"])
    else:
        set_vm(layout, "web01", faults=["recovery_point_fails"])
    wmi = Wmi(LabBridge(str(tmp_path), "hv01"))
    vm = wmi.vm("web01")
    result = wmi.invoke("Msvm_VirtualSystemSnapshotService", "CreateSnapshot", AffectedSystem=Ref(vm["__PATH"]), SnapshotType=32768,
                        SnapshotSettings=Embedded("Msvm_VirtualSystemSnapshotSettingData", {"ConsistencyLevel": 1}))
    assert result["ReturnValue"] == 4096 and result["job"]["JobState"] == 10 and result["job"]["ErrorCode"] == 32768
    assert result["affected"] == []
    assert wmi.bridge.associators(V2, vm["__PATH"], "Msvm_SnapshotOfVirtualSystem") == []


def test_integration_faults(tmp_path):
    layout, _transport, _ids = build_host(tmp_path, era="2022", vms=("web01", "db01"))
    set_vm(layout, "web01", faults=["integration_missing"])
    set_vm(layout, "db01", faults=["integration_no_contact"])
    wmi = Wmi(LabBridge(str(tmp_path), "hv01"))
    web, db = wmi.vm("web01"), wmi.vm("db01")
    assert wmi.bridge.associators(V2, web["__PATH"], "Msvm_SystemDevice", "Msvm_VssComponent") == []
    component = wmi.bridge.associators(V2, db["__PATH"], "Msvm_SystemDevice", "Msvm_VssComponent")[0]
    assert component["OperationalStatus"] == [12]
    for vm in (web, db):
        # application-consistent needs the guest: the job fails; crash-consistent works
        failed = wmi.invoke("Msvm_VirtualSystemSnapshotService", "CreateSnapshot", AffectedSystem=Ref(vm["__PATH"]),
                            SnapshotType=32768, SnapshotSettings=Embedded("Msvm_VirtualSystemSnapshotSettingData", {"ConsistencyLevel": 1}))
        assert failed["job"]["JobState"] == 10 and "0x80070490" in failed["job"]["ErrorDescription"]
        assert wmi.recovery_checkpoint(vm, consistency=2)["VirtualSystemType"] == RECOVERY


def test_rct_invalid_fails_get_virtual_disk_changes(tmp_path):
    layout, _transport, _ids = build_host(tmp_path, era="2016", vms=("web01",))
    wmi = Wmi(LabBridge(str(tmp_path), "hv01"))
    point = wmi.convert(wmi.recovery_checkpoint(wmi.vm("web01")))
    set_vm(layout, "web01", faults=["rct_invalid"])
    sasd = wmi.one("Msvm_StorageAllocationSettingData", InstanceID=point["VirtualDiskIdentifiers"][0])
    result = wmi.invoke("Msvm_ImageManagementService", "GetVirtualDiskChanges", Path=sasd["HostResource"][0],
                        LimitId=point["ResilientChangeTrackingIdentifiers"][0], TargetSnapshotId="", ByteOffset=0,
                        ByteLength=1024 * 1024)
    assert result["job"]["JobState"] == 10 and lab_rct.ERROR_VHD_INVALID_CHANGE_TRACKING_ID in result["job"]["ErrorDescription"]


def test_no_change_tracking_for_vhd_or_old_configuration_versions(tmp_path):
    build_host(tmp_path, era="2016", vms=({"name": "old01", "configuration_version": "5.0"},))
    wmi = Wmi(LabBridge(str(tmp_path), "hv01"))
    snapshot = wmi.recovery_checkpoint(wmi.vm("old01"))
    result = wmi.invoke("Msvm_VirtualSystemSnapshotService", "ConvertToReferencePoint", AffectedSnapshot=Ref(snapshot["__PATH"]))
    assert result["job"]["JobState"] == 10 and "0xC03A002A" in result["job"]["ErrorDescription"]


@pytest.mark.parametrize("kind", [1, 2])
def test_foreign_reference_points_are_listed_as_they_are(tmp_path, kind):
    layout, _transport, _ids = build_host(tmp_path, era="2019", vms=("web01",))
    lab_admin.add_foreign_reference_point(layout, "web01", reference_point_type=kind)
    wmi = Wmi(LabBridge(str(tmp_path), "hv01"))
    ours = wmi.convert(wmi.recovery_checkpoint(wmi.vm("web01")))
    points = wmi.points(wmi.vm("web01"))
    assert sorted(item["ReferencePointType"] for item in points) == sorted([kind, 2])
    foreign = [item for item in points if item["InstanceID"] != ours["InstanceID"]][0]
    assert foreign["HasAssociatedData"] is (kind == 1)
    assert len(foreign["ResilientChangeTrackingIdentifiers"]) == (0 if kind == 1 else 1)


def test_passthrough_disk_and_missing_vhd_do_not_break_the_inventory(tmp_path):
    layout, _transport, _ids = build_host(tmp_path, era="2022", vms=("web01", "db01"))
    lab_admin.add_passthrough_disk(layout, "web01")
    removed = lab_admin.remove_disk_file(layout, "db01")
    wmi = Wmi(LabBridge(str(tmp_path), "hv01"))
    assert len(wmi.bridge.query(V2, "Msvm_ComputerSystem", where={"Caption": "Virtual Machine"})) == 2
    web = wmi.vm("web01")
    rasds = wmi.bridge.associators(V2, wmi.settings(web)["__PATH"], "Msvm_VirtualSystemSettingDataComponent",
                                   "Msvm_ResourceAllocationSettingData")
    physical = [item for item in rasds if item["ResourceSubType"] == "Microsoft:Hyper-V:Physical Disk Drive"]
    assert len(physical) == 1 and "Msvm_DiskDrive" in physical[0]["HostResource"][0]
    assert len(wmi.disks(wmi.settings(web))) == 1   # no SASD for the pass-through disk
    failed = wmi.invoke("Msvm_VirtualSystemSnapshotService", "CreateSnapshot", AffectedSystem=Ref(web["__PATH"]), SnapshotType=32768,
                        SnapshotSettings=Embedded("Msvm_VirtualSystemSnapshotSettingData", {"ConsistencyLevel": 1}))
    assert failed["job"]["JobState"] == 10
    assert wmi.recovery_checkpoint(web)["VirtualSystemType"] == RECOVERY   # IgnoreNonSnapshottableDisks
    missing = wmi.disks(wmi.settings(wmi.vm("db01")))[0]["HostResource"][0]
    assert missing.endswith(removed.rsplit("/", 1)[1])
    assert wmi.invoke("Msvm_ImageManagementService", "GetVirtualHardDiskSettingData", Path=missing)["ReturnValue"] == 32779


def _checkpoint_in_child(lab_dir, name, queue):
    try:
        wmi = Wmi(LabBridge(lab_dir, "hv01"))
        snapshot = wmi.recovery_checkpoint(wmi.vm(name))
        wmi.rename(snapshot["__PATH"], "hyperv.backup:%s" % name)
        queue.put((name, snapshot["InstanceID"]))
    except Exception as exc:  # pylint: disable=broad-except
        queue.put((name, "error: %r" % (exc,)))


def test_concurrent_forks_keep_every_checkpoint(tmp_path):
    """Ansible forks call the lab at once: two checkpoints of one VM and one of another all land, with their tags."""
    import multiprocessing
    build_host(tmp_path, era="2022", vms=("web01", "db01"))
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_checkpoint_in_child, args=(str(tmp_path), name, queue)) for name in ("web01", "web01", "db01")]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=60) for _worker in workers]
    for worker in workers:
        worker.join(60)
    assert not [item for item in results if item[1].startswith("error")], results
    wmi = Wmi(LabBridge(str(tmp_path), "hv01"))
    for name, count in (("web01", 2), ("db01", 1)):
        snapshots = wmi.bridge.associators(V2, wmi.vm(name)["__PATH"], "Msvm_SnapshotOfVirtualSystem")
        assert sorted(item["ElementName"] for item in snapshots) == ["hyperv.backup:%s" % name] * count
        for snapshot in snapshots:
            for sasd in wmi.disks(snapshot):
                assert wmi.vhd_settings(sasd["HostResource"][0])["Format"] == 3
