"""Issue 15 through the shipped playbooks: hyperv_backup backs up a lab VM whose disk holds ext4 and FAT32 file
systems; playbooks/restore_files.yml (the hyperv_restore role's hyperv_restore_files, given as a comma-separated
string as -e and AWX surveys give it) extracts files equal to the guest's (sha256, mtime); the role's restore test
with hyperv_restore_check_filesystems walks every guest file system."""
import hashlib
import json
import os

import pytest
import yaml

from workflow_helpers import PLAYBOOKS, run_playbook

pytestmark = [pytest.mark.integration]

MIB = 1024 * 1024


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return proc


def _sha(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_restore_files_playbook_extracts_equal_files(tmp_path):
    source = tmp_path / "guest"
    (source / "etc").mkdir(parents=True)
    (source / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (source / "etc" / "app.conf").write_text("setting = 1\n")
    (source / "big.bin").write_bytes(os.urandom(3 * MIB))
    for index, path in enumerate(sorted(p for p in source.rglob("*") if p.is_file())):
        os.utime(str(path), (1700000000 + 2 * index, 1700000000 + 2 * index))
    lab = str(tmp_path / "lab")
    play = tmp_path / "lab.yml"
    play.write_text(json.dumps([{"name": "lab", "hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "hv-f with a VM whose disk holds ext4 and FAT32", "hyperv.backup.hyperv_lab": {
            "lab_directory": lab, "host": "hv-f", "era": "2022", "services": {"vss": "Running"},
            "vms": [{"name": "files", "disks": [{"size": 128 * MIB, "guest_filesystem": {"scheme": "mbr", "partitions": [
                {"type": "fat32", "source": str(source), "size": 48 * MIB}, {"type": "ext4", "source": str(source)}]}}]}]}}]}]))
    _ok(run_playbook(play))
    group_vars = {"ansible_connection": "local", "hyperv_backup_proxy": "localhost",
                  "hyperv_connection": {"transport": "lab", "host": "{{ inventory_hostname }}", "lab_directory": lab},
                  "hyperv_repository": {"repository": str(tmp_path / "repository")},
                  "hyperv_backup_report_directory": str(tmp_path / "reports")}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"hyperv_hosts": {"vars": group_vars, "hosts": {"hv-f": {}}}}}}))
    backup = tmp_path / "backup.yml"        # the module, not playbooks/backup.yml: this test is about the restore side
    backup.write_text(json.dumps([{"name": "backup", "hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Create the repository", "hyperv.backup.hyperv_backup_repository": {"repository": str(tmp_path / "repository")}},
        {"name": "Back up", "hyperv.backup.hyperv_backup": {
            "transport": "lab", "lab_directory": lab, "host": "hv-f", "vm": "files", "repository": str(tmp_path / "repository")}}]}]))
    _ok(run_playbook(backup))

    dest = tmp_path / "restored"
    proc = _ok(run_playbook(PLAYBOOKS / "restore_files.yml", inventory=inventory, extra_vars={
        "hyperv_restore_vm": "files", "hyperv_restore_files": "/etc/*.conf, /big.bin", "hyperv_restore_files_partition": "2",
        "hyperv_restore_destination": str(dest)}))
    assert "2 file(s) of files" in proc.stdout, proc.stdout[-4000:]
    for relative in ("etc/app.conf", "big.bin"):
        assert _sha(str(dest / relative)) == _sha(str(source / relative))
        assert os.stat(str(dest / relative)).st_mtime == os.stat(str(source / relative)).st_mtime
    assert not (dest / "etc" / "hosts").exists()
    # Again: the files exist, nothing is replaced and the run fails saying so.
    again = run_playbook(PLAYBOOKS / "restore_files.yml", inventory=inventory, extra_vars={
        "hyperv_restore_vm": "files", "hyperv_restore_files": "/big.bin", "hyperv_restore_files_partition": "2",
        "hyperv_restore_destination": str(dest)})
    assert again.returncode != 0 and "already exist" in again.stdout, again.stdout[-4000:]
    # The restore test with the file-system check: both partitions walked.
    proc = _ok(run_playbook(PLAYBOOKS / "restore.yml", inventory=inventory, extra_vars={
        "hyperv_restore_vm": "files", "hyperv_restore_test": "true", "hyperv_restore_check_filesystems": "yes",
        "hyperv_restore_test_directory": str(tmp_path / "scratch")}))
    assert "Walk every guest file system of the backup" in proc.stdout and "skipping" not in proc.stdout.split(
        "Walk every guest file system of the backup")[1].split("TASK")[0], proc.stdout[-4000:]
