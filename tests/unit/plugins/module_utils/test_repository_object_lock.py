"""Object Lock against someone holding the proxy's S3 credentials (issue 13, point 3), on the moto S3 server.

Reused chunks get the new backup's retention; ``config`` is locked in the repository's mode and its retention is
renewed from the storage's clock; a plainly deleted ``config`` is recovered from an earlier object version; prune and
GC on a versioned bucket only add delete markers (space returns through a lifecycle rule); and the IAM policy in
docs/security.md allows every S3 call the store makes and denies what would defeat the lock.
"""
import json
import os
import re

import botocore.exceptions
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository, chunk_key
from ansible_collections.hyperv.backup.plugins.module_utils.repository.retention import RetentionPolicy

from test_repository import CHUNK, FAST_KDF, backend_options, image, read_all, write_backup
from test_repository import s3_server  # noqa: F401  pylint: disable=unused-import

PASSPHRASE = "object lock passphrase 1"
DAY = 86400


def locked_repo(s3_server, days=2, passphrase=PASSPHRASE):  # noqa: F811  pylint: disable=redefined-outer-name
    location, options = s3_server.new_bucket(object_lock=True)
    return Repository.init(location, passphrase=passphrase, s3_options=options, chunk_size=CHUNK, object_lock_days=days,
                           scrypt_params=FAST_KDF)


def bucket_and_prefix(repo):
    return repo.store.bucket, repo.store.prefix


def advance_storage_clock(store, seconds):
    """Move the store's view of the storage clock forward (as if ``seconds`` had passed on the storage)."""
    store.now()
    measured, monotonic = store._measured
    store._measured = (measured + seconds, monotonic)


# -- reused chunks ---------------------------------------------------------------------------------

def test_reused_chunks_get_the_retention_of_the_incremental_that_reuses_them(s3_server):  # noqa: F811
    repo = locked_repo(s3_server, days=1)
    data = image(31, chunks=4, zero_every=9)
    full = write_backup(repo, data)
    parent = repo.load_disk_manifest(full.backup_id, "disk0")
    advance_storage_clock(repo.store, 3 * 3600)
    incremental = write_backup(repo, data, backup_type="incremental", parent=parent, reuse=set(range(parent.chunk_count)))
    assert incremental.retain_until > full.retain_until + 3 * 3600 - 60
    reused = [cid for _i, cid in repo.load_disk_manifest(incremental.backup_id, "disk0").iter_chunks()]
    assert reused and set(reused) == set(cid for _i, cid in parent.iter_chunks())
    short = dict((cid, repo.store.stat(chunk_key(cid)).retain_until) for cid in reused)
    short = dict((cid, until) for cid, until in short.items() if until < incremental.retain_until)
    assert short == {}, "reused chunks keep the parent's shorter retention: %r" % short
    assert read_all(repo, incremental.backup_id) == data


# -- config retention ------------------------------------------------------------------------------

def config_retention(s3_server, repo):  # noqa: F811  pylint: disable=redefined-outer-name
    """(mode, retain_until epoch s) of the current config version, as S3 reports it (HEAD: moto answers
    GetObjectRetention with a 500, so the lock fields of HeadObject are read instead)."""
    return version_retention(s3_server, repo, None)


def version_retention(s3_server, repo, version_id):  # noqa: F811  pylint: disable=redefined-outer-name
    extra = {"VersionId": version_id} if version_id else {}
    head = s3_server.client().head_object(Bucket=repo.store.bucket, Key=repo.store.prefix + "config", **extra)
    return head.get("ObjectLockMode"), head["ObjectLockRetainUntilDate"].timestamp()


def test_config_is_locked_in_compliance_mode_and_cannot_be_destroyed(s3_server):  # noqa: F811
    repo = locked_repo(s3_server, days=2)
    mode, until = config_retention(s3_server, repo)
    assert mode == "COMPLIANCE"
    assert abs(until - (repo.store.now() + 3 * DAY)) < 120          # 1.5 x object_lock_days: outlives the newest data
    client = s3_server.client()
    version = client.list_object_versions(Bucket=repo.store.bucket, Prefix=repo.store.prefix + "config")["Versions"][0]
    # moto enforces a compliance lock on DeleteObject with a VersionId (AccessDenied), as AWS does.
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        client.delete_object(Bucket=repo.store.bucket, Key=version["Key"], VersionId=version["VersionId"])
    assert Repository.open(repo.location, passphrase=PASSPHRASE, s3_options=backend_options(repo)).encrypted


def test_config_retention_is_renewed_by_backups_from_the_storage_clock(s3_server):  # noqa: F811
    repo = locked_repo(s3_server, days=2)
    _mode, first = config_retention(s3_server, repo)
    write_backup(repo, image(32, chunks=2))
    assert config_retention(s3_server, repo)[1] == first          # more than half of the time left: no request
    advance_storage_clock(repo.store, int(1.5 * DAY))              # now less than object_lock_days left (storage time)
    record = write_backup(repo, image(33, chunks=2))
    mode, renewed = config_retention(s3_server, repo)
    assert mode == "COMPLIANCE"
    assert abs(renewed - (repo.store.now() + 3 * DAY)) < 120 and renewed > first + DAY
    assert renewed > record.retain_until                          # the config outlives the data it unlocks


def test_every_config_rewrite_is_locked(s3_server):  # noqa: F811
    from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_key_slots as key_slots
    repo = locked_repo(s3_server, days=1)
    options = backend_options(repo)
    key_slots.add_key_slot(repo.location, PASSPHRASE, "second passphrase 2", s3_options=options, scrypt_params=FAST_KDF)
    key_slots.change_passphrase(repo.location, PASSPHRASE, "third passphrase 3", s3_options=options, scrypt_params=FAST_KDF)
    client = s3_server.client()
    versions = client.list_object_versions(Bucket=repo.store.bucket, Prefix=repo.store.prefix + "config")["Versions"]
    assert len(versions) == 3
    for version in versions:
        mode, until = version_retention(s3_server, repo, version["VersionId"])
        assert mode == "COMPLIANCE" and until > repo.store.now() + DAY - 120


# -- recovery of a deleted config ------------------------------------------------------------------

def delete_config_plainly(s3_server, repo):  # noqa: F811  pylint: disable=redefined-outer-name
    """What someone holding the proxy's credentials can do: a DELETE without a version id (a delete marker)."""
    answer = s3_server.client().delete_object(Bucket=repo.store.bucket, Key=repo.store.prefix + "config")
    assert answer.get("DeleteMarker") is True


def test_deleted_config_is_reported_and_recovered_from_its_earlier_version(s3_server):  # noqa: F811
    from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_recovery import recover_config
    repo = locked_repo(s3_server, days=1)
    options = backend_options(repo)
    data = image(34, chunks=5)
    record = write_backup(repo, data)
    delete_config_plainly(s3_server, repo)
    with pytest.raises(RepositoryError, match="was deleted.*1 earlier version") as raised:
        Repository.open(repo.location, passphrase=PASSPHRASE, s3_options=options)
    assert "config_recovered" in raised.value.hint
    # state: present must not create a new repository over the deleted config's data.
    with pytest.raises(RepositoryError, match="was deleted"):
        Repository.ensure(repo.location, passphrase=PASSPHRASE, s3_options=options, chunk_size=CHUNK)
    dry = recover_config(repo.location, PASSPHRASE, s3_options=options, check_mode=True)
    assert dry["changed"] and dry["recovered_version"]
    with pytest.raises(RepositoryError, match="was deleted"):
        Repository.open(repo.location, passphrase=PASSPHRASE, s3_options=options)
    done = recover_config(repo.location, PASSPHRASE, s3_options=options)
    assert done["changed"] and done["recovered_version"] == dry["recovered_version"]
    reopened = Repository.open(repo.location, passphrase=PASSPHRASE, s3_options=options)
    assert read_all(reopened, record.backup_id) == data
    assert config_retention(s3_server, reopened)[0] == "COMPLIANCE"
    assert recover_config(repo.location, PASSPHRASE, s3_options=options)["changed"] is False
    with pytest.raises(RepositoryError, match="opens with the passphrase given"):
        recover_config(repo.location, "not the passphrase", s3_options=options)


def test_after_a_passphrase_change_the_old_config_version_opens_with_the_old_passphrase(s3_server):  # noqa: F811
    from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_key_slots as key_slots
    from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_recovery import recover_config
    new = "changed passphrase 2"
    repo = locked_repo(s3_server, days=1)
    options = backend_options(repo)
    data = image(35, chunks=3)
    record = write_backup(repo, data)
    key_slots.change_passphrase(repo.location, PASSPHRASE, new, s3_options=options, scrypt_params=FAST_KDF)
    # The current config is intact: recovering with the old passphrase never undoes the change.
    assert recover_config(repo.location, PASSPHRASE, s3_options=options)["changed"] is False
    delete_config_plainly(s3_server, repo)
    assert recover_config(repo.location, PASSPHRASE, s3_options=options)["changed"] is True
    old = Repository.open(repo.location, passphrase=PASSPHRASE, s3_options=options)
    assert read_all(old, record.backup_id) == data                  # the old passphrase decrypts the data again
    with pytest.raises(RepositoryError, match="Wrong passphrase"):
        Repository.open(repo.location, passphrase=new, s3_options=options)


def test_recovery_on_a_local_directory_says_it_keeps_no_versions(tmp_path):
    from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_recovery import recover_config
    Repository.init(str(tmp_path / "r"), passphrase=PASSPHRASE, chunk_size=CHUNK, scrypt_params=FAST_KDF)
    with pytest.raises(RepositoryError, match="local directory: it keeps no earlier versions"):
        recover_config(str(tmp_path / "r"), PASSPHRASE)


def test_module_state_config_recovered(s3_server, monkeypatch):  # noqa: F811
    from ansible.module_utils import basic
    from ansible.module_utils.testing import patch_module_args
    from ansible_collections.hyperv.backup.plugins.modules import hyperv_backup_repository

    class Done(Exception):
        pass

    def exit_json(self, **kwargs):
        raise Done(kwargs)

    def fail_json(self, **kwargs):
        raise Done(dict(kwargs, failed=True))
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    monkeypatch.setattr(hyperv_backup_repository, "harden_process", lambda *args, **kwargs: None)
    repo = locked_repo(s3_server, days=1)
    delete_config_plainly(s3_server, repo)
    options = backend_options(repo)
    args = dict(repository=repo.location, repository_passphrase=PASSPHRASE, state="config_recovered",
                repository_s3_endpoint_url=options["endpoint_url"], repository_s3_access_key=options["access_key"],
                repository_s3_secret_key=options["secret_key"])

    def run(**extra):
        with patch_module_args(dict(args, **extra)):
            with pytest.raises(Done) as caught:
                hyperv_backup_repository.main()
        return caught.value.args[0]
    dry = run(_ansible_check_mode=True)
    assert dry["changed"] and dry["recovered_version"] and not dry.get("failed"), dry
    assert repo.store.stat("config") is None                      # check mode wrote nothing
    done = run()
    assert done["changed"] and done["recovered_version"] == dry["recovered_version"], done
    assert PASSPHRASE not in json.dumps(done)
    again = run()
    assert again["changed"] is False and again["recovered_version"] is None


# -- prune and GC on a versioned bucket -----------------------------------------------------------------

def test_prune_and_gc_on_a_versioned_bucket_only_add_delete_markers(s3_server):  # noqa: F811
    """Prune and GC delete without a version id: the bucket keeps every version (noncurrent) behind a delete marker,
    and space returns only through a lifecycle rule (NoncurrentVersionExpiration). moto accepts and returns the rule
    but never expires versions, so this checks the rule is valid for the bucket, not that it runs."""
    from storage_age import age
    location, options = s3_server.new_bucket()
    client = s3_server.client()
    bucket = location[len("s3://"):].split("/", 1)[0]
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    repo = Repository.init(location, passphrase=PASSPHRASE, s3_options=options, chunk_size=CHUNK, scrypt_params=FAST_KDF)
    old = write_backup(repo, image(36, chunks=4, zero_every=9))
    kept = write_backup(repo, image(37, chunks=4, zero_every=9))
    old_keys = sorted(set(chunk_key(cid) for _i, cid in repo.load_disk_manifest(old.backup_id, "disk0").iter_chunks()))
    age(repo.store, "chunks/", 3600)
    report = repo.prune(RetentionPolicy(keep_last=1))
    assert [entry["backup_id"] for entry in report["removed"]] == [old.backup_id]
    for _run in range(3):                                           # GC on S3 deletes in a later run than it marks
        age(repo.store, "chunks/", 3600)
        repo.gc()
    current = set(info.key for info in repo.store.list("chunks/"))
    assert not current.intersection(old_keys), "GC did not delete the pruned backup's chunks"
    listing = client.list_object_versions(Bucket=bucket, Prefix=repo.store.prefix + "chunks/")
    noncurrent = set(v["Key"][len(repo.store.prefix):] for v in listing.get("Versions", []) if not v["IsLatest"])
    markers = set(m["Key"][len(repo.store.prefix):] for m in listing.get("DeleteMarkers", []) if m["IsLatest"])
    assert set(old_keys) <= noncurrent and set(old_keys) <= markers
    record_versions = client.list_object_versions(Bucket=bucket, Prefix=repo.store.prefix + "backups/" + old.backup_id)
    assert record_versions.get("Versions") and record_versions.get("DeleteMarkers")
    assert read_all(repo, kept.backup_id) == image(37, chunks=4, zero_every=9)
    # The lifecycle rule documented in docs/security.md is accepted by the bucket and read back as written.
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=documented_lifecycle_rule())
    rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rules[0]["NoncurrentVersionExpiration"]["NoncurrentDays"] == documented_lifecycle_rule()["Rules"][0][
        "NoncurrentVersionExpiration"]["NoncurrentDays"]
    assert rules[0]["Status"] == "Enabled"


# -- the IAM policy in docs/security.md --------------------------------------------------------------

SECURITY_DOC = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "docs", "security.md")
STORE_SOURCE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "plugins", "module_utils", "repository",
                            "s3_store.py")
# boto3 client method -> the IAM actions it needs (a VersionId on GET/HEAD needs GetObjectVersion too).
IAM_ACTIONS = {
    "head_bucket": ["s3:ListBucket"],
    "get_object_lock_configuration": ["s3:GetBucketObjectLockConfiguration"],
    "put_object": ["s3:PutObject", "s3:PutObjectRetention"],
    "get_object": ["s3:GetObject", "s3:GetObjectVersion"],
    "head_object": ["s3:GetObject", "s3:GetObjectRetention"],
    "delete_object": ["s3:DeleteObject"],
    "put_object_retention": ["s3:PutObjectRetention"],
    "copy_object": ["s3:GetObject", "s3:PutObject"],
    "get_paginator": [],
    "list_objects_v2": ["s3:ListBucket"],
    "list_object_versions": ["s3:ListBucketVersions"],
}
MUST_DENY = ["s3:DeleteObjectVersion", "s3:BypassGovernanceRetention", "s3:PutBucketObjectLockConfiguration",
             "s3:PutBucketVersioning", "s3:PutLifecycleConfiguration"]


def json_blocks(title_pattern):
    """The ```json blocks that follow a line matching ``title_pattern`` in docs/security.md (parsed)."""
    text = open(SECURITY_DOC, encoding="utf-8").read()
    found = []
    for match in re.finditer(r"%s.*?```json\n(.*?)```" % title_pattern, text, re.S):
        found.append(json.loads(match.group(1)))
    return found


def documented_lifecycle_rule():
    return json_blocks(r"Lifecycle rule")[0]


def statements(policy, effect):
    actions = set()
    for statement in policy["Statement"]:
        if statement["Effect"] == effect:
            listed = statement["Action"]
            actions.update([listed] if isinstance(listed, str) else listed)
    return actions


def test_iam_policy_in_the_docs_allows_every_call_of_the_s3_store_and_denies_what_defeats_the_lock():
    policy = json_blocks(r"IAM policy for the proxy")[0]
    source = open(STORE_SOURCE, encoding="utf-8").read()
    called = set(re.findall(r"self\.client\.([a-z_0-9]+)\(", source))
    called.update(re.findall(r"get_paginator\(\"([a-z_0-9]+)\"\)", source))
    unknown = called - set(IAM_ACTIONS)
    assert not unknown, "S3 calls without an IAM mapping in this test (add them here and to docs/security.md): %s" % sorted(unknown)
    allowed = statements(policy, "Allow")
    denied = statements(policy, "Deny")
    needed = set(action for name in called for action in IAM_ACTIONS[name])
    assert needed - allowed == set(), "the documented IAM policy misses actions the S3 store uses"
    assert set(MUST_DENY) <= denied
    assert not allowed.intersection(MUST_DENY)
    assert {"s3:ListBucketVersions", "s3:GetObjectVersion"} <= allowed       # recovery of a deleted config
