"""playbooks/backup.yml under ansible-runner (what AWX runs) against lab hosts, with its artifacts.

Two lab hosts with two VMs each are backed up through ansible_runner.run(); the test checks the runner's
status and rc, the job events (one successful backup task per VM, for the right hosts), the artifact files
AWX collects (status, rc, stdout, job_events/), and the run report written into the artifacts directory.
"""
import json
import sys

import ansible_runner
import pytest
import yaml

from workflow_helpers import PLAYBOOKS, ansible_env, load_json, run_playbook

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOSTS = {"runner-hv2016": "2016", "runner-hv2022": "2022"}


def test_backup_playbook_under_ansible_runner(tmp_path):
    lab = tmp_path / "lab"
    tasks = [{"name": "Lab host %s" % host, "hyperv.backup.hyperv_lab": {
        "lab_directory": str(lab), "host": host, "era": era, "services": {"vss": "Running"},
        "vms": [{"name": "%s-vm%d" % (host, i), "disks": [{"size": 64 * 1024 * 1024, "fill": {"seed": i, "percent": 10}}]}
                for i in (1, 2)]}} for host, era in HOSTS.items()]
    lab_play = tmp_path / "lab.yml"
    lab_play.write_text(json.dumps([{"name": "Lab", "hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    built = run_playbook(lab_play)
    assert built.returncode == 0, built.stdout[-5000:]

    private = tmp_path / "runner"
    private.mkdir()
    reports = private / "artifacts" / "hyperv-backup-reports"
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"hyperv_hosts": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "hyperv_backup_proxy": "localhost",
                 "hyperv_connection": {"transport": "lab", "host": "{{ inventory_hostname }}", "lab_directory": str(lab)},
                 "hyperv_repository": {"repository": str(tmp_path / "repository")},
                 "hyperv_backup_report_directory": str(reports)},
        "hosts": dict((h, {}) for h in HOSTS)}}}}))
    result = ansible_runner.run(private_data_dir=str(private), project_dir=str(PLAYBOOKS), playbook="backup.yml",
                                inventory=str(inventory), envvars=ansible_env(), extravars={"hyperv_backup_run_id": "awx-1"},
                                forks=2, quiet=True, ident="job-1")
    stdout = result.stdout.read()
    assert result.status == "successful" and result.rc == 0, stdout[-8000:]

    backed_up = sorted(ev["event_data"]["host"] for ev in result.events
                       if ev["event"] == "runner_on_ok" and ev["event_data"].get("task", "").startswith("Copy the VM into the repository"))
    assert backed_up == sorted(list(HOSTS) * 2), backed_up
    assert any(ev["event"] == "playbook_on_stats" for ev in result.events)

    artifacts = private / "artifacts" / "job-1"
    assert (artifacts / "status").read_text().strip() == "successful"
    assert (artifacts / "rc").read_text().strip() == "0"
    assert list((artifacts / "job_events").glob("*.json"))
    assert "PLAY RECAP" in (artifacts / "stdout").read_text()

    report = load_json(reports / "awx-1.json")
    assert report["status"] == "successful" and report["summary"]["succeeded"] == 4
    assert sorted(vm["vm"] for vm in report["vms"]) == sorted("%s-vm%d" % (h, i) for h in HOSTS for i in (1, 2))
    assert (reports / "index.html").is_file()
