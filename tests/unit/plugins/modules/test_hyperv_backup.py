"""hyperv_backup as a module (main() with patched arguments) on a lab host: refusals and the run id.

The engine itself is tested in tests/unit/plugins/module_utils/test_backup_engine.py and end to end by the
integration target hyperv_backup; here: what the module does with its arguments.
"""
import json

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
