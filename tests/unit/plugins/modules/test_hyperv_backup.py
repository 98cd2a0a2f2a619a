"""hyperv_backup as a module (main() with patched arguments) on a lab host: refusals and the run id.

The engine itself is tested in tests/unit/plugins/module_utils/test_backup_engine.py and end to end by the
integration target hyperv_backup; here: what the module does with its arguments.
"""
import hashlib
import json
import os

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.modules import hyperv_backup

MiB = 1024 * 1024


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.delenv("HYPERV_BACKUP_RUN_ID", raising=False)
    monkeypatch.delenv("JOB_ID", raising=False)
    directory = str(tmp_path / "lab")
    layout = LabLayout(directory, "hv01")
    lab_admin.ensure_host(layout, era="2019")
    lab_admin.ensure_vm(layout, {"name": "web01", "disks": [{"size": 2 * MiB, "fill": {"seed": 3, "percent": 50}}]})
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=64 * 1024)
    return {"transport": "lab", "host": "hv01", "lab_directory": directory, "vm": "web01", "repository": repo.location}


def run(capsys, **args):
    with patch_module_args(args):
        with pytest.raises(SystemExit) as caught:
            hyperv_backup.main()
    return caught.value.code != 0, json.loads(capsys.readouterr().out)


def points(lab):
    with HostSession.from_module_params(lab) as session:
        vm = session.run("get_vms", names=["web01"])[0]
    return vm["checkpoints"], vm["reference_points"]


@pytest.mark.parametrize("option, value, words", [
    ("read_rate_limit", -1, "read_rate_limit must be a number of bytes per second"),
    ("workers", -2, "workers must be a positive number"),
    ("run_id", "a/b", "run_id 'a/b' is not usable"),
])
def test_bad_values_fail_clearly_and_touch_nothing(lab, capsys, option, value, words):
    failed, result = run(capsys, **dict(lab, **{option: value}))
    assert failed and words in result["msg"]
    assert result.get("hint")                                   # and says what to do
    assert points(lab) == ([], [])
    assert Repository.open(lab["repository"]).list_backups(include_in_progress=True) == []


def test_run_id_from_the_awx_job_is_returned_and_stored(lab, capsys, monkeypatch):
    monkeypatch.setenv("JOB_ID", "77")
    failed, result = run(capsys, **lab)
    assert not failed and result["run_id"] == "awx-job-77" and result["type"] == "full"
    record = Repository.open(lab["repository"]).get_backup(result["backup_id"])
    assert record.metadata["run_id"] == "awx-job-77"
    failed, result = run(capsys, **dict(lab, run_id="nightly-1"))
    assert not failed and result["run_id"] == "nightly-1" and result["type"] == "incremental"


def repository_files(location):
    """Every folder and file of a local repository, files with size, mtime and content hash (what a write changes)."""
    out = {}
    for folder, dirs, names in os.walk(location):
        for name in dirs:
            out[os.path.relpath(os.path.join(folder, name), location)] = "folder"
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            stat = os.stat(path)
            out[os.path.relpath(path, location)] = (stat.st_size, stat.st_mtime_ns, digest)
    return out


def test_check_mode_writes_nothing_to_the_repository(lab, capsys):
    layout = LabLayout(lab["lab_directory"], "hv01")
    # after the first backup the repository has no catalog yet; after the second, one that misses the new backup:
    # a listing writes the catalog in both cases, and check mode must not
    for seed, kind in ((4, "full"), (5, "incremental")):
        failed, done = run(capsys, **lab)
        assert not failed and done["type"] == kind
        lab_admin.churn(layout, "web01", seed=seed, write_size=4096, offsets=[0])
        before = repository_files(lab["repository"])
        failed, result = run(capsys, _ansible_check_mode=True, **lab)
        assert not failed and result["type"] == "incremental" and result["estimate"]["bytes_to_read"] > 0
        assert result["previous_backup_id"] == done["backup_id"]        # the listing still sees the newest backup
        assert repository_files(lab["repository"]) == before
        assert points(lab)[0] == []
