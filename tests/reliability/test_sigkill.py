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

from ansible_collections.hyperv.backup.plugins.module_utils.lab_admin import churn, ensure_host, ensure_vm
from ansible_collections.hyperv.backup.plugins.module_utils.lab_host import LabTransport
from ansible_collections.hyperv.backup.plugins.module_utils.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository import Repository

from playbook_helpers import MiB, disk_bytes, our_recovery_points, restored_bytes, wrong_bytes

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

KILLS = int(os.environ.get("RELIABILITY_KILLS", "20"))
MODULES = Path(__file__).resolve().parents[2] / "plugins" / "modules"
RATE = 4 * MiB


def live_disk_path(work_dir, vm_id):
    """The VM's current disk file as the host reports it (a chain is read through by open_disk)."""
    vm = LabTransport(str(work_dir / "lab"), "hv1").run("get_vms", {"ids": [vm_id]})[0]
    return vm["disks"][0]["path"]


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
    window = max(seconds, 0.5) * 1.1
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
        lost += wrong_bytes(restored_bytes(repo, result["backup_id"])[0], disk_bytes(live_disk))
        assert lost == 0, "backup %s after kill %d restores wrong bytes" % (result["backup_id"], iteration)
        fault_ledger.record("SIGKILL of the backup module's process group at a random point",
                            "killed %s: nothing half listed, verify ok, next run cleaned up and succeeded" % where if killed
                            else "run finished before the kill (counted as a normal run)", data_lost=lost)
    final = Repository.open(str(repo_dir))
    assert set(r.backup_id for r in final.list_backups()) == known and final.verify()["ok"]
    assert killed_runs >= KILLS // 2, "most kills must land inside a run (window %.1f s)" % window
    fault_ledger.record("recovery point left by a killed run", "removed by the next run's cleanup", injected=leftovers_cleaned,
                        data_lost=0)
