"""A disk rolled back between two backups and a recovery point older than the latest backup (issue 12, points 4 and 5).

Every backup here is restored and compared with the disk as it was at its recovery point: a rollback (the disk
restored in place, a checkpoint applied) must make the next RCT backup full, with a reason that names the disk; a
new checkpoint on top may stay incremental; an older recovery point given by id is refused and left on the host.
"""
import os

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.backup import backup_planning as planning
from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import run_restore
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import Ref
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import locks
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import recovery_points as rp
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge import LabBridge
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk

from test_backup_engine import CHUNK, MiB, backup, lab, vm_facts  # noqa: F401  pylint: disable=unused-import

V2 = "root\\virtualization\\v2"


def layout_of(lab_fixture):
    return LabLayout(lab_fixture[0], "h19")


def local_disk(lab_fixture, index=0):
    """The lab file behind the VM's current disk (what the guest sees now)."""
    return LabTransport(lab_fixture[0], "h19").local(vm_facts(lab_fixture)["disks"][index]["path"])


def flat(path):
    with open_disk(path) as disk:
        return disk.read(0, disk.virtual_size)


def restored(lab_fixture, tmp_path, backup_id, name):
    result = run_restore(lab_fixture[1], {"backup_id": backup_id, "destination": str(tmp_path / name)})
    assert result["verified"]
    return flat(result["disks"][0]["path"])


def churn(lab_fixture, seed, offsets):
    lab_admin.churn(layout_of(lab_fixture), "rctvm", seed=seed, write_size=8192, offsets=offsets)


def apply_by_wmi(lab_fixture, checkpoint_name):
    """ApplySnapshot on the emulated WMI, as Hyper-V Manager or Restore-VMSnapshot would call it."""
    bridge = LabBridge(lab_fixture[0], "h19")
    service = bridge.query(V2, "Msvm_VirtualSystemSnapshotService")[0]
    snapshot = [s for s in bridge.query(V2, "Msvm_VirtualSystemSettingData") if s.get("ElementName") == checkpoint_name][0]
    result = bridge.invoke(V2, service["__PATH"], "ApplySnapshot", {"Snapshot": Ref(snapshot["__PATH"])})
    assert result["ReturnValue"] == 4096 and result["job"]["ErrorCode"] == 0, result
    return result


def test_a_disk_restored_in_place_makes_the_next_backup_full(lab, tmp_path):
    first = backup(lab)
    churn(lab, 5, [0, MiB, 3 * MiB])
    second = backup(lab)
    assert second["type"] == "incremental"
    # the operator rolls the VM back: the first backup restored with force over the VM's own disk file
    disk = local_disk(lab)
    run_restore(lab[1], {"backup_id": first["backup_id"], "destination": os.path.dirname(disk), "force": True})
    churn(lab, 6, [2 * MiB])
    now = flat(disk)
    third = backup(lab)
    assert third["type"] == "full", third["type_reason"]
    assert "scsi0-0" in third["type_reason"] and "restored in place" in third["type_reason"]
    assert lab[1].get_backup(third["backup_id"]).metadata["type_reason"] == third["type_reason"]
    assert restored(lab, tmp_path, third["backup_id"], "third") == now
    # and the chain goes on from the new file: incremental again, and right
    churn(lab, 7, [CHUNK])
    fourth = backup(lab)
    assert fourth["type"] == "incremental" and restored(lab, tmp_path, fourth["backup_id"], "fourth") == flat(disk)


def test_an_applied_checkpoint_makes_the_next_backup_full(lab, tmp_path):
    lab_admin.ensure_vm(layout_of(lab), {"name": "rctvm", "checkpoints": ["before-upgrade"]})
    churn(lab, 5, [0, MiB])
    first = backup(lab)
    churn(lab, 6, [2 * MiB, 3 * MiB])
    second = backup(lab)
    assert (first["type"], second["type"]) == ("full", "incremental")
    churn(lab, 7, [2 * MiB + CHUNK])          # written after the second backup, reverted by the apply too
    apply_by_wmi(lab, "before-upgrade")
    assert vm_facts(lab)["state"] == "Off"
    churn(lab, 8, [CHUNK])
    third = backup(lab)
    assert third["type"] == "full", third["type_reason"]
    assert "scsi0-0" in third["type_reason"] and "rolled back" in third["type_reason"]
    assert restored(lab, tmp_path, third["backup_id"], "third") == flat(local_disk(lab))


def test_a_new_checkpoint_on_top_stays_incremental_and_right(lab, tmp_path):
    first = backup(lab)
    churn(lab, 5, [0])
    lab_admin.ensure_vm(layout_of(lab), {"name": "rctvm", "checkpoints": ["user"]})   # freezes the file the backup read
    churn(lab, 6, [MiB, 3 * MiB])
    second = backup(lab)
    assert second["type"] == "incremental" and second["parent_backup_id"] == first["backup_id"], second["type_reason"]
    assert CHUNK * 2 <= second["bytes_read"] <= CHUNK * 3      # the change list, not the whole disk
    assert restored(lab, tmp_path, second["backup_id"], "second") == flat(local_disk(lab))
    record = lab[1].get_backup(second["backup_id"]).disks[0]["metadata"]
    assert len(record["chain_disk_ids"]) == len(record["chain_paths"]) == 2 and record["file_disk_id"] == record["chain_disk_ids"][0]


def test_an_older_recovery_point_given_by_id_is_refused_and_left_alone(lab, tmp_path):
    params = dict(transport="lab", host="h19", lab_directory=lab[0])
    first = backup(lab)
    churn(lab, 5, [0])
    with HostSession.from_module_params(params) as session:
        vm = session.run("get_vms", names=["rctvm"])[0]
        older = rp.create_recovery_point(session, vm, "rct", "application", "older-point", local_paths=True)
        # the run that made the point is gone and its lease ended (expired), so other runs back the VM up meanwhile
        locks.release_run_leases(session.bridge, vm["id"], "older-point")
    churn(lab, 6, [MiB, 2 * MiB])
    latest = backup(lab)
    assert latest["parent_backup_id"] == first["backup_id"]
    with pytest.raises(HyperVBackupError) as caught:
        backup(lab, recovery_point_id=older["id"])
    error = caught.value
    assert error.extra["category"] == "recovery_point_older" and error.extra["latest_backup_id"] == latest["backup_id"]
    assert older["id"] in str(error) and "older than" in str(error) and "leave recovery_point_id unset" in error.hint
    assert [b.backup_id for b in lab[1].list_backups(include_in_progress=True)] == [first["backup_id"], latest["backup_id"]]
    with HostSession.from_module_params(params) as session:
        assert [p["id"] for p in session.run("get_recovery_points", vm_id=vm["id"])] == [older["id"]]


def test_a_point_taken_after_the_latest_backup_is_backed_up_by_id(lab, tmp_path):
    """The order check refuses only what the disk files prove older: a newer given point is backed up as before."""
    params = dict(transport="lab", host="h19", lab_directory=lab[0])
    backup(lab)
    churn(lab, 5, [0, MiB])
    with HostSession.from_module_params(params) as session:
        vm = session.run("get_vms", names=["rctvm"])[0]
        newer = rp.create_recovery_point(session, vm, "rct", "application", "newer-point", local_paths=True)
        locks.release_run_leases(session.bridge, vm["id"], "newer-point")
    state = flat(local_disk(lab))
    churn(lab, 6, [2 * MiB])          # after the point: not part of its backup
    given = backup(lab, recovery_point_id=newer["id"])
    assert given["type"] == "incremental" and restored(lab, tmp_path, given["backup_id"], "given") == state


def identity(paths, ids):
    return {"chain_paths": paths, "chain_disk_ids": ids}


class Parent:
    backup_id = "b1"

    def __init__(self, metadata):
        self.disks = [{"disk_key": "scsi0-0", "metadata": metadata}]


@pytest.mark.parametrize("then, now, expected", [
    (identity(["C:\\d.vhdx"], ["x"]), identity(["C:\\d.vhdx"], ["x"]), None),
    (identity(["C:\\d.vhdx"], ["x"]), identity(["D:\\moved\\d.vhdx"], ["x"]), None),            # storage migration: same ids
    (identity(["C:\\d.vhdx"], ["x"]), identity(["C:\\a.avhdx", "C:\\d.vhdx"], ["a", "x"]), None),  # new checkpoint on top
    (identity(["C:\\d.vhdx"], ["x"]), identity(["C:\\d.vhdx"], ["y"]), "restored in place"),
    (identity(["C:\\a.avhdx", "C:\\d.vhdx"], ["a", "x"]), identity(["C:\\b.avhdx", "C:\\d.vhdx"], ["b", "x"]), "rolled back"),
    (identity(["C:\\a.avhdx", "C:\\d.vhdx"], ["a", "x"]), identity(["C:\\d.vhdx"], ["x"]), "rolled back"),   # deleted / merged
    # a host whose differencing files repeat their parent's id: then the path tells the applied checkpoint's new file apart
    (identity(["C:\\a.avhdx", "C:\\d.vhdx"], ["x", "x"]), identity(["C:\\b.avhdx", "C:\\d.vhdx"], ["x", "x"]), "rolled back"),
    (identity(["C:\\A.avhdx", "C:\\d.vhdx"], ["x", "x"]), identity(["c:/a.avhdx", "C:\\d.vhdx"], ["x", "x"]), None),
    ({}, identity(["C:\\d.vhdx"], ["x"]), "recorded no identity"),
])
def test_identity_rules(then, now, expected):
    disk = dict(disk_key="scsi0-0", path=now["chain_paths"][0], parent_chain=now["chain_paths"][1:], chain_disk_ids=now["chain_disk_ids"])
    problem = planning.identity_problem(Parent(then), [disk])
    assert (problem is None) if expected is None else (expected in problem and "scsi0-0" in problem)
    # a host that reports no identity leaves nothing to compare
    assert planning.identity_problem(Parent(then), [dict(disk, chain_disk_ids=[])]) is None


def test_the_lab_applies_standard_checkpoints_only_and_keeps_the_data_when_they_go(lab):
    layout = layout_of(lab)
    lab_admin.ensure_vm(layout, {"name": "rctvm", "checkpoints": ["one", "two"]})     # "one" froze the base, "two" its child
    original = flat(local_disk(lab))
    churn(lab, 5, [0])
    bridge = LabBridge(lab[0], "h19")
    service = bridge.query(V2, "Msvm_VirtualSystemSnapshotService")[0]["__PATH"]
    vm_path = bridge.query(V2, "Msvm_ComputerSystem", where={"ElementName": "rctvm"})[0]["__PATH"]
    assert bridge.invoke(V2, service, "ApplySnapshot", {"Snapshot": Ref(vm_path)})["ReturnValue"] == 4     # not a snapshot
    params = dict(transport="lab", host="h19", lab_directory=lab[0])
    with HostSession.from_module_params(params) as session:
        vm = session.run("get_vms", names=["rctvm"])[0]
        point = rp.create_recovery_point(session, vm, "rct", "application", "run-1", local_paths=True)
        recovery = [s for s in bridge.query(V2, "Msvm_VirtualSystemSettingData") if s["InstanceID"] == point["id"]]
        assert bridge.invoke(V2, service, "ApplySnapshot", {"Snapshot": Ref(recovery[0]["__PATH"])})["ReturnValue"] == 6
        rp.remove_recovery_point(session, vm["id"], point["id"])
    with pytest.raises(HyperVBackupError, match="no standard checkpoint named 'three'") as caught:
        lab_admin.apply_checkpoint(layout, "rctvm", "three")
    assert "one, two" in caught.value.hint
    churn(lab, 6, [MiB])
    discarded = lab_admin.apply_checkpoint(layout, "rctvm", "two")
    assert len(discarded) == 1 and not os.path.exists(discarded[0]) and vm_facts(lab)["state"] == "Off"
    assert flat(local_disk(lab)) == original            # the guest's writes since "two" are gone
    churn(lab, 7, [2 * MiB])
    lab_admin.apply_checkpoint(layout, "rctvm", "one")
    state = flat(local_disk(lab))
    assert state == original
    # deleting both checkpoints merges what is left into the base and leaves the guest's data as it is
    for name in ("two", "one"):
        assert lab_admin.remove_standard_checkpoint(layout, "rctvm", name)
        assert flat(local_disk(lab)) == state
    facts = vm_facts(lab)
    assert facts["checkpoints"] == [] and facts["disks"][0]["parent_chain"] == []
    folder = os.path.dirname(local_disk(lab))
    assert sorted(n for n in os.listdir(folder) if n.endswith((".vhdx", ".avhdx"))) == [os.path.basename(local_disk(lab))]
