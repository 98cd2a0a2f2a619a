"""Issue 14: a change list costs round trips per 1024 pages, not per page (bridge.invoke_paged).

The host answers GetVirtualDiskChanges in pages (the lab: 1 GiB, unchanged); ``get_disk_changes`` with
``max_pages`` lets the bridge loop over them on the host in one round trip. These tests check the loop itself
(``page_through``, which the lab runs and the PowerShell script mirrors), that the answers equal the page-by-page
ones, that a 64 TiB disk takes 64 round trips, and that a page the host refuses still goes through the point-12
retries of the single-page path.
"""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.host import bridge as bridge_module
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import Paging, page_through
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import change_tracking, recovery_points as rp
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_operations import run_operation
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge import LabBridge
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB


# --- the loop ------------------------------------------------------------------------------------------

def fake_pages(page, changes=(), refuse_at=None, stall_at=None):
    """invoke_once of a host that processes ``page`` bytes per call and reports ``changes`` inside the window."""
    seen = []

    def once(values):
        offset, length = values["ByteOffset"], values["ByteLength"]
        seen.append((offset, length))
        if offset == refuse_at:
            return {"ReturnValue": 32773, "out": {}, "job": None, "affected": []}
        processed = 0 if offset == stall_at else min(page, length)
        inside = [(o, n) for o, n in changes if offset <= o < offset + processed]
        return {"ReturnValue": 0, "job": None, "affected": [],
                "out": {"ProcessedByteLength": processed, "ChangedByteOffsets": [o for o, _n in inside],
                        "ChangedByteLengths": [n for _o, n in inside]}}
    return once, seen


def paging(start, end, max_length=None, max_calls=1000):
    return Paging("ByteOffset", "ByteLength", "ProcessedByteLength", start, end, max_length or end, max_calls,
                  ("ChangedByteOffsets", "ChangedByteLengths"))


def test_the_loop_advances_by_what_each_call_processed_and_concatenates_the_arrays():
    once, seen = fake_pages(10, changes=[(3, 2), (25, 1), (26, 4)])
    answer = page_through(once, {"Path": "p"}, paging(0, 35))
    assert seen == [(0, 35), (10, 25), (20, 15), (30, 5)]          # length = end - offset each time
    assert answer["calls"] == 4 and answer["next_offset"] == 35 and answer["stopped"] is None
    assert answer["collected"] == {"ChangedByteOffsets": [3, 25, 26], "ChangedByteLengths": [2, 1, 4]}
    assert answer["counts"]["ChangedByteOffsets"] == [[1, 1], [0, 1], [2, 1], [0, 1]]


def test_a_single_value_comes_unwrapped_and_is_kept_even_when_it_is_zero():
    # PowerShell hands back a one-element array as its element: a single change at offset 0 is the scalar 0
    def once(values):
        single = values["ByteOffset"] == 0
        return {"ReturnValue": 0, "out": {"ProcessedByteLength": 10, "ChangedByteOffsets": 0 if single else None,
                                          "ChangedByteLengths": 4 if single else None}}
    answer = page_through(once, {}, paging(0, 20))
    assert answer["collected"] == {"ChangedByteOffsets": [0], "ChangedByteLengths": [4]}
    assert answer["counts"]["ChangedByteOffsets"] == [[1, 1], [0, 1]]


def test_the_loop_stops_at_max_calls_and_at_max_length():
    once, seen = fake_pages(10)
    answer = page_through(once, {}, paging(5, 100, max_length=7, max_calls=3))
    assert seen == [(5, 7), (12, 7), (19, 7)] and answer["next_offset"] == 26 and answer["stopped"] is None
    assert answer["counts"]["ChangedByteLengths"] == [[0, 3]]


def test_a_refused_call_stops_the_loop_and_is_handed_back():
    once, _seen = fake_pages(10, refuse_at=20)
    answer = page_through(once, {}, paging(0, 50))
    assert answer["calls"] == 2 and answer["next_offset"] == 20
    assert answer["stopped"]["reason"] == "failed" and answer["stopped"]["offset"] == 20
    assert answer["stopped"]["result"]["ReturnValue"] == 32773


def test_a_call_that_processed_nothing_stops_the_loop():
    once, seen = fake_pages(10, stall_at=10)
    answer = page_through(once, {}, paging(0, 50))
    assert len(seen) == 2 and answer["next_offset"] == 10 and answer["stopped"]["reason"] == "no_progress"


def test_a_job_that_failed_is_a_failure_and_one_that_completed_is_not():
    ok = {"ReturnValue": 4096, "job": {"JobState": 7, "ErrorCode": 0}, "out": {}}
    failed = {"ReturnValue": 4096, "job": {"JobState": 10, "ErrorCode": 32768}, "out": {}}
    assert bridge_module.call_succeeded(ok) and not bridge_module.call_succeeded(failed)
    assert not bridge_module.call_succeeded({"ReturnValue": 4096, "job": None})


# --- against the lab -----------------------------------------------------------------------------------

class CountingBridge:
    """Forwards to the lab bridge and counts the round trips a real host would see."""

    def __init__(self, inner):
        self.inner = inner
        self.host = inner.host
        self.trips = []

    def invoke(self, namespace, path, method, arguments=None):
        self.trips.append(("invoke", method))
        return self.inner.invoke(namespace, path, method, arguments)

    def invoke_paged(self, namespace, path, method, arguments, paging_):
        self.trips.append(("invoke_paged", method))
        return self.inner.invoke_paged(namespace, path, method, arguments, paging_)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Session:
    def __init__(self, bridge):
        self.bridge = bridge
        self.host = bridge.host

    def run(self, name, **params):
        return run_operation(self.bridge, name, params)


def frozen_disk(tmp_path, size, quirks=None, writes=((5 * GiB + 4096, 65536), (3 * GiB - 4096, 8192))):
    """A lab VM disk of ``size`` with a reference point, then ``writes``, then a recovery point: (bridge, disk, rct id)."""
    layout = LabLayout(str(tmp_path), "hv1")
    lab_admin.ensure_host(layout, era="2022", services={"vss": "Running"}, quirks=quirks)
    _changed, vm = lab_admin.ensure_vm(layout, {"name": "big", "disks": [{"size": size}]})
    bridge = LabBridge(str(tmp_path), "hv1")
    session = Session(bridge)
    listed = [v for v in session.run("get_vms") if v["id"] == vm["id"]][0]
    point = rp.create_recovery_point(session, listed, "rct", "application", "r1")
    reference = rp.convert_to_reference_point(session, vm["id"], point["id"])["reference_point"]
    lab_admin.churn(layout, "big", seed=3, writes=len(writes), write_size=writes[0][1], offsets=[o for o, _n in writes])
    second = rp.create_recovery_point(session, listed, "rct", "application", "r2")
    disk = second["disks"][0]
    return bridge, disk, reference["rct_ids"][disk["disk_id"]]


def test_a_64_tib_change_list_takes_64_round_trips(tmp_path):
    bridge, disk, rct_id = frozen_disk(tmp_path, 64 * TiB, writes=((5 * GiB + 4096, 65536), (40 * TiB, 65536)))
    counting = CountingBridge(bridge)
    changes = rp.collect_changes(Session(counting), disk["path"], rct_id, disk["virtual_size"])
    assert changes.valid, changes.reason
    assert changes.ranges == [(5 * GiB, 2 * 65536), (40 * TiB, 65536)]    # 64 KiB granules
    paged = [t for t in counting.trips if t == ("invoke_paged", "GetVirtualDiskChanges")]
    single = [t for t in counting.trips if t == ("invoke", "GetVirtualDiskChanges")]
    # 65,536 pages of 1 GiB (the lab's page, unchanged) in round trips of 1024 pages
    assert len(paged) == 64 * TiB // GiB // rp.PAGES_PER_ROUND_TRIP == 64 and not single


def test_paged_answers_equal_the_page_by_page_answers(tmp_path, monkeypatch):
    writes = ((GiB - 4096, 8192), (700 * GiB, 4096), (1023 * GiB + 65536, 65536))
    bridge, disk, rct_id = frozen_disk(tmp_path, TiB, writes=writes)
    monkeypatch.setattr(rp, "PAGES_PER_ROUND_TRIP", 100)     # 1024 pages: 11 round trips, the last one short
    counting = CountingBridge(bridge)
    paged = rp.collect_changes(Session(counting), disk["path"], rct_id, disk["virtual_size"])
    assert counting.trips.count(("invoke_paged", "GetVirtualDiskChanges")) == 11
    monkeypatch.setattr(rp, "PAGES_PER_ROUND_TRIP", 1)       # the path before issue 14: one call per page
    counting.trips[:] = []
    one_by_one = rp.collect_changes(Session(counting), disk["path"], rct_id, disk["virtual_size"])
    assert counting.trips.count(("invoke", "GetVirtualDiskChanges")) == 1024
    assert paged.valid and one_by_one.valid and paged.ranges == one_by_one.ranges
    assert paged.ranges == [(GiB - 65536, 2 * 65536), (700 * GiB, 65536), (1023 * GiB + 65536, 65536)]


def test_a_host_with_the_strict_byte_length_reading_still_pages_in_round_trips(tmp_path):
    # issue 11 point 12: such a host refuses ByteLength = virtual size; the single-page path learns the shorter length
    bridge, disk, rct_id = frozen_disk(tmp_path, 64 * GiB, quirks=["byte_length_strict"])
    counting = CountingBridge(bridge)
    changes = rp.collect_changes(Session(counting), disk["path"], rct_id, disk["virtual_size"])
    assert changes.valid and changes.ranges == [(3 * GiB - 65536, 2 * 65536), (5 * GiB, 2 * 65536)]
    trips = [t for t in counting.trips if t[1] == "GetVirtualDiskChanges"]
    # the first round trip stops at page 0 (refused), the page is asked alone twice (refused, then a sector
    # shorter), and a second round trip answers the other 63 pages
    assert trips == [("invoke_paged", "GetVirtualDiskChanges"), ("invoke", "GetVirtualDiskChanges"),
                     ("invoke", "GetVirtualDiskChanges"), ("invoke_paged", "GetVirtualDiskChanges")]
    counting.trips[:] = []
    again = rp.collect_changes(Session(counting), disk["path"], rct_id, disk["virtual_size"])
    assert again.ranges == changes.ranges
    assert [t for t in counting.trips if t[1] == "GetVirtualDiskChanges"] == [("invoke_paged", "GetVirtualDiskChanges")]


def test_an_unusable_rct_id_is_still_a_change_tracking_error(tmp_path):
    bridge, disk, _rct_id = frozen_disk(tmp_path, 8 * GiB)
    with pytest.raises(Exception) as caught:
        run_operation(bridge, "get_disk_changes", {"path": disk["path"], "limit_id": "rct:nonsense", "byte_offset": 0,
                                                   "byte_length": disk["virtual_size"], "max_pages": 4096})
    assert getattr(caught.value, "category", None) == "change_tracking"
    result = rp.collect_changes(Session(bridge), disk["path"], "rct:nonsense", disk["virtual_size"])
    assert result.valid is False and "cannot be used" in result.reason


def test_max_pages_must_be_positive(tmp_path):
    bridge, disk, rct_id = frozen_disk(tmp_path, 8 * GiB)
    with pytest.raises(Exception) as caught:
        run_operation(bridge, "get_disk_changes", {"path": disk["path"], "limit_id": rct_id, "byte_offset": 0,
                                                   "byte_length": disk["virtual_size"], "max_pages": 0})
    assert "max_pages" in str(caught.value)
    assert change_tracking.COLLECTED == ("ChangedByteOffsets", "ChangedByteLengths")
