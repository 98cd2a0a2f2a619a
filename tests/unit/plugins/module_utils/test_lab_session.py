"""The lab host behind the real session layer and recovery point flow (the way every module reaches it)."""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import locks
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import recovery_points as rp
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError

from test_lab_helpers import SMALL_DISK, GuestModel, build_host, granule_ranges, read_all


def lab_session(lab_dir, host="hv01"):
    return HostSession.from_module_params({"transport": "lab", "lab_directory": str(lab_dir), "host": host})


def test_full_then_incremental_through_the_session(tmp_path):
    layout, transport, ids = build_host(tmp_path, disks=2)
    session = lab_session(tmp_path)
    vm = session.run("get_vms", names=["web01"])[0]
    model = GuestModel(SMALL_DISK).apply(lab_admin.churn(layout, "web01", seed=1, writes=10))

    full = rp.create_recovery_point(session, vm, "rct", "application", rp.new_run_id(), local_paths=True)
    assert [d["previous_rct_id"] for d in full["disks"]] == [None, None]
    # The host reports Windows paths; the lab file behind one is what a proxy would read.
    assert read_all(transport.local(full["disks"][0]["path"])) == bytes(model.data)
    converted = rp.convert_to_reference_point(session, ids["web01"], full["id"])
    assert converted["changed"] and set(converted["reference_point"]["rct_ids"]) == {d["disk_id"] for d in full["disks"]}

    churned = lab_admin.churn(layout, "web01", seed=2, writes=12, write_size=8192)
    model.apply(churned)
    incremental = rp.create_recovery_point(session, vm, "rct", "application", rp.new_run_id(), local_paths=True)
    assert all(d["previous_rct_id"] for d in incremental["disks"])
    changes = rp.changes_since_reference(session, ids["web01"], incremental["id"])
    assert changes["changes_valid"] is True
    by_disk = dict((d["disk_id"], d) for d in changes["disks"])
    assert [list(r) for r in by_disk[churned["disk_id"]]["ranges"]] == [list(r) for r in granule_ranges(churned["writes"])]
    other = [d for d in incremental["disks"] if d["disk_id"] != churned["disk_id"]][0]
    assert by_disk[other["disk_id"]]["ranges"] == []
    assert read_all(transport.local(incremental["disks"][0]["path"])) == bytes(model.data)

    second = rp.convert_to_reference_point(session, ids["web01"], incremental["id"], keep_reference_points=1)
    # the unchanged disk's RCT id is shared with the new point: the old point stays until no kept point shares it (issue 12 point 7)
    assert second["removed_reference_points"] == [] and [k["id"] for k in second["kept_reference_points"]] == [converted["reference_point"]["id"]]
    assert session.run("get_vms", ids=[ids["web01"]])[0]["checkpoints"] == []


def test_stale_points_of_a_failed_run_are_found_and_cleaned(tmp_path):
    layout, _transport, ids = build_host(tmp_path)
    session = lab_session(tmp_path)
    vm = session.run("get_vms", names=["web01"])[0]
    left = rp.create_recovery_point(session, vm, "rct", "application", "failed-run")
    # While the run's VM lease is live its point is not stale, and nobody else may start on the VM.
    assert rp.find_stale(session, ids["web01"]) == []
    with pytest.raises(HostOperationError) as busy:
        session.run("create_recovery_point", vm_id=ids["web01"], method="rct", consistency="application", tag="someone else")
    assert busy.value.category == "busy"
    # The run died: nobody renews its lease, and the host's clock passes its expiry.
    lab_admin.ensure_host(layout, clock_offset_seconds=locks.VM_LEASE_SECONDS + 60)
    session.run("create_recovery_point", vm_id=ids["web01"], method="rct", consistency="application", tag="someone else")
    assert [p["id"] for p in rp.find_stale(session, ids["web01"])] == [left["id"]]
    assert [p["removed"] for p in rp.clean_stale(session, ids["web01"])] == [True]
    assert [p["name"] for p in session.run("get_recovery_points", vm_id=ids["web01"])] == ["someone else"]


def test_resized_disk_makes_the_session_fall_back_to_full(tmp_path):
    layout, _transport, ids = build_host(tmp_path)
    session = lab_session(tmp_path)
    vm = session.run("get_vms", names=["web01"])[0]
    rp.convert_to_reference_point(session, ids["web01"], rp.create_recovery_point(session, vm, "rct", "application", "r1")["id"])
    lab_admin.resize_disk(layout, "web01", size=2 * SMALL_DISK)
    point = rp.create_recovery_point(session, vm, "rct", "application", "r2")
    changes = rp.changes_since_reference(session, ids["web01"], point["id"])
    assert changes["changes_valid"] is False
    # The host's job fails with ErrorCode 32768; its description carries the HRESULT (ERROR_CTLOG_VHD_CHANGED_OFFLINE).
    assert changes["disks"][0]["windows_error"] == "0xC03A0022"


def test_session_sees_lab_faults_as_categories(tmp_path):
    layout, _transport, _ids = build_host(tmp_path)
    lab_admin.ensure_host(layout, faults=["auth_fails"])
    with pytest.raises(HostOperationError) as info:
        lab_session(tmp_path).run("get_host_info")
    assert info.value.category == "authentication"
    with pytest.raises(HostOperationError) as info:
        lab_session(tmp_path, host="nowhere").run("get_host_info")
    assert info.value.category == "unreachable"
