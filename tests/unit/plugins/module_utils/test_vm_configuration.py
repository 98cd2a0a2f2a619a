"""get_vm_configuration (hyperv/vm_configuration.py): the configuration files' CONTENT as captured with a point."""
import base64
import json

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import vm_configuration as vmc

from fake_wmi_bridge import FakeWmiBridge, config_bytes

DISKS = [("SCSI", 0, 0, "D:\\VMs\\web01\\system.vhdx"), ("SCSI", 0, 1, "D:\\VMs\\web01\\data.vhdx"),
         ("IDE", 1, 0, "D:\\VMs\\web01\\legacy.vhdx")]


def _names(result):
    return sorted(f["name"] for f in result["files"])


@pytest.mark.parametrize("era", ["2016", "2022"])
def test_rct_point_configuration_is_captured_with_content_and_siblings(era):
    bridge = FakeWmiBridge(era)
    vm, _vssd = bridge.add_vm("web01", DISKS)
    snap = bridge.add_recovery_snapshot(vm, "hyperv.backup:run1", DISKS)
    result = vmc.get_vm_configuration(bridge, vm["Name"].lower(), recovery_point_id=snap["InstanceID"])
    stem = snap["ConfigurationFile"].split("\\")[-1][:-5]
    assert _names(result) == sorted([stem + ".vmcx", stem + ".vmrs"])        # not the other snapshot's file
    main = [f for f in result["files"] if f["name"].endswith(".vmcx")][0]
    assert base64.b64decode(main["content"]) == config_bytes("web01", DISKS, 2, "10.0")
    assert main["length"] == len(base64.b64decode(main["content"]))
    assert main["path"] == "D:\\VMs\\web01\\" + snap["ConfigurationFile"]
    # the VM's name (Msvm_ComputerSystem.ElementName), not the checkpoint's (the snapshot VSSD's ElementName)
    assert result["vm_id"] == vm["Name"].lower() and result["name"] == "web01" == result["document"]["name"]
    assert result["generation"] == 2 and result["configuration_version"] == "10.0"
    document = result["document"]
    assert document["captured_from"] == "recovery_checkpoint" and document["format"] == "vmcx"
    slots = sorted((d["controller_type"], d["controller_number"], d["controller_location"], d["path"]) for d in document["disks"])
    assert slots == sorted(DISKS)


def test_configuration_is_restorable_after_the_point_became_a_reference_point():
    bridge = FakeWmiBridge("2022")
    vm, _vssd = bridge.add_vm("web01", DISKS)
    snap = bridge.add_recovery_snapshot(vm, "hyperv.backup:run1", DISKS)
    captured = vmc.get_vm_configuration(bridge, vm["Name"], recovery_point_id=snap["InstanceID"])
    bridge.convert_to_reference_point(snap)
    # the files are gone on the host, the captured content is not
    assert bridge.read_file("D:\\VMs\\web01\\" + snap["ConfigurationFile"], 100) is None
    with pytest.raises(HostOperationError) as err:
        vmc.get_vm_configuration(bridge, vm["Name"], recovery_point_id=snap["InstanceID"])
    assert err.value.category == "not_found"
    decoded = dict(vmc.decode_files(json.loads(json.dumps(captured))))
    assert decoded[snap["ConfigurationFile"].split("\\")[-1]] == config_bytes("web01", DISKS, 2, "10.0")


def test_2012r2_xml_configuration_is_captured():
    bridge = FakeWmiBridge("2012r2")
    vm, _vssd = bridge.add_vm("old", DISKS[:1], generation=1, version="5.0", extension=".xml")
    bridge.put_file("D:\\VMs\\web01\\Virtual Machines\\%s\\%s.bin" % (vm["Name"], vm["Name"]), b"memory")
    result = vmc.get_vm_configuration(bridge, vm["Name"])
    assert _names(result) == [vm["Name"] + ".xml"]          # the saved-state folder is not taken
    assert result["document"]["format"] == "xml" and result["generation"] == 1


def test_vss_point_reads_the_files_from_the_exposed_shadow_copy(monkeypatch):
    bridge = FakeWmiBridge("2022")
    vm, vssd = bridge.add_vm("web01", DISKS)
    live = "D:\\VMs\\web01\\" + vssd["ConfigurationFile"]
    mount = "C:\\ProgramData\\hyperv.backup\\vss\\w1\\m0"
    bridge.put_file(mount + "\\VMs\\web01\\" + vssd["ConfigurationFile"], b"as at the shadow copy")
    bridge.put_file(live, b"changed since")
    seen = []

    def describe(bridge_, point_id):
        seen.append(point_id)
        return {"work_id": "w1", "vm_id": vm["Name"].lower(), "mounts": [{"volume": "D:\\", "mount": mount}]}

    monkeypatch.setattr(vmc, "_describe_vss_point", describe)
    point = "vss:w1:set"
    result = vmc.get_vm_configuration(bridge, vm["Name"], recovery_point_id=point)
    assert seen == [point]
    main = [f for f in result["files"] if f["name"].endswith(".vmcx")][0]
    assert base64.b64decode(main["content"]) == b"as at the shadow copy"
    assert main["path"] == live                               # the host path, not the shadow path
    assert result["document"]["captured_from"] == "vss"
    # never looked for among checkpoints (issue 11, point 1)
    assert not [c for c in bridge.calls if c[:2] == ("associators", "Msvm_SnapshotOfVirtualSystem")]


def test_2008r2_configuration_from_the_global_settings(monkeypatch):
    bridge = FakeWmiBridge("2008r2")
    vm, _settings = bridge.add_vm("legacy", DISKS[2:], generation=1, root="E:\\Hyper-V\\legacy")
    mount = "C:\\ProgramData\\hyperv.backup\\vss\\w2\\m0"
    bridge.put_file(mount + "\\Hyper-V\\legacy\\Virtual Machines\\%s.xml" % vm["Name"], b"<configuration/>")
    monkeypatch.setattr(vmc, "_describe_vss_point", lambda b, p: {"mounts": [{"volume": "E:\\", "mount": mount}]})
    result = vmc.get_vm_configuration(bridge, vm["Name"], recovery_point_id="vss:w2:set")
    assert _names(result) == [vm["Name"] + ".xml"]
    assert base64.b64decode(result["files"][0]["content"]) == b"<configuration/>"
    assert result["document"]["namespace"] == "root\\virtualization" and result["name"] == "legacy"


def test_unknown_vm_and_unknown_point_are_not_found():
    bridge = FakeWmiBridge("2022")
    vm, _settings = bridge.add_vm("web01", DISKS)
    for call in (lambda: vmc.get_vm_configuration(bridge, "00000000-0000-0000-0000-000000000000"),
                 lambda: vmc.get_vm_configuration(bridge, vm["Name"], recovery_point_id="Microsoft:nope")):
        with pytest.raises(HostOperationError) as err:
            call()
        assert err.value.category == "not_found"


def test_oversized_siblings_are_skipped_not_read(monkeypatch):
    bridge = FakeWmiBridge("2022")
    vm, vssd = bridge.add_vm("web01", DISKS)
    monkeypatch.setattr(vmc, "MAX_FILE_BYTES", 5)
    bridge.put_file("D:\\VMs\\web01\\" + vssd["ConfigurationFile"], b"tiny")
    result = vmc.get_vm_configuration(bridge, vm["Name"])
    assert _names(result) == [vm["Name"] + ".vmcx"]
    assert result["skipped_files"][0]["name"] == vm["Name"] + ".vmrs"


def test_shadow_path_prefers_the_longest_volume():
    mounts = [{"volume": "C:\\", "mount": "M:\\a"}, {"volume": "C:\\ClusterStorage\\Volume1\\", "mount": "M:\\b"}]
    assert vmc.shadow_path("C:\\ClusterStorage\\Volume1\\vm\\x.vmcx", mounts) == "M:\\b\\vm\\x.vmcx"
    assert vmc.shadow_path("c:\\vm\\x.vmcx", mounts) == "M:\\a\\vm\\x.vmcx"
    assert vmc.shadow_path("D:\\vm\\x.vmcx", mounts) is None


@pytest.mark.parametrize("era,taken", [("2016", False), ("2019", True)])
def test_the_guest_state_file_is_taken_from_1709_on(era, taken):
    bridge = FakeWmiBridge(era)
    vm, _settings = bridge.add_vm("web01", DISKS)
    snap = bridge.add_recovery_snapshot(vm, "hyperv.backup:run1", DISKS)
    snap_row = [i for i in bridge.instances if i.get("InstanceID") == snap["InstanceID"]][0]
    # set on both: on 2016 the code must not even read the properties (the schema has them from 1709)
    snap_row.update(GuestStateDataRoot="D:\\VMs\\web01\\Guest State", GuestStateFile="tpm.vmgs")
    bridge.put_file("D:\\VMs\\web01\\Guest State\\tpm.vmgs", b"vtpm keys")
    result = vmc.get_vm_configuration(bridge, vm["Name"], recovery_point_id=snap["InstanceID"])
    assert ("tpm.vmgs" in _names(result)) is taken
    if taken:
        vmgs = [f for f in result["files"] if f["name"] == "tpm.vmgs"][0]
        assert base64.b64decode(vmgs["content"]) == b"vtpm keys" and vmgs["path"] == "D:\\VMs\\web01\\Guest State\\tpm.vmgs"
