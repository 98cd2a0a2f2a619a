"""hyperv_backup_export as Ansible runs it: arguments in, exit/fail JSON out (no nbdkit needed on these paths)."""
import os

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.modules import hyperv_backup_export


class Exit(Exception):
    pass


class Fail(Exception):
    pass


@pytest.fixture(autouse=True)
def capture(monkeypatch):
    def exit_json(self, **kwargs):
        raise Exit(kwargs)

    def fail_json(self, **kwargs):
        raise Fail(kwargs)
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    monkeypatch.delenv("HYPERV_BACKUP_REPOSITORY_PASSPHRASE", raising=False)


def run(expect=Exit, **args):
    with patch_module_args(args):
        with pytest.raises(expect) as caught:
            hyperv_backup_export.main()
    return caught.value.args[0]


def test_present_needs_a_backup_and_absent_of_nothing_changes_nothing(tmp_path):
    Repository.init(str(tmp_path / "repo"))
    failed = run(Fail, repository=str(tmp_path / "repo"), state_dir=str(tmp_path / "s"))
    assert "state is present but any of the following are missing: vm, backup_id" in failed["msg"]
    result = run(repository=str(tmp_path / "repo"), state="absent", port=10950, state_dir=str(tmp_path / "s"))
    assert result["changed"] is False and result["stopped"] is False and result["port"] == 10950


def test_an_unknown_backup_fails_with_the_repositorys_message(tmp_path):
    Repository.init(str(tmp_path / "repo"))
    failed = run(Fail, repository=str(tmp_path / "repo"), backup_id="20261125T061100Z-1a2b3c4d5e6f",
                 state_dir=str(tmp_path / "s"), _ansible_check_mode=True)
    assert "does not exist" in failed["msg"] and failed["error_type"] == "RepositoryError"
    assert not os.path.exists(str(tmp_path / "s"))
