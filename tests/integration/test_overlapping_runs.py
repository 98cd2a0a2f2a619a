"""Issue 12 point 1, torn backups: two real runs of the hyperv_backup role that overlap, with guest writes in between.

Run 1 backs up web01 with its copy slowed (``read_rate_limit``); once its progress file shows the copy under way,
the whole run is held (SIGSTOP of its process tree and its detached async copy job, so the overlap does not depend on how fast this machine is:
a copy stalled on a slow share), the guest writes, run 2 of the role (every VM) starts and ends, the guest
writes again, run 1 goes on and ends. What the design promises (roles/hyperv_backup, hyperv/locks.py):

- run 2's "Remove recovery points that earlier runs left behind" leaves run 1's point alone: run 1 holds the VM's
  lease on the host and renews it, so the point is ``held_by_live_run``;
- run 2 does not back up web01 while run 1 does: its recovery point is refused (category busy, naming run 1), the
  VM is reported failed with that reason and run 2 ends failed; db01 is backed up;
- run 1 commits its backup of web01, and every committed backup (run 1's web01, run 2's db01) restores to exactly
  the disk at its recovery point (the frozen guard: ``qemu-img compare`` against the lab's frozen copy).

Without the lease's protection run 2 removes run 1's point, the later writes merge into the file run 1 reads, and
run 1 either commits a torn backup (the guard names it) or, with the check of issue 12 point 1, fails.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import frozen_guard
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout

from workflow_helpers import ansible_env, tool

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
HOST = "hv1"
RUN_1, RUN_2 = "overlap-run1", "overlap-run2"
# web01: about 10 MiB of data read at 2 MiB/s, so run 1 copies for about 5 s, long enough to be held mid-copy
WEB01 = {"name": "web01", "disks": [{"size": 32 * MiB, "fill": {"seed": 11, "percent": 30}}]}
DB01 = {"name": "db01", "disks": [{"size": 8 * MiB, "fill": {"seed": 12, "percent": 25}}]}
READ_RATE = 2 * MiB
HARNESS_WAIT = 300          # seconds the harness waits for a run to reach a step before it gives up (never a verdict)


def _playbook(base, name, extra_defaults=None):
    """playbooks/backup.yml with the role, plus module defaults for hyperv_backup (run 1's slowed copy)."""
    defaults = {"group/hyperv.backup.hyperv": "{{ hyperv_connection }}", "group/hyperv.backup.repository": "{{ hyperv_repository }}"}
    if extra_defaults:
        defaults["hyperv.backup.hyperv_backup"] = extra_defaults
    path = base / ("%s.yml" % name)
    path.write_text(json.dumps([{"name": "Back up Hyper-V VMs (%s)" % name, "hosts": "hyperv_hosts", "gather_facts": False,
                                 "module_defaults": defaults, "roles": [{"role": "hyperv.backup.hyperv_backup"}]}]))
    return path


def _inventory(base):
    path = base / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"children": {"hyperv_hosts": {"hosts": {HOST: {}}, "vars": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "hyperv_backup_proxy": "localhost",
        "hyperv_connection": {"transport": "lab", "host": HOST, "lab_directory": str(base / "lab")},
        "hyperv_repository": {"repository": str(base / "repository")},
        "hyperv_backup_report_directory": str(base / "reports")}}}}}))
    return path


def _command(base, playbook, run_id, vms):
    extra = {"hyperv_backup_run_id": run_id, "hyperv_backup_vms": vms}
    return [tool("ansible-playbook"), "-i", str(base / "inventory.yml"), "-e", json.dumps(extra), str(playbook)]


def _descendants(pid):
    """``pid`` and every process below it (from /proc), so the whole run can be held and let go."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def _with_environment(marker):
    """Processes whose environment holds ``marker``: the role's async copy jobs, which Ansible's async_wrapper
    detaches into a session of their own (so they are not below the ansible-playbook process)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as handle:
                if marker in handle.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _signal_all(pids, signum):
    for each in pids:
        try:
            os.kill(each, signum)
        except ProcessLookupError:
            pass


def _progress_lines(progress_file):
    lines = []
    if progress_file.exists():
        for line in progress_file.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue    # the line being written
    return lines


def _wait_copying(proc, progress_file, output):
    """Block until run 1's progress file shows the copy under way (bytes read); fail if run 1 ends first."""
    deadline = time.monotonic() + HARNESS_WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("run 1 ended before its copy could be held (rc %s):\n%s" % (proc.returncode, output.read_text()[-6000:]))
        lines = _progress_lines(progress_file)
        if any(line.get("phase") == "copying" and line.get("done_bytes", 0) > 0 for line in lines):
            return lines[-1]
        time.sleep(0.2)
    pytest.fail("run 1 did not start copying within %d s:\n%s" % (HARNESS_WAIT, output.read_text()[-6000:]))


def _report(base, run_id):
    return dict((vm["vm"], vm) for vm in json.loads((base / "reports" / ("%s.json" % run_id)).read_text())["vms"])


def test_overlapping_role_runs_never_tear_a_backup(tmp_path):
    layout = LabLayout(str(tmp_path / "lab"), HOST)
    lab_admin.ensure_host(layout, era="2022", services={"vss": "Running"})
    for spec in (WEB01, DB01):
        lab_admin.ensure_vm(layout, spec)
    _inventory(tmp_path)
    progress = tmp_path / "run1.progress"
    run1_play = _playbook(tmp_path, "run1", {"read_rate_limit": READ_RATE, "progress_file": str(progress)})
    run2_play = _playbook(tmp_path, "run2")
    env = ansible_env({"ANSIBLE_HOME": str(tmp_path / "ansible_home"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible_tmp"),
                       "ANSIBLE_PIPELINING": "true"})
    run1_output = tmp_path / "run1.out"
    host = LabTransport(str(tmp_path / "lab"), HOST)
    web01 = lab_admin.find_vm(layout, "web01")
    # the role runs each copy as an async job and gives it its own progress file (roles/hyperv_backup/vars/main.yml)
    progress = Path(os.path.expanduser("~/.ansible_async")) / ("hyperv.backup-%s" % RUN_1) / ("%s.progress" % web01["id"])

    with open(str(run1_output), "w") as out:
        run1 = subprocess.Popen(_command(tmp_path, run1_play, RUN_1, ["web01"]), stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=str(tmp_path), start_new_session=True)
    held = False
    try:
        _wait_copying(run1, progress, run1_output)
        # the whole run: ansible-playbook's tree and its detached async copy job (same environment as run 1)
        run1_pids = sorted(set(_descendants(run1.pid)) | set(_with_environment(("ANSIBLE_HOME=%s" % env["ANSIBLE_HOME"]).encode())))
        _signal_all(run1_pids, signal.SIGSTOP)
        held = True
        last = _progress_lines(progress)[-1]
        if last.get("phase") != "copying" or last.get("done_bytes", 0) >= last.get("total_bytes", 0):
            pytest.fail("the harness held run 1 too late (its copy had ended: %s); lower READ_RATE" % last)
        points = [p for p in host.run("get_recovery_points", {"vm_id": web01["id"]}) if p.get("ours")]
        assert [(p["name"], p["held_by_live_run"]) for p in points] == [("hyperv.backup:%s" % RUN_1, True)], points

        lab_admin.churn(layout, "web01", seed=21, writes=48, write_size=64 * 1024)     # guest writes during run 1's copy
        run2 = subprocess.run(_command(tmp_path, run2_play, RUN_2, ["*"]), capture_output=True, text=True, env=env,
                              cwd=str(tmp_path), timeout=HARNESS_WAIT, check=False)
        lab_admin.churn(layout, "web01", seed=22, writes=48, write_size=64 * 1024)     # and after run 2, still during it

        # run 1's point survived run 2 ("earlier runs' leftovers" are only points no live run holds)
        points = [p for p in host.run("get_recovery_points", {"vm_id": web01["id"]}) if p.get("ours")]
        assert [p["name"] for p in points] == ["hyperv.backup:%s" % RUN_1], points
    finally:
        if held:
            _signal_all(run1_pids, signal.SIGCONT)
        if sys.exc_info()[0] is not None:
            _signal_all(_descendants(run1.pid), signal.SIGTERM)
    lab_admin.churn(layout, "web01", seed=23, writes=16, write_size=64 * 1024)
    rc1 = run1.wait(timeout=HARNESS_WAIT)
    run1_text = run1_output.read_text()
    assert rc1 == 0, run1_text[-8000:]

    # run 1 backed up web01, from its own point, without a warning about the point
    first = _report(tmp_path, RUN_1)
    assert first["web01"]["status"] == "success" and first["web01"]["backup_id"], first
    assert "could not be handed back" not in run1_text

    # run 2 ended failed, naming web01 as busy with run 1, and backed up db01
    second = _report(tmp_path, RUN_2)
    assert run2.returncode != 0, run2.stdout[-8000:]
    assert second["db01"]["status"] == "success" and second["db01"]["backup_id"], second
    assert second["web01"]["status"] == "failed", second
    assert RUN_1 in second["web01"]["error"] and "being backed up" in second["web01"]["error"], second["web01"]

    # every committed backup equals the disk at its recovery point
    outcome = frozen_guard.check_directory(tmp_path)
    assert not outcome.problems, "\n".join(outcome.problems)
    assert sorted(outcome.checked) == sorted([first["web01"]["backup_id"], second["db01"]["backup_id"]]), outcome.summary()
    assert not outcome.unmatched and not outcome.synthetic, outcome.summary()
    # nothing of ours is left on the VM: run 1 handed its point back (now the reference point of the next incremental)
    assert not [p for p in host.run("get_recovery_points", {"vm_id": web01["id"]}) if p.get("ours")]
