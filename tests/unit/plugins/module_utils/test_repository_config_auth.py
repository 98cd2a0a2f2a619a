"""The repository config is authenticated (issue 13, point 1): an edit of ``config`` cannot switch encryption or Object
Lock off, nor change how data is cut, compressed or named, without ``Repository.open`` refusing.

Every test that takes ``backend`` runs against a local directory and against S3 (moto server over real HTTP).
"""
import json

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository

import test_repository
from test_repository import CHUNK, FAST_KDF, backend_options, image, new_repo, read_all, write_backup

# The fixtures of the two backends (local directory, moto S3 server), shared with test_repository.py.
s3_server = test_repository.s3_server
backend = test_repository.backend

PASSPHRASE = "correct horse battery"


def options_of(repo):
    return backend_options(repo) if repo.store.kind == "s3" else None


def read_config(repo):
    return json.loads(repo.store.get("config").decode("utf-8"))


def write_config(repo, config):
    """What an attacker with write access to the storage does: replace the config object."""
    repo.store.put("config", json.dumps(config, indent=2, sort_keys=True).encode("utf-8"))


def encrypted_repo(backend, **options):
    return new_repo(backend, passphrase=PASSPHRASE, scrypt_params=FAST_KDF, **options)


# -- encryption cannot be stripped ----------------------------------------------------------------

def test_stripping_encryption_from_the_config_is_refused(backend):
    repo = encrypted_repo(backend)
    record = write_backup(repo, image(1, chunks=3))
    config = read_config(repo)
    config["encryption"] = None
    config["chunk_id"] = "blake3"
    write_config(repo, config)
    with pytest.raises(RepositoryError, match="plain|unencrypted") as caught:
        Repository.open(repo.location, passphrase=PASSPHRASE, s3_options=options_of(repo))
    assert caught.value.hint
    # Opened without a passphrase (someone who believes it is plain), the real backups stay unreadable.
    plain = Repository.open(repo.location, s3_options=options_of(repo))
    with pytest.raises(RepositoryError):
        read_all(plain, record.backup_id)


def test_a_passphrase_for_a_plain_repository_is_refused(backend):
    repo = new_repo(backend)
    with pytest.raises(RepositoryError, match="not encrypted") as caught:
        Repository.open(repo.location, passphrase=PASSPHRASE, s3_options=options_of(repo))
    assert "passphrase" in caught.value.hint
    with pytest.raises(RepositoryError, match="not encrypted"):
        Repository.ensure(repo.location, passphrase=PASSPHRASE, s3_options=options_of(repo))
    assert not Repository.open(repo.location, s3_options=options_of(repo)).encrypted


@pytest.mark.parametrize("field, value", [
    ("chunk_size", 2 * CHUNK),
    ("compression", {"algorithm": "zstd", "level": 19}),
    ("chunk_id", "blake3"),
    ("object_lock", {"days": 1, "mode": "GOVERNANCE"}),
    ("repository_id", "00000000-0000-4000-8000-000000000000"),
    ("created", "2020-01-01T00:00:00Z"),
    ("cipher", "AES-128-GCM"),
    ("added_field", True),
])
def test_any_edit_of_an_encrypted_config_is_refused(backend, field, value):
    repo = encrypted_repo(backend)
    config = read_config(repo)
    if field == "cipher":
        config["encryption"]["cipher"] = value
    else:
        config[field] = value
    write_config(repo, config)
    with pytest.raises(RepositoryError, match="has been changed") as caught:
        Repository.open(repo.location, passphrase=PASSPHRASE, s3_options=options_of(repo))
    assert "config" in caught.value.hint


@pytest.mark.parametrize("field, value, message", [
    ("version", 1, "format version 1"),
    ("version", 99, "format version 99"),
    ("format", "something else", "not a hyperv.backup repository"),
])
def test_format_and_version_edits_are_refused(backend, field, value, message):
    repo = encrypted_repo(backend)
    config = read_config(repo)
    config[field] = value
    write_config(repo, config)
    with pytest.raises(RepositoryError, match=message):
        Repository.open(repo.location, passphrase=PASSPHRASE, s3_options=options_of(repo))


def test_removing_object_lock_from_the_config_is_refused(s3_server):  # noqa: F811
    location, options = s3_server.new_bucket(object_lock=True)
    repo = Repository.init(location, passphrase=PASSPHRASE, s3_options=options, chunk_size=CHUNK, object_lock_days=1,
                           scrypt_params=FAST_KDF)
    config = read_config(repo)
    assert config["object_lock"]["days"] == 1
    config["object_lock"] = None
    write_config(repo, config)
    with pytest.raises(RepositoryError, match="has been changed"):
        Repository.open(location, passphrase=PASSPHRASE, s3_options=options)


def test_a_missing_authentication_tag_is_refused(backend):
    repo = encrypted_repo(backend)
    config = read_config(repo)
    config.pop("authentication", None)
    write_config(repo, config)
    with pytest.raises(RepositoryError, match="not authenticated|has been changed"):
        Repository.open(repo.location, passphrase=PASSPHRASE, s3_options=options_of(repo))


def test_key_slot_details_are_not_bound_but_still_checked(backend):
    """Relabelling a slot is harmless (labels are names for people); a slot that wraps other keys fails the tag."""
    repo = encrypted_repo(backend)
    record = write_backup(repo, image(2, chunks=2))
    config = read_config(repo)
    config["encryption"]["key_slots"][0]["label"] = "renamed"
    write_config(repo, config)
    reopened = Repository.open(repo.location, passphrase=PASSPHRASE, s3_options=options_of(repo))
    assert read_all(reopened, record.backup_id) == image(2, chunks=2)
    # An attacker's repository with the same passphrase (say, a guessed one) cannot lend its slot: other keys, other tag.
    other = encrypted_repo(backend)
    config["encryption"]["key_slots"] = read_config(other)["encryption"]["key_slots"]
    write_config(repo, config)
    with pytest.raises(RepositoryError, match="has been changed"):
        Repository.open(repo.location, passphrase=PASSPHRASE, s3_options=options_of(repo))


def test_an_intact_encrypted_config_opens_and_describes_itself(backend):
    repo = encrypted_repo(backend)
    reopened = Repository.open(repo.location, passphrase=PASSPHRASE, s3_options=options_of(repo))
    facts = reopened.describe()
    assert facts["encrypted"] and facts["config_authenticated"] and facts["key_slots"] == ["passphrase"]
    assert facts["format_version"] == 5
    assert PASSPHRASE not in repr(facts)
    plain = new_repo(backend)
    facts = Repository.open(plain.location, s3_options=options_of(plain)).describe()
    assert not facts["encrypted"] and not facts["config_authenticated"] and facts["key_slots"] == []


# -- empty passphrases ----------------------------------------------------------------------------

def test_an_empty_passphrase_is_refused_at_creation(backend):
    location, options = backend()
    for create in (Repository.init, Repository.ensure):
        with pytest.raises(RepositoryError, match="empty passphrase") as caught:
            create(location, passphrase="", s3_options=options, chunk_size=CHUNK)
        assert "unset" in caught.value.hint
    with pytest.raises(RepositoryError, match="No backup repository"):
        Repository.open(location, s3_options=options)          # nothing was created
    repo = Repository.init(location, passphrase=None, s3_options=options, chunk_size=CHUNK)   # None: plain, on purpose
    assert not repo.encrypted


def test_an_empty_passphrase_is_refused_when_opening(backend):
    plain = new_repo(backend)
    with pytest.raises(RepositoryError, match="empty passphrase"):
        Repository.open(plain.location, passphrase="", s3_options=options_of(plain))
    encrypted = encrypted_repo(backend)
    with pytest.raises(RepositoryError, match="empty passphrase"):
        Repository.open(encrypted.location, passphrase="", s3_options=options_of(encrypted))


# -- a plain repository's config is validated, not authenticated ----------------------------------

@pytest.mark.parametrize("field, value", [
    ("chunk_size", 1000),
    ("chunk_size", "big"),
    ("compression", {"algorithm": "zstd", "level": 99}),
    ("compression", {"algorithm": "lz4", "level": 1}),
    ("chunk_id", "sha1"),
    ("object_lock", {"days": -3}),
    ("repository_id", 42),
])
def test_nonsense_in_a_plain_config_is_refused_clearly(backend, field, value):
    repo = new_repo(backend)
    config = read_config(repo)
    config[field] = value
    write_config(repo, config)
    with pytest.raises(RepositoryError, match="config") as caught:
        Repository.open(repo.location, s3_options=options_of(repo))
    assert caught.value.hint


def test_a_plain_config_claiming_keyed_ids_without_keys_is_refused(backend):
    repo = new_repo(backend)
    config = read_config(repo)
    config["chunk_id"] = "blake3-keyed"
    write_config(repo, config)
    with pytest.raises(RepositoryError, match="config"):
        Repository.open(repo.location, s3_options=options_of(repo))
