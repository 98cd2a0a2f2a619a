"""The frozen guard itself (tests/frozen_guard.py, lab_frozen.py): it passes for good backups and can fail.

In-process backups (the backup engine over the lab transport, no playbook) of an RCT host (2022) and a VSS host
(2012 R2), each full and then incremental after guest writes, with more guest writes after each backup:

- the lab keeps one frozen copy per recovery point (index: kind, VM, disk, slot, size), and the guard finds every
  backup equal to the disk at its recovery point although the disks have moved on since;
- a frozen copy that differs by one byte makes the guard name that backup, its disk and the offset;
- backups made while the lab keeps no frozen copies are "unmatched", and a test whose backups are all unmatched fails
  (the guard would otherwise pass having checked nothing).
"""
import os
import re

import pytest

import frozen_guard
from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import run_backup
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin, lab_frozen
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
HOSTS = {"rct22": "2022", "vss12": "2012r2"}


def _lab(tmp_path):
    lab = str(tmp_path / "lab")
    for host, era in HOSTS.items():
        layout = LabLayout(lab, host)
        lab_admin.ensure_host(layout, era=era, services={"vss": "Running"})
        disks = [{"size": 4 * MiB, "fill": {"seed": 5, "percent": 50}}, {"size": 2 * MiB, "fill": {"seed": 6, "percent": 30}}]
        lab_admin.ensure_vm(layout, {"name": "web01", "disks": disks})
    return lab, Repository.init(str(tmp_path / "repo"), chunk_size=256 * 1024)


def _backup(lab, repo, host):
    params = {"transport": "lab", "host": host, "lab_directory": lab, "vm": "web01"}
    with HostSession.from_module_params(params) as session:
        result = run_backup(session, repo, params)
    lab_admin.churn(LabLayout(lab, host), "web01", seed=len(result["backup_id"]) + ord(host[0]), writes=8, write_size=64 * 1024)
    return result


def test_guard_checks_every_backup_and_names_a_difference(tmp_path):
    lab, repo = _lab(tmp_path)
    results = []
    for host in HOSTS:
        results.append(_backup(lab, repo, host))          # full
        results.append(_backup(lab, repo, host))          # incremental, after guest writes
    assert sorted(r["type"] for r in results) == ["full", "full", "incremental", "incremental"]
    assert sorted(r["method"] for r in results) == ["rct", "rct", "vss", "vss"]

    indexes = lab_frozen.all_points(lab)
    assert sorted(index["kind"] for index in indexes.values()) == ["rct", "rct", "vss", "vss"]
    assert all(len(index["disks"]) == 2 and index["disks"][0]["virtual_size"] == 4 * MiB for index in indexes.values())

    outcome = frozen_guard.check_directory(tmp_path)
    assert not outcome.problems, outcome.problems
    assert sorted(outcome.checked) == sorted(r["backup_id"] for r in results) and outcome.disks == 8, outcome.summary()

    # one byte of the frozen copy of the second RCT backup's second disk differs: the guard names exactly that
    victim = results[1]
    record = repo.get_backup(victim["backup_id"])
    index = indexes[lab_frozen.point_key(record.metadata["recovery_point"]["id"])]
    entry = [e for e in index["disks"] if e["controller_location"] == 1][0]
    path = os.path.join(index["directory"], entry["file"])
    with open(path, "r+b") as handle:
        original = os.pread(handle.fileno(), 1, 123456)
        os.pwrite(handle.fileno(), bytes([original[0] ^ 0x5A]), 123456)
    try:
        outcome = frozen_guard.check_directory(tmp_path)
    finally:
        with open(path, "r+b") as handle:
            os.pwrite(handle.fileno(), original, 123456)
    assert len(outcome.problems) == 1 and len(outcome.checked) == 3, outcome.summary()
    problem = outcome.problems[0]
    assert victim["backup_id"] in problem and "disk scsi0-1 differs" in problem, problem
    offset = int(re.search(r"mismatch at offset (\d+)", problem).group(1))     # qemu-img names the sector it starts in
    assert 123456 - 4096 < offset <= 123456, problem
    assert frozen_guard.verdict(outcome) == outcome.problems
    assert not frozen_guard.check_directory(tmp_path).problems     # undone: equal again


@pytest.mark.frozen_guard_off(reason="makes backups without frozen copies on purpose, to show that such a test fails")
def test_guard_fails_a_test_whose_backups_it_could_not_check(tmp_path, monkeypatch):
    monkeypatch.delenv(lab_frozen.ENVIRONMENT)
    lab, repo = _lab(tmp_path)
    result = _backup(lab, repo, "rct22")
    assert not lab_frozen.all_points(lab)
    outcome = frozen_guard.check_directory(tmp_path)
    assert outcome.unmatched == [result["backup_id"]] and not outcome.checked and not outcome.problems, outcome.summary()
    problems = frozen_guard.verdict(outcome)
    assert len(problems) == 1 and "none has a frozen copy" in problems[0] and lab_frozen.ENVIRONMENT in problems[0], problems
