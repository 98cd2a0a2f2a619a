"""Replay and deletion (issue 13, point 5): an older catalog or status put back, a backup record deleted by hand.

Each proxy remembers what it saw of a repository (repository_memory.py, under $HYPERV_BACKUP_STATE_DIR here: a
directory per test, so that tests never share or touch a real proxy's memory). A second directory is a second proxy.
Every repository test runs on a local directory and on S3 (moto's server over real HTTP).
"""
import datetime
import json
import os
import threading

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_verify
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository, chunk_key
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_crypto import KIND_CATALOG
from ansible_collections.hyperv.backup.plugins.module_utils.repository.retention import RetentionPolicy
from ansible_collections.hyperv.backup.plugins.modules import hyperv_backup_info, hyperv_backup_repository

from test_backup_engine import backup as engine_backup, lab  # noqa: F401  pylint: disable=unused-import
from test_repository import FAST_KDF, backend, image, new_repo, s3_server, write_backup  # noqa: F401  pylint: disable=unused-import

STATE_ENV = "HYPERV_BACKUP_STATE_DIR"


@pytest.fixture(autouse=True)
def proxy_state(tmp_path, monkeypatch):
    """This test's proxy memory (never the real ~/.local/state)."""
    path = tmp_path / "proxy-a"
    monkeypatch.setenv(STATE_ENV, str(path))
    return path


def as_proxy(monkeypatch, path):
    """From here on the repository is opened by another proxy (its own memory at ``path``)."""
    monkeypatch.setenv(STATE_ENV, str(path))


def reopen(repo):
    options = None
    if repo.store.kind == "s3":
        options = {"endpoint_url": repo.store.client.meta.endpoint_url, "access_key": "testing", "secret_key": "testing"}
    passphrase = getattr(repo, "_test_passphrase", None)
    return Repository.open(repo.location, passphrase=passphrase, s3_options=options)


def warnings_of(repo):
    # imported here so that the behaviour checks of each test run (and fail) on code that predates the memory
    from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_memory
    return repository_memory.warnings_of(repo)


def lose_a_chunk(repo, record):
    manifest = repo.load_disk_manifest(record.backup_id, record.disks[0]["disk_key"])
    repo.store.delete(chunk_key(next(manifest.iter_chunks())[1]))


def states(repo):
    return dict((r.backup_id, r.state) for r in repo.list_backups())


def sealed_catalog(repo):
    return json.loads(repo.keys.unseal(KIND_CATALOG, "catalog", repo.store.get("catalog")))


# -- a replayed catalog -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("proxy", ["same proxy", "new proxy"])
def test_a_replayed_catalog_does_not_make_a_damaged_backup_complete(backend, proxy, tmp_path, monkeypatch):
    """The finding: an older catalog put back made a backup verify had marked damaged 'complete' again. The state now
    comes from status/<id>, also for a proxy that never saw the repository before (an AWX job)."""
    repo = new_repo(backend, passphrase="pw", scrypt_params=FAST_KDF)
    repo._test_passphrase = "pw"
    full = write_backup(repo, image(1, chunks=4, zero_every=99))
    assert states(repo) == {full.backup_id: "complete"}
    before_verify = repo.store.get("catalog")                  # what someone with write access keeps for later
    lose_a_chunk(repo, full)
    assert repo.verify()["damaged_backups"] == [full.backup_id]
    repo.store.put("catalog", before_verify)                    # replay: authentic, only older
    if proxy == "new proxy":
        as_proxy(monkeypatch, tmp_path / "proxy-b")
    reader = reopen(repo)
    assert states(reader) == {full.backup_id: "damaged"}
    assert reader.latest_backup("vm-1") is None
    assert [v["vm_name"] for v in reader.list_vms()] == ["web01"]


def test_a_replayed_catalog_never_makes_a_damaged_backup_the_parent(lab):
    """The engine reads the parent's record and status from storage, whatever a listing (a cache) says."""
    directory, repo = lab
    full = engine_backup(lab)
    record = repo.get_backup(full["backup_id"])
    lose_a_chunk(repo, record)
    assert repo.verify()["damaged_backups"] == [full["backup_id"]]
    # a listing that lies (an older catalog trusted as it was): the backup looks complete
    real_list = Repository.list_backups

    def cached_list(self, *args, **kwargs):
        out = real_list(self, *args, **kwargs)
        for item in out:
            item.state = "complete"
        return out
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Repository, "list_backups", cached_list)
        again = engine_backup(lab)
    assert again["type"] == "full" and again["parent_backup_id"] is None, again.get("type_reason")
    assert any(full["backup_id"] in w and "not used as the parent" in w for w in again["warnings"]), again["warnings"]


def test_a_catalog_whose_generation_went_back_is_rebuilt_from_the_records(backend):
    """A catalog older than one this proxy saw is not trusted, even where it agrees with the listing of backups/."""
    repo = new_repo(backend)                                     # plain: the forger can recompute the checksum
    a = write_backup(repo, image(2, chunks=2), vm_id="id-a", vm_name="alpha")
    repo.list_backups()
    old = sealed_catalog(repo)
    b = write_backup(repo, image(3, chunks=2), vm_id="id-b", vm_name="beta")
    repo.list_backups()
    newest = sealed_catalog(repo)
    assert newest["generation"] > old["generation"]
    forged = dict(newest, generation=old["generation"])       # every id there, but an older generation
    forged["backups"] = json.loads(json.dumps(newest["backups"]))
    forged["backups"][a.backup_id]["vm_name"] = "forged"
    repo.store.put("catalog", repo.keys.seal(KIND_CATALOG, "catalog", json.dumps(forged).encode()))
    reader = reopen(repo)
    assert [(r.backup_id, r.vm_name) for r in reader.list_backups()] == [(a.backup_id, "alpha"), (b.backup_id, "beta")]
    assert any("generation %d" % old["generation"] in w and "rebuilt" in w for w in warnings_of(reader)), warnings_of(reader)
    assert sealed_catalog(reader)["generation"] > newest["generation"]
    assert warnings_of(reopen(repo)) == []                      # rebuilt once; the next run has nothing to say


def test_every_catalog_write_raises_the_generation(backend):
    repo = new_repo(backend)
    seen = []
    for seed in range(3):
        write_backup(repo, image(10 + seed, chunks=1))
        repo.list_backups()
        seen.append(sealed_catalog(repo)["generation"])
    repo.verify()
    seen.append(sealed_catalog(repo)["generation"])
    assert seen == sorted(set(seen)) and seen[0] >= 1


def test_forks_of_one_proxy_writing_at_once_raise_no_false_alarm(backend):
    """Ansible forks back up several VMs into one repository at once: each commit and listing writes the catalog.
    Forks of one proxy share its memory and write the catalog one at a time, so none sees the generation go back."""
    repo = new_repo(backend)
    write_backup(repo, image(30, chunks=1))
    errors, said = [], []

    def fork(number):
        try:
            mine = reopen(repo)
            for round_ in range(3):
                write_backup(mine, image(100 * number + round_, chunks=1), vm_id="vm-%d" % number)
                mine.list_backups()
            said.extend(warnings_of(mine))
        except Exception as err:  # pylint: disable=broad-except
            errors.append(err)
    threads = [threading.Thread(target=fork, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and said == []
    assert len(reopen(repo).list_backups()) == 13


# -- a replayed or removed status ---------------------------------------------------------------------------------

def test_a_replayed_status_does_not_clear_damage_this_proxy_saw(backend, monkeypatch):
    repo = new_repo(backend, passphrase="pw", scrypt_params=FAST_KDF)
    repo._test_passphrase = "pw"
    full = write_backup(repo, image(4, chunks=3, zero_every=99))
    real_now = repository_verify.utc_now
    monkeypatch.setattr(repository_verify, "utc_now", lambda: real_now() - datetime.timedelta(days=1))
    assert repo.verify()["ok"]                                   # yesterday: fine
    monkeypatch.setattr(repository_verify, "utc_now", real_now)
    old_status, old_catalog = repo.store.get("status/%s" % full.backup_id), repo.store.get("catalog")
    lose_a_chunk(repo, full)
    assert not repo.verify()["ok"]
    repo.store.put("status/%s" % full.backup_id, old_status)     # both put back: every object authentic, only older
    repo.store.put("catalog", old_catalog)
    reader = reopen(repo)
    assert states(reader) == {full.backup_id: "damaged"}
    assert any("status of backup %s" % full.backup_id in w for w in warnings_of(reader)), warnings_of(reader)
    repo.store.delete("status/%s" % full.backup_id)             # or removed
    assert states(reopen(repo)) == {full.backup_id: "damaged"}


def test_an_unreadable_status_is_damage_not_a_clean_bill(backend):
    repo = new_repo(backend, passphrase="pw", scrypt_params=FAST_KDF)
    full = write_backup(repo, image(5, chunks=2, zero_every=99))
    lose_a_chunk(repo, full)
    repo.verify()
    repo.store.put("status/%s" % full.backup_id, b"HVB1 garbage")
    repo.store.delete("catalog")
    assert states(repo) == {full.backup_id: "damaged"}


# -- deletion -----------------------------------------------------------------------------------------------------

def test_a_backup_record_deleted_by_hand_is_reported_by_listing_and_verify(backend):
    repo = new_repo(backend)
    a = write_backup(repo, image(6, chunks=2), vm_id="id-a", vm_name="alpha")
    b = write_backup(repo, image(7, chunks=2), vm_id="id-b", vm_name="beta")
    assert sorted(states(repo)) == sorted([a.backup_id, b.backup_id])
    repo.store.delete("backups/%s" % a.backup_id)                # no prune: someone with write access
    message = ("backup %s has disappeared from the repository without a prune" % a.backup_id).lower()
    report = reopen(repo).verify()
    assert not report["ok"] and report["damaged_backups"] == [a.backup_id]
    entry = dict((e["backup_id"], e) for e in report["backups"])[a.backup_id]
    assert any(message in p.lower() for p in entry["problems"]) and entry["vm_name"] == "alpha"
    reader = reopen(repo)
    assert [r.backup_id for r in reader.list_backups()] == [b.backup_id]
    assert any(message in w.lower() for w in warnings_of(reader)), warnings_of(reader)
    again = reopen(repo)
    again.list_backups()
    assert any(message in w.lower() for w in warnings_of(again))     # still, every run, until it is dealt with


def test_an_acknowledged_disappearance_is_no_longer_reported(backend):
    from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_memory
    repo = new_repo(backend)
    a = write_backup(repo, image(8, chunks=2))
    repo.list_backups()
    repo.store.delete("backups/%s" % a.backup_id)
    assert not repo.verify()["ok"]
    assert repository_memory.acknowledge_disappeared(reopen(repo), [a.backup_id]) == [a.backup_id]
    reader = reopen(repo)
    assert reader.verify()["ok"] and warnings_of(reader) == []


def test_a_prune_is_not_reported_by_this_proxy_nor_by_another_that_saw_the_backups(backend, tmp_path, monkeypatch):
    repo = new_repo(backend)
    made = [write_backup(repo, image(20 + n, chunks=1)) for n in range(3)]
    as_proxy(monkeypatch, tmp_path / "proxy-b")
    assert len(reopen(repo).list_backups()) == 3                 # proxy b sees all three
    as_proxy(monkeypatch, tmp_path / "proxy-a")
    report = repo.prune(RetentionPolicy(keep_last=1))
    assert sorted(r["backup_id"] for r in report["removed"]) == sorted(m.backup_id for m in made[:2])
    for proxy in ("proxy-a", "proxy-b"):
        as_proxy(monkeypatch, tmp_path / proxy)
        reader = reopen(repo)
        assert [r.backup_id for r in reader.list_backups()] == [made[2].backup_id]
        assert warnings_of(reader) == [] and reader.verify()["ok"], proxy
    tombstone = json.loads(repo.keys.unseal(5, "deleted/%s" % made[0].backup_id, repo.store.get("deleted/%s" % made[0].backup_id)))
    assert tombstone["backup_id"] == made[0].backup_id and tombstone["sequence"] == made[0].sequence and tombstone["deleted"]


def test_a_forged_tombstone_does_not_hide_a_deletion_in_an_encrypted_repository(backend):
    repo = new_repo(backend, passphrase="pw", scrypt_params=FAST_KDF)
    repo._test_passphrase = "pw"
    a = write_backup(repo, image(9, chunks=2))
    repo.list_backups()
    repo.store.put("deleted/%s" % a.backup_id, b"HVB1\x05\x02" + os.urandom(60))   # not sealed with the key
    repo.store.delete("backups/%s" % a.backup_id)
    reader = reopen(repo)
    assert reader.list_backups() == []
    assert any("disappeared" in w for w in warnings_of(reader)) and not reader.verify()["ok"]


def test_a_proxy_that_never_saw_a_backup_cannot_miss_it(backend, tmp_path, monkeypatch):
    """The documented limit: the memory is per proxy; a new one (an AWX job without a persistent home) knows nothing."""
    repo = new_repo(backend)
    a = write_backup(repo, image(11, chunks=2))
    repo.store.delete("backups/%s" % a.backup_id)
    as_proxy(monkeypatch, tmp_path / "fresh")
    reader = reopen(repo)
    assert reader.list_backups() == [] and warnings_of(reader) == []


# -- where the memory lives, and what happens when it cannot be kept ----------------------------------------------

def test_where_the_memory_lives():
    from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_memory
    assert repository_memory.state_root({STATE_ENV: "/srv/state"}) == "/srv/state"
    assert repository_memory.state_root({"XDG_STATE_HOME": "/x", "HOME": "/h"}) == "/x/hyperv.backup"
    assert repository_memory.state_root({"HOME": "/h"}) == "/h/.local/state/hyperv.backup"


def test_a_memory_that_cannot_be_written_is_said_and_listing_still_works(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(STATE_ENV, str(blocker / "state"))
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=64 * 1024)
    a = write_backup(repo, image(12, chunks=1))
    assert [r.backup_id for r in repo.list_backups()] == [a.backup_id]
    assert any("cannot keep its memory" in w for w in warnings_of(repo)), warnings_of(repo)


def test_the_memory_file_is_private_and_holds_no_names_of_other_repositories(backend, proxy_state):
    repo = new_repo(backend)
    write_backup(repo, image(13, chunks=1), vm_name="secret-vm-name")
    repo.list_backups()
    directory = proxy_state / "repositories" / repo.config["repository_id"]
    files = sorted(p.name for p in directory.iterdir())
    assert "seen.json" in files
    assert oct(os.stat(directory / "seen.json").st_mode & 0o777) == "0o600"
    for level in (directory, directory.parent, proxy_state):
        assert oct(os.stat(level).st_mode & 0o777) == "0o700"


# -- how it reaches the user: module warnings ---------------------------------------------------------------------

class Exit(Exception):
    pass


def run_module(module, monkeypatch, **args):
    warned = []

    def exit_json(self, **kwargs):
        raise Exit(kwargs)
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, text: warned.append(text))
    with patch_module_args(args):
        with pytest.raises(Exit) as caught:
            module.main()
    return caught.value.args[0], warned


def test_the_modules_warn_about_a_backup_deleted_without_a_prune(tmp_path, monkeypatch):
    location = str(tmp_path / "repo")
    repo = Repository.init(location, chunk_size=64 * 1024)
    a = write_backup(repo, image(14, chunks=1))
    b = write_backup(repo, image(15, chunks=1))
    repo.list_backups()
    repo.store.delete("backups/%s" % a.backup_id)
    result, warned = run_module(hyperv_backup_info, monkeypatch, repository=location)
    assert [x["backup_id"] for x in result["backups"]] == [b.backup_id]
    assert any("%s has disappeared" % a.backup_id in w for w in warned), warned
    result, warned = run_module(hyperv_backup_repository, monkeypatch, repository=location, state="verified")
    assert a.backup_id in result["msg"] and "disappeared" in result["msg"]
