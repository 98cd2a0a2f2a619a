"""Bad input through real playbooks: invalid module arguments, and VM names full of PowerShell metacharacters.

Every invalid argument must end the task with a message that names the problem -- never a Python
traceback (``MODULE FAILURE``) -- and change nothing. A VM whose name is made of quotes, ``$()``,
backticks, ``;`` and ``|`` must back up and restore like any other (the lab host takes the name only as
data; what psrp/winrm would send is checked in test_security.py).
"""
import pytest

from playbook_helpers import MiB, backup_task, disk_bytes, lab_task, open_repo, repository_task, restored_bytes, run_tasks, wrong_bytes

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

REPO = "{{ repository_path }}"

# (label, module, arguments, a word the message must contain)
INVALID = [
    ("backup: no vm and no vm_id", "hyperv_backup", {"host": "hv1", "repository": REPO}, "vm"),
    ("backup: both vm and vm_id", "hyperv_backup", {"host": "hv1", "vm": "web01", "vm_id": "x", "repository": REPO}, "mutually exclusive"),
    ("backup: bad method", "hyperv_backup", {"host": "hv1", "vm": "web01", "repository": REPO, "method": "snapshot"}, "method"),
    ("backup: unknown option", "hyperv_backup", {"host": "hv1", "vm": "web01", "repository": REPO, "compress": True}, "compress"),
    ("backup: workers not a number", "hyperv_backup", {"host": "hv1", "vm": "web01", "repository": REPO, "workers": "many"}, "workers"),
    ("backup: negative workers", "hyperv_backup", {"host": "hv1", "vm": "web01", "repository": REPO, "workers": -3}, "workers"),
    ("backup: VM that does not exist", "hyperv_backup", {"host": "hv1", "vm": "no-such-vm", "repository": REPO}, "no-such-vm"),
    ("backup: host with a path", "hyperv_backup", {"host": "../hv1", "vm": "web01", "repository": REPO}, "hv1"),
    ("backup: repository that does not exist", "hyperv_backup",
     {"host": "hv1", "vm": "web01", "repository": "{{ work_directory }}/nothing"}, "repository"),
    ("backup: bad transport", "hyperv_backup", {"host": "hv1", "vm": "web01", "repository": REPO, "transport": "ssh"}, "transport"),
    ("repository: chunk size not a power of two", "hyperv_backup_repository",
     {"repository": "{{ work_directory }}/repo2", "chunk_size": 3000000}, "chunk_size"),
    ("repository: compression level 99", "hyperv_backup_repository",
     {"repository": "{{ work_directory }}/repo3", "compression_level": 99}, "compression"),
    ("repository: negative keep_last", "hyperv_backup_repository", {"repository": REPO, "state": "pruned", "keep_last": -1},
     "keep"),
    ("repository: prune with no policy", "hyperv_backup_repository", {"repository": REPO, "state": "pruned"}, "keep"),
    ("restore: no destination", "hyperv_restore", {"vm": "web01", "repository": REPO}, "destination"),
    ("restore: backup_id and point_in_time", "hyperv_restore",
     {"backup_id": "x", "point_in_time": "2026-01-01T00:00:00Z", "repository": REPO, "destination": "{{ work_directory }}/r"},
     "mutually exclusive"),
    ("restore: point_in_time not a time", "hyperv_restore",
     {"vm": "web01", "point_in_time": "yesterday-ish", "repository": REPO, "destination": "{{ work_directory }}/r"}, "yesterday-ish"),
    ("restore: disk name with a path", "hyperv_restore",
     {"vm": "web01", "repository": REPO, "destination": "{{ work_directory }}/r", "disk_names": {"scsi0-0": "../../evil.vhdx"}},
     "not allowed"),
    ("restore: unknown backup id", "hyperv_restore",
     {"backup_id": "20990101T000000Z-000000000000", "repository": REPO, "destination": "{{ work_directory }}/r"}, "does not exist"),
    ("info: since not a time", "hyperv_backup_info", {"repository": REPO, "since": "last tuesday"}, "last tuesday"),
    ("lab: unknown fault", "hyperv_lab", {"host": "hv1", "faults": ["meteor_strike"]}, "meteor_strike"),
    ("lab: host name with a path", "hyperv_lab", {"host": "../../etc"}, "host"),
    ("host_info: basic auth over http", "hyperv_host_info",
     {"host": "hv1", "transport": "psrp", "protocol": "http", "auth": "basic", "username": "u", "password": "p"}, "basic"),
    ("vss_ensure: vms not a list of names", "hyperv_vss_ensure", {"host": "hv1", "vms": [{"nested": {"deep": 1}}]}, "vms"),
    ("backup: negative read rate", "hyperv_backup", {"host": "hv1", "vm": "web01", "repository": REPO, "read_rate_limit": -1},
     "read_rate_limit"),
    ("backup: negative workers", "hyperv_backup", {"host": "hv1", "vm": "web01", "repository": REPO, "workers": -2},
     "workers"),
]
# Not in either list on purpose: repository_s3_* options with a local path are ignored, which is right -- they
# also come from environment variables (AWS_ACCESS_KEY_ID ...) that a local-repository user may well have set.

HOSTILE_VM = "web'01\"; $(Stop-Computer) `n | Out-File x & y"


@pytest.fixture(scope="module")
def invalid_run(tmp_path_factory):
    """One playbook: a good backup, then every invalid task; (work_dir, registered)."""
    work_dir = tmp_path_factory.mktemp("invalid")
    cases = INVALID
    tasks = [lab_task(vms=[{"name": "web01", "disks": [{"size": 2 * MiB, "fill": {"seed": 1, "percent": 50}}]}]),
             repository_task(), backup_task("good", ignore_errors=False)]
    for index, (label, module, args, _word) in enumerate(cases):
        tasks.append({"name": label, "hyperv.backup.%s" % module: args, "register": "bad%d" % index, "ignore_errors": True})
    result, registered = run_tasks(work_dir, tasks, collect=["bad%d" % i for i in range(len(cases))] + ["good"])
    assert result.rc == 0 and registered, result.output[-5000:]
    return work_dir, registered


def _judge_invalid(registered, first_index, cases, fault_ledger=None):
    problems = []
    for offset, (label, _module, _args, word) in enumerate(cases):
        outcome = registered["bad%d" % (first_index + offset)]
        message = str(outcome.get("msg", ""))
        if not outcome.get("failed"):
            problems.append("%s: accepted (changed=%s)" % (label, outcome.get("changed")))
        elif "MODULE FAILURE" in message or "Traceback" in message or "module_stderr" in outcome:
            problems.append("%s: crashed: %s" % (label, (outcome.get("module_stderr") or message)[-600:]))
        elif word.lower() not in message.lower():
            problems.append("%s: message does not name %r: %s" % (label, word, message))
        elif fault_ledger is not None:
            fault_ledger.record("invalid module argument", "task failed with a message naming the problem", data_lost=0)
    return problems


def test_invalid_module_arguments_fail_clearly(invalid_run, fault_ledger):
    work_dir, registered = invalid_run
    problems = _judge_invalid(registered, 0, INVALID, fault_ledger)
    repo = open_repo(work_dir)
    assert repo.verify()["ok"]
    assert registered["good"]["backup_id"] in [r.backup_id for r in repo.list_backups()]
    assert not (work_dir / "repo2").exists() and not (work_dir / "repo3").exists()
    assert not problems, "\n".join(problems)


def test_vm_named_with_powershell_metacharacters_backs_up_and_restores(tmp_path, fault_ledger):
    tasks = [lab_task(services={"vss": "Running"},
                      vms=[{"name": HOSTILE_VM, "disks": [{"size": 2 * MiB, "fill": {"seed": 4, "percent": 60}}]},
                           {"name": "web01", "disks": [{"size": 2 * MiB}]}]),
             repository_task(),
             backup_task("b1", vm=HOSTILE_VM, ignore_errors=False),
             {"name": "restore", "hyperv.backup.hyperv_restore": {"vm": HOSTILE_VM, "repository": REPO,
                                                                  "destination": "{{ work_directory }}/restored"},
              "register": "restored", "ignore_errors": True},
             {"name": "info", "hyperv.backup.hyperv_backup_info": {"repository": REPO, "vm_name": HOSTILE_VM}, "register": "info"}]
    result, registered = run_tasks(tmp_path, tasks, collect=["b1", "restored", "info"])
    assert result.rc == 0 and registered, result.output[-5000:]
    b1 = registered["b1"]
    assert b1["vm"] == HOSTILE_VM
    repo = open_repo(tmp_path)
    assert [(r.vm_name, r.backup_id) for r in repo.list_backups()] == [(HOSTILE_VM, b1["backup_id"])]
    assert wrong_bytes(restored_bytes(repo, b1["backup_id"])[0], disk_bytes(b1["disks"][0]["path"], tmp_path)) == 0
    restored = registered["restored"]
    # the restored file name comes from the disk's file name; a name unsafe as a file name must be refused, not mangled
    if restored.get("failed"):
        assert "not allowed" in restored["msg"], restored["msg"]
        outcome = "backed up and listed by its exact name; restore refused the unsafe file name"
    else:
        assert all(str(tmp_path / "restored") == d["path"].rsplit("/", 1)[0] for d in restored["disks"])
        outcome = "backed up, listed and restored under its exact name"
    fault_ledger.record("VM named with quotes, $(), backtick, ;, |, &", outcome, data_lost=0)
