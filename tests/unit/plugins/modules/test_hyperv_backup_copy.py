"""Module hyperv_backup_copy and hyperv_backup_repository copy_keys_from (issue 15, a second copy): check mode writes
nothing, a copy reports what it moved, a second run is changed false, every key returned is documented, and secrets of
the target never reach the result."""
import json

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository

from test_module_documentation import _check_documented, recorded, run  # noqa: F401 pylint: disable=unused-import
from test_repository import CHUNK, FAST_KDF, image, write_backup


@pytest.fixture
def source(tmp_path):
    repo = Repository.init(str(tmp_path / "src"), passphrase="source pass", chunk_size=CHUNK, scrypt_params=FAST_KDF)
    write_backup(repo, image(1, chunks=6), vm_id="vm-1", vm_name="web01")
    write_backup(repo, image(2, chunks=6), vm_id="vm-1", vm_name="web01")
    write_backup(repo, image(3, chunks=4), vm_id="vm-2", vm_name="db01")
    return {"repository": repo.location, "repository_passphrase": "source pass"}


def test_copy_module_check_mode_real_run_and_idempotence(recorded, source, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("HYPERV_BACKUP_REPOSITORY_PASSPHRASE", raising=False)
    target = {"repository": str(tmp_path / "dst"), "repository_passphrase": "target pass"}
    would = run("hyperv_backup_repository", copy_keys_from=source, _ansible_check_mode=True, **target)
    assert would["changed"] and would["created"] and not (tmp_path / "dst").exists()
    made = run("hyperv_backup_repository", copy_keys_from=source, **target)
    assert made["changed"] and made["keys_shared"] and made["repository"]["chunk_size"] == CHUNK
    again = run("hyperv_backup_repository", copy_keys_from=source, **target)
    assert not again["changed"] and again["keys_shared"]

    planned = run("hyperv_backup_copy", target=target, latest_per_vm=True, _ansible_check_mode=True, **source)
    assert planned["changed"] and len(planned["planned"]) == 2 and planned["copied"] == []
    assert Repository.open(target["repository"], passphrase="target pass").list_backups() == []
    copied = run("hyperv_backup_copy", target=target, latest_per_vm=True, **source)
    assert copied["changed"] and [e["vm_name"] for e in copied["copied"]] == ["web01", "db01"]
    assert copied["same_keys"] and copied["chunks_rehashed"] == 0 and copied["verify"]["ok"]
    second = run("hyperv_backup_copy", target=target, latest_per_vm=True, **source)
    assert not second["changed"] and second["copied"] == [] and len(second["present"]) == 2
    everything = run("hyperv_backup_copy", target=target, vm="web01", **source)      # the older web01 backup: skipped
    assert not everything["changed"] and "older than backup" in everything["skipped"][0]["reason"]

    other = {"repository": str(tmp_path / "other"), "repository_passphrase": "other pass"}
    Repository.init(other["repository"], passphrase="other pass", chunk_size=CHUNK, scrypt_params=FAST_KDF)
    rehashed = run("hyperv_backup_copy", target=other, **source)
    assert not rehashed["same_keys"] and rehashed["chunks_rehashed"] > 0 and len(rehashed["copied"]) == 3
    problems = _check_documented(recorded)
    assert not problems, problems
    text = json.dumps(recorded)
    assert "target pass" not in text and "other pass" not in text and "source pass" not in text
