"""Lab host: every operation answers with the contract's shapes; services; faults map to the real categories."""
import base64
import ntpath
import os
import re

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import checkpoints
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import host_operations as ops
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import vss_points
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabFleet, LabTransport, operation_names
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk, write_vhdx_from

from test_lab_helpers import TAG, build_host


def shape_keys(text):
    """Every key word the contract text names (identifiers before ',' '}' ':' or '|')."""
    return set(re.findall(r"([a-z_]+)(?=\s*[,}:|])", text)) - {"null"}


def assert_documented(result, *shape_texts):
    documented = set()
    for text in shape_texts:
        documented |= shape_keys(text)
    undocumented = set(result) - documented - {"windows_path"}
    assert not undocumented, "keys not in host_operations: %s" % sorted(undocumented)


def category_of(transport, op, params):
    with pytest.raises(HostOperationError) as info:
        transport.run(op, params)
    return info.value


@pytest.fixture
def lab(tmp_path):
    return build_host(tmp_path, vms=("web01", "db01"))


def test_every_operation_of_the_contract_is_answered():
    assert operation_names() == sorted(ops.OPERATIONS)


@pytest.mark.parametrize("era,version,build", [("2008r2", "6.1.7601", 7601), ("2012r2", "6.3.9600", 9600),
                                               ("2016", "10.0.14393", 14393), ("2019", "10.0.17763", 17763),
                                               ("2022", "10.0.20348", 20348)])
def test_host_info_by_era(tmp_path, era, version, build):
    _layout, transport, _ids = build_host(tmp_path, era=era, vms=(), cluster={"name": "CL1"},
                                          csvs=["C:\\ClusterStorage\\Volume1"], hardware_vss_provider=True)
    info = transport.run("get_host_info", {})
    assert set(info) == {"computer_name", "os_name", "os_version", "os_build", "cluster", "csvs", "vss_providers",
                         "hyperv_vss_writer"}
    assert (info["os_version"], info["os_build"]) == (version, build)
    assert info["cluster"]["name"] == "CL1" and isinstance(info["cluster"]["functional_level"], int)
    assert info["csvs"] == [{"name": "Cluster Disk 1", "path": "C:\\ClusterStorage\\Volume1"}]
    assert [p["type"] for p in info["vss_providers"]] == ["software", "hardware"]
    assert info["vss_providers"][0]["id"] == "{b5946137-7b9f-4925-af80-51abd60b20d5}"
    # state_number: the writer is judged by its state number, never by the localised text (issue 11 point 6)
    assert info["hyperv_vss_writer"] == {"name": "Microsoft Hyper-V VSS Writer", "id": "{66841cd4-6ded-4f4b-8f17-fd23f8ddc3de}",
                                         "state": "[1] Stable", "state_number": 1, "last_error": "No error"}


def test_cluster_functional_level_follows_era_unless_given(tmp_path):
    layout, transport, _ids = build_host(tmp_path, era="2019", vms=(), cluster={"name": "CL1"})
    assert transport.run("get_host_info", {})["cluster"]["functional_level"] == 10
    lab_admin.ensure_host(layout, cluster={"name": "CL1", "functional_level": 8})
    assert transport.run("get_host_info", {})["cluster"]["functional_level"] == 8


def test_vm_disk_and_checkpoint_shapes(lab):
    _layout, transport, ids = lab
    vms = transport.run("get_vms", {})
    assert [vm["name"] for vm in vms] == ["db01", "web01"]
    vm = vms[1]
    assert_documented(vm, ops.VM_SHAPE)
    # "or" is prose of the state text ("(or, while the VM changes state, ...)"), not a key
    assert set(shape_keys(ops.VM_SHAPE.split("disks:", maxsplit=1)[0])) - {"name", "enabled", "operational_status", "or"} <= set(vm)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", vm["id"])
    # Only the backup integration component is listed (the schema details Msvm_VssComponent alone), known by its id.
    assert vm["integration_services"] == [{"name": "VSS", "id": "5CED1297-4598-4915-A5FC-AD21BB4D02A4", "enabled": True,
                                           "operational_status": "OK"}]
    disk = vm["disks"][0]
    # a readable disk has every key but 'problem' (the text after "problem:" is prose)
    assert set(disk) == shape_keys(ops.DISK_SHAPE.split("problem:", maxsplit=1)[0]) | {"windows_path"}
    # Paths are Windows paths; the lab file behind one is found through the host's path map.
    assert disk["path"] == disk["windows_path"] and disk["windows_path"].startswith("C:\\")
    assert os.path.isfile(transport.local(disk["path"]))
    assert (disk["format"], disk["type"], disk["parent_chain"]) == ("vhdx", "dynamic", [])

    point = transport.run("create_recovery_point", {"vm_id": ids["web01"], "method": "rct", "consistency": "application", "tag": TAG})
    assert_documented(point, ops.RECOVERY_POINT_SHAPE, "{consistency_fallback, ours}", ops.DISK_SHAPE)
    assert {"id", "vm_id", "vm_name", "name", "method", "consistency", "created", "disks", "configuration"} <= set(point)
    assert point["consistency_fallback"] is False and point["ours"] is True
    listed = transport.run("get_vms", {"names": ["web01"]})[0]
    assert listed["checkpoints"] == [{"id": point["id"], "name": TAG, "type": "Recovery", "created": point["created"],
                                      "ours": True}]
    assert listed["disks"][0]["type"] == "differencing"
    assert listed["disks"][0]["parent_chain"] == [point["disks"][0]["path"]]

    reference = transport.run("convert_to_reference_point", {"vm_id": ids["web01"], "id": point["id"]})
    assert set(reference) == shape_keys(ops.OPERATIONS["convert_to_reference_point"].returns) - {"disk_id", "rct_id"}
    assert (reference["type"], reference["ours"], reference["recovery_point_id"], reference["run_id"]) == (
        "RCT", True, point["id"], "test-run")
    assert reference["created"] == point["created"] and reference["repositories"] == [] and reference["problem"] is None
    assert list(reference["rct_ids"]) == [disk["disk_id"]]
    assert transport.run("get_reference_points", {"vm_id": ids["web01"]}) == [reference]
    assert transport.run("get_vms", {"ids": [ids["web01"]]})[0]["reference_points"] == [dict(reference, type="RCT")]
    page = transport.run("get_disk_changes", {"path": disk["path"], "limit_id": reference["rct_ids"][disk["disk_id"]],
                                              "byte_offset": 0, "byte_length": disk["virtual_size"]})
    assert set(page) == {"processed_byte_length", "changed_byte_offsets", "changed_byte_lengths", "pages"}
    assert transport.run("remove_reference_point", {"vm_id": ids["web01"], "id": reference["id"]}) == {"id": reference["id"], "removed": True}
    assert transport.run("remove_reference_point", {"vm_id": ids["web01"], "id": reference["id"]})["removed"] is False


def test_get_vms_filters_and_not_found(lab):
    _layout, transport, ids = lab
    assert [vm["id"] for vm in transport.run("get_vms", {"ids": [ids["db01"]]})] == [ids["db01"]]
    error = category_of(transport, "get_vms", {"names": ["web01", "nope"]})
    assert error.category == "not_found" and "'nope'" in str(error)
    assert category_of(transport, "get_recovery_points", {"vm_id": "0000"}).category == "not_found"


def test_services_start_once_and_report_changed(lab):
    _layout, transport, _ids = lab
    assert transport.run("get_service", {"name": "swprv"}) == {
        "name": "swprv", "display_name": "Microsoft Software Shadow Copy Provider", "status": "Stopped", "start_type": "Manual"}
    first = transport.run("start_service", {"name": "swprv"})
    assert (first["previous_status"], first["status"], first["changed"]) == ("Stopped", "Running", True)
    second = transport.run("start_service", {"name": "swprv"})
    assert (second["previous_status"], second["changed"]) == ("Running", False)
    assert transport.run("get_service", {"name": "vmms"})["display_name"] == "Hyper-V Virtual Machine Management"
    assert category_of(transport, "get_service", {"name": "spooler"}).category == "not_found"


def test_service_that_will_not_start(tmp_path):
    layout, transport, _ids = build_host(tmp_path, vss="Stopped", vms=())
    lab_admin.ensure_host(layout, faults=["service_wont_start:vss"])
    error = category_of(transport, "start_service", {"name": "vss"})
    assert error.category == "service" and "Cannot start service vss" in str(error)
    assert transport.run("get_service", {"name": "vss"})["status"] == "Stopped"
    lab_admin.ensure_host(layout, services={"vss": {"start_type": "Disabled"}}, faults=[])
    assert category_of(transport, "start_service", {"name": "vss"}).windows_error == "0x80070422"


@pytest.mark.parametrize("fault,category", [("unreachable", "unreachable"), ("auth_fails", "authentication")])
def test_host_level_faults_fail_every_operation(lab, fault, category):
    layout, transport, _ids = lab
    lab_admin.ensure_host(layout, faults=[fault])
    for op, params in (("get_host_info", {}), ("get_vms", {}), ("get_service", {"name": "vss"})):
        assert category_of(transport, op, params).category == category


def test_unknown_host_is_unreachable(tmp_path):
    error = category_of(LabTransport(str(tmp_path), "ghost"), "get_host_info", {})
    assert error.category == "unreachable" and "ghost" in str(error)


def test_unknown_and_missing_parameters_are_refused(lab):
    _layout, transport, _ids = lab
    assert category_of(transport, "get_service", {}).category == "failed"
    assert category_of(transport, "get_host_info", {"bogus": 1}).category == "failed"


@pytest.mark.parametrize("fault", ["integration_missing", "integration_no_contact"])
def test_application_consistency_needs_the_backup_integration_service(lab, fault):
    layout, transport, ids = lab
    lab_admin.ensure_vm(layout, {"name": "web01", "faults": [fault]})
    vss = [s for s in transport.run("get_vms", {"names": ["web01"]})[0]["integration_services"] if s["name"] == "VSS"]
    assert vss == ([] if fault == "integration_missing" else [{"name": "VSS", "id": "5CED1297-4598-4915-A5FC-AD21BB4D02A4",
                                                               "enabled": True, "operational_status": "NoContact"}])
    error = category_of(transport, "create_recovery_point", {"vm_id": ids["web01"], "method": "rct",
                                                             "consistency": "application", "tag": TAG})
    assert error.category == "integration" and "web01" in str(error)
    assert transport.run("get_recovery_points", {"vm_id": ids["web01"]}) == []
    fallback = transport.run("create_recovery_point", {"vm_id": ids["web01"], "method": "rct",
                                                       "consistency": "application_or_crash", "tag": TAG})
    assert (fallback["consistency"], fallback["consistency_fallback"]) == ("crash", True)


def test_enable_integration_service(lab):
    layout, transport, ids = lab
    lab_admin.ensure_vm(layout, {"name": "web01", "integration_services": [{"name": "VSS", "enabled": False}]})
    assert category_of(transport, "create_recovery_point", {"vm_id": ids["web01"], "method": "rct",
                                                            "consistency": "application", "tag": TAG}).category == "integration"
    result = transport.run("enable_integration_service", {"vm_id": ids["web01"], "name": "VSS"})
    assert result == {"vm_id": ids["web01"], "name": "VSS", "enabled": True, "operational_status": "OK", "changed": True}
    assert transport.run("enable_integration_service", {"vm_id": ids["web01"], "name": "VSS"})["changed"] is False
    lab_admin.ensure_vm(layout, {"name": "web01", "faults": ["integration_missing"]})
    assert category_of(transport, "enable_integration_service", {"vm_id": ids["web01"], "name": "VSS"}).category == "not_found"


def test_recovery_point_fault_and_vss_writer_fault(lab):
    layout, transport, ids = lab
    lab_admin.ensure_vm(layout, {"name": "web01", "faults": ["recovery_point_fails"]})
    params = {"vm_id": ids["web01"], "method": "rct", "consistency": "application", "tag": TAG}
    assert category_of(transport, "create_recovery_point", params).category == "recovery_point"
    lab_admin.ensure_vm(layout, {"name": "web01", "faults": []})
    lab_admin.ensure_host(layout, faults=["vss_writer_failed"])
    assert transport.run("get_host_info", {})["hyperv_vss_writer"]["state"] == "[8] Failed"
    error = category_of(transport, "create_recovery_point", dict(params, method="vss"))
    assert error.category == "recovery_point" and error.windows_error == "0x800423F3"
    assert transport.run("create_recovery_point", params)["method"] == "rct"   # RCT does not use the host writer


def test_vss_method_needs_the_vss_service(tmp_path):
    layout, transport, ids = build_host(tmp_path, vss="Stopped")
    lab_admin.ensure_host(layout, services={"vss": {"start_type": "Disabled"}})
    params = {"vm_id": ids["web01"], "method": "vss", "consistency": "application", "tag": TAG}
    error = category_of(transport, "create_recovery_point", params)
    assert error.category == "service" and error.windows_error == "0x80070422"
    assert transport.run("get_recovery_points", {"vm_id": ids["web01"]}) == []
    # A stopped (Manual) vss is demand-started by diskshadow's COM activation, as on Windows.
    lab_admin.ensure_host(layout, services={"vss": {"start_type": "Manual"}})
    assert transport.run("get_service", {"name": "vss"})["status"] == "Stopped"
    assert transport.run("create_recovery_point", params)["method"] == "vss"
    assert transport.run("get_service", {"name": "vss"})["status"] == "Running"


@pytest.mark.parametrize("era,vm,cluster,reason", [
    ("2012r2", {"name": "old"}, None, "older than"),
    ("2019", {"name": "v5", "configuration_version": "5.0"}, None, "configuration version"),
    ("2019", {"name": "cl", "csv": "C:\\ClusterStorage\\Volume1"}, {"name": "CL", "functional_level": 8}, "functional level"),
])
def test_rct_needs_a_capable_host_and_vm(tmp_path, era, vm, cluster, reason):
    options = {"cluster": cluster, "csvs": ["C:\\ClusterStorage\\Volume1"]} if cluster else {}
    _layout, transport, ids = build_host(tmp_path, era=era, vms=(vm,), **options)
    error = category_of(transport, "create_recovery_point", {"vm_id": ids[vm["name"]], "method": "rct",
                                                             "consistency": "application", "tag": TAG})
    assert error.category == "unsupported" and reason in str(error)
    assert transport.run("create_recovery_point", {"vm_id": ids[vm["name"]], "method": "vss",
                                                   "consistency": "application", "tag": TAG})["method"] == "vss"


def test_one_vss_backup_per_csv_on_2008r2_with_the_software_provider(tmp_path, monkeypatch):
    monkeypatch.setattr(vss_points, "SLEEP", lambda _seconds: None)   # VSS busy is retried with backoff: no real waits
    csv = "C:\\ClusterStorage\\Volume1"
    layout, transport, ids = build_host(tmp_path, era="2008r2", cluster={"name": "OLD"}, csvs=[csv],
                                        vms=({"name": "a", "csv": csv}, {"name": "b", "csv": csv}, {"name": "c"}))
    params = {"method": "vss", "consistency": "application", "tag": TAG}
    first = transport.run("create_recovery_point", dict(params, vm_id=ids["a"]))
    error = category_of(transport, "create_recovery_point", dict(params, vm_id=ids["b"]))
    assert error.category == "busy" and csv in str(error) and "'a'" in str(error) and error.windows_error == "0x80042316"
    assert transport.run("create_recovery_point", dict(params, vm_id=ids["c"]))["vm_name"] == "c"   # not on the CSV
    transport.run("remove_recovery_point", {"vm_id": ids["a"], "id": first["id"]})
    assert transport.run("create_recovery_point", dict(params, vm_id=ids["b"]))["vm_name"] == "b"
    lab_admin.ensure_host(layout, hardware_vss_provider=True)
    assert transport.run("create_recovery_point", dict(params, vm_id=ids["a"]))["vm_name"] == "a"


def test_leftover_recovery_points_stay_listed_with_ours(lab):
    _layout, transport, ids = lab
    ours = transport.run("create_recovery_point", {"vm_id": ids["web01"], "method": "rct", "consistency": "application", "tag": TAG})
    # Another product's recovery checkpoint: the same CreateSnapshot + ModifySystemSettings, without our run's lease
    # (a second create_recovery_point on the VM while our point exists is 'busy' by design).
    assert category_of(transport, "create_recovery_point", {"vm_id": ids["web01"], "method": "rct", "consistency": "application",
                                                            "tag": "hyperv.backup:other-run"}).category == "busy"
    theirs = checkpoints._create_rct(transport.bridge, ids["web01"], "application", "Veeam job 12")
    listed = transport.run("get_recovery_points", {"vm_id": ids["web01"]})
    assert [(p["id"], p["ours"]) for p in listed] == [(ours["id"], True), (theirs["id"], False)]
    assert transport.run("remove_recovery_point", {"vm_id": ids["web01"], "id": "no-such"}) == {"id": "no-such", "removed": False}


def test_configuration_capture_and_import(tmp_path, lab):
    _layout, transport, ids = lab
    point = transport.run("create_recovery_point", {"vm_id": ids["db01"], "method": "rct", "consistency": "application", "tag": TAG})
    config = transport.run("get_vm_configuration", {"vm_id": ids["db01"], "recovery_point_id": point["id"]})
    assert {"vm_id", "name", "generation", "configuration_version", "memory_bytes", "processor_count", "files", "skipped_files",
            "document"} == set(config)
    # The files' content is captured (the recovery checkpoint's files go away with it): {name, path, content, length}.
    assert [f["path"] for f in config["files"]] == point["configuration"]["files"] and config["skipped_files"] == []
    for captured in config["files"]:
        with open(transport.local(captured["path"]), "rb") as handle:
            data = handle.read()
        assert base64.b64decode(captured["content"]) == data and captured["length"] == len(data)
        assert captured["name"] == ntpath.basename(captured["path"])
    assert config["name"] == "db01" and len(config["document"]["disks"]) == 1
    # What a restore writes: a new file with the frozen data, at a path on the host (Windows path).
    disk_path = "C:\\Restore\\db01\\restored.vhdx"
    os.makedirs(os.path.dirname(transport.local(disk_path)), mode=0o700)
    with open_disk(transport.local(point["disks"][0]["path"])) as frozen:
        write_vhdx_from(transport.local(disk_path), frozen, frozen.virtual_size)
    error = category_of(transport, "import_vm", {"configuration": config, "disk_paths": [disk_path]})
    assert error.category == "failed" and "already exists" in str(error)
    imported = transport.run("import_vm", {"configuration": config, "disk_paths": [disk_path], "new_name": "db01-restored",
                                           "generate_new_id": True})
    assert imported["name"] == "db01-restored" and imported["state"] == "Off" and imported["vm_id"] != ids["db01"]
    vm = transport.run("get_vms", {"ids": [imported["vm_id"]]})[0]
    assert vm["disks"][0]["path"] == disk_path and vm["disks"][0]["disk_id"] != point["disks"][0]["disk_id"]
    assert category_of(transport, "import_vm", {"configuration": config, "disk_paths": []}).category == "failed"


def test_import_refuses_a_configuration_newer_than_the_host(tmp_path, lab):
    _layout, transport, ids = lab
    config = transport.run("get_vm_configuration", {"vm_id": ids["web01"]})
    assert config["configuration_version"] == "10.0"
    _old_layout, old, _ids = build_host(tmp_path, host="old", era="2016", vms=())
    restored = "C:\\Restore\\web01\\restored.vhdx"        # the restored disk is on the old host
    os.makedirs(os.path.dirname(old.local(restored)), mode=0o700)
    with open_disk(transport.local(transport.run("get_vms", {"ids": [ids["web01"]]})[0]["disks"][0]["path"])) as source:
        write_vhdx_from(old.local(restored), source, source.virtual_size)
    error = category_of(old, "import_vm", {"configuration": config, "disk_paths": [restored], "generate_new_id": True})
    assert error.category == "unsupported" and "10.0" in str(error)
    assert old.run("get_vms", {}) == []


def test_fleet_lists_hosts(tmp_path):
    build_host(tmp_path, host="hv02", vms=())
    build_host(tmp_path, host="hv01", vms=())
    (tmp_path / "not-a-host").mkdir()
    fleet = LabFleet(str(tmp_path))
    assert fleet.host_names() == ["hv01", "hv02"]
    assert fleet.host("hv02").run("get_host_info", {})["computer_name"] == "HV02"


def test_vm_operations_need_the_vmms_service(lab):
    layout, transport, ids = lab
    lab_admin.ensure_host(layout, services={"vmms": "Stopped"})
    error = category_of(transport, "get_vms", {})
    assert error.category == "service" and "vmms" in str(error)
    assert category_of(transport, "create_recovery_point", {"vm_id": ids["web01"], "method": "rct", "consistency": "application",
                                                            "tag": TAG}).category == "service"
    assert transport.run("start_service", {"name": "vmms"})["changed"] is True
    assert len(transport.run("get_vms", {})) == 2
