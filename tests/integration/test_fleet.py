"""A fleet backup run: 3 lab hosts (one inventory host each), 12 VMs, forks, one failing VM, a 2008 R2 CSV host.

Run 1 backs up every VM with playbooks/backup.yml. Then one VM gets a fault (its recovery point fails) and
run 2 backs up again with retention keep_last=1. Checks:
* run 2 ends failed and names the failing VM; the other 11 succeed and are in the catalogue;
* retention pruned the VMs backed up in run 2 to one backup each, but never touched the failed VM (it keeps
  its run-1 backup);
* on the 2008 R2 CSV host, the start/end times of VMs with the same serialization key never overlap, while
  hosts did run in parallel (some VMs of different hosts overlap);
* a named VM that does not exist is reported as a failure, not silently skipped; a closed window skips VMs;
* the restore role's restore test passes for a backed-up VM and refuses a VM without backups.
"""
import json
import textwrap

import pytest
import yaml

from workflow_helpers import PLAYBOOKS, load_json, run_playbook

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FLEET = {
    "fleet-hv2016": {"era": "2016", "vms": ["web01", "web02", "app01", "app02"]},
    "fleet-hv2022": {"era": "2022", "vms": ["sql01", "sql02", "dc01", "file01"]},
    "fleet-hv2008r2": {"era": "2008r2", "csv": "C:\\ClusterStorage\\Volume1", "vms": ["old01", "old02", "old03", "old04"]},
}
FAILING = ("fleet-hv2022", "sql02")
DISK = {"size": 64 * 1024 * 1024, "fill": {"seed": 3, "percent": 10}}


def _inventory(base, **host_vars):
    group_vars = {"ansible_connection": "local", "hyperv_backup_proxy": "localhost",
                  "hyperv_connection": {"transport": "lab", "host": "{{ inventory_hostname }}",
                                        "lab_directory": str(base / "lab")},
                  "hyperv_repository": {"repository": str(base / "repository")},
                  "hyperv_backup_report_directory": str(base / "reports")}
    group_vars.update(host_vars)
    path = base / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"children": {"hyperv_hosts": {
        "vars": group_vars, "hosts": dict((name, {}) for name in FLEET)}}}}))
    return path


def _lab_play(base, faults=None):
    """A play that builds (or updates) the lab hosts; faults: {(host, vm): [fault, ...]}."""
    tasks = []
    for host, spec in FLEET.items():
        vms = []
        for name in spec["vms"]:
            vm = {"name": name, "disks": [DISK], "faults": (faults or {}).get((host, name), [])}
            if spec.get("csv"):
                vm["csv"] = spec["csv"]
            vms.append(vm)
        args = {"lab_directory": str(base / "lab"), "host": host, "era": spec["era"], "services": {"vss": "Running"},
                "vms": vms}
        if spec.get("csv"):
            args.update(cluster={"name": "OLDCLUSTER"}, csvs=[spec["csv"]])
        tasks.append({"name": "Lab host %s" % host, "hyperv.backup.hyperv_lab": args})
    path = base / "lab.yml"
    path.write_text(json.dumps([{"name": "Build the fleet", "hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    proc = run_playbook(path)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]


def _catalog(base):
    play = base / "catalog.yml"
    play.write_text(textwrap.dedent("""\
        - name: Read the catalogue
          hosts: localhost
          gather_facts: false
          tasks:
            - name: List the backups
              hyperv.backup.hyperv_backup_info:
                repository: "{{ repo }}"
              register: catalog
            - name: Save them
              ansible.builtin.copy:
                content: "{{ catalog.backups | to_json }}"
                dest: "{{ out }}"
                mode: "0600"
        """))
    proc = run_playbook(play, extra_vars={"repo": str(base / "repository"), "out": str(base / "catalog.json")})
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    return load_json(base / "catalog.json")


def _intervals(report, host):
    return [(vm["serialization_key"], vm["started"], vm["finished"], vm["vm"])
            for vm in report["vms"] if vm["host"] == host and vm["started"] and vm["finished"]]


def _assert_serialised(report):
    csv_runs = _intervals(report, "fleet-hv2008r2")
    assert len(csv_runs) == 4 and all(key for key, _s, _f, _v in csv_runs), csv_runs
    by_key = {}
    for key, start, end, vm in csv_runs:
        by_key.setdefault(key, []).append((start, end, vm))
    for key, runs in by_key.items():
        runs.sort()
        for (s1, e1, v1), (s2, e2, v2) in zip(runs, runs[1:]):
            assert e1 <= s2, "%s and %s on %s overlap: %s-%s and %s-%s" % (v1, v2, key, s1, e1, s2, e2)


def test_fleet_backup_with_a_failing_vm(tmp_path):
    _lab_play(tmp_path)
    inventory = _inventory(tmp_path)
    first = run_playbook(PLAYBOOKS / "backup.yml", "--forks", "4", inventory=inventory,
                         extra_vars={"hyperv_backup_run_id": "run1"})
    assert first.returncode == 0, first.stdout[-8000:] + first.stderr[-3000:]
    run1 = load_json(tmp_path / "reports" / "run1.json")
    assert run1["status"] == "successful" and run1["summary"]["succeeded"] == 12, run1["problems"]
    _assert_serialised(run1)
    # The hosts ran side by side: some VMs of different hosts were being backed up at the same time.
    spans = [(vm["started"], vm["finished"], vm["host"]) for vm in run1["vms"]]
    assert any(s1 < e2 and s2 < e1 and h1 != h2 for s1, e1, h1 in spans for s2, e2, h2 in spans), spans

    _lab_play(tmp_path, faults={FAILING: ["recovery_point_fails"]})
    second = run_playbook(PLAYBOOKS / "backup.yml", "--forks", "4", inventory=inventory,
                          extra_vars={"hyperv_backup_run_id": "run2", "hyperv_backup_retention": {"keep_last": 1}})
    assert second.returncode != 0
    assert "1 of 12 VMs not backed up: sql02 on fleet-hv2022" in second.stdout, second.stdout[-8000:]
    run2 = load_json(tmp_path / "reports" / "run2.json")
    assert run2["status"] == "failed"
    assert [(p["host"], p["vm"], p["status"]) for p in run2["problems"]] == [FAILING + ("failed",)]
    assert run2["problems"][0]["error"]
    assert run2["summary"]["succeeded"] == 11
    _assert_serialised(run2)
    assert load_json(tmp_path / "reports" / "latest.json")["run_id"] == "run2"
    assert [h["run_id"] for h in run2["history"]][-2:] == ["run1", "run2"]

    backups = _catalog(tmp_path)
    per_vm = {}
    for backup in backups:
        per_vm.setdefault((backup["host"].lower(), backup["vm_name"]), []).append(backup)
    assert len(per_vm) == 12
    run2_ids = {vm["backup_id"] for vm in run2["vms"] if vm["status"] == "success"}
    run1_ids = {(vm["host"], vm["vm"]): vm["backup_id"] for vm in run1["vms"]}
    for (host, vm), items in per_vm.items():
        if (host, vm) == (FAILING[0].lower(), FAILING[1]):
            # The failed VM keeps its older copy: retention never runs for a VM without a new backup.
            assert [b["backup_id"] for b in items] == [run1_ids[FAILING]]
        else:
            assert len(items) == 1 and items[0]["backup_id"] in run2_ids, (host, vm, items)


def test_missing_vm_and_closed_window_are_reported(tmp_path):
    _lab_play(tmp_path)
    inventory = _inventory(tmp_path)
    proc = run_playbook(PLAYBOOKS / "backup.yml", "--limit", "fleet-hv2016", inventory=inventory,
                        extra_vars={"hyperv_backup_run_id": "names", "hyperv_backup_vms": ["WEB0?", "nosuchvm"],
                                    "hyperv_backup_exclude": ["web02"]})
    assert proc.returncode != 0
    report = load_json(tmp_path / "reports" / "names.json")
    assert sorted((v["vm"], v["status"]) for v in report["vms"]) == [("nosuchvm", "failed"), ("web01", "success")]
    assert "not on host fleet-hv2016" in report["problems"][0]["error"]

    # A window that has already closed: nothing starts, every VM is reported as skipped, no backup is taken.
    proc = run_playbook(PLAYBOOKS / "backup.yml", "--limit", "fleet-hv2016", inventory=inventory,
                        extra_vars={"hyperv_backup_run_id": "late", "hyperv_backup_window_end": "2020-01-01T00:00:00Z"})
    assert proc.returncode != 0
    report = load_json(tmp_path / "reports" / "late.json")
    assert {v["status"] for v in report["vms"]} == {"skipped"} and len(report["vms"]) == 4
    assert "backup window" in report["vms"][0]["error"]

    # The restore role: a restore test of web01 (backed up above) passes and leaves nothing behind; web02 was
    # never backed up (excluded), so its restore is refused with a clear message.
    scratch = tmp_path / "restore-test"
    proc = run_playbook(PLAYBOOKS / "restore.yml", inventory=inventory,
                        extra_vars={"hyperv_restore_hosts": "fleet-hv2016", "hyperv_restore_vm": "web01",
                                    "hyperv_restore_test": True, "hyperv_restore_test_directory": str(scratch)})
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "of web01 restores: 1 disk(s) equal to the backup" in proc.stdout
    assert not any(scratch.iterdir())
    proc = run_playbook(PLAYBOOKS / "restore.yml", inventory=inventory,
                        extra_vars={"hyperv_restore_hosts": "fleet-hv2016", "hyperv_restore_vm": "web02",
                                    "hyperv_restore_test": True, "hyperv_restore_test_directory": str(scratch)})
    assert proc.returncode != 0 and "No complete backup of web02" in proc.stdout, proc.stdout[-4000:]
