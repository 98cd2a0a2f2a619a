"""hyperv_backup_repository and hyperv_backup_info as Ansible runs them: module args in, exit/fail JSON out."""
import os
import sys

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from ansible_collections.hyperv.backup.plugins.doc_fragments.repository import ModuleDocFragment
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository, chunk_key
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_options import repository_argument_spec
from ansible_collections.hyperv.backup.plugins.modules import hyperv_backup_info, hyperv_backup_repository

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "module_utils"))
from test_repository import CHUNK, image, write_backup  # noqa: E402  pylint: disable=wrong-import-position
from storage_age import age  # noqa: E402  pylint: disable=wrong-import-position


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


def run(module, expect=Exit, **args):
    with patch_module_args(args):
        with pytest.raises(expect) as caught:
            module.main()
    return caught.value.args[0]


def test_present_is_idempotent_and_check_mode_creates_nothing(tmp_path):
    location = str(tmp_path / "repo")
    result = run(hyperv_backup_repository, repository=location, _ansible_check_mode=True)
    assert result["changed"] and result["created"] and not os.path.exists(location)
    result = run(hyperv_backup_repository, repository=location, repository_passphrase="pw", chunk_size=CHUNK)
    assert result["changed"] and result["created"]
    assert result["repository"]["encrypted"] and result["repository"]["chunk_size"] == CHUNK
    assert "pw" not in repr(result)
    result = run(hyperv_backup_repository, repository=location, repository_passphrase="pw")
    assert not result["changed"] and not result["created"]
    failed = run(hyperv_backup_repository, expect=Fail, repository=location, repository_passphrase="nope", state="verified")
    assert "Wrong passphrase" in failed["msg"] and failed["error_type"] == "RepositoryError"


def test_verified_reports_damage_by_backup_and_fails(tmp_path):
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    good = write_backup(repo, image(40, chunks=3), vm_name="good")
    result = run(hyperv_backup_repository, repository=repo.location, state="verified")
    assert result["verify"]["ok"] and "all" in result["msg"] and not result["changed"]
    bad = write_backup(repo, image(41, chunks=3), vm_id="vm-2", vm_name="bad")
    repo.store.delete(chunk_key(repo.load_disk_manifest(bad.backup_id, "disk0").chunk_id(0)))
    failed = run(hyperv_backup_repository, expect=Fail, repository=repo.location, state="verified")
    assert failed["verify"]["damaged_backups"] == [bad.backup_id]
    assert bad.backup_id in failed["msg"] and "1 missing chunk" in failed["msg"] and good.backup_id not in failed["msg"]
    result = run(hyperv_backup_repository, repository=repo.location, state="verified", fail_on_damage=False,
                 backups=[good.backup_id])
    assert result["verify"]["ok"]


def test_pruned_check_mode_then_real(tmp_path):
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    first = write_backup(repo, image(42, chunks=3))
    write_backup(repo, image(43, chunks=3))
    chunks_before = len(list(repo.store.list("chunks/")))
    age(repo.store, "chunks/", 3600)            # older than the (minimum) grace of 15 minutes, by the storage's clock
    refused = run(hyperv_backup_repository, expect=Fail, repository=repo.location, state="pruned", keep_last=1, gc_grace_minutes=14)
    assert "gc_grace_minutes must be at least 15" in refused["msg"]
    preview = run(hyperv_backup_repository, repository=repo.location, state="pruned", keep_last=1, gc_grace_minutes=15,
                  _ansible_check_mode=True)
    assert preview["changed"] and [r["backup_id"] for r in preview["prune"]["removed"]] == [first.backup_id]
    assert preview["msg"].startswith("Would remove 1 backup(s), kept 1")
    assert len(list(repo.store.list("chunks/"))) == chunks_before and len(repo.list_backups()) == 2
    done = run(hyperv_backup_repository, repository=repo.location, state="pruned", keep_last=1, gc_grace_minutes=15)
    assert done["changed"] and done["prune"]["gc"]["chunks_removed"] == 3 + 1     # + its index page
    assert done["msg"].startswith("Removed 1 backup(s), kept 1; freed 4 unreferenced chunk(s)")
    again = run(hyperv_backup_repository, repository=repo.location, state="pruned", keep_last=1)
    assert not again["changed"]
    refused = run(hyperv_backup_repository, expect=Fail, repository=repo.location, state="pruned")
    assert "keeps nothing" in refused["msg"]


def test_info_lists_and_filters(tmp_path):
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    a = write_backup(repo, image(44, chunks=2), vm_id="aaaa", vm_name="alpha", host="HV1")
    b = write_backup(repo, image(45, chunks=2), vm_id="bbbb", vm_name="beta", host="hv2")
    everything = run(hyperv_backup_info, repository=repo.location)
    assert [x["backup_id"] for x in everything["backups"]] == [a.backup_id, b.backup_id]
    entry = everything["backups"][0]
    assert entry["virtual_size"] == 2 * CHUNK + 1234 and entry["stored_bytes"] > 0 and entry["state"] == "complete"
    assert entry["disks"][0]["chunk_count"] == 2 and entry["type"] == "full" and entry["consistency"] == "application"
    assert [x["backup_id"] for x in run(hyperv_backup_info, repository=repo.location, vm_name="beta")["backups"]] == [b.backup_id]
    assert [x["backup_id"] for x in run(hyperv_backup_info, repository=repo.location, vm_id="{AAAA}")["backups"]] == [a.backup_id]
    assert [x["backup_id"] for x in run(hyperv_backup_info, repository=repo.location, source_host="hv1")["backups"]] == [a.backup_id]
    assert run(hyperv_backup_info, repository=repo.location, since="2999-01-01")["backups"] == []
    failed = run(hyperv_backup_info, expect=Fail, repository=str(tmp_path / "none"))
    assert "No backup repository" in failed["msg"]
    failed = run(hyperv_backup_info, expect=Fail, repository=repo.location, since="yesterday-ish")
    assert "Cannot read the time" in failed["msg"]
    assert [x["backup_id"] for x in run(hyperv_backup_info, repository=repo.location, backup_id=b.backup_id)["backups"]] == [b.backup_id]
    failed = run(hyperv_backup_info, expect=Fail, repository=repo.location, backup_id="../config")
    assert "is not a backup id" in failed["msg"] and failed["error_type"] == "RepositoryError"


def test_doc_fragment_matches_argument_spec():
    import yaml
    documented = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    spec = repository_argument_spec()
    assert set(documented) == set(spec)
    for name, option in spec.items():
        assert documented[name]["type"] == option["type"], name
        assert documented[name].get("default") == option.get("default"), name
        assert documented[name].get("choices") == option.get("choices"), name


def test_pruned_counts_leftovers_of_a_crashed_backup_as_a_change(tmp_path, monkeypatch):
    """Only a dead writer's marker and chunk to remove: check mode predicts changed, the real run changes."""
    from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository as repository_module
    from ansible_collections.hyperv.backup.plugins.module_utils.repository import backup_session as backup_session_module
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    write_backup(repo, image(46, chunks=2))
    monkeypatch.setattr(repository_module, "SESSION_TIMEOUT_SECONDS", 0)
    monkeypatch.setattr(backup_session_module, "SESSION_TIMEOUT_SECONDS", 0)
    session = repo.begin_backup(vm_id="v", vm_name="v", host="h", method="rct", backup_type="full")
    session._stop.set()                      # the writer dies before it stored anything
    args = dict(repository=repo.location, state="pruned", keep_last=5)
    preview = run(hyperv_backup_repository, _ansible_check_mode=True, **args)
    assert preview["changed"] and preview["prune"]["gc"]["stale_sessions_removed"] == 1
    assert "would clear 1 leftover(s) of interrupted backups" in preview["msg"]
    assert [info.key for info in repo.store.list("sessions/")] == ["sessions/" + session.backup_id]
    done = run(hyperv_backup_repository, **args)
    assert done["changed"] and done["prune"]["gc"]["stale_sessions_removed"] == 1
    assert list(repo.store.list("sessions/")) == []
    assert not run(hyperv_backup_repository, **args)["changed"]


def test_negative_durations_and_bad_ids_are_refused(tmp_path):
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    for name in ("gc_grace_minutes", "lock_wait_seconds"):
        failed = run(hyperv_backup_repository, expect=Fail, repository=repo.location, state="pruned", keep_last=1, **{name: -1})
        assert name in failed["msg"] and "0 or more" in failed["msg"]
    failed = run(hyperv_backup_repository, expect=Fail, repository=repo.location, state="verified", backups=["../config"])
    assert "is not a backup id" in failed["msg"] and failed["error_type"] == "RepositoryError"
    assert Repository.open(repo.location).describe()["chunk_size"] == CHUNK
