"""Load: 50 VMs on 5 lab hosts backed up into one repository by parallel module processes, twice (full,
then incremental after guest writes), while prune and GC run again and again beside them, at the enforced minimum grace
(15 min) with every chunk and manifest made an hour old (storage time) before each run: only the protocol between GC
and the writers (issue 13) keeps the running backups' chunks, not their age.

Every backup must complete, the repository must verify, and each VM's latest backup must restore to
exactly its disk. RELIABILITY_LOAD_VMS (default 50) and RELIABILITY_LOAD_FORKS (default 5) scale it.
"""
import concurrent.futures
import json
import os
import threading

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_admin import churn, ensure_host, ensure_vm
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository

from playbook_helpers import MiB, disk_bytes, restored_bytes, wrong_bytes
from storage_age import age
from test_sigkill import run_module

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

VMS = int(os.environ.get("RELIABILITY_LOAD_VMS", "50"))
FORKS = int(os.environ.get("RELIABILITY_LOAD_FORKS", "5"))
HOSTS = 5


def _args(tmp_path, name, args):
    path = tmp_path / "args" / ("%s.json" % name)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    return path


def test_fifty_vms_five_hosts_one_repository_with_prune_and_gc_running(tmp_path, fault_ledger):
    lab, repo_dir = tmp_path / "lab", tmp_path / "repo"
    vms = []
    for host_index in range(HOSTS):
        host = "hv%d" % (host_index + 1)
        layout = LabLayout(str(lab), host)
        ensure_host(layout, services={"vss": "Running"})
        for vm_index in range(host_index, VMS, HOSTS):
            name = "vm%02d" % vm_index
            # a shared base pattern (seed 1) on every disk plus each VM's own data: dedup across VMs is exercised
            ensure_vm(layout, {"name": name, "disks": [{"size": 2 * MiB, "fill": {"seed": 1 + vm_index % 3, "percent": 50}}]})
            vms.append((host, name, layout))
    Repository.init(str(repo_dir), chunk_size=256 * 1024)
    common = {"transport": "lab", "lab_directory": str(lab), "repository": str(repo_dir)}
    backup_args = dict((name, _args(tmp_path, name, dict(common, host=host, vm=name))) for host, name, _l in vms)
    prune_args = _args(tmp_path, "prune", {"repository": str(repo_dir), "state": "pruned", "keep_last": 1,
                                           "gc_grace_minutes": 15, "lock_wait_seconds": 120})
    stop = threading.Event()
    prunes = []

    store = Repository.open(str(repo_dir)).store

    def prune_and_gc_loop():
        while not stop.is_set():
            age(store, "chunks/", 3600)
            age(store, "manifests/", 3600)
            _k, rc, result, _s = run_module(prune_args, module="hyperv_backup_repository")
            prunes.append((rc, result))

    results = {}
    pruner = threading.Thread(target=prune_and_gc_loop, daemon=True)
    pruner.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(FORKS) as pool:
            for round_number in (1, 2):
                if round_number == 2:
                    for _host, name, layout in vms:
                        churn(layout, name, seed=round_number * 1000 + int(name[2:]), writes=4, write_size=64 * 1024)
                futures = dict((pool.submit(run_module, backup_args[name]), name) for _host, name, _l in vms)
                for future in concurrent.futures.as_completed(futures):
                    _k, rc, result, _s = future.result()
                    results.setdefault(futures[future], []).append(result)
                    assert rc == 0 and not result.get("failed"), "%s round %d: %s" % (
                        futures[future], round_number, result.get("msg"))
    finally:
        stop.set()
        pruner.join(timeout=300)
    assert prunes and all(rc == 0 and not r.get("failed") for rc, r in prunes), [r.get("msg") for _rc, r in prunes]
    repo = Repository.open(str(repo_dir))
    report = repo.verify()
    assert report["ok"], report["damaged_backups"]
    lost = 0
    for host, name, _layout in vms:
        latest = results[name][-1]
        assert latest["type"] in ("incremental", "full")
        lost += wrong_bytes(restored_bytes(repo, latest["backup_id"])[0], disk_bytes(latest["disks"][0]["path"], tmp_path, host))
    assert lost == 0
    assert {r.vm_name for r in repo.list_backups()} == {name for _h, name, _l in vms}
    removed = sum(len((r.get("prune") or r).get("removed") or []) for _rc, r in prunes)
    fault_ledger.record("load: %d VMs on %d lab hosts, %d parallel backup processes, 2 rounds" % (VMS, HOSTS, FORKS),
                        "all %d backups complete; verify ok; latest of each VM restores exactly" % (2 * len(vms)),
                        injected=2 * len(vms), data_lost=lost)
    fault_ledger.record("prune + GC (chunks aged past the grace) running during the load", "%d prune/GC runs, %d backups removed, no running "
                        "backup harmed" % (len(prunes), removed), injected=len(prunes), data_lost=0)
