"""A VM rolled back between two backups, through the shipped playbooks and modules (issue 12, point 4).

One 2019 lab host, one VM, playbooks/backup.yml (the hyperv_backup role) for every backup:
1. backup (full), guest writes, backup (incremental);
2. the operator rolls the VM back: hyperv_restore with force writes the first backup over the VM's own disk file;
   then a standard checkpoint and guest writes: the next backup must be full and say why (the disk's file is
   another virtual disk now);
3. the checkpoint is applied (hyperv_lab apply_checkpoint: ApplySnapshot discards what the guest wrote since), the
   VM started, guest writes: the next backup must be full and say why (the file the last backup read is gone).
Each of these backups is restored and compared with the disk as it was at that backup with ``qemu-img compare``
(and the suite's frozen guard compares every backup with the lab's copy of its recovery point). The lab is built
and the guest writes in Python (lab_admin), to keep the number of ansible-playbook runs small.
"""
import json
import subprocess

import pytest
import yaml

from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import run_restore
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk
from workflow_helpers import PLAYBOOKS, load_json, run_playbook

pytestmark = [pytest.mark.integration]

HOST, VM = "h19", "web"
MIB = 1024 * 1024


def _play(base, name, tasks):
    path = base / (name + ".yml")
    path.write_text(json.dumps([{"name": name, "hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    proc = run_playbook(path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return proc


def _lab(base, **options):
    return {"name": "lab", "hyperv.backup.hyperv_lab": dict({"lab_directory": str(base / "lab"), "host": HOST}, **options)}


def _churn(base, seed):
    lab_admin.churn(LabLayout(str(base / "lab"), HOST), VM, seed=seed, writes=6, write_size=65536)


def _backup(base, inventory, run_id):
    proc = run_playbook(PLAYBOOKS / "backup.yml", inventory=inventory, extra_vars={"hyperv_backup_run_id": run_id})
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
    entry = [vm for vm in load_json(base / "reports" / (run_id + ".json"))["vms"] if vm["vm"] == VM][0]
    assert entry["status"] == "success", entry
    return Repository.open(str(base / "repository")).get_backup(entry["backup_id"])


def _current_as_raw(base, target):
    """The VM's disk as the guest sees it now (through its checkpoint chain), as a raw image qemu-img can read."""
    lab = LabTransport(str(base / "lab"), HOST)
    path = lab.local(lab.run("get_vms", {"names": [VM]})[0]["disks"][0]["path"])
    with open_disk(path) as disk, open(str(target), "wb") as out:
        out.truncate(disk.virtual_size)
        for offset, length in disk.allocated_ranges():
            out.seek(offset)
            out.write(disk.read(offset, length))
    return target


def _restore_and_compare(base, record, expected_raw):
    destination = base / ("restored-" + record.backup_id)
    result = run_restore(Repository.open(str(base / "repository")), {"backup_id": record.backup_id, "destination": str(destination)})
    image = result["disks"][0]["path"]
    proc = subprocess.run(["qemu-img", "compare", "-f", "vhdx", "-F", "raw", image, str(expected_raw)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, "backup %s (%s) restores wrong: %s" % (record.backup_id, record.type, proc.stdout + proc.stderr)


def test_a_rolled_back_vm_gets_a_full_backup_that_restores_right(tmp_path):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"hyperv_hosts": {"hosts": {HOST: {}}, "vars": {
        "ansible_connection": "local", "hyperv_backup_proxy": "localhost",
        "hyperv_connection": {"transport": "lab", "host": "{{ inventory_hostname }}", "lab_directory": str(tmp_path / "lab")},
        "hyperv_repository": {"repository": str(tmp_path / "repository")},
        "hyperv_backup_report_directory": str(tmp_path / "reports")}}}}}))
    layout = LabLayout(str(tmp_path / "lab"), HOST)
    lab_admin.ensure_host(layout, era="2019", services={"vss": "Running"})
    lab_admin.ensure_vm(layout, {"name": VM, "disks": [{"size": 16 * MIB, "fill": {"seed": 3, "percent": 40}}]})
    first = _backup(tmp_path, inventory, "run1")
    _churn(tmp_path, 11)
    second = _backup(tmp_path, inventory, "run2")
    assert (first.type, second.type) == ("full", "incremental")

    # 2. roll back in place: the first backup over the VM's own disk file (its folder on the host), with force
    disk_path = LabTransport(str(tmp_path / "lab"), HOST).run("get_vms", {"names": [VM]})[0]["disks"][0]["path"]
    _play(tmp_path, "rollback", [
        {"name": "roll back", "hyperv.backup.hyperv_restore": {
            "repository": str(tmp_path / "repository"), "backup_id": first.backup_id, "force": True,
            "host_destination": disk_path.rsplit("\\", 1)[0], "host": HOST, "transport": "lab", "lab_directory": str(tmp_path / "lab")}},
        _lab(tmp_path, vms=[{"name": VM, "checkpoints": ["before-upgrade"]}])])
    _churn(tmp_path, 12)
    at_third = _current_as_raw(tmp_path, tmp_path / "third.raw")
    third = _backup(tmp_path, inventory, "run3")
    reason = third.metadata["type_reason"]
    assert third.type == "full" and "scsi0-0" in reason and "restored in place" in reason, reason
    _restore_and_compare(tmp_path, third, at_third)

    # 3. the checkpoint applied (what the guest wrote since is discarded, the VM is Off), the VM started again
    _churn(tmp_path, 13)
    _play(tmp_path, "apply", [_lab(tmp_path, apply_checkpoint={"vm": VM, "checkpoint": "before-upgrade"}),
                              _lab(tmp_path, vms=[{"name": VM, "state": "Running"}])])
    _churn(tmp_path, 14)
    at_fourth = _current_as_raw(tmp_path, tmp_path / "fourth.raw")
    fourth = _backup(tmp_path, inventory, "run4")
    reason = fourth.metadata["type_reason"]
    assert fourth.type == "full" and "scsi0-0" in reason and "rolled back" in reason, reason
    _restore_and_compare(tmp_path, fourth, at_fourth)
