"""Issue 12, point 2, through the shipped playbooks: two hosts reporting one VM id are two VMs to the repository.

The issue's steps: back up VM web on hv-a; restore that backup with ``hyperv_restore register: true`` onto hv-b
(the module keeps the VM id by default, ``generate_new_id: false``); then a run of playbooks/backup.yml over both
hosts with ``keep_last: 1``. Before, the two VMs shared one chain and one retention, and the run deleted one
host's latest backup. Now each is its own lineage: both latest backups stay, the copy's first backup is full
with a warning, each restores to its own VM's disk, and a restore by the shared name refuses to pick one.
"""
import json

import pytest
import yaml

from ansible_collections.hyperv.backup.plugins.module_utils.host.disk_access import map_path
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk
from workflow_helpers import PLAYBOOKS, load_json, run_playbook

pytestmark = [pytest.mark.integration]

MIB = 1024 * 1024
HOSTS = ("hv-a", "hv-b")


def _inventory(base):
    group_vars = {"ansible_connection": "local", "hyperv_backup_proxy": "localhost",
                  "hyperv_connection": {"transport": "lab", "host": "{{ inventory_hostname }}", "lab_directory": str(base / "lab")},
                  "hyperv_repository": {"repository": str(base / "repository")},
                  "hyperv_backup_report_directory": str(base / "reports"),
                  "hyperv_backup_retention": {"keep_last": 1}}
    path = base / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"children": {"hyperv_hosts": {"vars": group_vars,
                                                                          "hosts": dict((h, {}) for h in HOSTS)}}}}))
    return path


def _play(base, name, tasks):
    path = base / (name + ".yml")
    path.write_text(json.dumps([{"name": name, "hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    return run_playbook(path)


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return proc


def _disk(base, host):
    transport = LabTransport(str(base / "lab"), host)
    vm = [v for v in transport.run("get_vms", {}) if v["name"] == "web"][0]
    with open_disk(map_path(vm["disks"][0]["path"], transport.path_map())) as disk:
        return vm["id"], disk.read(0, disk.virtual_size)


def _restored(repo, backup_id):
    reader = repo.open_disk_reader(backup_id, repo.get_backup(backup_id).disks[0]["disk_key"])
    return reader.read(0, reader.virtual_size)


def test_a_copy_registered_with_the_same_id_on_another_host_keeps_its_own_backups(tmp_path):
    lab = str(tmp_path / "lab")
    _ok(_play(tmp_path, "lab", [
        {"name": "hv-a with web", "hyperv.backup.hyperv_lab": {"lab_directory": lab, "host": "hv-a", "era": "2019",
                                                               "services": {"vss": "Running"},
                                                               "vms": [{"name": "web", "disks": [{"size": 8 * MIB, "fill": {"seed": 7, "percent": 30}}]}]}},
        {"name": "hv-b, empty", "hyperv.backup.hyperv_lab": {"lab_directory": lab, "host": "hv-b", "era": "2019",
                                                             "services": {"vss": "Running"}}}]))
    inventory = _inventory(tmp_path)
    _ok(run_playbook(PLAYBOOKS / "backup.yml", inventory=inventory, extra_vars={"hyperv_backup_hosts": "hv-a",
                                                                                "hyperv_backup_run_id": "first"}))
    first = load_json(tmp_path / "reports" / "first.json")["vms"][0]
    # the copy: the module's defaults keep the VM id (register on another host, as the issue did)
    _ok(_play(tmp_path, "register", [{"name": "Register a restored copy of web on hv-b", "hyperv.backup.hyperv_restore": {
        "transport": "lab", "lab_directory": lab, "host": "hv-b", "repository": str(tmp_path / "repository"),
        "backup_id": first["backup_id"], "host_destination": "C:\\Restores\\web", "register": True}}]))
    assert _disk(tmp_path, "hv-a")[0] == _disk(tmp_path, "hv-b")[0]
    _ok(_play(tmp_path, "churn", [{"name": "Guest writes on " + host, "hyperv.backup.hyperv_lab": {
        "lab_directory": lab, "host": host, "churn": [{"vm": "web", "seed": seed, "writes": 4, "write_size": 65536}]}}
        for host, seed in (("hv-a", 11), ("hv-b", 12))]))
    second = _ok(run_playbook(PLAYBOOKS / "backup.yml", inventory=inventory, extra_vars={"hyperv_backup_run_id": "second"}))
    runs = dict((vm["host"], vm) for vm in load_json(tmp_path / "reports" / "second.json")["vms"])
    assert runs["hv-a"]["status"] == runs["hv-b"]["status"] == "success", runs
    assert runs["hv-b"]["backup_type"] == "full" and "kept apart" in second.stdout + second.stderr, second.stderr[-4000:]

    repo = Repository.open(str(tmp_path / "repository"))
    kept = dict((r.host, r) for r in repo.list_backups())
    # keep_last 1 per VM: each host's latest backup is kept (before, one of them was deleted)
    assert sorted(kept) == ["hv-a", "hv-b"], [(r.backup_id, r.host, r.lineage) for r in repo.list_backups()]
    assert {kept["hv-a"].backup_id, kept["hv-b"].backup_id} == {runs["hv-a"]["backup_id"], runs["hv-b"]["backup_id"]}
    assert kept["hv-a"].lineage != kept["hv-b"].lineage and kept["hv-a"].vm_id == kept["hv-b"].vm_id
    for host in HOSTS:
        assert _restored(repo, kept[host].backup_id) == _disk(tmp_path, host)[1], host

    # a restore of "web" from any host names two VMs: refused, naming both; with the host it restores that one
    refused = run_playbook(PLAYBOOKS / "restore.yml", inventory=inventory, extra_vars={
        "hyperv_restore_hosts": "hv-a", "hyperv_restore_vm": "web", "hyperv_restore_source_host": "",
        "hyperv_restore_test": True, "hyperv_restore_test_directory": str(tmp_path / "scratch")})
    assert refused.returncode != 0 and "names 2 different VMs" in refused.stdout, refused.stdout[-4000:]
    _ok(run_playbook(PLAYBOOKS / "restore.yml", inventory=inventory, extra_vars={
        "hyperv_restore_hosts": "hv-b", "hyperv_restore_vm": "web", "hyperv_restore_test": True,
        "hyperv_restore_test_directory": str(tmp_path / "scratch")}))
