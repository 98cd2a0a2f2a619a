"""SIGKILL at random points of a backup, many times: the repository stays consistent and the next run recovers.

The real hyperv_backup module runs as its own process (the way Ansible runs it, minus the controller:
``python hyperv_backup.py args.json``) in a new process group, against a lab host, with a read rate
limit so that a run lasts about a second. After a random delay the whole group gets SIGKILL. Then:
no half backup is listed, verify passes, and a normal run succeeds, removes the recovery checkpoint the
killed run left behind (``hyperv_recovery_point state=cleaned`` first, as the hyperv_backup role does),
and its backup restores to exactly the VM's disk. RELIABILITY_KILLS sets the
number of kills (default 20).
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_admin import churn, ensure_host, ensure_vm
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository

from playbook_helpers import MiB, disk_bytes, our_recovery_points, restored_bytes, wrong_bytes
from storage_age import age
from test_repository import CHUNK, image, read_all, write_backup

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

KILLS = int(os.environ.get("RELIABILITY_KILLS", "20"))
MODULES = Path(__file__).resolve().parents[2] / "plugins" / "modules"
RATE = 4 * MiB


def live_disk_path(work_dir, vm_id):
    """The VM's current disk file (a chain is read through by open_disk): the Windows path the host reports,
    mapped to the lab's file."""
    lab = LabTransport(str(work_dir / "lab"), "hv1")
    vm = lab.run("get_vms", {"ids": [vm_id]})[0]
    return lab.local(vm["disks"][0]["path"])


def run_module(args_file, kill_after=None, module="hyperv_backup"):
    """Run the module; with ``kill_after`` SIGKILL its process group after that many seconds.

    Returns (killed, returncode, parsed result or None, seconds).
    """
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(MODULES / (module + ".py")), str(args_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    killed = False
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
    out, err = proc.communicate(timeout=300)
    result = None
    if not killed:
        try:
            result = json.loads(out.decode("utf-8"))
        except ValueError:
            raise AssertionError("module printed no JSON (rc %s): %s %s" % (proc.returncode, out[-2000:], err[-2000:]))
    return killed, proc.returncode, result, time.monotonic() - started


def test_repeated_sigkill_during_backups(tmp_path, fault_ledger):
    lab, repo_dir = tmp_path / "lab", tmp_path / "repo"
    layout = LabLayout(str(lab), "hv1")
    ensure_host(layout, services={"vss": "Running"})
    ensure_vm(layout, {"name": "web01", "disks": [{"size": 16 * MiB, "fill": {"seed": 1, "percent": 70}}]})
    Repository.init(str(repo_dir), chunk_size=MiB)
    connection = {"transport": "lab", "lab_directory": str(lab), "host": "hv1", "vm": "web01"}
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(connection, repository=str(repo_dir), read_rate_limit=RATE)}))
    clean_file = tmp_path / "clean.json"
    clean_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(connection, state="cleaned")}))
    _killed, rc, first, _seconds = run_module(args_file)
    assert rc == 0 and not first.get("failed"), first
    vm_id = first["vm_id"]
    churn(layout, "web01", seed=99, writes=6, write_size=512 * 1024)
    _killed, rc, second, seconds = run_module(args_file)          # an incremental like the ones killed below
    assert rc == 0 and second["type"] == "incremental", second
    window = seconds * 0.9      # kills land within a run as long as the runs, so most of them hit a running backup
    rng = random.Random(int(os.environ.get("RELIABILITY_SEED", "20261125")))
    known = {first["backup_id"], second["backup_id"]}
    killed_runs = finished_first = leftovers_cleaned = 0
    seen_markers = set()
    for iteration in range(KILLS):
        churn(layout, "web01", seed=100 + iteration, writes=6, write_size=512 * 1024)
        killed, rc, result, _seconds = run_module(args_file, kill_after=rng.uniform(0.05, window))
        if killed:
            killed_runs += 1
        else:
            finished_first += 1
            assert rc == 0 and not result.get("failed"), result
            known.add(result["backup_id"])
        repo = Repository.open(str(repo_dir))
        markers = set(r.backup_id for r in repo.list_backups(include_in_progress=True) if r.state != "complete")
        writing, seen_markers = markers - seen_markers, markers      # a dead writer's marker stays until it times out
        leftover = len(our_recovery_points(tmp_path, "hv1", vm_id))
        if killed:
            where = ("while writing to the repository" if writing else
                     "holding a recovery point" if leftover else "before the recovery point (or after the run)")
        listed = repo.list_backups()
        assert all(r.state == "complete" for r in listed)
        assert repo.verify()["ok"]
        # a run killed after its commit (before it could print its result) leaves a complete backup: it must be right
        extra = [r.backup_id for r in listed if r.backup_id not in known]
        assert len(extra) <= (1 if killed else 0) and known <= set(r.backup_id for r in listed), (extra, known)
        lost = 0
        if extra:
            where = "after its commit (backup complete)"
            lost = wrong_bytes(restored_bytes(repo, extra[0])[0], disk_bytes(live_disk_path(tmp_path, vm_id)))
            assert lost == 0, "the backup %s committed by a killed run restores wrong bytes" % extra[0]
            known.add(extra[0])
        # the next run recovers: cleans up the leftover recovery point, succeeds, and backs up the right bytes
        _k, rc, cleaned, _s = run_module(clean_file, module="hyperv_recovery_point")
        assert rc == 0 and not cleaned.get("failed"), cleaned
        assert our_recovery_points(tmp_path, "hv1", vm_id) == []
        leftovers_cleaned += leftover
        _k, rc, result, _s = run_module(args_file)
        assert rc == 0 and not result.get("failed"), result
        known.add(result["backup_id"])
        assert our_recovery_points(tmp_path, "hv1", vm_id) == []
        live_disk = result["disks"][0]["path"]
        lost += wrong_bytes(restored_bytes(repo, result["backup_id"])[0], disk_bytes(live_disk, tmp_path))
        assert lost == 0, "backup %s after kill %d restores wrong bytes" % (result["backup_id"], iteration)
        fault_ledger.record("SIGKILL of the backup module's process group at a random point",
                            "killed %s: nothing half listed, verify ok, next run cleaned up and succeeded" % where if killed
                            else "run finished before the kill (counted as a normal run)", data_lost=lost)
    final = Repository.open(str(repo_dir))
    assert set(r.backup_id for r in final.list_backups()) == known and final.verify()["ok"]
    assert killed_runs >= KILLS // 2, "most kills must land inside a run (window %.1f s)" % window
    fault_ledger.record("recovery point left by a killed run", "removed by the next run's cleanup", injected=leftovers_cleaned,
                        data_lost=0)


def _restore_and_prune_setup(tmp_path, backups=4):
    """A lab VM with ``backups`` backups (guest writes between them); returns (connection, repo_dir, results)."""
    lab, repo_dir = tmp_path / "lab", tmp_path / "repo"
    layout = LabLayout(str(lab), "hv1")
    ensure_host(layout, services={"vss": "Running"})
    ensure_vm(layout, {"name": "web01", "disks": [{"size": 16 * MiB, "fill": {"seed": 2, "percent": 80}}]})
    Repository.init(str(repo_dir), chunk_size=MiB)
    connection = {"transport": "lab", "lab_directory": str(lab), "host": "hv1"}
    args_file = tmp_path / "backup.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(connection, vm="web01", repository=str(repo_dir))}))
    results = []
    for number in range(backups):
        if number:
            churn(layout, "web01", seed=number, writes=8, write_size=MiB)
        _k, rc, result, _s = run_module(args_file)
        assert rc == 0 and not result.get("failed"), result
        results.append(result)
    return connection, repo_dir, results


def test_repeated_sigkill_during_restores(tmp_path, fault_ledger):
    """A killed restore never leaves a wrong or half file under the target name; the next restore works."""
    _connection, repo_dir, results = _restore_and_prune_setup(tmp_path, backups=1)
    backup_id = results[0]["backup_id"]
    repo = Repository.open(str(repo_dir))
    expected = restored_bytes(repo, backup_id)[0]
    destination = tmp_path / "restored"
    args_file = tmp_path / "restore.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        "repository": str(repo_dir), "backup_id": backup_id, "destination": str(destination), "force": True}}))
    _k, rc, result, seconds = run_module(args_file, module="hyperv_restore")
    assert rc == 0 and not result.get("failed"), result
    target = result["disks"][0]["path"]
    os.unlink(target)
    rng = random.Random(7)
    for _iteration in range(max(4, KILLS // 2)):
        killed, rc, result, _s = run_module(args_file, kill_after=rng.uniform(0.05, max(seconds, 0.5) * 1.1), module="hyperv_restore")
        exists = os.path.exists(target)
        lost = wrong_bytes(disk_bytes(target), expected) if exists else 0
        assert lost == 0, "a killed restore left a wrong file at %s" % target
        _k, rc, again, _s = run_module(args_file, module="hyperv_restore")       # the next restore succeeds
        assert rc == 0 and not again.get("failed"), again
        assert wrong_bytes(disk_bytes(target), expected) == 0
        leftovers = [name for name in os.listdir(destination) if name != os.path.basename(target)]
        assert not leftovers, "temporary files left: %s" % leftovers
        fault_ledger.record("SIGKILL of a restore at a random point",
                            ("killed: %s; next restore ok, no temporary file left" % (
                                "the previous complete file stayed" if exists else "no file at the target name"))
                            if killed else "restore finished before the kill", data_lost=lost)


def test_repeated_sigkill_during_prune_and_gc(tmp_path, fault_ledger):
    """A killed prune/GC leaves only whole backups that verify; its lock dies with it; the next prune finishes the job."""
    repo_dir = tmp_path / "repo"
    repo = Repository.init(str(repo_dir), chunk_size=CHUNK)
    prune_file = tmp_path / "prune.json"
    prune_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        "repository": str(repo_dir), "state": "pruned", "keep_last": 1, "gc_grace_minutes": 15}}))
    expected = {}
    rng = random.Random(11)
    kills, seconds = 0, None
    for iteration in range(max(4, KILLS // 2)):
        for number in range(4):          # new backups, so every prune has records to drop and chunks to collect
            data = image(1000 * iteration + number, chunks=60)
            newest = write_backup(repo, data, vm_id="vm-p", vm_name="prunable").backup_id
            expected[newest] = data
        age(repo.store, "chunks/", 3600)        # older than the 15-minute grace (storage time): GC has chunks to delete
        age(repo.store, "manifests/", 3600)
        if seconds is None:
            _k, rc, result, seconds = run_module(prune_file, module="hyperv_backup_repository")   # measures a whole run
            assert rc == 0 and not result.get("failed"), result
            continue
        # Within the run as measured (a prune takes a few tenths of a second), so that kills do land; the first
        # part of that window is interpreter start-up, the rest prune and GC at work.
        killed, _rc, _result, _s = run_module(prune_file, kill_after=rng.uniform(0.3 * seconds, 0.9 * seconds),
                                              module="hyperv_backup_repository")
        kills += killed
        repo = Repository.open(str(repo_dir))
        listed = [r.backup_id for r in repo.list_backups()]
        assert newest in listed and repo.verify()["ok"]       # the newest is always kept
        lost = sum(wrong_bytes(read_all(repo, backup_id), expected[backup_id]) for backup_id in listed)
        assert lost == 0
        fault_ledger.record("SIGKILL of prune + GC at a random point", "killed: remaining backups verify and restore exactly"
                            if killed else "prune finished before the kill", data_lost=lost)
    _k, rc, result, _s = run_module(prune_file, module="hyperv_backup_repository")   # not blocked by a dead holder's lock
    assert rc == 0 and not result.get("failed"), result
    repo = Repository.open(str(repo_dir))
    assert [r.backup_id for r in repo.list_backups()] == [newest] and repo.verify()["ok"]
    age(repo.store, "chunks/", 3600)
    assert repo.gc()["chunks_removed"] == 0       # the last prune's GC already took every orphan
    assert kills >= 1


# A process that took a VM lease and then died: the lease names the process (hyperv/locks.py), so on this proxy it
# stops counting at once; the point of a hyperv_recovery_point task (handed back by a later task) must not.
HOLD_LEASE = """
import sys, time
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
point = LabTransport(sys.argv[1], "hv1").run("create_recovery_point", {"vm_id": sys.argv[2], "method": sys.argv[3],
    "consistency": "application_or_crash", "tag": "hyperv.backup:killed-holder"})
print(point["id"], flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("method", ["rct", "vss"])
def test_lease_of_a_killed_process_does_not_block_recovery(tmp_path, method, fault_ledger):
    lab = tmp_path / "lab"
    layout = LabLayout(str(lab), "hv1")
    ensure_host(layout, services={"vss": "Running"})
    _changed, vm = ensure_vm(layout, {"name": "web01", "disks": [{"size": 4 * MiB}]})
    host = LabTransport(str(lab), "hv1")
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, str(lab), vm["id"], method], stdout=subprocess.PIPE,
                            start_new_session=True)
    try:
        point_id = proc.stdout.readline().decode().strip()
        assert point_id, "the holder created no recovery point"
        # while the holder lives, its point is held and the VM is busy for anyone else
        held = [p for p in host.run("get_recovery_points", {"vm_id": vm["id"]}) if p["id"] == point_id]
        assert held and held[0]["held_by_live_run"] is True
        with pytest.raises(Exception) as busy:
            host.run("create_recovery_point", {"vm_id": vm["id"], "method": method, "consistency": "application_or_crash",
                                               "tag": "hyperv.backup:second"})
        assert getattr(busy.value, "category", None) == "busy", busy.value
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    # the holder is gone: its point is stale at once (not after the lease's hours), cleanup removes it, a new run works
    points = [p for p in host.run("get_recovery_points", {"vm_id": vm["id"]}) if p["id"] == point_id]
    assert points and points[0]["held_by_live_run"] is False
    clean_file = tmp_path / "clean.json"
    clean_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"transport": "lab", "lab_directory": str(lab), "host": "hv1",
                                                              "vm": "web01", "state": "cleaned"}}))
    _k, rc, cleaned, _s = run_module(clean_file, module="hyperv_recovery_point")
    assert rc == 0 and [p["id"] for p in cleaned["stale_removed"]] == [point_id], cleaned
    again = host.run("create_recovery_point", {"vm_id": vm["id"], "method": method, "consistency": "application_or_crash",
                                               "tag": "hyperv.backup:after-kill"})
    host.run("remove_recovery_point", {"vm_id": vm["id"], "id": again["id"]})
    assert our_recovery_points(tmp_path, "hv1", vm["id"]) == []
    fault_ledger.record("SIGKILL of a process holding a VM lease (%s point)" % method,
                        "lease not live once its process is gone; cleanup removed the point; next create ok", data_lost=0)


def test_point_of_a_recovery_point_task_stays_held_after_the_task(tmp_path):
    """hyperv_recovery_point state=present ends its process, but its point is handed back by a later task: the lease
    outlives the process (expiry only), so another run's cleanup keeps the point and the VM stays busy."""
    lab = tmp_path / "lab"
    layout = LabLayout(str(lab), "hv1")
    ensure_host(layout, services={"vss": "Running"})
    _changed, vm = ensure_vm(layout, {"name": "web01", "disks": [{"size": 4 * MiB}]})
    connection = {"transport": "lab", "lab_directory": str(lab), "host": "hv1", "vm": "web01"}
    present = tmp_path / "present.json"
    present.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(connection, state="present", run_id="task-run")}))
    _k, rc, created, _s = run_module(present, module="hyperv_recovery_point")
    assert rc == 0 and not created.get("failed"), created
    point_id = created["recovery_point"]["id"]
    clean_file = tmp_path / "clean.json"
    clean_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(connection, state="cleaned", run_id="other-run")}))
    _k, rc, cleaned, _s = run_module(clean_file, module="hyperv_recovery_point")
    assert rc == 0 and cleaned["stale_removed"] == [], cleaned
    assert [p["id"] for p in our_recovery_points(tmp_path, "hv1", vm["id"])] == [point_id]
    absent = tmp_path / "absent.json"
    absent.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(connection, state="absent", id=point_id)}))
    _k, rc, removed, _s = run_module(absent, module="hyperv_recovery_point")
    assert rc == 0 and not removed.get("failed"), removed
    assert our_recovery_points(tmp_path, "hv1", vm["id"]) == []
