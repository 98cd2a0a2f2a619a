"""Recovery points, reference points and change lists in Python over the bridge, against the lab's WMI emulation.

hyperv/checkpoints.py, vss_points.py, reference_points.py, change_tracking.py through run_operation(LabBridge, ...),
and hyperv/recovery_points.py / backup/backup_planning.py on top of them. Issue 11 points 1, 2, 3, 8, 10, 11, 12.
"""
import threading
import time

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.backup import backup_planning as planning
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import Embedded, Ref
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import change_tracking, recovery_points as rp, vss_points
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_operations import run_operation
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge import LabBridge
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout

MiB = 1024 * 1024
RECOVERY = "Microsoft:Hyper-V:Snapshot:Recovery"


class BridgeSession:
    """What HostSession does with a bridge: run(name, **params) -> run_operation(bridge, name, params)."""

    def __init__(self, bridge):
        self.bridge = bridge
        self.host = bridge.host

    def run(self, name, **params):
        return run_operation(self.bridge, name, params)


class Recording:
    """A bridge wrapper that records invoke() calls and lets a test change a method's answer."""

    def __init__(self, inner, answer=None):
        self.inner = inner
        self.host = inner.host
        self.path_map = getattr(inner, "path_map", None)
        self.invoked = []
        self.answer = answer

    def invoke(self, namespace, path, method, arguments=None):
        self.invoked.append((method, dict(arguments or {})))
        result = self.inner.invoke(namespace, path, method, arguments)
        return self.answer(method, arguments, result) if self.answer else result

    def __getattr__(self, name):
        return getattr(self.inner, name)


def lab(tmp_path, era="2022", vms=("web01",), **host_options):
    layout = LabLayout(str(tmp_path), "hv1")
    lab_admin.ensure_host(layout, era=era, services={"vss": "Running"}, **host_options)
    ids = {}
    for name in vms:
        _changed, vm = lab_admin.ensure_vm(layout, {"name": name, "disks": [{"size": 4 * MiB}]})
        ids[name] = vm["id"]
    return layout, LabBridge(str(tmp_path), "hv1"), ids


def vm_of(session, vm_id):
    return [v for v in session.run("get_vms") if v["id"] == vm_id][0]


def recovery_snapshots(bridge, vm_id):
    ns = "root\\virtualization\\v2"
    vm = bridge.query(ns, "Msvm_ComputerSystem", where={"Name": vm_id})[0]
    return [s for s in bridge.associators(ns, vm["__PATH"], "Msvm_SnapshotOfVirtualSystem", "Msvm_VirtualSystemSettingData")
            if s.get("VirtualSystemType") == RECOVERY]


class Parent:
    def __init__(self, metadata):
        self.metadata = metadata
        self.backup_id = "b-parent"


# --- RCT recovery checkpoints -------------------------------------------------------------------------

@pytest.mark.parametrize("era", ["2016", "2022"])
def test_rct_point_is_created_tagged_described_and_removed(tmp_path, era):
    _layout, bridge, ids = lab(tmp_path, era)
    vm_id = ids["web01"]
    point = run_operation(bridge, "create_recovery_point", {"vm_id": vm_id, "method": "rct", "consistency": "application",
                                                            "tag": "hyperv.backup:run1"})
    assert point["method"] == "rct" and point["name"] == "hyperv.backup:run1" and point["ours"] is True
    assert point["consistency"] == "application" and point["consistency_fallback"] is False
    assert point["created"] and point["disks"] and all(d["virtual_size"] == 4 * MiB and d["disk_id"] for d in point["disks"])
    listed = run_operation(bridge, "get_recovery_points", {"vm_id": vm_id})
    assert [p["id"] for p in listed] == [point["id"]] and listed[0]["held_by_live_run"] is True
    assert run_operation(bridge, "remove_recovery_point", {"vm_id": vm_id, "id": point["id"]}) == {"id": point["id"], "removed": True}
    assert run_operation(bridge, "get_recovery_points", {"vm_id": vm_id}) == []
    assert run_operation(bridge, "remove_recovery_point", {"vm_id": vm_id, "id": point["id"]})["removed"] is False


def test_point_10_tag_goes_through_modify_system_settings_with_an_embedded_copy(tmp_path):
    _layout, inner, ids = lab(tmp_path)
    bridge = Recording(inner)
    point = run_operation(bridge, "create_recovery_point", {"vm_id": ids["web01"], "method": "rct", "consistency": "application",
                                                            "tag": "hyperv.backup:run1"})
    modify = [args for method, args in bridge.invoked if method == "ModifySystemSettings"]
    assert len(modify) == 1
    embedded = modify[0]["SystemSettings"]
    assert isinstance(embedded, Embedded) and embedded.class_name == "Msvm_VirtualSystemSettingData"
    assert embedded.properties == {"ElementName": "hyperv.backup:run1"}
    snapshot = recovery_snapshots(inner, ids["web01"])[0]
    assert embedded.based_on == snapshot["__PATH"] and snapshot["ElementName"] == "hyperv.backup:run1"
    create = [args for method, args in bridge.invoked if method == "CreateSnapshot"][0]
    assert create["SnapshotType"] == 32768 and isinstance(create["AffectedSystem"], Ref)
    assert create["SnapshotSettings"].properties == {"ConsistencyLevel": 1, "IgnoreNonSnapshottableDisks": True}
    assert point["id"] == snapshot["InstanceID"]


def test_point_10_a_failed_tag_destroys_the_new_checkpoint(tmp_path):
    _layout, inner, ids = lab(tmp_path)

    def refuse_modify(method, _arguments, result):
        return {"ReturnValue": 2, "out": {}, "job": None, "affected": []} if method == "ModifySystemSettings" else result

    bridge = Recording(inner, refuse_modify)
    with pytest.raises(HostOperationError) as caught:
        run_operation(bridge, "create_recovery_point", {"vm_id": ids["web01"], "method": "rct", "consistency": "application",
                                                        "tag": "hyperv.backup:run1"})
    assert caught.value.category == "recovery_point" and "ModifySystemSettings" in str(caught.value)
    assert recovery_snapshots(inner, ids["web01"]) == []             # nothing untagged left behind
    assert "DestroySnapshot" in [m for m, _a in bridge.invoked]
    # the run's lease was given back: a new run can start
    run_operation(inner, "create_recovery_point", {"vm_id": ids["web01"], "method": "rct", "consistency": "application",
                                                   "tag": "hyperv.backup:run2"})


def test_point_11_the_snapshot_is_the_recovery_settings_not_the_first_affected_element(tmp_path):
    _layout, inner, ids = lab(tmp_path)
    ns = "root\\virtualization\\v2"
    vm = inner.query(ns, "Msvm_ComputerSystem", where={"Name": ids["web01"]})[0]
    realized = inner.associators(ns, vm["__PATH"], "Msvm_SettingsDefineState", "Msvm_VirtualSystemSettingData")[0]

    def vm_settings_first(method, _arguments, result):
        if method == "CreateSnapshot":
            result = dict(result, affected=[dict(realized, ElementEffects=[5])] + list(result.get("affected") or []))
        return result

    bridge = Recording(inner, vm_settings_first)
    point = run_operation(bridge, "create_recovery_point", {"vm_id": ids["web01"], "method": "rct", "consistency": "application",
                                                            "tag": "hyperv.backup:run1"})
    modify = [args for method, args in bridge.invoked if method == "ModifySystemSettings"][0]
    assert modify["SystemSettings"].based_on != realized["__PATH"]        # the VM itself is never renamed
    again = inner.associators(ns, vm["__PATH"], "Msvm_SettingsDefineState", "Msvm_VirtualSystemSettingData")[0]
    assert again["ElementName"] == "web01"
    assert point["id"] == recovery_snapshots(inner, ids["web01"])[0]["InstanceID"]


def test_application_or_crash_falls_back_to_consistency_level_2(tmp_path):
    _layout, inner, ids = lab(tmp_path)

    def guest_cannot_quiesce(method, arguments, result):
        if method == "CreateSnapshot" and arguments["SnapshotSettings"].properties["ConsistencyLevel"] == 1:
            return {"ReturnValue": 4096, "out": {}, "affected": [],
                    "job": {"InstanceID": "x", "JobState": 10, "ErrorCode": 32768, "ErrorDescription": "guest did not answer",
                            "ErrorSummaryDescription": None, "errors": []}}
        return result

    bridge = Recording(inner, guest_cannot_quiesce)
    with pytest.raises(HostOperationError):
        run_operation(bridge, "create_recovery_point", {"vm_id": ids["web01"], "method": "rct", "consistency": "application",
                                                        "tag": "hyperv.backup:run1"})
    point = run_operation(bridge, "create_recovery_point", {"vm_id": ids["web01"], "method": "rct",
                                                            "consistency": "application_or_crash", "tag": "hyperv.backup:run2"})
    assert point["consistency"] == "crash" and point["consistency_fallback"] is True


# --- reference points (points 2, 3, 13) ------------------------------------------------------------------

def test_point_2_reference_point_keeps_the_checkpoint_creation_time_and_is_found_by_id(tmp_path):
    layout, bridge, ids = lab(tmp_path)
    session = BridgeSession(bridge)
    vm_id = ids["web01"]
    vm = vm_of(session, vm_id)
    point = rp.create_recovery_point(session, vm, "rct", "application", "run1")
    converted = rp.convert_to_reference_point(session, vm_id, point["id"], repository_id="repo-a")
    reference = converted["reference_point"]
    assert reference["created"] == point["created"] and reference["ours"] is True and reference["type"] == "RCT"
    assert reference["recovery_point_id"] == point["id"] and reference["repositories"] == ["repo-a"]
    listed = session.run("get_reference_points", vm_id=vm_id)
    assert [r["id"] for r in listed] == [reference["id"]] and listed[0]["created"] == point["created"]
    # what the backup engine stores today (recovery_point.id/created), and a host whose marker gives no time
    parent = Parent({"recovery_point": {"id": point["id"], "created": point["created"]}})
    assert planning.reference_rct_ids(parent, listed) == (reference["rct_ids"], None)
    no_time = [dict(r, created=None) for r in listed]
    assert planning.reference_rct_ids(parent, no_time) == (reference["rct_ids"], None)
    by_id = Parent({"recovery_point": {"id": "other", "reference_point_id": reference["id"]}})
    assert planning.reference_rct_ids(by_id, no_time) == (reference["rct_ids"], None)
    # the next RCT backup gets a change list from it: an incremental, not a full
    lab_admin.churn(layout, "web01", seed=4, writes=3)
    second = rp.create_recovery_point(session, vm, "rct", "application", "run2")
    rct_ids, problem = planning.reference_rct_ids(parent, session.run("get_reference_points", vm_id=vm_id))
    disk = second["disks"][0]
    changes = rp.collect_changes(session, disk["path"], rct_ids[disk["disk_id"]], disk["virtual_size"])
    assert problem is None and changes.valid and 0 < changes.changed_bytes < disk["virtual_size"]


def test_old_backups_without_ids_still_match_by_creation_time():
    references = [{"id": "r1", "created": "2026-11-25T06:00:00.000000Z", "rct_ids": {"d": "x"}}]
    assert planning.reference_rct_ids(Parent({"recovery_point": {"created": "2026-11-25T06:00:00.000000Z"}}), references) \
        == ({"d": "x"}, None)
    foreign = [dict(references[0], ours=False)]
    ids, why = planning.reference_rct_ids(Parent({"recovery_point": {"created": "2026-11-25T06:00:00.000000Z"}}), foreign)
    assert ids is None and "gone" in why


def test_point_2_a_point_with_mismatched_arrays_is_not_used():
    references = [{"id": "r1", "recovery_point_id": "cp1", "rct_ids": {}, "ours": True, "type": "RCT",
                   "problem": "ResilientChangeTrackingIdentifiers has 2 entries but VirtualDiskIdentifiers 1"}]
    ids, why = planning.reference_rct_ids(Parent({"recovery_point": {"id": "cp1"}}), references)
    assert ids is None and "VirtualDiskIdentifiers" in why


@pytest.mark.parametrize("era", ["2016", "2022"])
def test_point_3_foreign_reference_points_survive_any_number_of_converts(tmp_path, era):
    layout, bridge, ids = lab(tmp_path, era)
    session = BridgeSession(bridge)
    vm_id = ids["web01"]
    log_point = lab_admin.add_foreign_reference_point(layout, "web01", 1)
    rct_point = lab_admin.add_foreign_reference_point(layout, "web01", 2)
    foreign = sorted(r["id"] for r in session.run("get_reference_points", vm_id=vm_id))
    assert len(foreign) == 2 and all(not r["ours"] for r in session.run("get_reference_points", vm_id=vm_id))
    assert log_point and rct_point
    vm = vm_of(session, vm_id)
    made = []
    for run in range(4):
        lab_admin.churn(layout, "web01", seed=run + 1)      # a disk that changes (an idle one: test_idle_disk_rct.py)
        point = rp.create_recovery_point(session, vm, "rct", "application", "run%d" % run)
        result = rp.convert_to_reference_point(session, vm_id, point["id"], keep_reference_points=1, repository_id="repo-a")
        made.append(result["reference_point"]["id"])
        assert not set(result["removed_reference_points"]) & set(foreign)
    listed = session.run("get_reference_points", vm_id=vm_id)
    assert sorted(r["id"] for r in listed if not r["ours"]) == foreign
    assert [r["id"] for r in listed if r["ours"]] == made[-1:]
    types = dict((r["id"], r["type"]) for r in listed if not r["ours"])
    assert sorted(types.values()) == ["Log", "RCT"]
    for other in foreign:
        with pytest.raises(HostOperationError) as caught:
            session.run("remove_reference_point", vm_id=vm_id, id=other)
        assert caught.value.category == "unsupported" and "only RCT reference points this collection created" in str(caught.value)
    # the foreign RCT point's chain still works
    rct = [r for r in listed if r["type"] == "RCT" and not r["ours"]][0]
    assert rct["rct_ids"]


def test_point_3_two_repositories_never_destroy_each_others_point(tmp_path):
    _layout, bridge, ids = lab(tmp_path)
    session = BridgeSession(bridge)
    vm_id = ids["web01"]
    vm = vm_of(session, vm_id)

    def backup(run, repository):
        lab_admin.churn(_layout, "web01", seed=len(run) + ord(run[-1]))     # the disk changes (idle: test_idle_disk_rct.py)
        point = rp.create_recovery_point(session, vm, "rct", "application", run)
        return rp.convert_to_reference_point(session, vm_id, point["id"], keep_reference_points=1, repository_id=repository)

    a1 = backup("a1", "repo-a")["reference_point"]["id"]
    b1 = backup("b1", "repo-b")
    assert b1["removed_reference_points"] == [] and b1["kept_reference_points"][0]["id"] == a1
    a2 = backup("a2", "repo-a")
    assert a2["removed_reference_points"] == [a1]            # repo-a moved on: its old point may go
    listed = dict((r["id"], r["repositories"]) for r in session.run("get_reference_points", vm_id=vm_id))
    assert listed == {b1["reference_point"]["id"]: ["repo-b"], a2["reference_point"]["id"]: ["repo-a"]}


def test_point_13_no_reference_point_query_before_2016(tmp_path):
    _layout, inner, ids = lab(tmp_path, "2012r2")
    seen = []

    class Watch(Recording):
        def associators(self, namespace, path, assoc_class, result_class=None):
            seen.append(assoc_class)
            return self.inner.associators(namespace, path, assoc_class, result_class)

    bridge = Watch(inner)
    assert run_operation(bridge, "get_reference_points", {"vm_id": ids["web01"]}) == []
    assert "Msvm_ReferencePointOfVirtualSystem" not in seen


# --- change lists (point 12) ---------------------------------------------------------------------------------

@pytest.mark.parametrize("strict", [False, True])
def test_point_12_change_list_works_with_either_byte_length_reading(tmp_path, strict):
    layout, bridge, ids = lab(tmp_path)
    if strict:
        host = layout.read_host()
        host["quirks"] = list(host.get("quirks") or []) + ["byte_length_strict"]
        layout.write_host(host)
    session = BridgeSession(bridge)
    vm_id = ids["web01"]
    vm = vm_of(session, vm_id)
    point = rp.create_recovery_point(session, vm, "rct", "application", "r1")
    reference = rp.convert_to_reference_point(session, vm_id, point["id"])["reference_point"]
    written = lab_admin.churn(layout, "web01", seed=9, writes=5, offsets=[0, MiB, 4 * MiB - 64 * 1024])
    second = rp.create_recovery_point(session, vm, "rct", "application", "r2")
    disk = second["disks"][0]
    changes = rp.collect_changes(session, disk["path"], reference["rct_ids"][disk["disk_id"]], disk["virtual_size"])
    assert changes.valid, changes.reason
    covered = set()
    for offset, length in changes.ranges:
        covered.update(range(offset // 4096, (offset + length) // 4096))
    assert {0, MiB // 4096, (4 * MiB - 64 * 1024) // 4096} <= covered        # the writes at the start and the end
    assert written
    ns = "root\\virtualization\\v2"
    ims = bridge.query(ns, "Msvm_ImageManagementService")[0]["__PATH"]
    raw = bridge.invoke(ns, ims, "GetVirtualDiskChanges", {"Path": disk["path"], "LimitId": reference["rct_ids"][disk["disk_id"]],
                                                           "TargetSnapshotId": "", "ByteOffset": 0, "ByteLength": disk["virtual_size"]})
    assert raw["ReturnValue"] == (32773 if strict else 0)      # the lab host really reads ByteLength that way


def test_shorter_lengths_are_sector_aligned_and_shrink():
    lengths = change_tracking.shorter_lengths(4 * MiB)
    assert lengths[0] == 4 * MiB - 512 and all(n % 512 == 0 for n in lengths)
    assert all(b < a for a, b in zip(lengths, lengths[1:]))
    assert change_tracking.shorter_lengths(512) == []


def test_unknown_rct_id_is_a_change_tracking_failure(tmp_path):
    _layout, bridge, ids = lab(tmp_path)
    session = BridgeSession(bridge)
    point = rp.create_recovery_point(session, vm_of(session, ids["web01"]), "rct", "application", "r1")
    disk = point["disks"][0]
    with pytest.raises(HostOperationError) as caught:
        session.run("get_disk_changes", path=disk["path"], limit_id="rct:nonsense", byte_offset=0, byte_length=disk["virtual_size"])
    assert caught.value.category == "change_tracking"
    result = rp.collect_changes(session, disk["path"], "rct:nonsense", disk["virtual_size"])
    assert not result.valid


# --- host VSS (points 1 and 8) -------------------------------------------------------------------------------

@pytest.mark.parametrize("era", ["2012", "2022"])
def test_point_1_vss_point_configuration_is_read_from_the_shadow_copy(tmp_path, era):
    _layout, bridge, ids = lab(tmp_path, era)
    vm_id = ids["web01"]
    point = run_operation(bridge, "create_recovery_point", {"vm_id": vm_id, "method": "vss", "consistency": "application",
                                                            "tag": "hyperv.backup:run1"})
    assert point["id"].startswith("vss:") and point["method"] == "vss" and point["shadow_present"] is True
    assert all("\\hyperv.backup\\vss\\" in d["path"] and d["live_path"] != d["path"] for d in point["disks"])
    marker = vss_points.describe(bridge, point["id"])
    assert marker["vm_id"] == vm_id and marker["mounts"] and marker["configuration_files"]
    configuration = run_operation(bridge, "get_vm_configuration", {"vm_id": vm_id, "recovery_point_id": point["id"]})
    assert configuration["files"]
    assert run_operation(bridge, "remove_recovery_point", {"vm_id": vm_id, "id": point["id"]})["removed"] is True
    assert run_operation(bridge, "get_recovery_points", {"vm_id": vm_id}) == []
    assert bridge.query("root\\cimv2", "Win32_ShadowCopy") == []


def test_vss_point_on_2008r2_uses_the_v1_namespace(tmp_path):
    _layout, bridge, ids = lab(tmp_path, "2008r2")
    point = run_operation(bridge, "create_recovery_point", {"vm_id": ids["web01"], "method": "vss", "consistency": "application",
                                                            "tag": "hyperv.backup:run1"})
    assert point["disks"][0]["format"] == "vhd" and point["disks"][0]["path"].endswith(".vhd")
    assert [p["id"] for p in run_operation(bridge, "get_recovery_points", {"vm_id": ids["web01"]})] == [point["id"]]
    assert run_operation(bridge, "remove_recovery_point", {"vm_id": ids["web01"], "id": point["id"]})["removed"] is True


def test_diskshadow_script_validates_every_value(tmp_path):
    _layout, bridge, _ids = lab(tmp_path)
    mounts = [{"alias": "hvb0", "volume": "C:\\", "mount": "C:\\ProgramData\\hyperv.backup\\vss\\w\\m0"}]
    text = vss_points.create_script(bridge, "{ABCDEF01-2345-6789-ABCD-EF0123456789}", mounts, "C:\\x\\backup.cab")
    lines = text.split("\r\n")
    assert lines[1:6] == ["set context persistent", "set metadata C:\\x\\backup.cab", "set verbose on", "begin backup",
                          "writer verify {66841cd4-6ded-4f4b-8f17-fd23f8ddc3de}"]
    assert "add volume C: alias hvb0" in lines and "expose %hvb0% C:\\ProgramData\\hyperv.backup\\vss\\w\\m0" in lines
    assert lines[-2] == "end backup" and "abcdef01-2345-6789-abcd-ef0123456789" in lines[0]
    for bad in ("C:\\a\r\nexit", "C:\\50%", "\\\\server\\share", 'C:\\a"b'):
        with pytest.raises(HostOperationError):
            vss_points.create_script(bridge, "abcdef01-2345-6789-abcd-ef0123456789", [dict(mounts[0], mount=bad)], "C:\\x.cab")
    with pytest.raises(HostOperationError):
        vss_points.create_script(bridge, "web01; exit", mounts, "C:\\x.cab")


def test_point_8_two_concurrent_vss_creates_on_one_host_both_succeed(tmp_path, monkeypatch):
    monkeypatch.setattr(vss_points, "SET_LOCK_POLL_SECONDS", 0.05)
    _layout, _bridge, ids = lab(tmp_path, "2012", vms=("web01", "web02"), quirks=["slow_shadow_create_seconds:0.5"])
    results, errors = {}, []

    def create(name):
        try:
            results[name] = run_operation(LabBridge(str(tmp_path), "hv1"), "create_recovery_point", {
                "vm_id": ids[name], "method": "vss", "consistency": "application", "tag": "hyperv.backup:run-" + name})
        except Exception as err:   # pylint: disable=broad-except
            errors.append(err)

    threads = [threading.Thread(target=create, args=(name,)) for name in ("web01", "web02")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and sorted(results) == ["web01", "web02"]
    assert results["web01"]["shadow_set_id"] != results["web02"]["shadow_set_id"]
    bridge = LabBridge(str(tmp_path), "hv1")
    assert len(bridge.query("root\\cimv2", "Win32_ShadowCopy")) == 2          # many sets may exist at once


def test_point_8_another_requestors_set_in_progress_is_retried(tmp_path, monkeypatch):
    sleeps = []
    monkeypatch.setattr(vss_points, "SLEEP", sleeps.append)
    _layout, inner, ids = lab(tmp_path, "2012")
    busy = {"left": 2}

    class OtherProduct(Recording):
        def diskshadow(self, script):
            if "create" in script.split("\r\n") and busy["left"]:
                busy["left"] -= 1
                return {"exit_code": -2147212522, "output": "StartSnapshotSet: VSS_E_SNAPSHOT_SET_IN_PROGRESS\r\n"}
            return self.inner.diskshadow(script)

    point = run_operation(OtherProduct(inner), "create_recovery_point", {"vm_id": ids["web01"], "method": "vss",
                                                                         "consistency": "application", "tag": "hyperv.backup:r"})
    assert point["shadow_present"] is True and busy["left"] == 0 and len(sleeps) == 2 and sleeps[1] > sleeps[0]


def test_point_8_serialization_counts_vss_points_of_siblings(tmp_path):
    _layout, bridge, ids = lab(tmp_path, "2008r2", vms=("web01", "web02"))
    session = BridgeSession(bridge)
    host_facts = session.run("get_host_info")
    vms = session.run("get_vms")
    first = [v for v in vms if v["id"] == ids["web01"]][0]
    second = [v for v in vms if v["id"] == ids["web02"]][0]
    key = rp.check_serialization(session, host_facts, first, vms)["serialization_key"]
    assert key
    rp.create_recovery_point(session, first, "vss", "application", "run-a", serialization_key=key)
    with pytest.raises(HostOperationError) as caught:
        rp.check_serialization(session, host_facts, second, session.run("get_vms"))
    assert caught.value.category == "busy" and "web01" in str(caught.value)
    # the queue lease refuses a second run on the same queue even without looking at points
    with pytest.raises(HostOperationError) as caught:
        session.run("create_recovery_point", vm_id=ids["web02"], method="vss", consistency="application",
                    tag="hyperv.backup:run-b", serialization_key=key)
    assert caught.value.category == "busy"
    point = session.run("get_recovery_points", vm_id=ids["web01"])[0]
    rp.remove_recovery_point(session, ids["web01"], point["id"])
    rp.check_serialization(session, host_facts, second, session.run("get_vms"))
    session.run("create_recovery_point", vm_id=ids["web02"], method="vss", consistency="application",
                tag="hyperv.backup:run-b", serialization_key=key)


# --- leases and stale cleanup ---------------------------------------------------------------------------------

def test_a_live_lease_blocks_stale_cleanup_and_an_expired_one_does_not(tmp_path):
    layout, bridge, ids = lab(tmp_path)
    session = BridgeSession(bridge)
    vm_id = ids["web01"]
    point = rp.create_recovery_point(session, vm_of(session, vm_id), "rct", "application", "run1")
    assert rp.clean_stale(session, vm_id, keep_run_id="run2") == []          # run1 is alive: its point stays
    assert [p["id"] for p in session.run("get_recovery_points", vm_id=vm_id)] == [point["id"]]
    with pytest.raises(HostOperationError) as caught:                        # and nobody else may start on the VM
        session.run("create_recovery_point", vm_id=vm_id, method="rct", consistency="application", tag="hyperv.backup:run2")
    assert caught.value.category == "busy" and "run1" in str(caught.value)
    host = layout.read_host()
    host["clock_offset_seconds"] = 3 * 3600                                  # the HOST's clock passes the lease
    layout.write_host(host)
    cleaned = rp.clean_stale(session, vm_id, keep_run_id="run2")
    assert [c["id"] for c in cleaned] == [point["id"]] and cleaned[0]["removed"] is True
    session.run("create_recovery_point", vm_id=vm_id, method="rct", consistency="application", tag="hyperv.backup:run2")


def test_point_8_vss_points_count_as_stray_checkpoints(tmp_path):
    from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import host_checks
    _layout, bridge, ids = lab(tmp_path, "2012")
    session = BridgeSession(bridge)
    vm_id = ids["web01"]
    point = session.run("create_recovery_point", vm_id=vm_id, method="vss", consistency="application", tag="hyperv.backup:old")
    entries = vss_points.checkpoint_entries(bridge, vm_id)
    assert entries == [{"id": point["id"], "name": "hyperv.backup:old", "type": "Recovery", "created": point["created"],
                        "ours": True, "method": "vss"}]
    vm = vm_of(session, vm_id)
    check = host_checks.stray_checkpoint_check(dict(vm, checkpoints=list(vm["checkpoints"]) + entries))
    assert check["ok"] is False and "hyperv.backup:old" in check["message"]


def test_the_run_lease_is_renewed_during_a_long_copy_and_not_recreated_after_hand_back(tmp_path):
    from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import locks
    layout, bridge, ids = lab(tmp_path)
    session = BridgeSession(bridge)
    vm_id = ids["web01"]
    point = rp.create_recovery_point(session, vm_of(session, vm_id), "rct", "application", "run1")
    renewer = rp.renew_lease(session, vm_id, "run1", interval=0.05)
    host = layout.read_host()
    host["clock_offset_seconds"] = locks.VM_LEASE_SECONDS - 60              # the copy has run for almost a lease
    layout.write_host(host)
    time.sleep(0.3)
    assert locks.vm_lease_holder(bridge, vm_id)["live"] is True and renewer.errors == []
    host["clock_offset_seconds"] = locks.VM_LEASE_SECONDS + 60              # past the first lease: renewed, still live
    layout.write_host(host)
    assert locks.vm_lease_holder(bridge, vm_id)["live"] is True
    assert rp.clean_stale(session, vm_id, keep_run_id="run2") == []
    renewer.stop()                                                          # stopped before the hand-back, as documented
    rp.convert_to_reference_point(session, vm_id, point["id"])           # hand-back releases the lease
    assert locks.vm_lease_holder(bridge, vm_id)["exists"] is False
    locks.vm_lease(bridge, vm_id, "run1").renew(create=False)              # a late renewal does not bring it back
    assert locks.vm_lease_holder(bridge, vm_id)["exists"] is False
    assert rp.renew_lease(object(), vm_id, "run1") is None                 # a session without a bridge


def test_target_snapshot_id_falls_back_to_null_when_empty_is_refused(tmp_path):
    _layout, inner, ids = lab(tmp_path)
    session = BridgeSession(inner)
    point = rp.create_recovery_point(session, vm_of(session, ids["web01"]), "rct", "application", "r1")
    reference = rp.convert_to_reference_point(session, ids["web01"], point["id"])["reference_point"]
    second = rp.create_recovery_point(session, vm_of(session, ids["web01"]), "rct", "application", "r2")
    disk = second["disks"][0]

    def empty_refused(method, arguments, result):
        if method == "GetVirtualDiskChanges" and arguments.get("TargetSnapshotId") == "":
            return {"ReturnValue": 32773, "out": {}, "job": None, "affected": []}
        return result

    bridge = Recording(inner, empty_refused)
    page = run_operation(bridge, "get_disk_changes", {"path": disk["path"], "limit_id": reference["rct_ids"][disk["disk_id"]],
                                                      "byte_offset": 0, "byte_length": disk["virtual_size"]})
    assert page["processed_byte_length"] == disk["virtual_size"]
    sent = [a["TargetSnapshotId"] for m, a in bridge.invoked if m == "GetVirtualDiskChanges"]
    assert sent[0] == "" and sent[-1] is None
    bridge.invoked[:] = []
    run_operation(bridge, "get_disk_changes", {"path": disk["path"], "limit_id": reference["rct_ids"][disk["disk_id"]],
                                               "byte_offset": 0, "byte_length": disk["virtual_size"]})
    assert [a["TargetSnapshotId"] for m, a in bridge.invoked if m == "GetVirtualDiskChanges"] == [None]   # remembered


def test_a_reference_point_whose_arrays_differ_in_length_is_listed_but_unusable(tmp_path):
    _layout, inner, ids = lab(tmp_path)
    session = BridgeSession(inner)
    point = rp.create_recovery_point(session, vm_of(session, ids["web01"]), "rct", "application", "r1")
    rp.convert_to_reference_point(session, ids["web01"], point["id"])

    class Uneven(Recording):
        def associators(self, namespace, path, assoc_class, result_class=None):
            found = self.inner.associators(namespace, path, assoc_class, result_class)
            if assoc_class == "Msvm_ReferencePointOfVirtualSystem":
                found = [dict(p, ResilientChangeTrackingIdentifiers=list(p["ResilientChangeTrackingIdentifiers"]) + ["extra"])
                         for p in found]
            return found

    listed = run_operation(Uneven(inner), "get_reference_points", {"vm_id": ids["web01"]})
    assert len(listed) == 1 and listed[0]["rct_ids"] == {} and "VirtualDiskIdentifiers" in listed[0]["problem"]
    ids_, why = planning.reference_rct_ids(Parent({"recovery_point": {"id": point["id"]}}), listed)
    assert ids_ is None and "cannot be used" in why
