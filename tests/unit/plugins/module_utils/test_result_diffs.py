"""Issue 16 point 5: the --diff of hyperv_backup_repository (prune and key states) and hyperv_lab (check mode).

The integration test tests/integration/test_diff_mode.py runs the modules with ansible-playbook --diff; here the states
that need backups or several keys, run in this process against a local repository and a lab host.
"""
import json

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.modules import hyperv_backup_repository, hyperv_lab

PASSPHRASE = "diff passphrase"


class _Exit(Exception):
    pass


@pytest.fixture(autouse=True)
def capture(monkeypatch):
    def exit_json(self, **kwargs):
        raise _Exit(kwargs)

    def fail_json(self, **kwargs):
        raise AssertionError(kwargs.get("msg"))
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)


def run(module, **args):
    with patch_module_args(dict(args, _ansible_diff=True)):
        with pytest.raises(_Exit) as done:
            module.main()
    return done.value.args[0]


def _backup(repo, vm):
    with repo.begin_backup("id-" + vm, vm, "hv1", "rct", "full") as backup:
        disk = backup.add_disk("disk0", 65536)
        disk.put_chunk(0, (vm * 65536).encode()[:65536])
        return backup.commit()


def test_prune_diff_lists_the_backups_before_and_after(tmp_path):
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=65536)
    ids = [_backup(repo, "web01").backup_id for _count in range(3)]
    args = dict(repository=repo.location, state="pruned", keep_last=1)
    checked = run(hyperv_backup_repository, _ansible_check_mode=True, **args)
    assert checked["diff"]["before"] == {"backups": sorted(ids)}
    assert checked["diff"]["after"]["backups"] == [ids[-1]]
    assert len(Repository.open(repo.location).list_backups()) == 3            # check mode removed nothing
    done = run(hyperv_backup_repository, **args)
    assert done["diff"]["before"] == checked["diff"]["before"] and done["diff"]["after"]["backups"] == [ids[-1]]
    assert done["diff"]["after"]["unreferenced_chunks_deleted"] == done["prune"]["gc"]["chunks_removed"]


def test_key_state_diffs_show_slot_labels_and_never_a_passphrase(tmp_path):
    location = str(tmp_path / "repo")
    Repository.init(location, passphrase=PASSPHRASE, chunk_size=65536)
    common = dict(repository=location, repository_passphrase=PASSPHRASE)
    changed = run(hyperv_backup_repository, state="passphrase_changed", new_repository_passphrase="new words",
                  _ansible_check_mode=True, **common)["diff"]
    assert changed["before"] == {"key_slots": {"passphrase": "key slot (current passphrase)"}}
    assert changed["after"] == {"key_slots": {"passphrase": "key slot (new passphrase)"}}
    run(hyperv_backup_repository, state="key_slot_added", new_repository_passphrase="recovery words", **common)
    removed = run(hyperv_backup_repository, state="key_slot_removed", key_slot_label="recovery", **common)["diff"]
    assert removed["before"] == {"key_slots": {"passphrase": "key slot", "recovery": "key slot"}}
    assert removed["after"] == {"key_slots": {"passphrase": "key slot"}}
    again = run(hyperv_backup_repository, state="key_slot_removed", key_slot_label="recovery", **common)["diff"]
    assert again["before"] == again["after"]                                   # nothing to remove: no change shown
    assert PASSPHRASE not in json.dumps([changed, removed, again]) and "words" not in json.dumps([changed, removed])


def test_lab_check_mode_diff_foresees_the_real_run(tmp_path):
    lab = dict(lab_directory=str(tmp_path / "lab"), host="hv1")
    layout = LabLayout(lab["lab_directory"], "hv1")
    lab_admin.ensure_host(layout, era="2019")
    lab_admin.ensure_vm(layout, {"name": "web01", "disks": [{"size": 1024 * 1024}]})
    change = dict(lab, faults=["vss_writer_failed"], services={"vss": "Running"},
                  vms=[{"name": "web01", "state": "Off", "checkpoints": ["before"], "disks": [{"size": 1024 * 1024}]},
                       {"name": "db01", "disks": [{"size": 2 * 1024 * 1024}]}])
    checked = run(hyperv_lab, _ansible_check_mode=True, **change)["diff"]
    assert "db01" not in checked["before"]["vms"] and checked["after"]["vms"]["db01"]["state"] == "Running (would be created)"
    assert checked["after"]["vms"]["web01"]["state"] == "Off" and checked["after"]["vms"]["web01"]["checkpoints"] == ["before"]
    assert checked["after"]["faults"] == ["vss_writer_failed"] and checked["after"]["services"]["vss"]["status"] == "Running"
    done = run(hyperv_lab, **change)["diff"]
    assert done["before"] == checked["before"]
    for key in ("era", "faults", "services", "quirks"):
        assert done["after"][key] == checked["after"][key]
    assert done["after"]["vms"]["web01"] == checked["after"]["vms"]["web01"]
    removed = run(hyperv_lab, state="absent", _ansible_check_mode=True, **lab)["diff"]
    assert removed["before"] == done["after"] and removed["after"] == {}
