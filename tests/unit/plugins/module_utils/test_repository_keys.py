"""Keys of an encrypted repository (issue 13, points 6, 3 and 9): stronger scrypt for new repositories, passphrase
change and a second key slot without rewriting data, key export and recovery of a lost config, the module states that
expose them, and a module process that keeps its keys out of core dumps and its passphrase out of children.

Repository tests take ``backend`` (local directory and S3 via moto over real HTTP). Most use cheap scrypt parameters
(``FAST_KDF``) for speed; the tests of the defaults use the real ones.
"""
import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_crypto
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_key_slots as key_slots
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.modules import hyperv_backup_repository

import test_repository
from test_repository import CHUNK, FAST_KDF, backend_options, image, new_repo, read_all, write_backup

# The fixtures of the two backends (local directory, moto S3 server), shared with test_repository.py.
s3_server = test_repository.s3_server
backend = test_repository.backend

OLD = "old passphrase 1"
NEW = "new passphrase 2"
RECOVERY = "recovery passphrase 3"


def options_of(repo):
    return backend_options(repo) if repo.store.kind == "s3" else None


def config_bytes(repo):
    return repo.store.get("config")


def slot_kdf(repo, index=0):
    return json.loads(config_bytes(repo))["encryption"]["key_slots"][index]["kdf"]


def object_snapshot(repo):
    """Every object except the config, with its bytes: what a key operation must not touch."""
    return dict((info.key, repo.store.get(info.key)) for info in repo.store.list("") if info.key != "config"
                and not info.key.startswith("catalog") and not info.key.startswith("locks/"))


def backed_up(backend):
    repo = new_repo(backend, passphrase=OLD, scrypt_params=FAST_KDF)
    first = write_backup(repo, image(11, chunks=4))
    second = write_backup(repo, image(12, chunks=3), vm_id="vm-2", vm_name="db01")
    return repo, {first.backup_id: image(11, chunks=4), second.backup_id: image(12, chunks=3)}


def assert_restores(repo, expected):
    for backup_id, data in expected.items():
        assert read_all(repo, backup_id) == data
    assert repo.verify(record_status=False)["ok"]


# -- scrypt parameters ----------------------------------------------------------------------------

def test_new_repositories_use_scrypt_n_2_17(tmp_path):
    repo = Repository.init(str(tmp_path / "repo"), passphrase=OLD, chunk_size=CHUNK)
    assert slot_kdf(repo) == dict(slot_kdf(repo), name="scrypt", n=2 ** 17, r=8, p=1)
    assert repository_crypto.DEFAULT_SCRYPT == {"n": 2 ** 17, "r": 8, "p": 1}
    assert Repository.open(repo.location, passphrase=OLD).encrypted


def test_existing_repositories_keep_their_stored_parameters(backend):
    repo = new_repo(backend, passphrase=OLD, scrypt_params=FAST_KDF)
    Repository.open(repo.location, passphrase=OLD, s3_options=options_of(repo))
    assert slot_kdf(repo)["n"] == FAST_KDF["n"]


# -- passphrase change ----------------------------------------------------------------------------

def test_passphrase_change_keeps_every_backup_and_retires_the_old_passphrase(backend):
    repo, expected = backed_up(backend)
    before_objects = object_snapshot(repo)
    old_config = config_bytes(repo)
    result = key_slots.change_passphrase(repo.location, OLD, NEW, s3_options=options_of(repo), scrypt_params=FAST_KDF)
    assert result["changed"] and result["key_slot"] == "passphrase"
    assert OLD not in repr(result) and NEW not in repr(result)
    with pytest.raises(RepositoryError, match="Wrong passphrase"):
        Repository.open(repo.location, passphrase=OLD, s3_options=options_of(repo))
    reopened = Repository.open(repo.location, passphrase=NEW, s3_options=options_of(repo))
    assert_restores(reopened, expected)
    assert object_snapshot(repo) == before_objects                  # only the config was rewritten: no data rewrite
    # Documented caveat: a copy of the old config (an old S3 object version, a backup of the file) still opens
    # with the old passphrase, because the data keys did not change.
    repo.store.put("config", old_config)
    assert_restores(Repository.open(repo.location, passphrase=OLD, s3_options=options_of(repo)), expected)


def test_passphrase_change_is_idempotent_and_check_mode_writes_nothing(backend):
    repo, _expected = backed_up(backend)
    opts = options_of(repo)
    original = config_bytes(repo)
    dry = key_slots.change_passphrase(repo.location, OLD, NEW, s3_options=opts, scrypt_params=FAST_KDF, check_mode=True)
    assert dry["changed"] and config_bytes(repo) == original
    assert key_slots.change_passphrase(repo.location, OLD, NEW, s3_options=opts, scrypt_params=FAST_KDF)["changed"]
    changed = config_bytes(repo)
    again = key_slots.change_passphrase(repo.location, OLD, NEW, s3_options=opts, scrypt_params=FAST_KDF)
    assert not again["changed"] and "already" in again["msg"] and config_bytes(repo) == changed
    same = key_slots.change_passphrase(repo.location, NEW, NEW, s3_options=opts, scrypt_params=FAST_KDF)
    assert not same["changed"] and config_bytes(repo) == changed
    with pytest.raises(RepositoryError, match="Wrong passphrase"):
        key_slots.change_passphrase(repo.location, "neither", "nor this", s3_options=opts, scrypt_params=FAST_KDF)
    with pytest.raises(RepositoryError, match="empty passphrase"):
        key_slots.change_passphrase(repo.location, NEW, "", s3_options=opts, scrypt_params=FAST_KDF)


def test_passphrase_change_upgrades_the_kdf_of_the_changed_slot(tmp_path):
    repo = Repository.init(str(tmp_path / "repo"), passphrase=OLD, chunk_size=CHUNK, scrypt_params=FAST_KDF)
    key_slots.change_passphrase(repo.location, OLD, NEW)
    assert slot_kdf(repo)["n"] == 2 ** 17


def test_a_failed_check_after_writing_restores_the_old_config(tmp_path, monkeypatch):
    repo, expected = backed_up(lambda: (str(tmp_path / "repo"), None))
    original = config_bytes(repo)

    def broken_unlock(*_args, **_kwargs):
        raise RepositoryError("simulated: the written config does not open")
    monkeypatch.setattr(key_slots, "_check_written", broken_unlock)
    with pytest.raises(RepositoryError, match="simulated"):
        key_slots.change_passphrase(repo.location, OLD, NEW, scrypt_params=FAST_KDF)
    assert config_bytes(repo) == original
    assert_restores(Repository.open(repo.location, passphrase=OLD), expected)


def test_a_plain_repository_has_no_passphrase_to_change(backend):
    repo = new_repo(backend)
    with pytest.raises(RepositoryError, match="not encrypted"):
        key_slots.change_passphrase(repo.location, None, NEW, s3_options=options_of(repo))


# -- key slots ------------------------------------------------------------------------------------

def test_a_second_key_slot_opens_the_same_repository(backend):
    repo, expected = backed_up(backend)
    opts = options_of(repo)
    before_objects = object_snapshot(repo)
    result = key_slots.add_key_slot(repo.location, OLD, RECOVERY, label="recovery", s3_options=opts, scrypt_params=FAST_KDF)
    assert result["changed"] and result["key_slots"] == ["passphrase", "recovery"]
    for passphrase in (OLD, RECOVERY):
        assert_restores(Repository.open(repo.location, passphrase=passphrase, s3_options=opts), expected)
    assert object_snapshot(repo) == before_objects
    assert Repository.open(repo.location, passphrase=RECOVERY, s3_options=opts).describe()["key_slots"] == ["passphrase", "recovery"]
    # again: nothing to do; the same label for another passphrase: refused
    assert not key_slots.add_key_slot(repo.location, OLD, RECOVERY, label="recovery", s3_options=opts, scrypt_params=FAST_KDF)["changed"]
    with pytest.raises(RepositoryError, match="already has a key slot labelled"):
        key_slots.add_key_slot(repo.location, OLD, "third one", label="recovery", s3_options=opts, scrypt_params=FAST_KDF)
    # the recovery passphrase changes its own slot only
    key_slots.change_passphrase(repo.location, RECOVERY, NEW, s3_options=opts, scrypt_params=FAST_KDF)
    assert Repository.open(repo.location, passphrase=OLD, s3_options=opts).encrypted
    assert Repository.open(repo.location, passphrase=NEW, s3_options=opts).encrypted
    with pytest.raises(RepositoryError, match="Wrong passphrase"):
        Repository.open(repo.location, passphrase=RECOVERY, s3_options=opts)


def test_removing_a_key_slot_never_removes_the_last_working_one(backend):
    repo, expected = backed_up(backend)
    opts = options_of(repo)
    key_slots.add_key_slot(repo.location, OLD, RECOVERY, label="recovery", s3_options=opts, scrypt_params=FAST_KDF)
    with pytest.raises(RepositoryError, match="opens the slot"):
        key_slots.remove_key_slot(repo.location, OLD, "passphrase", s3_options=opts)
    dry = key_slots.remove_key_slot(repo.location, OLD, "recovery", s3_options=opts, check_mode=True)
    assert dry["changed"] and Repository.open(repo.location, passphrase=RECOVERY, s3_options=opts).encrypted
    result = key_slots.remove_key_slot(repo.location, OLD, "recovery", s3_options=opts)
    assert result["changed"] and result["key_slots"] == ["passphrase"]
    with pytest.raises(RepositoryError, match="Wrong passphrase"):
        Repository.open(repo.location, passphrase=RECOVERY, s3_options=opts)
    assert not key_slots.remove_key_slot(repo.location, OLD, "recovery", s3_options=opts)["changed"]
    assert_restores(Repository.open(repo.location, passphrase=OLD, s3_options=opts), expected)


def test_the_number_of_key_slots_is_bounded(tmp_path):
    repo = Repository.init(str(tmp_path / "repo"), passphrase=OLD, chunk_size=CHUNK, scrypt_params=FAST_KDF)
    for index in range(1, key_slots.MAX_KEY_SLOTS):
        key_slots.add_key_slot(repo.location, OLD, "extra %d" % index, label="extra%d" % index, scrypt_params=FAST_KDF)
    with pytest.raises(RepositoryError, match="key slots"):
        key_slots.add_key_slot(repo.location, OLD, "one too many", label="toomany", scrypt_params=FAST_KDF)


# -- key export and recovery ----------------------------------------------------------------------

def test_key_export_recovers_a_deleted_config(backend, tmp_path):
    repo, expected = backed_up(backend)
    opts = options_of(repo)
    path = str(tmp_path / "export" / "repo.key")
    dry = key_slots.export_keys(repo.location, OLD, path, s3_options=opts, check_mode=True)
    assert dry["changed"] and not os.path.exists(path)
    result = key_slots.export_keys(repo.location, OLD, path, s3_options=opts)
    assert result["changed"] and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = open(path).read()
    assert OLD not in text and json.loads(text)["repository_id"] == repo.config["repository_id"]
    assert not key_slots.export_keys(repo.location, OLD, path, s3_options=opts)["changed"]     # same keys: unchanged

    repo.store.delete("config")
    with pytest.raises(RepositoryError, match="No backup repository") as caught:
        Repository.open(repo.location, passphrase=OLD, s3_options=opts)
    assert "key_imported" in caught.value.hint
    # read straight from the key file ...
    assert_restores(Repository.open(repo.location, passphrase=OLD, s3_options=opts, key_file=path), expected)
    with pytest.raises(RepositoryError, match="Wrong passphrase"):
        Repository.open(repo.location, passphrase=NEW, s3_options=opts, key_file=path)
    # ... or write the config back
    dry = key_slots.import_keys(repo.location, OLD, path, s3_options=opts, check_mode=True)
    assert dry["changed"] and repo.store.stat("config") is None
    assert key_slots.import_keys(repo.location, OLD, path, s3_options=opts)["changed"]
    assert_restores(Repository.open(repo.location, passphrase=OLD, s3_options=opts), expected)
    assert not key_slots.import_keys(repo.location, OLD, path, s3_options=opts)["changed"]


def test_key_import_repairs_a_tampered_config_but_not_a_changed_passphrase(backend, tmp_path):
    repo, expected = backed_up(backend)
    opts = options_of(repo)
    path = str(tmp_path / "repo.key")
    key_slots.export_keys(repo.location, OLD, path, s3_options=opts)
    # after a passphrase change the config is intact: the old export must not undo the change
    key_slots.change_passphrase(repo.location, OLD, NEW, s3_options=opts, scrypt_params=FAST_KDF)
    result = key_slots.import_keys(repo.location, OLD, path, s3_options=opts)
    assert not result["changed"] and "intact" in result["msg"]
    assert Repository.open(repo.location, passphrase=NEW, s3_options=opts).encrypted
    # a config overwritten with an unencrypted one (the attack of point 1) is replaced by the export
    config = json.loads(config_bytes(repo))
    config["encryption"], config["chunk_id"] = None, "blake3"
    repo.store.put("config", json.dumps(config).encode())
    assert key_slots.import_keys(repo.location, OLD, path, s3_options=opts)["changed"]
    assert_restores(Repository.open(repo.location, passphrase=OLD, s3_options=opts), expected)
    # a config replaced by one of another (made-up) repository: the backups decrypt with the export, so it is replaced
    config["repository_id"] = "00000000-0000-4000-8000-000000000000"
    repo.store.put("config", json.dumps(config).encode())
    assert_restores(Repository.open(repo.location, passphrase=OLD, s3_options=opts, key_file=path), expected)
    assert key_slots.import_keys(repo.location, OLD, path, s3_options=opts)["changed"]
    assert_restores(Repository.open(repo.location, passphrase=OLD, s3_options=opts), expected)


def test_a_key_file_of_another_repository_is_refused(backend, tmp_path):
    repo, _expected = backed_up(backend)
    other = new_repo(backend, passphrase=OLD, scrypt_params=FAST_KDF)
    path = str(tmp_path / "other.key")
    key_slots.export_keys(other.location, OLD, path, s3_options=options_of(other))
    with pytest.raises(RepositoryError, match="another repository"):
        Repository.open(repo.location, passphrase=OLD, s3_options=options_of(repo), key_file=path)
    repo.store.delete("config")
    with pytest.raises(RepositoryError, match="another repository"):
        key_slots.import_keys(repo.location, OLD, path, s3_options=options_of(repo))
    assert repo.store.stat("config") is None


def test_export_refuses_to_overwrite_a_file_that_is_not_a_key_export(tmp_path):
    repo = Repository.init(str(tmp_path / "repo"), passphrase=OLD, chunk_size=CHUNK, scrypt_params=FAST_KDF)
    path = tmp_path / "important.txt"
    path.write_text("not a key file")
    with pytest.raises(RepositoryError, match="not a key export"):
        key_slots.export_keys(repo.location, OLD, str(path))
    assert path.read_text() == "not a key file"
    plain = Repository.init(str(tmp_path / "plain"), chunk_size=CHUNK)
    with pytest.raises(RepositoryError, match="not encrypted"):
        key_slots.export_keys(plain.location, None, str(tmp_path / "plain.key"))


# -- the module -----------------------------------------------------------------------------------

class Exit(Exception):
    pass


class Fail(Exception):
    pass


@pytest.fixture
def module_run(monkeypatch):
    def exit_json(self, **kwargs):
        raise Exit(kwargs)

    def fail_json(self, **kwargs):
        raise Fail(kwargs)
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    monkeypatch.setattr(repository_crypto, "DEFAULT_SCRYPT", FAST_KDF)     # module runs create slots with the defaults
    # The module hardens its process (point 9); here the process is pytest's: keep its environment as the test set it.
    monkeypatch.setattr(hyperv_backup_repository, "harden_process", lambda *args, **kwargs: None)

    def run(expect=Exit, **args):
        with patch_module_args(args):
            with pytest.raises(expect) as caught:
                hyperv_backup_repository.main()
        return caught.value.args[0]
    return run


def test_module_key_states(module_run, tmp_path):
    location = str(tmp_path / "repo")
    key_file = str(tmp_path / "repo.key")
    created = module_run(repository=location, repository_passphrase=OLD, chunk_size=CHUNK)
    assert created["changed"] and created["repository"]["key_slots"] == ["passphrase"]
    repo = Repository.open(location, passphrase=OLD)
    expected = {write_backup(repo, image(21, chunks=3)).backup_id: image(21, chunks=3)}

    def results_hold_no_secret(result):
        for secret in (OLD, NEW, RECOVERY):
            assert secret not in json.dumps(result)
        return result

    steps = [
        ({"state": "key_slot_added", "new_repository_passphrase": RECOVERY, "key_slot_label": "recovery"}, ["passphrase", "recovery"]),
        ({"state": "passphrase_changed", "new_repository_passphrase": NEW}, ["passphrase", "recovery"]),
        ({"state": "key_slot_removed", "key_slot_label": "recovery", "repository_passphrase": NEW}, ["passphrase"]),
    ]
    for options, slots in steps:
        args = dict(repository=location, repository_passphrase=OLD)
        args.update(options)
        before = open(os.path.join(location, "config"), "rb").read()
        dry = results_hold_no_secret(module_run(_ansible_check_mode=True, **args))
        assert dry["changed"] and open(os.path.join(location, "config"), "rb").read() == before
        done = results_hold_no_secret(module_run(**args))
        assert done["changed"] and done["repository"]["key_slots"] == slots, done
        again = results_hold_no_secret(module_run(**args))
        assert not again["changed"], again
    assert_restores(Repository.open(location, passphrase=NEW), expected)

    exported = results_hold_no_secret(module_run(repository=location, repository_passphrase=NEW, state="key_exported", key_file=key_file))
    assert exported["changed"] and exported["key_file"] == key_file and stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert not module_run(repository=location, repository_passphrase=NEW, state="key_exported", key_file=key_file)["changed"]
    os.unlink(os.path.join(location, "config"))
    failed = module_run(expect=Fail, repository=location, repository_passphrase=NEW, state="verified")
    assert "No backup repository" in failed["msg"] and "key_imported" in failed["hint"]
    dry = module_run(repository=location, repository_passphrase=NEW, state="key_imported", key_file=key_file, _ansible_check_mode=True)
    assert dry["changed"] and not os.path.exists(os.path.join(location, "config"))
    imported = results_hold_no_secret(module_run(repository=location, repository_passphrase=NEW, state="key_imported", key_file=key_file))
    assert imported["changed"]
    assert not module_run(repository=location, repository_passphrase=NEW, state="key_imported", key_file=key_file)["changed"]
    verified = module_run(repository=location, repository_passphrase=NEW, state="verified")
    assert verified["verify"]["ok"]


def test_module_refuses_missing_key_options(module_run, tmp_path):
    location = str(tmp_path / "repo")
    module_run(repository=location, repository_passphrase=OLD, chunk_size=CHUNK)
    failed = module_run(expect=Fail, repository=location, repository_passphrase=OLD, state="passphrase_changed")
    assert "new_repository_passphrase" in failed["msg"]
    failed = module_run(expect=Fail, repository=location, repository_passphrase=OLD, state="key_exported")
    assert "key_file" in failed["msg"]
    failed = module_run(expect=Fail, repository=location, repository_passphrase=OLD, state="key_slot_removed")
    assert "key_slot_label" in failed["msg"]
    spec_no_log = hyperv_backup_repository.argument_spec()["new_repository_passphrase"]["no_log"]
    assert spec_no_log is True


def test_module_refuses_an_empty_passphrase_and_accepts_none(module_run, tmp_path, monkeypatch):
    location = str(tmp_path / "repo")
    failed = module_run(expect=Fail, repository=location, repository_passphrase="", chunk_size=CHUNK)
    assert "empty passphrase" in failed["msg"] and "unset" in failed["hint"]
    assert not os.path.exists(os.path.join(location, "config"))
    monkeypatch.setenv("HYPERV_BACKUP_REPOSITORY_PASSPHRASE", "")       # an exported but empty variable: the same
    failed = module_run(expect=Fail, repository=location, chunk_size=CHUNK)
    assert "empty passphrase" in failed["msg"] and "HYPERV_BACKUP_REPOSITORY_PASSPHRASE" in failed["hint"]
    monkeypatch.delenv("HYPERV_BACKUP_REPOSITORY_PASSPHRASE")
    created = module_run(repository=location, chunk_size=CHUNK)            # no passphrase at all: a plain repository
    assert created["changed"] and not created["repository"]["encrypted"]
    failed = module_run(expect=Fail, repository=location, repository_passphrase=OLD, state="verified")
    assert "not encrypted" in failed["msg"]


# -- process hardening (point 9) ------------------------------------------------------------------

HARDENED_RUN = textwrap.dedent("""
    import json, os, resource, subprocess, sys, ctypes
    from ansible.module_utils import basic
    from ansible.module_utils.testing import patch_module_args
    from ansible_collections.hyperv.backup.plugins.modules import hyperv_backup_repository

    def exit_json(self, **kwargs):
        child = subprocess.run([sys.executable, "-c", "import os, json; print(json.dumps(dict(os.environ)))"],
                               stdout=subprocess.PIPE, check=True)
        dumpable = None
        if sys.platform.startswith("linux"):
            dumpable = ctypes.CDLL(None, use_errno=True).prctl(3, 0, 0, 0, 0)    # PR_GET_DUMPABLE
        print(json.dumps({"result": kwargs, "child_environment": json.loads(child.stdout), "dumpable": dumpable,
                          "core": resource.getrlimit(resource.RLIMIT_CORE),
                          "own_environment": dict(os.environ)}))
        sys.exit(0)
    basic.AnsibleModule.exit_json = exit_json
    basic.AnsibleModule.fail_json = lambda self, **kwargs: (print(json.dumps({"failed": kwargs})), sys.exit(1))
    with patch_module_args({"repository": sys.argv[1], "chunk_size": 65536}):
        hyperv_backup_repository.main()
""")


def test_module_process_drops_core_dumps_and_the_passphrase_variable(tmp_path):
    location = str(tmp_path / "repo")
    secret = "env-passphrase-%s" % os.urandom(6).hex()
    env = dict(os.environ, HYPERV_BACKUP_REPOSITORY_PASSPHRASE=secret)
    out = subprocess.run([sys.executable, "-c", HARDENED_RUN, location], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=120, check=False)
    assert out.returncode == 0, out.stderr.decode() + out.stdout.decode()
    report = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert report["result"]["created"] and report["result"]["repository"]["encrypted"]   # the variable was read first
    assert secret not in json.dumps(report["child_environment"])
    assert "HYPERV_BACKUP_REPOSITORY_PASSPHRASE" not in report["own_environment"]
    assert tuple(report["core"]) == (0, 0)
    if sys.platform.startswith("linux"):
        assert report["dumpable"] == 0
    assert Repository.open(location, passphrase=secret).encrypted


def test_hardening_never_fails_where_the_platform_says_no(monkeypatch):
    from ansible_collections.hyperv.backup.plugins.module_utils.repository import process_hardening

    def refuse(*_args):
        raise OSError(1, "not permitted")
    monkeypatch.setattr(process_hardening, "_set_core_limit", refuse)
    monkeypatch.setattr(process_hardening, "_set_not_dumpable", refuse)
    monkeypatch.setenv("HYPERV_BACKUP_REPOSITORY_PASSPHRASE", "x")
    done = process_hardening.harden_process()
    assert done["core_dumps_off"] is False and done["not_dumpable"] is False
    assert "HYPERV_BACKUP_REPOSITORY_PASSPHRASE" not in os.environ


# -- how a passphrase reaches the module in a playbook -------------------------------------------

def test_playbook_without_passphrase_works_and_an_empty_one_is_refused(tmp_path):
    """The roles get the repository options through module_defaults (group/hyperv.backup.repository: hyperv_repository).
    An unset passphrase arrives as omit (None): a plain repository. An empty survey answer arrives as "": refused."""
    playbook = tmp_path / "play.yml"
    playbook.write_text(textwrap.dedent("""
        - hosts: localhost
          gather_facts: false
          vars:
            unset_repository:
              repository: "{{ base }}/plain"
              repository_passphrase: "{{ lookup('ansible.builtin.env', 'HYPERV_KEYS_TEST_NEVER_SET') | default(omit, true) }}"
            survey_repository: {repository: "{{ base }}/survey", repository_passphrase: ""}
          tasks:
            - name: no passphrase
              module_defaults: {group/hyperv.backup.repository: "{{ unset_repository }}"}
              hyperv.backup.hyperv_backup_repository: {chunk_size: 65536}
              register: plain
            - name: empty passphrase
              module_defaults: {group/hyperv.backup.repository: "{{ survey_repository }}"}
              hyperv.backup.hyperv_backup_repository: {chunk_size: 65536}
              register: survey
              ignore_errors: true
            - name: results
              ansible.builtin.copy:
                dest: "{{ base }}/results.json"
                content: "{{ {'plain': plain, 'survey': survey} | to_json }}"
                mode: "0600"
    """))
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    env.pop("HYPERV_KEYS_TEST_NEVER_SET", None)
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
               "-e", "ansible_python_interpreter=%s" % sys.executable, "-e", "base=%s" % tmp_path, str(playbook)]
    out = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300, cwd=str(tmp_path), check=False)
    assert out.returncode == 0, out.stdout.decode()[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["plain"]["changed"] and not results["plain"]["repository"]["encrypted"]
    assert results["survey"]["failed"] and "empty passphrase" in results["survey"]["msg"]
    assert not (tmp_path / "survey" / "config").exists()
