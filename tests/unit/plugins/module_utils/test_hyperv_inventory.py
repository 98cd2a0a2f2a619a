"""hyperv/inventory.py over a fake bridge: VMs, disks, integration services, host facts, every era.

Issue 11 points covered here: 5 (empty VirtualDiskId before 2012 R2), 6 (backup integration found by
its GUID on a German host), 7 ('OK' after enabling), 13 (no reference point class before 2016), 14
(a pass-through disk, a missing VHD, a broken VM or an empty Version do not break the inventory).
"""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import NAMESPACE_V1, NAMESPACE_V2, Embedded, Ref
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import host_checks, inventory, wmi
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_operations import run_operation

from hyperv_fake_bridge import FakeBridge, add_vm

VM1 = "4ea7033c-1111-4a2b-9c3d-0123456789ab"
VM2 = "5fb8144d-2222-4a2b-9c3d-0123456789ab"
GIB = 1024 ** 3


def vhdx(bridge, path, parent=None, disk_id="{7A1B2C3D-0000-4000-8000-000000000001}", size=40 * GIB):
    bridge.files[path] = {"Path": path, "Format": 3, "Type": 4 if parent else 3, "MaxInternalSize": size,
                          "BlockSize": 33554432, "LogicalSectorSize": 512, "ParentPath": parent, "VirtualDiskId": disk_id}


def no_reference_points(monkeypatch, points=None, fail=None):
    calls = []

    def fake(bridge, vm_id):
        calls.append(vm_id)
        if fail and vm_id in fail:
            raise HostOperationError(bridge.host, "get_reference_points", "failed", "foreign reference point unreadable")
        return list((points or {}).get(vm_id, []))
    monkeypatch.setattr(inventory, "reference_points", lambda bridge, vm_id: [dict(p, type=p.get("type", "RCT")) for p in fake(bridge, vm_id)])
    return calls


def test_vm_shape_on_2016_matches_the_documented_shape(monkeypatch):
    bridge = FakeBridge("2016")
    vhdx(bridge, "D:\\VMs\\web01\\web01.vhdx")
    add_vm(bridge, VM1, "web01", disks=[("D:\\VMs\\web01\\web01.vhdx", "SCSI", 0, 0)], version="8.0",
           snapshots=[("Microsoft:CP1", "hyperv.backup:run-1", "Microsoft:Hyper-V:Snapshot:Recovery", "20261202073512.000000+060"),
                      ("Microsoft:CP0", "before update", "Microsoft:Hyper-V:Snapshot:Realized", "20261101000000.000000+000")])
    calls = no_reference_points(monkeypatch, {VM1: [{"id": "RP1", "created": "2026-12-01T00:00:00.000000Z", "rct_ids": {}}]})
    [vm] = run_operation(bridge, "get_vms", {})
    assert set(vm) == {"id", "name", "generation", "configuration_version", "state", "path", "windows_path", "clustered",
                       "csv_path", "scsi_controllers", "integration_services", "disks", "checkpoints", "reference_points"}
    assert vm["id"] == VM1 and vm["name"] == "web01" and vm["generation"] == 2 and vm["configuration_version"] == "8.0"
    assert vm["state"] == "Running" and vm["path"] == "D:\\VMs\\web01" and vm["scsi_controllers"] == 1
    assert vm["clustered"] is False and vm["csv_path"] is None
    [disk] = vm["disks"]
    assert disk == {"path": "D:\\VMs\\web01\\web01.vhdx", "windows_path": "D:\\VMs\\web01\\web01.vhdx", "format": "vhdx",
                    "type": "dynamic", "virtual_size": 40 * GIB, "block_size": 33554432, "logical_sector_size": 512,
                    "disk_id": "7a1b2c3d-0000-4000-8000-000000000001", "controller_type": "SCSI", "controller_number": 0,
                    "controller_location": 0, "parent_chain": [], "file_disk_id": "7a1b2c3d-0000-4000-8000-000000000001",
                    "chain_disk_ids": ["7a1b2c3d-0000-4000-8000-000000000001"]}
    assert [cp["name"] for cp in vm["checkpoints"]] == ["before update", "hyperv.backup:run-1"]
    recovery = vm["checkpoints"][1]
    assert recovery == {"id": "Microsoft:CP1", "name": "hyperv.backup:run-1", "type": "Recovery",
                        "created": "2026-12-02T06:35:12.000000Z", "ours": True}
    assert vm["checkpoints"][0]["type"] == "Standard" and not vm["checkpoints"][0]["ours"]
    assert vm["reference_points"] == [{"id": "RP1", "created": "2026-12-01T00:00:00.000000Z", "rct_ids": {}, "type": "RCT"}]
    assert calls == [VM1]
    assert vm["integration_services"] == [{"name": "VSS", "id": "5CED1297-4598-4915-A5FC-AD21BB4D02A4", "enabled": True,
                                           "operational_status": "OK"}]


def test_names_and_ids_filter_case_insensitively_and_unknown_ones_are_not_found(monkeypatch):
    bridge = FakeBridge("2022")
    no_reference_points(monkeypatch)
    add_vm(bridge, VM1, "web01")
    add_vm(bridge, VM2, "db01")
    assert [vm["name"] for vm in run_operation(bridge, "get_vms", {})] == ["db01", "web01"]
    assert [vm["id"] for vm in run_operation(bridge, "get_vms", {"names": ["WEB01"]})] == [VM1]
    assert [vm["name"] for vm in run_operation(bridge, "get_vms", {"ids": ["{%s}" % VM2.upper()]})] == ["db01"]
    with pytest.raises(HostOperationError) as caught:
        run_operation(bridge, "get_vms", {"names": ["nope"]})
    assert caught.value.category == "not_found" and "'nope'" in caught.value.message and "db01" in caught.value.hint


def test_point5_empty_virtual_disk_id_on_2012_gets_a_stable_substitute():
    bridge = FakeBridge("2012")
    base = "D:\\VMs\\web01\\web01.vhdx"
    vhdx(bridge, base, disk_id="")
    add_vm(bridge, VM1, "web01", disks=[(base, "SCSI", 0, 0)], subtype=None, version="4.0")
    [before] = inventory.get_vms(bridge)[0]["disks"]
    assert before["disk_id"] and before["disk_id"] == wmi.substitute_disk_id(base)
    # After a checkpoint the VM writes to a child; the id follows the base file, so it does not change.
    child = "D:\\VMs\\web01\\web01_4F2E.avhdx"
    vhdx(bridge, child, parent=base, disk_id="")
    sasd = list(bridge.instances[(NAMESPACE_V2, "Msvm_StorageAllocationSettingData")])[0]
    sasd["HostResource"] = [child]
    [vm] = inventory.get_vms(bridge)
    after = vm["disks"][0]
    assert after["path"] == child and after["parent_chain"] == [base] and after["type"] == "differencing"
    assert after["disk_id"] == before["disk_id"]
    assert wmi.substitute_disk_id("d:\\vms\\WEB01\\web01.VHDX") == before["disk_id"]    # Windows paths ignore case
    # 2012: generation 1 only, and VirtualSystemSubType (2012 R2+) is not even read.
    assert vm["generation"] == 1


def test_point13_reference_points_are_not_asked_for_before_2016(monkeypatch):
    for era, expected in (("2012", False), ("2012r2", False), ("2016", True)):
        bridge = FakeBridge(era)
        bridge.refused_classes.add("Msvm_ReferencePointOfVirtualSystem")
        calls = no_reference_points(monkeypatch)
        add_vm(bridge, VM1, "web01")
        [vm] = inventory.get_vms(bridge)
        assert vm["reference_points"] == [] and "problem" not in vm
        assert (calls == [VM1]) is expected, era
        assert not bridge.queried("Msvm_ReferencePointOfVirtualSystem")


def test_point14_one_broken_vm_or_disk_does_not_break_the_inventory(monkeypatch):
    bridge = FakeBridge("2019")
    vhdx(bridge, "D:\\VMs\\ok\\ok.vhdx")
    # web01: a pass-through disk and a missing VHD beside a good one; empty configuration Version.
    web_disks = [("D:\\VMs\\ok\\ok.vhdx", "SCSI", 0, 0), ("physical:1", "SCSI", 0, 1), ("D:\\VMs\\web01\\gone.vhdx", "SCSI", 0, 2)]
    add_vm(bridge, VM1, "web01", version="", disks=web_disks)
    add_vm(bridge, VM2, "db01", disks=[("D:\\VMs\\ok\\ok.vhdx", "SCSI", 0, 0)])
    # db01's reference points cannot be read (another product's point the reader chokes on).
    no_reference_points(monkeypatch, fail={VM2})
    vms = dict((vm["name"], vm) for vm in run_operation(bridge, "get_vms", {}))
    assert set(vms) == {"web01", "db01"}
    web = vms["web01"]
    assert web["configuration_version"] is None
    good, passthrough, missing = web["disks"]
    assert "problem" not in good and good["format"] == "vhdx"
    assert passthrough["path"] is None and "pass-through" in passthrough["problem"] and passthrough["controller_location"] == 1
    assert missing["path"] == "D:\\VMs\\web01\\gone.vhdx" and "cannot read" in missing["problem"] and missing["disk_id"]
    assert "pass-through" in web["problem"] and "gone.vhdx" in web["problem"]
    assert vms["db01"]["reference_points"] == [] and "reference points could not be read" in vms["db01"]["problem"]
    assert vms["db01"]["disks"][0]["path"] == "D:\\VMs\\ok\\ok.vhdx"
    # The empty version does not abort the checks either.
    checks = host_checks.vm_checks({"os_build": 17763}, web)
    assert [c for c in checks if c["check"] == "configuration_version"][0]["ok"] is False


def test_point14_a_vm_whose_settings_cannot_be_read_is_listed_with_a_problem(monkeypatch):
    bridge = FakeBridge("2022")
    no_reference_points(monkeypatch)
    add_vm(bridge, VM1, "web01")
    broken = bridge.add(NAMESPACE_V2, "Msvm_ComputerSystem", VM2.upper(), Name=VM2.upper(), ElementName="broken", EnabledState=3)
    assert broken
    vms = inventory.get_vms(bridge)
    assert [vm["name"] for vm in vms] == ["broken", "web01"]
    assert "no current settings" in vms[0]["problem"] and vms[0]["state"] == "Off" and vms[0]["disks"] == []
    assert "problem" not in vms[1]


def test_point6_backup_integration_found_by_guid_on_a_german_host(monkeypatch):
    bridge = FakeBridge("2022")
    no_reference_points(monkeypatch)
    # German ElementName; DeviceID in the documented "Microsoft:<VM GUID>\<GUID>" form, lowercase.
    add_vm(bridge, VM1, "web01", vss_name="Sicherung (Volumeschattenkopie)",
           vss_device="Microsoft:%s\\5ced1297-4598-4915-a5fc-ad21bb4d02a4" % VM1.upper(), vss_status=12)
    # Another VM's component with a foreign GUID is not taken for the backup one.
    add_vm(bridge, VM2, "db01", vss_device="Microsoft:84EAAE65-2F2E-45F5-9BB5-0E857DC8EB47")
    vms = dict((vm["name"], vm) for vm in inventory.get_vms(bridge))
    [service] = vms["web01"]["integration_services"]
    assert service["name"] == "VSS" and service["operational_status"] == "NoContact" and service["enabled"] is True
    assert host_checks.backup_integration(vms["web01"]) == service
    # db01 has only the setting data left: still listed, from its configured state.
    assert [s["name"] for s in vms["db01"]["integration_services"]] == ["VSS"]


@pytest.mark.parametrize("status, expected", [(2, "OK"), (3, "Degraded"), (7, "Error"), (12, "NoContact"), (13, "LostCommunication")])
def test_operational_status_numbers(monkeypatch, status, expected):
    bridge = FakeBridge("2016")
    no_reference_points(monkeypatch)
    add_vm(bridge, VM1, "web01", vss_status=status)
    assert inventory.get_vms(bridge)[0]["integration_services"][0]["operational_status"] == expected
    bridge = FakeBridge("2016")
    add_vm(bridge, VM1, "web01", vss_status=status, vss_state=3)
    assert inventory.get_vms(bridge)[0]["integration_services"][0] == {
        "name": "VSS", "id": "5CED1297-4598-4915-A5FC-AD21BB4D02A4", "enabled": False, "operational_status": "Disabled"}


def test_point7_enable_integration_service_uses_modify_resource_settings_and_says_OK(monkeypatch):
    bridge = FakeBridge("2019")
    add_vm(bridge, VM1, "web01", vss_state=3, vss_name="Sicherung (Volumeschattenkopie)")
    seen = []

    def modify(path, arguments):
        seen.append((path, arguments))
        for item in bridge.instances[(NAMESPACE_V2, "Msvm_VssComponent")] + bridge.instances[(NAMESPACE_V2, "Msvm_VssComponentSettingData")]:
            item["EnabledState"] = 2
        return {"ReturnValue": 4096, "out": {}, "job": {"JobState": 7, "ErrorCode": 0}, "affected": []}
    bridge.methods["ModifyResourceSettings"] = modify
    result = run_operation(bridge, "enable_integration_service", {"vm_id": VM1.upper(), "name": "VSS"})
    assert result == {"vm_id": VM1, "name": "VSS", "enabled": True, "operational_status": "OK", "changed": True}
    [(path, arguments)] = seen
    assert path == bridge.vsms["__PATH"]
    [embedded] = arguments["ResourceSettings"]
    assert isinstance(embedded, Embedded) and embedded.class_name == "Msvm_VssComponentSettingData"
    assert embedded.properties == {"EnabledState": 2} and embedded.based_on.endswith('Key="%s-vss-sd"' % VM1)
    # Enabled already: nothing is called, not changed; the check accepts the result (was 'Ok' before).
    again = run_operation(bridge, "enable_integration_service", {"vm_id": VM1, "name": "vss"})
    assert again["changed"] is False and len(seen) == 1
    service = {"name": "VSS", "enabled": True, "operational_status": again["operational_status"]}
    vm = {"name": "web01", "state": "Running", "integration_services": [service]}
    assert host_checks.integration_check(vm)["ok"]


def test_enable_failure_and_unknown_names():
    bridge = FakeBridge("2016")
    add_vm(bridge, VM1, "web01", vss_state=3)
    bridge.methods["ModifyResourceSettings"] = lambda path, arguments: {"ReturnValue": 32774, "out": {}, "job": None, "affected": []}
    with pytest.raises(HostOperationError) as caught:
        inventory.enable_integration_service(bridge, VM1, "VSS")
    assert caught.value.category == "busy" and "32774" in caught.value.message
    with pytest.raises(HostOperationError) as caught:
        inventory.enable_integration_service(bridge, VM1, "Heartbeat")
    assert caught.value.category == "not_found" and "VSS" in caught.value.hint
    with pytest.raises(HostOperationError) as caught:
        inventory.enable_integration_service(bridge, VM2, "VSS")
    assert caught.value.category == "not_found"


def test_v1_2008r2_disks_checkpoints_and_enable(monkeypatch):
    bridge = FakeBridge("2008r2")
    calls = no_reference_points(monkeypatch)
    base, child = "C:\\ClusterStorage\\Volume1\\web01\\web01.vhd", "C:\\ClusterStorage\\Volume1\\web01\\web01_1.avhd"
    bridge.files[base] = {"Type": 3, "MaxInternalSize": 20 * GIB, "ParentPath": None}
    bridge.files[child] = {"Type": 4, "MaxInternalSize": 20 * GIB, "ParentPath": base}
    add_vm(bridge, VM1, "web01", disks=[(child, "IDE", 0, 0)], ide=True, scsi=0, version="",
           snapshots=[("Microsoft:SNAP1", "before patch", None, "20261201120000.000000+000")], state=32769)
    bridge.namespaces.add("root\\MSCluster")
    bridge.add("root\\MSCluster", "MSCluster_Cluster", "c", Name="HVCLUSTER")
    bridge.add("root\\MSCluster", "MSCluster_ClusterSharedVolume", "csv1", Name="Cluster Disk 1",
               VolumeName="C:\\ClusterStorage\\Volume1")
    [vm] = inventory.get_vms(bridge)
    assert calls == [] and not [c for c in bridge.calls if c[1] == NAMESPACE_V2]
    assert vm["state"] == "Saved" and vm["generation"] == 1 and vm["configuration_version"] is None
    assert vm["csv_path"] == "C:\\ClusterStorage\\Volume1" and vm["clustered"] is True
    [disk] = vm["disks"]
    assert disk["format"] == "vhd" and disk["type"] == "differencing" and disk["parent_chain"] == [base]
    assert disk["controller_type"] == "IDE" and disk["controller_number"] == 0 and disk["controller_location"] == 0
    assert disk["logical_sector_size"] == 512 and disk["virtual_size"] == 20 * GIB
    assert disk["disk_id"] == wmi.substitute_disk_id(base)
    assert vm["checkpoints"] == [{"id": "Microsoft:SNAP1", "name": "before patch", "type": "Standard",
                                  "created": "2026-12-01T12:00:00.000000Z", "ours": False}]
    assert vm["integration_services"][0]["name"] == "VSS"
    host = inventory.get_host_info(bridge)
    assert host["cluster"] == {"name": "HVCLUSTER", "functional_level": 6}
    assert host["csvs"] == [{"name": "Cluster Disk 1", "path": "C:\\ClusterStorage\\Volume1"}]
    # v1 enable: ModifyVirtualSystemResources(ComputerSystem, ResourceSettingData[]).
    for item in bridge.instances[(NAMESPACE_V1, "Msvm_VssComponentSettingData")]:
        item["EnabledState"] = 3
    seen = []
    bridge.methods["ModifyVirtualSystemResources"] = lambda path, arguments: seen.append(arguments) or {
        "ReturnValue": 0, "out": {}, "job": None, "affected": []}
    result = inventory.enable_integration_service(bridge, VM1, "VSS")
    assert result["changed"] and result["operational_status"] == "OK"
    assert isinstance(seen[0]["ComputerSystem"], Ref) and seen[0]["ResourceSettingData"][0].properties == {"EnabledState": 2}


def test_v1_without_the_vss_component_class_lists_no_integration_service(monkeypatch):
    bridge = FakeBridge("2008r2")
    bridge.refused_classes.add("Msvm_VssComponent")
    add_vm(bridge, VM1, "web01", vss_device=False)
    assert inventory.get_vms(bridge)[0]["integration_services"] == []


GERMAN_WRITERS = """vssadmin 1.1 - Verwaltungsbefehlszeilenprogramm des Volumeschattenkopie-Dienstes
(C) Copyright 2001-2013 Microsoft Corp.

Verfassername: "Task Scheduler Writer"
   Verfasserkennung: {d61d61c8-d73a-4eee-8cdd-f6f9786b7124}
   Verfasserinstanzkennung: {1bddd48e-5052-49db-9b07-b96f96727e6b}
   Status: [1] Stabil
   Letzter Fehler: Kein Fehler

Verfassername: "Microsoft Hyper-V VSS Writer"
   Verfasserkennung: {66841cd4-6ded-4f4b-8f17-fd23f8ddc3de}
   Verfasserinstanzkennung: {4e3b1a2c-0000-4000-8000-000000000001}
   Status: [%d] %s
   Letzter Fehler: %s
"""


def test_host_info_on_a_german_2022_host_without_cluster():
    bridge = FakeBridge("2022")
    bridge.add("root\\cimv2", "Win32_ShadowProvider", "p1", Name="Microsoft Software Shadow Copy provider 1.0",
               ID="{b5946137-7b9f-4925-af80-51abd60b20d5}", Type=1)
    bridge.add("root\\cimv2", "Win32_ShadowProvider", "p2", Name="Array provider", ID="{781c006a}", Type=3)
    bridge.writers = {"exit_code": 0, "output": GERMAN_WRITERS % (1, "Stabil", "Kein Fehler")}
    # With VSS stopped the writer is not read: vssadmin would start the demand-start service, and reading facts
    # must change nothing on the host.
    stopped = run_operation(bridge, "get_host_info", {})["hyperv_vss_writer"]
    assert stopped["state"] is None and "Stopped" in stopped["not_read"] and stopped["startable"] is True
    assert ("vss_writers",) not in bridge.calls and bridge.services["vss"]["status"] == "Stopped"
    assert not host_checks.vss_writer_check(stopped)["blocking"]
    bridge.services["vss"]["status"] = "Running"
    info = run_operation(bridge, "get_host_info", {})
    assert info["computer_name"] == "HV01" and info["os_version"] == "10.0.20348" and info["os_build"] == 20348
    assert info["os_name"] == "Microsoft Windows Server 2022 Datacenter"
    assert info["cluster"] is None and info["csvs"] == []
    assert [p["type"] for p in info["vss_providers"]] == ["software", "hardware"]
    writer = info["hyperv_vss_writer"]
    assert writer["state"] == "[1] Stabil" and writer["state_number"] == 1 and writer["last_error"] == "Kein Fehler"
    assert writer["id"] == "{66841cd4-6ded-4f4b-8f17-fd23f8ddc3de}"
    # Point 6: the writer is judged by its number, not by English words (fails on the old check).
    assert host_checks.vss_writer_check(writer)["ok"]
    bridge.writers = {"exit_code": 0, "output": GERMAN_WRITERS % (8, "Fehlgeschlagen", "Wiederholbarer Fehler")}
    wmi.forget(bridge)
    failed = inventory.get_host_info(bridge)["hyperv_vss_writer"]
    assert failed["state_number"] == 8 and not host_checks.vss_writer_check(failed)["ok"]
    bridge.writers = {"exit_code": 2, "output": "Fehler: ..."}
    assert inventory.get_host_info(bridge)["hyperv_vss_writer"]["state"] is None


def test_cluster_levels_2012r2_inferred_and_2016_read():
    bridge = FakeBridge("2012r2")
    bridge.namespaces.add("root\\MSCluster")
    bridge.add("root\\MSCluster", "MSCluster_Cluster", "c", Name="C1", ClusterFunctionalLevel=8)
    assert inventory.get_host_info(bridge)["cluster"] == {"name": "C1", "functional_level": 8}
    bridge = FakeBridge("2016")
    bridge.namespaces.add("root\\MSCluster")
    bridge.add("root\\MSCluster", "MSCluster_Cluster", "c", Name="C1", ClusterFunctionalLevel=8)
    assert inventory.get_host_info(bridge)["cluster"] == {"name": "C1", "functional_level": 8}


def test_services():
    bridge = FakeBridge("2016")
    assert run_operation(bridge, "get_service", {"name": "vss"})["status"] == "Stopped"
    started = run_operation(bridge, "start_service", {"name": "vss"})
    assert started == {"name": "VSS", "display_name": "Volume Shadow Copy", "status": "Running", "previous_status": "Stopped",
                       "changed": True}
    assert run_operation(bridge, "start_service", {"name": "vss"})["changed"] is False
    with pytest.raises(HostOperationError) as caught:
        run_operation(bridge, "get_service", {"name": "nosuch"})
    assert caught.value.category == "not_found"


def test_run_operation_checks_params_and_isolates_missing_modules(monkeypatch):
    from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import host_operations
    bridge = FakeBridge("2016")
    with pytest.raises(HostOperationError) as caught:
        run_operation(bridge, "get_vms", {"colour": "blue"})
    assert caught.value.category == "failed" and "colour" in caught.value.message
    with pytest.raises(HostOperationError) as caught:
        run_operation(bridge, "no_such_operation", {})
    assert caught.value.category == "failed"
    monkeypatch.setitem(host_operations.FUNCTIONS, "get_disk_changes", ("no_such_module", "get_disk_changes"))
    with pytest.raises(HostOperationError) as caught:
        run_operation(bridge, "get_disk_changes", {"path": "x", "limit_id": "y", "byte_offset": 0, "byte_length": 1})
    assert caught.value.category == "unsupported"
    assert run_operation(bridge, "get_service", {"name": "vss"})["name"] == "VSS"
    assert set(host_operations.FUNCTIONS) == set(host_operations.OPERATIONS)


def test_unreadable_embedded_instance_fails_that_disk_only(monkeypatch):
    bridge = FakeBridge("2016")
    no_reference_points(monkeypatch)
    vhdx(bridge, "D:\\VMs\\web01\\a.vhdx")
    add_vm(bridge, VM1, "web01", disks=[("D:\\VMs\\web01\\a.vhdx", "SCSI", 0, 0)])
    bridge.methods["GetVirtualHardDiskSettingData"] = lambda path, arguments: {
        "ReturnValue": 0, "out": {"SettingData": "<INSTANCE"}, "job": None, "affected": []}
    [vm] = inventory.get_vms(bridge)
    assert "not a readable embedded instance" in vm["disks"][0]["problem"] and vm["name"] == "web01"


# --- against the lab's emulated WMI (LabBridge), compared with today's LabTransport -------------------

def _lab(tmp_path, era, locale="en-US", **vm):
    lab_admin = pytest.importorskip("ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_admin")
    lab_bridge = pytest.importorskip("ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge")
    from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
    layout = LabLayout(str(tmp_path), "hv-" + era)
    lab_admin.ensure_host(layout, era=era, services={"vss": "Running"}, locale=locale)
    spec = dict({"name": "vm1", "disks": [{"size": 16 * 1024 * 1024}, {"size": 8 * 1024 * 1024}]}, **vm)
    lab_admin.ensure_vm(layout, spec)
    return lab_bridge.LabBridge(str(tmp_path), "hv-" + era)


@pytest.mark.parametrize("era, locale", [("2008r2", "en-US"), ("2012", "en-US"), ("2016", "en-US"), ("2022", "en-US"),
                                         ("2022", "de-DE"), ("2012r2", "de-DE")])
def test_lab_shapes_match_todays_lab_transport(tmp_path, era, locale):
    bridge = _lab(tmp_path, era, locale)
    from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
    old = LabTransport(str(tmp_path), bridge.host).run("get_vms", {})
    [vm] = run_operation(bridge, "get_vms", {})
    assert set(vm) == set(old[0]) and "problem" not in vm
    assert [set(d) for d in vm["disks"]] == [set(d) for d in old[0]["disks"]]
    for key in ("id", "name", "state", "scsi_controllers", "clustered", "csv_path", "checkpoints", "reference_points"):
        assert vm[key] == old[0][key], key
    for new_disk, old_disk in zip(vm["disks"], old[0]["disks"]):
        for key in ("format", "virtual_size", "logical_sector_size", "controller_type", "controller_number", "controller_location"):
            assert new_disk[key] == old_disk[key], key
        assert new_disk["disk_id"] and new_disk["path"] == new_disk["windows_path"] and new_disk["path"][1:3] == ":\\"
    # Point 5: the ids are the VirtualDiskId from 2012 R2 on, a stable substitute before.
    if era in ("2008r2", "2012"):
        assert [d["disk_id"] for d in vm["disks"]] == [wmi.substitute_disk_id(d["parent_chain"][-1] if d["parent_chain"] else d["path"])
                                                       for d in vm["disks"]]
    else:
        assert [d["disk_id"] for d in vm["disks"]] == [d["disk_id"] for d in old[0]["disks"]]
    info = run_operation(bridge, "get_host_info", {})
    old_info = LabTransport(str(tmp_path), bridge.host).run("get_host_info", {})
    for key in ("os_version", "os_build", "cluster", "csvs", "vss_providers"):
        assert info[key] == old_info[key], key
    assert host_checks.vss_writer_check(info["hyperv_vss_writer"])["ok"]
    if era != "2008r2":      # the lab has no v1 Msvm_VssComponent (see the report): 2012+ only
        [service] = vm["integration_services"]
        assert service["name"] == "VSS" and service["operational_status"] == "OK"
        assert host_checks.integration_check(vm)["ok"]


def test_lab_de_de_disabled_backup_integration_is_found_and_enabled(tmp_path):
    bridge = _lab(tmp_path, "2019", "de-DE", integration_services=[{"name": "VSS", "enabled": False}])
    [vm] = run_operation(bridge, "get_vms", {})
    service = host_checks.backup_integration(vm)
    assert service["enabled"] is False and service["operational_status"] == "Disabled"
    result = run_operation(bridge, "enable_integration_service", {"vm_id": vm["id"], "name": service["name"]})
    assert result == {"vm_id": vm["id"], "name": "VSS", "enabled": True, "operational_status": "OK", "changed": True}
    [vm] = run_operation(bridge, "get_vms", {})
    assert host_checks.integration_check(vm)["ok"]


@pytest.mark.parametrize("era", ["2012", "2012r2"])
def test_lab_point13_no_reference_point_class_before_2016(tmp_path, era):
    bridge = _lab(tmp_path, era)
    asked = []
    original = bridge.associators

    def associators(namespace, path, assoc_class, result_class=None):
        asked.append(assoc_class)
        return original(namespace, path, assoc_class, result_class)
    bridge.associators = associators
    [vm] = run_operation(bridge, "get_vms", {})
    assert vm["reference_points"] == [] and "problem" not in vm
    assert "Msvm_ReferencePointOfVirtualSystem" not in asked and "Msvm_SnapshotOfVirtualSystem" in asked
