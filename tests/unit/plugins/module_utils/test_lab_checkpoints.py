"""Lab host disks: checkpoints freeze real files, merges keep the guest's data, RCT lists what the guest wrote."""
import ntpath
import os
import shutil
import subprocess

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError, HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_rct import GRANULE, MAX_PAGE_BYTES
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import create_vhdx, open_disk, write_vhdx_from

from test_lab_helpers import SMALL_DISK, TAG, GuestModel, MiB, all_changes, build_host, granule_ranges, read_all


def rct_point(transport, vm_id, tag=TAG):
    return transport.run("create_recovery_point", {"vm_id": vm_id, "method": "rct", "consistency": "application", "tag": tag})


def current_path(transport, vm_id, disk=0):
    return transport.run("get_vms", {"ids": [vm_id]})[0]["disks"][disk]["path"]


def test_recovery_point_freezes_the_disk_and_merge_keeps_every_write(tmp_path):
    layout, transport, ids = build_host(tmp_path, disks=2)
    vm_id = ids["web01"]
    model = GuestModel(SMALL_DISK).apply(lab_admin.churn(layout, "web01", seed=1, writes=20))
    base = current_path(transport, vm_id)

    point = rct_point(transport, vm_id)
    frozen = point["disks"][0]["path"]
    assert frozen == base and point["disks"][0]["type"] == "dynamic"
    child = current_path(transport, vm_id)
    assert child.endswith(".avhdx") and ntpath.dirname(child) == ntpath.dirname(base)
    at_point = model.copy()
    after = lab_admin.churn(layout, "web01", seed=2, writes=20)
    assert after["path"] == transport.local(child)        # churn reports the lab file
    model.apply(after)

    assert read_all(frozen, transport) == bytes(at_point.data)            # the point in time does not move
    assert read_all(child, transport) == bytes(model.data)                 # the guest sees all of its writes
    assert transport.run("remove_recovery_point", {"vm_id": vm_id, "id": point["id"]}) == {"id": point["id"], "removed": True}
    assert not os.path.exists(transport.local(child))
    assert current_path(transport, vm_id) == base
    assert read_all(base, transport) == bytes(model.data)
    assert transport.run("get_vms", {"ids": [vm_id]})[0]["checkpoints"] == []
    assert not os.path.exists(transport.local(point["configuration"]["files"][0]))


def test_nested_checkpoints_merge_in_any_order_without_losing_data(tmp_path):
    layout, transport, ids = build_host(tmp_path)
    vm_id = ids["web01"]
    model = GuestModel(SMALL_DISK).apply(lab_admin.churn(layout, "web01", seed=1, writes=10))
    lab_admin.ensure_vm(layout, {"name": "web01", "checkpoints": ["before upgrade"]})
    model.apply(lab_admin.churn(layout, "web01", seed=2, writes=10))
    point = rct_point(transport, vm_id)
    assert point["disks"][0]["path"].endswith(".avhdx") and len(point["disks"][0]["parent_chain"]) == 1
    at_point = model.copy()
    model.apply(lab_admin.churn(layout, "web01", seed=3, writes=10))
    assert read_all(point["disks"][0]["path"], transport) == bytes(at_point.data)

    standard = [cp for cp in transport.run("get_vms", {"ids": [vm_id]})[0]["checkpoints"] if cp["type"] == "Standard"]
    assert [cp["name"] for cp in standard] == ["before upgrade"]
    with pytest.raises(HostOperationError) as info:   # backups never remove someone's standard checkpoint
        transport.run("remove_recovery_point", {"vm_id": vm_id, "id": standard[0]["id"]})
    assert info.value.category == "recovery_point"
    # The older checkpoint goes first: its child cannot merge yet (the recovery point sits on it).
    assert lab_admin.remove_standard_checkpoint(layout, "web01", "before upgrade") is True
    assert lab_admin.remove_standard_checkpoint(layout, "web01", "before upgrade") is False
    assert read_all(current_path(transport, vm_id), transport) == bytes(model.data)
    transport.run("remove_recovery_point", {"vm_id": vm_id, "id": point["id"]})
    vm = transport.run("get_vms", {"ids": [vm_id]})[0]
    assert vm["disks"][0]["parent_chain"] == [] and vm["disks"][0]["path"].endswith("_disk0.vhdx")
    assert read_all(vm["disks"][0]["path"], transport) == bytes(model.data)
    assert [name for name in os.listdir(os.path.dirname(transport.local(vm["disks"][0]["path"]))) if name.endswith(".avhdx")] == []


def test_rct_change_list_equals_the_guest_writes(tmp_path):
    layout, transport, ids = build_host(tmp_path)
    vm_id = ids["web01"]
    lab_admin.churn(layout, "web01", seed=1, writes=30)
    first = transport.run("convert_to_reference_point", {"vm_id": vm_id, "id": rct_point(transport, vm_id)["id"]})
    [(disk_id, rct_id)] = list(first["rct_ids"].items())

    odd = lab_admin.churn(layout, "web01", seed=5, writes=1, write_size=512, offsets=[GRANULE * 3 + 512])
    random_writes = lab_admin.churn(layout, "web01", seed=6, writes=25, write_size=12288)
    second = rct_point(transport, vm_id)
    late = lab_admin.churn(layout, "web01", seed=7, writes=5)          # after the freeze: not in this backup
    frozen = second["disks"][0]["path"]
    changes, _pages = all_changes(transport, frozen, rct_id, SMALL_DISK)
    assert changes == granule_ranges(odd["writes"] + random_writes["writes"])
    assert (GRANULE * 3, GRANULE) in changes

    reference = transport.run("convert_to_reference_point", {"vm_id": vm_id, "id": second["id"]})
    third = rct_point(transport, vm_id)
    changes, _pages = all_changes(transport, third["disks"][0]["path"], reference["rct_ids"][disk_id], SMALL_DISK)
    assert changes == granule_ranges(late["writes"])
    # The older id still answers, with everything since then.
    changes, _pages = all_changes(transport, third["disks"][0]["path"], rct_id, SMALL_DISK)
    assert changes == granule_ranges(odd["writes"] + random_writes["writes"] + late["writes"])


def test_change_list_pages_at_most_one_gib(tmp_path):
    size = 3 * 1024 * MiB + 5 * MiB
    layout, transport, ids = build_host(tmp_path, size=size)
    vm_id = ids["web01"]
    reference = transport.run("convert_to_reference_point", {"vm_id": vm_id, "id": rct_point(transport, vm_id)["id"]})
    edge = MAX_PAGE_BYTES - GRANULE // 2
    writes = lab_admin.churn(layout, "web01", seed=3, writes=0, write_size=GRANULE, offsets=[0, edge, 2 * MAX_PAGE_BYTES + MiB, size - GRANULE])
    point = rct_point(transport, vm_id)
    changes, pages = all_changes(transport, point["disks"][0]["path"], list(reference["rct_ids"].values())[0], size)
    assert pages == 4
    assert changes == granule_ranges(writes["writes"])
    page = transport.run("get_disk_changes", {"path": point["disks"][0]["path"], "limit_id": list(reference["rct_ids"].values())[0],
                                              "byte_offset": MiB, "byte_length": MAX_PAGE_BYTES})
    assert page["processed_byte_length"] == MAX_PAGE_BYTES
    assert page["changed_byte_offsets"] == [MAX_PAGE_BYTES - GRANULE] and page["changed_byte_lengths"] == [2 * GRANULE]
    with pytest.raises(HostOperationError) as info:
        transport.run("get_disk_changes", {"path": point["disks"][0]["path"], "limit_id": list(reference["rct_ids"].values())[0],
                                           "byte_offset": size - MiB, "byte_length": 2 * MiB})
    assert info.value.category == "failed"


def _reference(transport, layout, vm_id):
    lab_admin.churn(layout, "web01", seed=1, writes=4)
    reference = transport.run("convert_to_reference_point", {"vm_id": vm_id, "id": rct_point(transport, vm_id)["id"]})
    return reference, list(reference["rct_ids"].values())[0]


def _changes_error(transport, path, rct_id, size=SMALL_DISK):
    with pytest.raises(HostOperationError) as info:
        transport.run("get_disk_changes", {"path": path, "limit_id": rct_id, "byte_offset": 0, "byte_length": size})
    return info.value


def test_unknown_and_foreign_rct_ids_are_change_tracking_errors(tmp_path):
    layout, transport, ids = build_host(tmp_path, vms=("web01", "db01"))
    _reference_point, rct_id = _reference(transport, layout, ids["web01"])
    other = rct_point(transport, ids["db01"])
    error = _changes_error(transport, other["disks"][0]["path"], rct_id)
    assert (error.category, error.windows_error) == ("change_tracking", "0xC03A0029")
    assert _changes_error(transport, current_path(transport, ids["web01"]), "rctX:bogus:1").category == "change_tracking"
    assert _changes_error(transport, str(tmp_path / "nope.vhdx"), rct_id).category == "not_found"


def test_resize_invalidates_rct_ids(tmp_path):
    layout, transport, ids = build_host(tmp_path)
    _reference_point, rct_id = _reference(transport, layout, ids["web01"])
    with pytest.raises(HyperVBackupError):
        lab_admin.resize_disk(layout, "web01", size=SMALL_DISK // 2)
    data_before = read_all(current_path(transport, ids["web01"]), transport)
    assert lab_admin.resize_disk(layout, "web01", size=2 * SMALL_DISK) is True
    assert lab_admin.resize_disk(layout, "web01", size=2 * SMALL_DISK) is False
    vm = transport.run("get_vms", {"ids": [ids["web01"]]})[0]
    assert vm["disks"][0]["virtual_size"] == 2 * SMALL_DISK
    grown = read_all(vm["disks"][0]["path"], transport)
    assert grown[:SMALL_DISK] == data_before and grown[SMALL_DISK:] == bytes(SMALL_DISK)
    error = _changes_error(transport, vm["disks"][0]["path"], rct_id, 2 * SMALL_DISK)
    assert (error.category, error.windows_error) == ("change_tracking", "0xC03A0022") and "resized" in str(error)


def test_removed_reference_point_and_rct_invalid_fault(tmp_path):
    layout, transport, ids = build_host(tmp_path)
    reference, rct_id = _reference(transport, layout, ids["web01"])
    path = current_path(transport, ids["web01"])
    lab_admin.ensure_vm(layout, {"name": "web01", "faults": ["rct_invalid"]})
    assert _changes_error(transport, path, rct_id).category == "change_tracking"
    lab_admin.ensure_vm(layout, {"name": "web01", "faults": []})
    assert transport.run("get_disk_changes", {"path": path, "limit_id": rct_id, "byte_offset": 0, "byte_length": SMALL_DISK})
    transport.run("remove_reference_point", {"vm_id": ids["web01"], "id": reference["id"]})
    error = _changes_error(transport, path, rct_id)
    assert (error.category, error.windows_error) == ("change_tracking", "0xC03A0030")


def test_migration_to_a_host_without_rct_invalidates_ids(tmp_path):
    csv = "C:\\ClusterStorage\\Volume1"
    layout, transport, ids = build_host(tmp_path, era="2019", cluster={"name": "CL"}, csvs=[csv],
                                        vms=({"name": "web01", "configuration_version": "8.0", "csv": csv},))
    model = GuestModel(SMALL_DISK).apply(lab_admin.churn(layout, "web01", seed=1, writes=6))
    _reference_point, rct_id = _reference(transport, layout, ids["web01"])
    model.apply(lab_admin.churn(layout, "web01", seed=1, writes=4))   # same seed as in _reference
    old_layout, old, _ids = build_host(tmp_path, host="old", era="2016", vms=(), cluster={"name": "CL", "functional_level": 8},
                                       csvs=[csv])
    with pytest.raises(HyperVBackupError):      # configuration 9.0 does not run on 2016
        lab_admin.ensure_vm(layout, {"name": "v9", "configuration_version": "9.0"}) and lab_admin.migrate_vm(layout, "v9", "old")
    assert lab_admin.migrate_vm(layout, "web01", "old") is True
    assert lab_admin.migrate_vm(layout, "web01", "old") is False
    assert [vm["name"] for vm in transport.run("get_vms", {})] == ["v9"]
    moved = old.run("get_vms", {})[0]
    assert moved["id"] == ids["web01"] and old.local(moved["path"]).startswith(old_layout.host_dir) and moved["clustered"] is True
    assert moved["path"] == "%s\\%s" % (csv, ids["web01"])       # the same Windows path on the new node
    assert read_all(moved["disks"][0]["path"], old) == bytes(model.data)
    assert old_layout.read_host()["vms"] == {ids["web01"]: "web01"} and ids["web01"] not in layout.read_host()["vms"]
    assert _changes_error(old, moved["disks"][0]["path"], rct_id).category == "change_tracking"
    lab_admin.ensure_host(old_layout, cluster={"name": "CL", "functional_level": 9})
    error = _changes_error(old, moved["disks"][0]["path"], rct_id)
    assert error.category == "change_tracking" and "migrated" in str(error)
    # After a new full backup on the new host the chain works again.
    reference = old.run("convert_to_reference_point", {"vm_id": ids["web01"], "id": rct_point(old, ids["web01"])["id"]})
    changes, _pages = all_changes(old, moved["disks"][0]["path"], list(reference["rct_ids"].values())[0], SMALL_DISK)
    assert changes == []


def test_vm_from_an_existing_vhdx(tmp_path):
    image = str(tmp_path / "mine.vhdx")
    with create_vhdx(image, 16 * MiB, block_size=MiB) as writer:
        writer.write(MiB, b"\x5a" * 4096)
    layout, transport, ids = build_host(tmp_path / "lab", vms=({"name": "mine", "disks": [{"from_file": image}]},))
    disk = transport.run("get_vms", {"ids": [ids["mine"]]})[0]["disks"][0]
    assert disk["path"] != image and disk["virtual_size"] == 16 * MiB and disk["block_size"] == MiB
    assert read_all(disk["path"], transport)[MiB:MiB + 4096] == b"\x5a" * 4096
    assert os.stat(transport.local(disk["path"])).st_mode & 0o077 == 0
    with pytest.raises(HyperVBackupError):
        build_host(tmp_path / "lab", vms=({"name": "bad", "disks": [{"from_file": str(tmp_path / "missing.vhdx")}]},))
    assert lab_admin.churn(layout, "mine", seed=1, writes=2)["path"] == transport.local(disk["path"])


def test_fill_is_deterministic_and_real(tmp_path):
    filled = [{"size": SMALL_DISK, "fill": {"seed": 4, "percent": 25}}]
    layout, transport, ids = build_host(tmp_path, vms=({"name": "a", "disks": filled}, {"name": "b", "disks": filled}))
    a, b = (read_all(current_path(transport, ids[name]), transport) for name in ("a", "b"))
    assert a == b
    assert sum(1 for index in range(0, SMALL_DISK, MiB) if a[index:index + MiB] != bytes(MiB)) == 16
    assert layout.read_host()["vms"] == dict((vm_id, name) for name, vm_id in ids.items())


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
def test_vm_from_an_existing_vhd_takes_guest_writes_and_checkpoints(tmp_path):
    """A user's qemu-made VHD copied in: reported as vhd, churned, checkpointed (.avhd), merged back."""
    raw = tmp_path / "old.raw"
    raw.write_bytes(b"\x11" * MiB + bytes(7 * MiB))
    image = str(tmp_path / "old.vhd")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic", str(raw), image], check=True)
    layout, transport, ids = build_host(tmp_path / "lab", era="2008r2", vms=({"name": "old", "disks": [{"from_file": image}]},))
    vm = transport.run("get_vms", {"ids": [ids["old"]]})[0]
    disk = vm["disks"][0]
    assert (disk["format"], disk["type"]) == ("vhd", "dynamic") and disk["path"].endswith(".vhd")
    assert vm["configuration_version"] == "5.0"
    model = GuestModel(disk["virtual_size"])
    model.data[:MiB] = b"\x11" * MiB
    model.apply(lab_admin.churn(layout, "old", seed=1, writes=6, write_size=8192))
    assert read_all(disk["path"], transport) == bytes(model.data)
    # Host VSS (2008 R2 has no recovery checkpoints): a shadow copy; the VM keeps writing to its own .vhd.
    point = transport.run("create_recovery_point", {"vm_id": ids["old"], "method": "vss", "consistency": "application", "tag": TAG})
    frozen = point["disks"][0]
    assert frozen["live_path"] == disk["path"] and frozen["format"] == "vhd" and current_path(transport, ids["old"]) == disk["path"]
    before = bytes(model.data)
    model.apply(lab_admin.churn(layout, "old", seed=2, writes=6, write_size=4096))
    assert read_all(frozen["path"], transport) == before and read_all(disk["path"], transport) == bytes(model.data)
    transport.run("remove_recovery_point", {"vm_id": ids["old"], "id": point["id"]})
    # A checkpoint: an .avhd child beside the .vhd, merged back when removed.
    lab_admin.ensure_vm(layout, {"name": "old", "checkpoints": ["user"]})
    child = current_path(transport, ids["old"])
    assert child.endswith(".avhd") and ntpath.dirname(child) == ntpath.dirname(disk["path"])
    model.apply(lab_admin.churn(layout, "old", seed=3, writes=6, write_size=4096))
    assert read_all(child, transport) == bytes(model.data)
    assert lab_admin.remove_standard_checkpoint(layout, "old", "user") is True
    assert not os.path.exists(transport.local(child)) and current_path(transport, ids["old"]) == disk["path"]
    assert read_all(disk["path"], transport) == bytes(model.data)
    back = tmp_path / "back.raw"                          # qemu still reads the merged file as we do
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", transport.local(disk["path"]), str(back)], check=True)
    assert back.read_bytes() == bytes(model.data)


def test_restore_over_the_vm_gives_new_disks_whose_old_rct_ids_do_not_match(tmp_path):
    layout, transport, ids = build_host(tmp_path)
    _reference_point, rct_id = _reference(transport, layout, ids["web01"])
    config = transport.run("get_vm_configuration", {"vm_id": ids["web01"]})
    restored = "C:\\Restore\\web01\\restored.vhdx"          # a path on the host, where a restore writes
    os.makedirs(os.path.dirname(transport.local(restored)), mode=0o700)
    with open_disk(transport.local(current_path(transport, ids["web01"]))) as source:
        write_vhdx_from(transport.local(restored), source, source.virtual_size)
    assert lab_admin.remove_vm(layout, "web01") is True
    imported = transport.run("import_vm", {"configuration": config, "disk_paths": [restored]})
    assert imported["vm_id"] == ids["web01"]            # Import-VM -Copy keeps the id
    error = _changes_error(transport, restored, rct_id)
    assert (error.category, error.windows_error) == ("change_tracking", "0xC03A0029")
