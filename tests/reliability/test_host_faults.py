"""Host faults through the real modules (ansible-playbook against a lab host).

Each scenario: a first backup succeeds; the guest writes; the fault is injected; a second backup runs;
the fault is cleared; a third backup runs. The second must end as the scenario says -- a clear error
of the right category, or a (full) backup with the reason -- and never as a wrong backup: every backup
that succeeded is restored from the repository and compared byte for byte with a copy of the VM's disk
taken right after it. Nothing half done may be listed, the repository must verify, and no recovery
checkpoint of ours may be left on the VM after the last run.
"""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout

from playbook_helpers import (
    MiB, backup_task, lab_task, open_repo, our_recovery_points, repository_task, restored_bytes, run_tasks,
    snapshot_task, wrong_bytes)

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]   # two playbooks each: 10-40 s

DISK = 4 * MiB
SETUP = [lab_task(era="2022", services={"vss": "Running"},
                  vms=[{"name": "web01", "disks": [{"size": DISK, "fill": {"seed": 1, "percent": 60}}]}]),
         repository_task()]


def rename_vm(work_dir, old, new):
    """What an administrator's Rename-VM does: same VM id, new name (no lab module option for it)."""
    layout = LabLayout(str(work_dir / "lab"), "hv1")
    with layout.host_lock():
        host = layout.read_host()
        vm_id = [i for i, name in host["vms"].items() if name == old][0]
        with layout.vm_lock(vm_id):
            vm = layout.read_vm(vm_id)
            vm["name"] = new
            layout.write_vm(vm)
        host["vms"][vm_id] = new
        layout.write_host(host)


# name: (inject tasks, python action, clear tasks, vm name for b2/b3, expected b2: ("fail", categories) or ("ok", types)
#        [, extra options of the second backup])
SCENARIOS = {
    "host unreachable": ([lab_task(faults=["unreachable"])], None, [lab_task(faults=[])], "web01", ("fail", {"unreachable"})),
    "credentials refused": ([lab_task(faults=["auth_fails"])], None, [lab_task(faults=[])], "web01", ("fail", {"authentication"})),
    "VSS service will not start (RCT backup: not needed)": (
        [lab_task(services={"vss": "Stopped"}, faults=["service_wont_start:vss"])], None, [lab_task(faults=[])], "web01",
        ("ok", {"incremental"})),
    "VSS service will not start (VSS backup)": (
        [lab_task(services={"vss": "Stopped"}, faults=["service_wont_start:vss"])], None, [lab_task(faults=[])], "web01",
        ("fail", {"service"}), {"method": "vss"}),
    "integration service missing": ([lab_task(faults=["integration_missing"])], None, [lab_task(faults=[])], "web01",
                                    ("fail", {"integration"})),
    "integration service not answering": ([lab_task(faults=["integration_no_contact"])], None, [lab_task(faults=[])], "web01",
                                          ("fail", {"integration"})),
    "recovery point creation fails": ([lab_task(faults=["recovery_point_fails"])], None, [lab_task(faults=[])], "web01",
                                      ("fail", {"recovery_point"})),
    "VSS writer failed (RCT backup: not needed)": (
        [lab_task(faults=["vss_writer_failed"])], None, [lab_task(faults=[])], "web01", ("ok", {"incremental"})),
    "VSS writer failed (VSS backup)": ([lab_task(faults=["vss_writer_failed"])], None, [lab_task(faults=[])], "web01",
                                       ("fail", {"service", "recovery_point", "failed"}), {"method": "vss"}),
    "RCT id invalid": ([lab_task(faults=["rct_invalid"])], None, [lab_task(faults=[])], "web01", ("ok", {"full"})),
    "disk resized between backups": ([lab_task(resize_disk={"vm": "web01", "disk": 0, "size": 6 * MiB})], None, [], "web01",
                                     ("ok", {"full", "incremental"})),
    "VM renamed": ([], ("rename", "web01", "web01-renamed"), [], "web01-renamed", ("ok", {"full", "incremental"})),
    "VM deleted": ([lab_task(vms=[{"name": "web01", "present": False}])], None,
                   [lab_task(vms=[{"name": "web01", "disks": [{"size": DISK, "fill": {"seed": 9, "percent": 30}}]}])], "web01",
                   ("fail", {"not_found"})),
}


def _outcome(result):
    if result.get("failed"):
        return "fail", result.get("category") or result.get("error_type")
    return "ok", result.get("type")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_host_fault_gives_the_right_outcome(scenario, tmp_path, fault_ledger):
    inject, action, clear, vm_name, (expected, allowed) = SCENARIOS[scenario][:5]
    b2_options = SCENARIOS[scenario][5] if len(SCENARIOS[scenario]) > 5 else {}
    first, registered = run_tasks(tmp_path, SETUP + [backup_task("b1", ignore_errors=False), snapshot_task("b1", "after_b1.raw")],
                                  collect=["b1"])
    assert first.rc == 0, first.output[-5000:]
    b1 = registered["b1"]
    vm_id = b1["vm_id"]
    if action:
        rename_vm(tmp_path, action[1], action[2])
    second_play = ([lab_task(churn=[{"vm": "web01", "seed": 5, "writes": 12}])] if action is None else []) + inject + [
        backup_task("b2", vm=vm_name, **b2_options), snapshot_task("b2", "after_b2.raw")] + clear + [
        backup_task("b3", vm=vm_name), snapshot_task("b3", "after_b3.raw"),
        {"name": "list", "hyperv.backup.hyperv_backup_info": {"repository": "{{ repository_path }}"}, "register": "info"},
        repository_task(state="verified", register="verified")]
    if action is not None:
        second_play.insert(0, lab_task(churn=[{"vm": vm_name, "seed": 5, "writes": 12}]))
    second, registered = run_tasks(tmp_path, second_play, collect=["b2", "b3", "info", "verified"])
    assert second.rc == 0 and registered, second.output[-8000:]
    b2, b3 = registered["b2"], registered["b3"]
    outcome, detail = _outcome(b2)

    # 1. the second run ends as it should, with a message that says what and what to do
    assert outcome == expected and detail in allowed, "%s: expected %s %s, got %s %s: %s" % (
        scenario, expected, allowed, outcome, detail, b2.get("msg"))
    if outcome == "fail":
        assert b2.get("msg") and b2.get("hint"), b2
    elif detail == "full" and scenario != "VM deleted":
        assert b2.get("type_reason"), b2
    # 2. the run after the fault is cleared succeeds
    assert not b3.get("failed"), b3.get("msg")
    # 3. exactly the successful backups are listed, and they verify
    repo = open_repo(tmp_path)
    listed = sorted(r.backup_id for r in repo.list_backups())
    wanted = sorted(r["backup_id"] for r in (b1, b2, b3) if not r.get("failed"))
    assert listed == wanted, (listed, wanted)
    assert registered["verified"].get("failed") is not True, registered["verified"]
    assert repo.verify()["ok"]
    # 4. every successful backup restores to exactly the disk it was taken from
    lost = 0
    for name, result in (("b1", b1), ("b2", b2), ("b3", b3)):
        snapshot = tmp_path / ("after_%s.raw" % name)       # the guest's bytes right after the backup (snapshot_task)
        if result.get("failed"):
            assert not snapshot.exists()
            continue
        lost += wrong_bytes(restored_bytes(repo, result["backup_id"])[0], snapshot.read_bytes())
    assert lost == 0
    # 5. no recovery checkpoint of ours is left behind
    current_id = b3.get("vm_id", vm_id)
    assert our_recovery_points(tmp_path, "hv1", current_id) == []
    fault_ledger.record("host: %s" % scenario, "%s (%s)%s; next run ok" % (
        "clear error" if outcome == "fail" else "backup", detail,
        "" if outcome == "fail" or detail != "full" else ", reason given"), data_lost=lost)
