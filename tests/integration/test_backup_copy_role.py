"""Issue 15, a second copy: the hyperv_backup role copies each run's new backups to hyperv_backup_copy_to.

A lab host with two VMs, an encrypted repository and a second encrypted repository with keys of its own (every chunk
re-hashed): the first run copies both full backups, the second only the two incrementals (a few chunks each), the report
shows the copy; the copies verify and restore exactly (the frozen guard restores every backup of both repositories and
compares it with the disk at its recovery point); a copy to a repository that does not exist ends the run failed with a
message that names it, after the report (which shows the failed copy) is written.
"""
import json
import sys

import pytest
import yaml

from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository

from workflow_helpers import PLAYBOOKS, run_playbook

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MiB = 1024 * 1024
HOST = "copy-hv2022"
PASSPHRASE = "copy-role-passphrase"     # no spaces: -e key=value splits at them
FAST_KDF = {"n": 2 ** 14, "r": 8, "p": 1}


@pytest.mark.frozen_guard(passphrase=PASSPHRASE)
def test_backup_role_copies_each_run_to_the_second_repository(tmp_path):
    lab_play = tmp_path / "lab.yml"
    churn = tmp_path / "churn.yml"
    for path, options in ((lab_play, {"era": "2022", "services": {"vss": "Running"}, "vms": [
            {"name": name, "disks": [{"size": 4 * MiB, "fill": {"seed": i, "percent": 25}}]} for i, name in enumerate(["web01", "db01"])]}),
            (churn, {"churn": [{"vm": "web01", "seed": 7, "writes": 2, "write_size": 8192},
                               {"vm": "db01", "seed": 8, "writes": 2, "write_size": 8192}]})):
        path.write_text(json.dumps([{"name": "Lab", "hosts": "localhost", "gather_facts": False, "tasks": [
            {"name": "Lab host", "hyperv.backup.hyperv_lab": dict(options, lab_directory=str(tmp_path / "lab"), host=HOST)}]}]))
    assert run_playbook(lab_play).returncode == 0
    source = Repository.init(str(tmp_path / "repository"), passphrase=PASSPHRASE, chunk_size=65536, scrypt_params=FAST_KDF)
    second = Repository.init(str(tmp_path / "second"), passphrase=PASSPHRASE, chunk_size=65536, scrypt_params=FAST_KDF)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"hyperv_hosts": {"hosts": {HOST: {}}, "vars": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "hyperv_backup_proxy": "localhost",
        "hyperv_connection": {"transport": "lab", "host": "{{ inventory_hostname }}", "lab_directory": str(tmp_path / "lab")},
        "hyperv_repository": {"repository": source.location, "repository_passphrase": PASSPHRASE},
        "hyperv_backup_report_directory": str(tmp_path / "reports")}}}}}))
    play = yaml.safe_load((PLAYBOOKS / "backup.yml").read_text())
    (tmp_path / "backup.yml").write_text(yaml.safe_dump(play))
    copy_to = "hyperv_backup_copy_to=" + json.dumps({"repository": second.location, "repository_passphrase": PASSPHRASE},
                                                    separators=(",", ":"))       # a JSON string, as a survey gives it

    def backup_run(run_id, *extra):
        proc = run_playbook(tmp_path / "backup.yml", "-e", "hyperv_backup_run_id=%s" % run_id, *extra, inventory=inventory)
        path = tmp_path / "reports" / ("%s.json" % run_id)
        assert path.exists(), proc.stdout[-6000:] + proc.stderr[-3000:]
        report = json.loads(path.read_text())
        return proc, report

    proc, report = backup_run("copy-1", "-e", copy_to)
    assert proc.returncode == 0, proc.stdout[-6000:]
    firsts = sorted(r.backup_id for r in source.list_backups())
    assert len(firsts) == 2 and report["status"] == "successful"
    assert report["copy"]["status"] == "success" and report["copy"]["copied"] == 2 and report["copy"]["verified"]
    assert sorted(report["copy"]["backup_ids"]) == firsts and report["copy"]["same_keys"] is False
    assert sorted(r.backup_id for r in Repository.open(second.location, passphrase=PASSPHRASE).list_backups()) == firsts
    html = (tmp_path / "reports" / "copy-1.html").read_text()
    assert 'id="copy" data-status="success"' in html and "Copied 2 backup(s) to %s" % second.location in html

    assert run_playbook(churn).returncode == 0
    proc, report = backup_run("copy-2", "-e", copy_to)
    assert proc.returncode == 0, proc.stdout[-6000:]
    incrementals = [r for r in source.list_backups() if r.backup_id not in firsts]
    assert [r.type for r in incrementals] == ["incremental", "incremental"]
    assert sorted(report["copy"]["backup_ids"]) == sorted(r.backup_id for r in incrementals)
    copied = Repository.open(second.location, passphrase=PASSPHRASE)
    assert len(copied.list_backups()) == 4 and copied.verify()["ok"]
    for record in incrementals:
        assert copied.get_backup(record.backup_id).parent_backup_id == record.parent_backup_id

    missing = tmp_path / "nowhere"
    proc, report = backup_run("copy-3", "-e", "hyperv_backup_copy_to=%s" % missing)      # a plain location, as a survey gives it
    assert proc.returncode != 0
    assert "the copy to %s failed" % missing in proc.stdout and "No backup repository at" in proc.stdout
    assert report["status"] == "failed" and report["copy"]["status"] == "failed"
    assert [v["status"] for v in report["vms"]] == ["success", "success"]
