"""Recovery point flows against an in-memory host: create+validate, cleanup, reference points, change paging."""
import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError, HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import recovery_points as rp

from fake_host_session import FakeHostSession, make_vm


def session_with(*vms, **kwargs):
    return FakeHostSession(vms=vms or [make_vm("web01")], **kwargs)


def vm_of(session, name="web01"):
    return session.run("get_vms", names=[name])[0]


def test_tag_and_ours():
    assert rp.recovery_point_tag("r1") == "hyperv.backup:r1"
    assert rp.is_ours({"name": "hyperv.backup:x"}) and rp.is_ours({"name": "other", "ours": True})
    assert not rp.is_ours({"name": "Veeam"})
    with pytest.raises(HyperVBackupError):
        rp.recovery_point_tag("a\nb")
    assert rp.new_run_id() != rp.new_run_id()


def test_create_returns_what_the_backup_needs():
    session = session_with(make_vm("web01", disks=2))
    result = rp.create_recovery_point(session, vm_of(session), "rct", "application", "run1")
    assert result["name"] == "hyperv.backup:run1" and result["method"] == "rct"
    assert result["consistency"] == "application" and result["consistency_fallback"] is False
    assert [d["disk_id"] for d in result["disks"]] == ["id-web01-disk0", "id-web01-disk1"]
    assert all(d["path"].endswith(".avhdx") and d["virtual_size"] == 1 << 30 for d in result["disks"])
    assert all(d["previous_rct_id"] is None for d in result["disks"])


def test_previous_rct_id_is_matched_per_disk_from_newest_reference():
    session = session_with(make_vm("web01", disks=2))
    session.references["id-web01"] = [
        {"id": "ref-old", "rct_ids": {"id-web01-disk0": "old0", "id-web01-disk1": "old1"}},
        {"id": "ref-new", "rct_ids": {"id-web01-disk0": "new0"}},  # disk1 was added later / not tracked
    ]
    result = rp.create_recovery_point(session, vm_of(session), "rct", "application", "run1")
    by_disk = dict((d["disk_id"], (d["previous_rct_id"], d["reference_point_id"])) for d in result["disks"])
    assert by_disk == {"id-web01-disk0": ("new0", "ref-new"), "id-web01-disk1": ("old1", "ref-old")}


def test_vss_points_carry_no_rct_ids():
    session = session_with()
    session.references["id-web01"] = [{"id": "ref", "rct_ids": {"id-web01-disk0": "x"}}]
    result = rp.create_recovery_point(session, vm_of(session), "vss", "application", "run1")
    assert result["disks"][0]["previous_rct_id"] is None
    assert "get_reference_points" not in [c[0] for c in session.calls]


def test_application_consistency_failure_is_an_error():
    session = session_with()
    session.consistency = "crash"
    with pytest.raises(HostOperationError) as caught:
        rp.create_recovery_point(session, vm_of(session), "rct", "application", "run1")
    assert caught.value.category == "integration"
    assert session.points["id-web01"] == []


def test_application_or_crash_falls_back_and_says_so():
    session = session_with()
    session.consistency = "crash"
    result = rp.create_recovery_point(session, vm_of(session), "rct", "application_or_crash", "run1")
    assert result["consistency"] == "crash" and result["consistency_fallback"] is True
    assert "crash-consistent" in result["warning"]


def test_invalid_point_is_removed_and_reported(tmp_path):
    session = session_with()
    # local_paths: the fake's paths do not exist here, so validation must fail and clean up after itself
    with pytest.raises(HostOperationError, match="failed validation: file .* does not exist") as caught:
        rp.create_recovery_point(session, vm_of(session), "rct", "application", "run1", local_paths=True)
    assert caught.value.category == "recovery_point"
    assert session.points["id-web01"] == []


def test_point_missing_from_listing_is_refused():
    session = session_with()
    original = session._get_recovery_points
    session._get_recovery_points = lambda vm_id: []
    with pytest.raises(HostOperationError, match="does not list it"):
        rp.create_recovery_point(session, vm_of(session), "rct", "application", "run1")
    session._get_recovery_points = original
    assert session.points["id-web01"] == []


def test_differencing_disk_without_chain_is_refused():
    vm = make_vm("web01")
    vm["disks"][0]["type"] = "differencing"
    session = session_with(vm)
    with pytest.raises(HostOperationError, match="lists no parent chain"):
        rp.create_recovery_point(session, vm_of(session), "vss", "application", "run1")


def test_remove_is_idempotent():
    session = session_with()
    point = rp.create_recovery_point(session, vm_of(session), "vss", "application", "run1")
    assert rp.remove_recovery_point(session, "id-web01", point["id"], check_mode=True)["changed"] is True
    assert session.points["id-web01"]
    assert rp.remove_recovery_point(session, "id-web01", point["id"]) == {"id": point["id"], "removed": True, "changed": True}
    assert rp.remove_recovery_point(session, "id-web01", point["id"]) == {"id": point["id"], "removed": False, "changed": False}


def test_stale_cleanup_removes_only_ours_and_keeps_current_run():
    session = session_with()
    vm = vm_of(session)
    rp.create_recovery_point(session, vm, "rct", "application", "old-run")
    current = rp.create_recovery_point(session, vm, "rct", "application", "this-run")
    session.points["id-web01"].append({"id": "foreign", "name": "Veeam recovery", "method": "vss", "created": "x", "disks": []})
    dry = rp.clean_stale(session, "id-web01", keep_run_id="this-run", check_mode=True)
    assert [(r["name"], r["removed"]) for r in dry] == [("hyperv.backup:old-run", False)]
    report = rp.clean_stale(session, "id-web01", keep_run_id="this-run")
    assert [(r["name"], r["removed"]) for r in report] == [("hyperv.backup:old-run", True)]
    assert sorted(p["id"] for p in session.points["id-web01"]) == sorted([current["id"], "foreign"])


def test_convert_keeps_newest_reference_points():
    session = session_with()
    vm = vm_of(session)
    made = []
    for run in range(3):
        point = rp.create_recovery_point(session, vm, "rct", "application", "r%d" % run)
        made.append(rp.convert_to_reference_point(session, vm["id"], point["id"], keep_reference_points=2))
    assert made[0]["removed_reference_points"] == [] and made[1]["removed_reference_points"] == []
    assert made[2]["removed_reference_points"] == [made[0]["reference_point"]["id"]]
    assert [r["id"] for r in session.references["id-web01"]] == [m["reference_point"]["id"] for m in made[1:]]
    assert session.points["id-web01"] == []
    # converting again by the reference point's id is a no-op
    again = rp.convert_to_reference_point(session, vm["id"], made[2]["reference_point"]["id"], keep_reference_points=2)
    assert again["changed"] is False


def test_convert_check_mode_changes_nothing_but_reports_retention():
    session = session_with()
    vm = vm_of(session)
    session.references["id-web01"] = [{"id": "ref-a", "rct_ids": {}, "ours": True, "type": "RCT"}]
    point = rp.create_recovery_point(session, vm, "rct", "application", "r")
    result = rp.convert_to_reference_point(session, vm["id"], point["id"], keep_reference_points=1, check_mode=True)
    assert result == {"reference_point": None, "removed_reference_points": ["ref-a"], "kept_reference_points": [], "changed": True}
    assert len(session.points["id-web01"]) == 1 and len(session.references["id-web01"]) == 1


def test_convert_refuses_vss_points_and_unknown_ids():
    session = session_with()
    vm = vm_of(session)
    point = rp.create_recovery_point(session, vm, "vss", "application", "r")
    with pytest.raises(HostOperationError, match="only RCT recovery points"):
        rp.convert_to_reference_point(session, vm["id"], point["id"])
    with pytest.raises(HostOperationError, match="neither a recovery point nor a reference point"):
        rp.convert_to_reference_point(session, vm["id"], "nope")
    with pytest.raises(HyperVBackupError, match="1 or more"):
        rp.convert_to_reference_point(session, vm["id"], point["id"], keep_reference_points=0)


def test_2008r2_csv_sibling_holding_a_point_is_busy():
    csv = "C:\\ClusterStorage\\Volume1"
    vms = [make_vm("a", csv_path=csv), make_vm("b", csv_path=csv), make_vm("c", csv_path="C:\\ClusterStorage\\Volume2")]
    session = FakeHostSession(build=7601, vms=vms)
    vms = session.run("get_vms")
    facts = session.run("get_host_info")
    assert rp.check_serialization(session, facts, vms[0], vms)["serialization_key"] == "hv01:csv:" + csv
    rp.create_recovery_point(session, vms[0], "vss", "application", "r")
    vms = session.run("get_vms")
    with pytest.raises(HostOperationError) as caught:
        rp.check_serialization(session, facts, vms[1], vms)
    assert caught.value.category == "busy" and "VM a holds" in str(caught.value)
    # a VM on another CSV has its own queue and is not held up
    assert rp.check_serialization(session, facts, vms[2], vms)["serialization_key"].endswith("Volume2")


# --- change lists ----------------------------------------------------------------------------------

def paged_host(changes, page_limit, size):
    """A fake get_disk_changes that processes at most page_limit bytes per call, like the lab and Windows."""
    def page(limit_id, offset, length):
        processed = min(length, page_limit, size - offset)
        inside = [(max(o, offset), min(o + n, offset + processed)) for o, n in changes]
        inside = [(a, b - a) for a, b in inside if a < b]
        return {"processed_byte_length": processed, "changed_byte_offsets": [a for a, _n in inside],
                "changed_byte_lengths": [n for _a, n in inside]}
    return page


def test_merge_ranges():
    assert rp.merge_ranges([(10, 5), (0, 10), (20, 1), (21, 0), (30, 5), (32, 10)]) == [(0, 15), (20, 1), (30, 12)]


def test_paging_covers_whole_disk_and_merges_across_pages():
    session = session_with()
    size = 10 << 20
    session.pages["/d"] = paged_host([(0, 65536), (3 << 20, 2 << 20), (size - 65536, 65536)], 1 << 20, size)
    result = rp.collect_changes(session, "/d", "rct1", size)
    assert result.valid and result.ranges == [(0, 65536), (3 << 20, 2 << 20), (size - 65536, 65536)]
    assert result.changed_bytes == 65536 * 2 + (2 << 20)
    offsets = [c[1]["byte_offset"] for c in session.calls if c[0] == "get_disk_changes"]
    assert offsets == [i << 20 for i in range(10)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 63), st.integers(1, 8)), max_size=12), st.integers(1, 20))
def test_paging_property_equals_union_of_writes(writes, page_granules):
    granule = 65536
    size = 64 * granule
    changes = [(g * granule, min(n, 64 - g) * granule) for g, n in writes]
    session = session_with()
    session.pages["/d"] = paged_host(changes, page_granules * granule, size)
    result = rp.collect_changes(session, "/d", "rct1", size, page_bytes=7 * granule)
    expected = set()
    for offset, length in changes:
        expected.update(range(offset // granule, (offset + length) // granule))
    got = set()
    for offset, length in result.ranges:
        got.update(range(offset // granule, (offset + length) // granule))
    assert result.valid and got == expected
    assert all(a[0] + a[1] < b[0] for a, b in zip(result.ranges, result.ranges[1:]))


def test_invalid_rct_id_is_reported_not_raised():
    session = session_with()
    session.faults["get_disk_changes"] = ("change_tracking", "id rctX:1 is not valid", "0xC03A0029")
    result = rp.collect_changes(session, "/d", "rctX:1", 1 << 20)
    assert result.valid is False and "rctX:1 cannot be used" in result.reason and result.windows_error == "0xC03A0029"
    assert result.to_dict()["changes_valid"] is False


def test_missing_rct_id_means_full():
    result = rp.collect_changes(session_with(), "/d", None, 1 << 20)
    assert result.valid is False and "full backup" in result.reason


def test_zero_progress_page_stops_the_loop():
    session = session_with()
    session.pages["/d"] = lambda limit_id, offset, length: {"processed_byte_length": 0, "changed_byte_offsets": [],
                                                            "changed_byte_lengths": []}
    result = rp.collect_changes(session, "/d", "rct1", 1 << 20)
    assert result.valid is False and "processed 0 bytes" in result.reason
    assert len(session.calls) == 1


def test_range_outside_the_window_is_not_trusted():
    session = session_with()
    session.pages["/d"] = lambda limit_id, offset, length: {"processed_byte_length": 65536, "changed_byte_offsets": [65536],
                                                            "changed_byte_lengths": [65536]}
    result = rp.collect_changes(session, "/d", "rct1", 1 << 20)
    assert result.valid is False and "outside the processed window" in result.reason


def test_other_host_errors_propagate():
    session = session_with()
    session.faults["get_disk_changes"] = ("unreachable", "timeout")
    with pytest.raises(HostOperationError):
        rp.collect_changes(session, "/d", "rct1", 1 << 20)


def test_changes_for_recovery_point_uses_per_disk_ids():
    session = session_with(make_vm("web01", disks=2))
    point = {"disks": [{"disk_id": "d0", "path": "/p0", "virtual_size": 1 << 20, "previous_rct_id": "r0"},
                       {"disk_id": "d1", "path": "/p1", "virtual_size": 1 << 20, "previous_rct_id": None}]}
    session.pages["/p0"] = paged_host([(0, 4096)], 1 << 30, 1 << 20)
    result = rp.changes_for_recovery_point(session, point)
    assert result["d0"].valid and result["d0"].ranges == [(0, 4096)]
    assert result["d1"].valid is False
    session.pages["/p1"] = paged_host([(8192, 4096)], 1 << 30, 1 << 20)
    explicit = rp.changes_for_recovery_point(session, point, reference_rct_ids={"d1": "r1"})
    assert explicit["d0"].valid is False  # d0 not in the given map: full
    assert explicit["d1"].ranges == [(8192, 4096)]
    assert [c[1]["limit_id"] for c in session.calls if c[0] == "get_disk_changes"][-1] == "r1"
