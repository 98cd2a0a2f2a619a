"""Issue 16 point 10: the hyperv_backup role shows each running backup's progress while it copies.

A lab VM whose copy is slowed down (read_rate_limit through module_defaults) lasts several progress intervals of
2 seconds: the play's output shows progress lines with a percent, a rate and the time left for that VM before the
backup's result is recorded. Check mode (no async in ansible-core there) still estimates and prints no progress. A run
killed while copying leaves no copy running: the job stops by itself once the role's heartbeat is stale.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from workflow_helpers import PLAYBOOKS, ansible_env, run_playbook, tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MiB = 1024 * 1024
HOST = "progress-hv2022"
PROGRESS = re.compile(r"item=big01: (\d+\.\d)% of [\d.]+ MiB, [\d.]+ MiB/s, \d+m\d\ds left")


def _setup(base):
    lab_play = base / "lab.yml"
    lab_play.write_text(json.dumps([{"name": "Lab", "hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Lab host", "hyperv.backup.hyperv_lab": {
            "lab_directory": str(base / "lab"), "host": HOST, "era": "2022", "services": {"vss": "Running"},
            "vms": [{"name": "big01", "disks": [{"size": 48 * MiB, "fill": {"seed": 3, "percent": 60}}]}]}}]}]))
    built = run_playbook(lab_play)
    assert built.returncode == 0, built.stdout[-5000:]
    inventory = base / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"hyperv_hosts": {"hosts": {HOST: {}}, "vars": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "hyperv_backup_proxy": "localhost",
        "hyperv_connection": {"transport": "lab", "host": "{{ inventory_hostname }}", "lab_directory": str(base / "lab")},
        "hyperv_repository": {"repository": str(base / "repository")},
        "hyperv_backup_report_directory": str(base / "reports")}}}}}))
    play = yaml.safe_load((PLAYBOOKS / "backup.yml").read_text())
    play[0]["hosts"] = "hyperv_hosts"
    # about 29 MiB to read at 3 MiB/s: some 10 seconds, five intervals of 2 seconds
    play[0]["module_defaults"]["hyperv.backup.hyperv_backup"] = {"read_rate_limit": 3 * MiB}
    (base / "backup.yml").write_text(yaml.safe_dump(play))
    return inventory


def test_progress_lines_appear_while_the_backup_copies(tmp_path):
    inventory = _setup(tmp_path)
    proc = run_playbook(tmp_path / "backup.yml", "-e", "hyperv_backup_progress_interval=2", "-e", "hyperv_backup_run_id=progress",
                        inventory=inventory)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    out = proc.stdout
    percents = [float(m.group(1)) for m in PROGRESS.finditer(out)]
    assert len(percents) >= 2, out[-6000:]
    assert percents == sorted(percents) and percents[0] < 100.0, percents
    last_progress = max(m.end() for m in PROGRESS.finditer(out))
    assert last_progress < out.index("TASK [hyperv.backup.hyperv_backup : Record the backup]"), out[-6000:]
    report = json.loads((tmp_path / "reports" / "progress.json").read_text())
    assert report["summary"]["succeeded"] == 1, report

    # the restore role runs its copy as an async job too and shows its progress; a restore test (-e strings) proves it
    restored = run_playbook(PLAYBOOKS / "restore.yml", "-e", "hyperv_restore_vm=big01", "-e", "hyperv_restore_test=true",
                            "-e", "hyperv_restore_test_directory=%s" % (tmp_path / "scratch"), "-e", "hyperv_restore_progress_interval=1",
                            inventory=inventory)
    assert restored.returncode == 0, restored.stdout[-6000:] + restored.stderr[-2000:]
    assert re.search(r"TASK \[hyperv.backup.hyperv_restore : Show the progress of the restore\][^\n]*\n(ok|skipping): \[%s -> localhost\] "
                     r"=> \(item=big01: (done|\d+\.\d%%)" % HOST, restored.stdout), restored.stdout[-6000:]
    assert "restores: 1 disk(s) equal to the backup" in restored.stdout

    # check mode (ansible-core refuses async there): the estimate runs in the foreground, nothing to poll
    estimate = run_playbook(tmp_path / "backup.yml", "--check", "-e", "hyperv_backup_progress_interval=2",
                            "-e", "hyperv_backup_run_id=estimate", inventory=inventory)
    assert estimate.returncode == 0, estimate.stdout[-6000:] + estimate.stderr[-2000:]
    assert "Show the progress of the running backups" not in estimate.stdout      # check mode: foreground, nothing to poll


def test_a_killed_run_leaves_no_copy_running(tmp_path):
    inventory = _setup(tmp_path)
    cmd = [tool("ansible-playbook"), "-i", str(inventory), str(tmp_path / "backup.yml"), "-e", "hyperv_backup_progress_interval=1",
           "-e", "hyperv_backup_heartbeat_seconds=5", "-e", "hyperv_backup_run_id=killed"]
    # its own session: the kill reaches ansible-playbook and its workers, not the async job (which async_wrapper detaches)
    play = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ansible_env(),
                            start_new_session=True, cwd=str(tmp_path))
    seen = ""
    for line in play.stdout:
        seen += line
        if PROGRESS.search(line):
            break
    assert PROGRESS.search(seen), seen[-5000:]
    os.killpg(play.pid, signal.SIGKILL)
    play.wait()
    jobs = Path.home() / ".ansible_async" / "hyperv.backup-killed"
    deadline = time.time() + 60
    results = {}
    while time.time() < deadline:
        results = {p.name: p.read_text() for p in jobs.iterdir() if p.is_file() and not p.name.endswith((".progress", "heartbeat"))
                   and "\"started\": true" not in p.read_text() and p.read_text().strip()} if jobs.is_dir() else {}
        if results:
            break
        time.sleep(1)
    assert results, "the backup job still runs 60 s after its run was killed"
    result = json.loads(next(iter(results.values())))
    assert result.get("failed") and "cancelled or killed" in result.get("msg", ""), result
    listed = run_playbook(_catalog_play(tmp_path), extra_vars={"repo": str(tmp_path / "repository"), "out": str(tmp_path / "catalog.json")})
    assert listed.returncode == 0, listed.stdout[-3000:]
    assert not [b for b in json.loads((tmp_path / "catalog.json").read_text()) if b.get("state") == "complete"]


def _catalog_play(base):
    path = base / "catalog.yml"
    path.write_text(yaml.safe_dump([{"name": "Catalogue", "hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "List", "hyperv.backup.hyperv_backup_info": {"repository": "{{ repo }}"}, "register": "catalog"},
        {"name": "Save", "ansible.builtin.copy": {"content": "{{ catalog.backups | to_json }}", "dest": "{{ out }}", "mode": "0600"}}]}]))
    return path
