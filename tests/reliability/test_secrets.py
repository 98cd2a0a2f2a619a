"""Secrets never leak: a real -vvv playbook run with a distinctive password and passphrase, then a grep of
everything it produced -- stdout and stderr, the Ansible log, registered results, the repository, the
report and progress files, the lab directory and Ansible's temp directories.

The playbook itself is the one place the secrets are written (it is the user's input), so it is the
only file skipped. Each secret is searched as UTF-8, UTF-16-LE (PowerShell) and base64 (WinRM payloads).
"""
import base64
import os

import pytest

from playbook_helpers import backup_task, lab_task, repository_task, run_tasks

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

PASSWORD = "Pw-Zq7!kestrel-93518"
PASSPHRASE = "Pp-heron-quartz-40417"
WRONG_PASSPHRASE = "Pp-WRONG-lynx-11873"
S3_SECRET = "S3-secret-osprey-66021"


def encodings(secret):
    raw = secret.encode("utf-8")
    out = {raw, secret.encode("utf-16-le")}
    for shift in range(3):                     # base64 of the secret at any alignment inside a longer text
        encoded = base64.b64encode(b"\0" * shift + raw)[4 if shift else 0:-4]
        out.add(encoded[:max(8, len(encoded) - 4)])
    return out


def leaks_in(data, secrets):
    return sorted(s for s in secrets if any(form in data for form in encodings(s)))


@pytest.mark.frozen_guard(passphrase=PASSPHRASE)      # the guard restores the backup of the encrypted repository
def test_no_secret_in_any_output_of_a_verbose_run(tmp_path, monkeypatch, fault_ledger):
    monkeypatch.setenv("ANSIBLE_VERBOSITY", "3")                     # same as -vvv
    monkeypatch.setenv("ANSIBLE_LOG_PATH", str(tmp_path / "ansible.log"))
    connection = {"username": "backup-operator", "password": PASSWORD}
    tasks = [
        lab_task(services={"vss": "Running"}, vms=[{"name": "web01", "disks": [{"size": 4 << 20, "fill": {"seed": 3, "percent": 50}}]}]),
        repository_task(passphrase=PASSPHRASE),
        dict({"name": "facts", "hyperv.backup.hyperv_host_info": dict(connection, host="hv1")}, register="facts"),
        backup_task("b1", passphrase=PASSPHRASE, ignore_errors=False, progress_file="{{ work_directory }}/progress.json"),
        backup_task("b_wrong", passphrase=WRONG_PASSPHRASE),
        {"name": "restore", "hyperv.backup.hyperv_restore": {
            "vm": "web01", "repository": "{{ repository_path }}", "repository_passphrase": PASSPHRASE,
            "destination": "{{ work_directory }}/restored", "progress_file": "{{ work_directory }}/restore-progress.json"},
         "register": "restored"},
        {"name": "info", "hyperv.backup.hyperv_backup_info": {"repository": "{{ repository_path }}", "repository_passphrase": PASSPHRASE},
         "register": "info"},
        {"name": "verify", "hyperv.backup.hyperv_backup_repository": {
            "repository": "{{ repository_path }}", "repository_passphrase": PASSPHRASE, "state": "verified"}, "register": "verified"},
        {"name": "report", "hyperv.backup.hyperv_backup_report": {
            "directory": "{{ work_directory }}/report", "run_id": "run-1", "results": [
                {"host": "hv1", "vm": "web01", "status": "success", "backup_id": "{{ b1.backup_id }}", "backup_type": "{{ b1.type }}"},
                {"host": "hv1", "vm": "web01", "status": "failed", "error": "{{ b_wrong.msg }}"}]},
         "register": "report"},
        lab_task(faults=["auth_fails"]),
        dict({"name": "refused login", "hyperv.backup.hyperv_host_info": dict(connection, host="hv1")}, register="refused",
             ignore_errors=True),
        {"name": "S3 with a secret key (endpoint down)", "hyperv.backup.hyperv_backup_info": {
            "repository": "s3://bucket/prefix", "repository_s3_endpoint_url": "http://127.0.0.1:9",
            "repository_s3_access_key": "AKIDEXAMPLE", "repository_s3_secret_key": S3_SECRET},
         "register": "s3_down", "ignore_errors": True},
    ]
    collect = ["facts", "b1", "b_wrong", "restored", "info", "verified", "report", "refused", "s3_down"]
    result, registered = run_tasks(tmp_path, tasks, collect=collect)
    assert result.rc == 0, result.output[-8000:]
    # the run did what it should (so the grep below looks at real outputs, errors included)
    assert registered["b1"]["backup_id"] and registered["restored"]["verified"]
    assert registered["b_wrong"]["failed"] and "passphrase" in registered["b_wrong"]["msg"].lower()
    assert registered["refused"]["failed"] and registered["s3_down"]["failed"]
    assert "<ESTABLISH LOCAL CONNECTION" in result.output or "ESTABLISH" in result.output   # really verbose

    secrets = [PASSWORD, PASSPHRASE, WRONG_PASSPHRASE, S3_SECRET]
    # the detector works: the playbook (the user's input) has every secret, and encoded forms are found too
    assert leaks_in((tmp_path / "playbook.yml").read_bytes(), secrets) == sorted(secrets)
    assert leaks_in(b"x" + base64.b64encode(b"ab" + PASSWORD.encode()) + b"y", [PASSWORD]) == [PASSWORD]
    assert leaks_in(("Write-Host '%s'" % PASSPHRASE).encode("utf-16-le"), [PASSPHRASE]) == [PASSPHRASE]
    found = {}
    leaked = leaks_in(result.output.encode("utf-8"), secrets)
    if leaked:
        found["ansible-playbook stdout/stderr"] = leaked
    scanned = 0
    for directory, _dirs, files in os.walk(tmp_path):
        for name in files:
            path = os.path.join(directory, name)
            if path == str(tmp_path / "playbook.yml") or os.path.islink(path):
                continue
            with open(path, "rb") as handle:
                data = handle.read()
            scanned += 1
            leaked = leaks_in(data, secrets)
            if leaked:
                found[os.path.relpath(path, tmp_path)] = leaked
    assert scanned > 20 and (tmp_path / "ansible.log").exists()
    fault_ledger.record("secrets in a -vvv run (password, passphrase, wrong passphrase, S3 secret key)",
                        "found in %d of %d outputs (stdout/stderr + %d files)" % (len(found), scanned + 1, scanned), data_lost=0)
    assert not found, "secrets leaked into: %s" % found
