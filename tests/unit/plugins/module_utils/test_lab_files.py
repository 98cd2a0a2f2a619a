"""The lab host's files as Windows paths (lab_files): a bijective map, refusals, atomic and exclusive writes, the host clock."""
import datetime
import os
import time

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.host import disk_access
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import BridgeError
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin, lab_files
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout

MiB = 1024 * 1024
CSV = "C:\\ClusterStorage\\Volume1"


def build(tmp_path, host="hv01", **host_options):
    layout = LabLayout(str(tmp_path), host)
    host_options.setdefault("era", "2022")
    lab_admin.ensure_host(layout, cluster={"name": "CL1"}, csvs=[CSV], **host_options)
    _changed, local_vm = lab_admin.ensure_vm(layout, {"name": "web01", "disks": [{"size": 8 * MiB}], "checkpoints": ["before"]})
    _changed, csv_vm = lab_admin.ensure_vm(layout, {"name": "db01", "csv": CSV, "disks": [{"size": 8 * MiB}, {"size": 8 * MiB}]})
    return layout, local_vm, csv_vm


def every_file(directory):
    for root, _dirs, files in os.walk(directory):
        for name in files:
            yield os.path.join(root, name)


def parse_dmtf(text):
    return datetime.datetime.strptime(text[:21], "%Y%m%d%H%M%S.%f").replace(tzinfo=datetime.timezone.utc).timestamp()


def test_every_vm_file_maps_both_ways_and_csv_vms_live_under_their_csv(tmp_path):
    layout, local_vm, csv_vm = build(tmp_path)
    mapping = lab_files.path_map(layout)
    seen = set()
    for vm in (local_vm, csv_vm):
        files = [path for path in every_file(layout.vm_dir(vm["id"])) if os.path.basename(path) not in ("vm.json", ".lock")]
        assert any(path.endswith(".avhdx") for path in files) or vm is csv_vm   # checkpoint children are mapped too
        for path in files:
            windows = lab_files.to_windows(layout, path)
            assert windows not in seen
            seen.add(windows)
            assert lab_files.to_local(layout, windows) == path
            assert lab_files.to_local(layout, windows.upper()) == path        # Windows paths are case-insensitive
            assert disk_access.map_path(windows, mapping) == path             # what the backup engine does
            expected_root = "%s\\%s\\" % (CSV, vm["id"]) if vm is csv_vm else "C:\\Hyper-V\\%s\\" % vm["id"]
            assert windows.startswith(expected_root)
    program_data = "C:\\ProgramData\\hyperv.backup\\locks\\vm-x.lease"
    lab_files.write_file(layout, program_data, b"lease")
    local = lab_files.to_local(layout, program_data)
    assert local.startswith(os.path.join(layout.host_dir, "drives", "C")) and lab_files.to_windows(layout, local) == program_data


def test_a_migrated_vm_keeps_its_windows_paths_on_the_new_host(tmp_path):
    layout, local_vm, _csv_vm = build(tmp_path)
    lab_admin.ensure_host(LabLayout(str(tmp_path), "hv02"), era="2022")
    disk = layout.read_vm(local_vm["id"])["disks"][0]["base"]
    before = lab_files.to_windows(layout, disk)
    assert lab_admin.migrate_vm(layout, "web01", "hv02") is True
    target = LabLayout(str(tmp_path), "hv02")
    moved = target.read_vm(local_vm["id"])["disks"][0]["base"]
    assert lab_files.to_windows(target, moved) == before          # same folder name (the VM id) on the new host
    assert lab_files.to_local(target, before) == moved
    with pytest.raises(BridgeError):
        lab_files.to_windows(layout, moved)                       # not a file of the old host any more


@pytest.mark.parametrize("path", [
    "C:\\Hyper-V\\..\\Windows\\system32\\config\\SAM",
    "C:\\ProgramData\\.\\x",
    "D:\\data\\x.vhdx",
    "\\\\server\\share\\x.vhdx",
    "relative\\x",
    "",
])
def test_paths_outside_the_map_or_with_dot_components_are_not_found(tmp_path, path):
    layout, _local_vm, _csv_vm = build(tmp_path)
    with pytest.raises(BridgeError) as info:
        lab_files.to_local(layout, path)
    assert info.value.code == lab_files.E_PATH_NOT_FOUND
    with pytest.raises(BridgeError):
        lab_files.write_file(layout, path, b"x")
    with pytest.raises(BridgeError):
        lab_files.to_windows(layout, str(tmp_path.parent / "elsewhere.vhdx"))


def test_exclusive_write_refuses_an_existing_file_and_plain_write_replaces_it(tmp_path):
    layout, _local_vm, _csv_vm = build(tmp_path)
    lock = "C:\\ProgramData\\hyperv.backup\\locks\\vss-snapshot-set.lock"
    first = lab_files.write_file(layout, lock, b"owner-1", exclusive=True)
    assert set(first) == {"modified", "now"}
    with pytest.raises(BridgeError) as info:
        lab_files.write_file(layout, lock, b"owner-2", exclusive=True)
    assert info.value.code == "exists"
    assert lab_files.read_file(layout, lock, 1024) == b"owner-1"
    lab_files.write_file(layout, lock, b"owner-3")
    assert lab_files.read_file(layout, lock, 1024) == b"owner-3"
    leftovers = [name for name in os.listdir(os.path.dirname(lab_files.to_local(layout, lock))) if name.startswith(".tmp-")]
    assert leftovers == []
    assert lab_files.remove_file(layout, lock) is True and lab_files.remove_file(layout, lock) is False
    assert lab_files.read_file(layout, lock, 1024) is None


def test_read_limits_listing_and_lab_internal_files(tmp_path):
    layout, local_vm, _csv_vm = build(tmp_path)
    folder = "C:\\ProgramData\\hyperv.backup\\reference-points\\%s" % local_vm["id"]
    lab_files.write_file(layout, folder + "\\a.json", b"{}")
    lab_files.write_file(layout, folder + "\\sub\\b.json", b"[1]")
    with pytest.raises(BridgeError) as info:
        lab_files.read_file(layout, folder + "\\a.json", 1)
    assert info.value.code == "too_large"
    listed = lab_files.list_directory(layout, folder)
    assert [(entry["name"], entry["directory"], entry["length"]) for entry in listed["entries"]] == [("a.json", False, 2), ("sub", True, 0)]
    assert lab_files.list_directory(layout, folder + "\\missing")["entries"] == []
    with pytest.raises(BridgeError) as info:
        lab_files.remove_file(layout, folder + "\\sub")
    assert info.value.code == lab_files.E_DIR_NOT_EMPTY
    vm_folder = lab_files.to_windows(layout, layout.vm_dir(local_vm["id"]))
    names = [entry["name"] for entry in lab_files.list_directory(layout, vm_folder)["entries"]]
    assert "vm.json" not in names and ".lock" not in names and "Virtual Hard Disks" in names
    with pytest.raises(BridgeError) as info:
        lab_files.write_file(layout, vm_folder + "\\vm.json", b"{}")
    assert info.value.code == lab_files.E_ACCESS_DENIED


def test_times_come_from_the_host_clock_with_its_offset(tmp_path):
    layout, _local_vm, _csv_vm = build(tmp_path, clock_offset_seconds=3600)
    real = time.time()
    written = lab_files.write_file(layout, "C:\\ProgramData\\hyperv.backup\\locks\\vm-a.lease", b"x")
    assert abs(parse_dmtf(written["now"]) - (real + 3600)) < 60
    assert abs(parse_dmtf(written["modified"]) - parse_dmtf(written["now"])) < 5
    entry = lab_files.list_directory(layout, "C:\\ProgramData\\hyperv.backup\\locks")["entries"][0]
    assert abs(parse_dmtf(entry["modified"]) - parse_dmtf(written["modified"])) < 0.01
    assert written["now"].endswith("+000") and len(written["now"]) == 25
    lab_admin.ensure_host(layout, clock_offset_seconds=-600)
    assert abs(parse_dmtf(lab_files.host_now(layout)) - (time.time() - 600)) < 60


@pytest.mark.parametrize("era,ps_version", [("2008r2", "2.0"), ("2012", "3.0"), ("2022", "5.1"), ("2025", "5.1")])
def test_host_environment(tmp_path, era, ps_version):
    layout = LabLayout(str(tmp_path), "hv07")
    lab_admin.ensure_host(layout, era=era)
    environment = lab_files.host_environment(layout)
    assert environment["ps_version"] == ps_version
    assert environment["program_data"] == "C:\\ProgramData" and environment["computer_name"] == "HV07"
    assert abs(parse_dmtf(environment["now"]) - time.time()) < 60
