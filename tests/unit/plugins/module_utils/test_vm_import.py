"""import_vm (hyperv/vm_import.py): captured files -> host folder -> planned VM -> disks by slot -> realized VM."""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import vm_configuration as vmc
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import vm_import

from fake_wmi_bridge import FakeWmiBridge

DISKS = [("SCSI", 0, 0, "D:\\VMs\\web01\\system.vhdx"), ("SCSI", 0, 1, "D:\\VMs\\web01\\data.vhdx"),
         ("IDE", 1, 0, "D:\\VMs\\web01\\legacy.vhdx")]
TARGET = "E:\\Restore\\web01"


def _captured(era="2022", extension=".vmcx", nics=(), switches=()):
    source = FakeWmiBridge(era)
    for name in switches:
        source.add_switch(name)
    vm, _settings = source.add_vm("web01", DISKS, generation=2 if extension == ".vmcx" else 1,
                                  version="10.0" if extension == ".vmcx" else "5.0", extension=extension, nics=nics)
    if extension == ".vmcx":
        snap = source.add_recovery_snapshot(vm, "hyperv.backup:run1", DISKS, nics=nics)
        return vmc.get_vm_configuration(source, vm["Name"], recovery_point_id=snap["InstanceID"]), vm["Name"]
    return vmc.get_vm_configuration(source, vm["Name"]), vm["Name"]


def _restored(target_bridge):
    """The restored disks on the target host, each named after its slot so a swap would show."""
    out = []
    for kind, number, location, _path in DISKS:
        path = "%s\\%s%d-%d.vhdx" % (TARGET, kind.lower(), number, location)
        target_bridge.put_file(path, b"disk")
        out.append({"path": path, "controller_type": kind, "controller_number": number, "controller_location": location})
    return out


def _attached(bridge, vm_id):
    vm = vmc.find_vm(bridge, bridge.ns, vm_id)
    vssd = bridge.associators(bridge.ns, vm["__PATH"], "Msvm_SettingsDefineState")[0]
    return sorted((d["controller_type"], d["controller_number"], d["controller_location"], d["path"])
                  for d in vmc.disk_layout(bridge, bridge.ns, vssd))


@pytest.mark.parametrize("era,extension", [("2016", ".vmcx"), ("2022", ".vmcx"), ("2012r2", ".xml")])
def test_register_attaches_each_disk_at_its_slot_whatever_the_enumeration_order(era, extension):
    configuration, _guid = _captured(era, extension)
    target = FakeWmiBridge(era)
    result = vm_import.import_vm(target, configuration, _restored(target), new_name="web01-restored", generate_new_id=True)
    assert result["state"] == "Off" and result["name"] == "web01-restored"
    assert result["configuration_path"].startswith(TARGET + "\\Virtual Machines\\")
    assert result["configuration_path"].endswith(extension)
    assert _attached(target, result["vm_id"]) == sorted(
        (k, n, loc, "%s\\%s%d-%d.vhdx" % (TARGET, k.lower(), n, loc)) for k, n, loc, _p in DISKS)
    # the planned VM enumerated its disks in another order than the capture: attaching by order would swap them
    modified = [c[2]["ResourceSettings"][0] for c in target.calls if c[:2] == ("invoke", "ModifyResourceSettings")]
    assert len(modified) == 3 and all(m.class_name == "Msvm_StorageAllocationSettingData" for m in modified)
    methods = [c[1] for c in target.calls if c[0] == "invoke"]
    assert methods.index("ImportSystemDefinition") < methods.index("ValidatePlannedSystem") < methods.index("RealizePlannedSystem")


def test_plain_disk_paths_pair_with_the_captured_slots():
    configuration, _guid = _captured()
    target = FakeWmiBridge("2022")
    by_slot = dict(((d["controller_type"], d["controller_number"], d["controller_location"]), d["path"]) for d in _restored(target))
    plain = [by_slot[(d["controller_type"], d["controller_number"], d["controller_location"])]
             for d in configuration["document"]["disks"]]
    result = vm_import.import_vm(target, configuration, plain, generate_new_id=True)
    assert _attached(target, result["vm_id"]) == sorted((k, n, loc, p) for (k, n, loc), p in by_slot.items())


def test_a_missing_slot_fails_and_leaves_no_planned_vm_nor_files():
    configuration, _guid = _captured()
    target = FakeWmiBridge("2022")
    disks = _restored(target)[:2]
    with pytest.raises(HostOperationError, match="no restored disk for IDE 1:0"):
        vm_import.import_vm(target, configuration, disks, generate_new_id=True)
    assert not target.query(target.ns, "Msvm_PlannedComputerSystem")
    assert not [p for p in target.files if "virtual machines" in p]


def test_validation_failure_destroys_the_planned_vm():
    configuration, _guid = _captured(nics=["External"], switches=["External"])
    target = FakeWmiBridge("2022")          # has no switch named External
    with pytest.raises(HostOperationError) as err:
        vm_import.import_vm(target, configuration, _restored(target), generate_new_id=True)
    assert "Ethernet switch External" in str(err.value) and "switch_map" in str(err.value)
    assert [c for c in target.calls if c[:2] == ("invoke", "DestroySystem")]
    assert not target.query(target.ns, "Msvm_PlannedComputerSystem")


def test_switch_map_connects_adapters_to_the_target_switch():
    configuration, _guid = _captured(nics=["External"], switches=["External"])
    target = FakeWmiBridge("2022")
    lan = target.add_switch("LAN")
    result = vm_import.import_vm(target, configuration, _restored(target), generate_new_id=True,
                                 switch_map={"External": "LAN"})
    assert result["network_adapters"] == [{"source_switch": "External", "target_switch": "LAN", "connected": True}]
    ports = target.query(target.ns, "Msvm_EthernetPortAllocationSettingData")
    assert [p["HostResource"] for p in ports] == [[lan["__PATH"]]]
    with pytest.raises(HostOperationError, match="no virtual switch named Nope"):
        vm_import.import_vm(FakeWmiBridge("2022"), configuration, _restored(FakeWmiBridge("2022")), generate_new_id=True,
                            switch_map={"*": "Nope"})


def test_same_id_import_while_the_vm_exists_is_busy():
    configuration, guid = _captured()
    target = FakeWmiBridge("2022")
    target.add_vm("web01", DISKS, guid=guid, root="D:\\Other")
    vmcx = [f["name"] for f in configuration["files"] if f["name"].endswith(".vmcx")][0]
    configuration["files"] = [dict(f, name=guid + ".vmcx") if f["name"] == vmcx else f for f in configuration["files"]]
    configuration["document"]["configuration_file"] = guid + ".vmcx"
    with pytest.raises(HostOperationError) as err:
        vm_import.import_vm(target, configuration, _restored(target), generate_new_id=False)
    assert err.value.category == "busy"


def test_2008r2_writes_the_configuration_and_fails_with_manual_steps():
    source = FakeWmiBridge("2008r2")
    vm, _settings = source.add_vm("legacy", DISKS[2:], generation=1)
    configuration = vmc.get_vm_configuration(source, vm["Name"])
    target = FakeWmiBridge("2008r2")
    disks = [{"path": TARGET + "\\legacy.vhd", "controller_type": "IDE", "controller_number": 1, "controller_location": 0}]
    with pytest.raises(HostOperationError) as err:
        vm_import.import_vm(target, configuration, disks)
    assert err.value.category == "unsupported"
    assert "IDE 1:0 -> E:\\Restore\\web01\\legacy.vhd" in str(err.value)
    assert target.read_file("%s\\Virtual Machines\\%s.xml" % (TARGET, vm["Name"]), 1000) is not None
    assert not [c for c in target.calls if c[0] == "invoke"]


def test_a_configuration_without_content_is_refused_clearly():
    target = FakeWmiBridge("2022")
    with pytest.raises(HostOperationError, match="holds no file content"):
        vm_import.import_vm(target, {"files": ["D:\\x.vmcx"], "document": {}}, _restored(target))


def test_existing_files_in_the_target_folder_are_not_overwritten():
    configuration, _guid = _captured()
    target = FakeWmiBridge("2022")
    name = [f["name"] for f in configuration["files"] if f["name"].endswith(".vmcx")][0]
    target.put_file(TARGET + "\\Virtual Machines\\" + name, b"someone else's")
    with pytest.raises(HostOperationError, match="another host_destination"):
        vm_import.import_vm(target, configuration, _restored(target), generate_new_id=True)
    assert target.read_file(TARGET + "\\Virtual Machines\\" + name, 100) == b"someone else's"
