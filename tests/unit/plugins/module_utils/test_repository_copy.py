"""A second copy (issue 15): backups copied between repositories, local and S3 (moto), same keys and different keys.

Checked: the copy restores byte for byte and verifies in the target, keeps each backup's identity (id, VM, host,
lineage, times, parent, metadata, attachments), copies parents first, copies only what an incremental changed, copies
nothing the second time, and with the same keys computes no chunk id at all (counted) while with different keys every
chunk copied is re-hashed under the target's id key.
"""
import random

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import chunk_index
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_copy
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_crypto import RepositoryKeys
from ansible_collections.hyperv.backup.plugins.module_utils.repository.retention import RetentionPolicy

from s3_server import S3Server
from test_repository import CHUNK, FAST_KDF, image, read_all

IDENTITY = ("backup_id", "vm_id", "vm_name", "host", "lineage", "type", "method", "consistency", "parent_backup_id",
            "created", "completed", "metadata", "stats")


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server().start()
    yield server
    server.stop()


def location(tmp_path, s3_server, kind, name):
    if kind == "local":
        return str(tmp_path / name), None
    return s3_server.new_bucket(prefix=name)


def backup(repo, data, vm_id="vm-1", vm_name="web01", parent=None, changed=None, attachment=None, disk_key="disk0"):
    """One disk; with ``parent`` (a BackupRecord) an incremental that puts only the chunks in ``changed`` and starts
    from the parent's tree (as an RCT incremental does)."""
    with repo.begin_backup(vm_id=vm_id, vm_name=vm_name, host="hv1", method="rct",
                           backup_type="incremental" if parent else "full", parent_backup_id=parent.backup_id if parent else None,
                           consistency="application", metadata={"recovery_point": {"created": "2026-12-01T00:00:00Z"}}) as session:
        base = repo.load_disk_manifest(parent.backup_id, disk_key) if parent else None
        disk = session.add_disk(disk_key=disk_key, virtual_size=len(data), source_path="C:\\VMs\\%s.vhdx" % vm_name, rct_id="rct-1",
                                base=base)
        for index in range(disk.chunk_count):
            if parent and index not in changed:
                continue
            disk.put_chunk_async(index, data[index * CHUNK:(index + 1) * CHUNK])
        if attachment:
            session.attach("vm_configuration", attachment)
        return session.commit()


def change(data, indexes, seed):
    rng = random.Random(seed)
    out = bytearray(data)
    for index in indexes:
        out[index * CHUNK:(index + 1) * CHUNK] = rng.randbytes(len(out[index * CHUNK:(index + 1) * CHUNK]))
    return bytes(out)


class HashCount:
    """Counts RepositoryKeys.chunk_id calls (every id computed, for a chunk or an index page)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = RepositoryKeys.chunk_id

        def counted(keys, data):
            self.calls += 1
            return real(keys, data)
        monkeypatch.setattr(RepositoryKeys, "chunk_id", counted)


def source_with_chain(repo):
    """A full and two incrementals of one VM, and a full of another VM; returns (records, images)."""
    full = image(11, chunks=12)
    inc1 = change(full, [2, 5], seed=12)
    inc2 = change(inc1, [5, 9], seed=13)
    other = image(14, chunks=5)
    r_full = backup(repo, full, attachment=b"<VM config 1/>")
    r_inc1 = backup(repo, inc1, parent=r_full, changed=[2, 5])
    r_inc2 = backup(repo, inc2, parent=r_inc1, changed=[5, 9], attachment=b"<VM config 3/>")
    r_other = backup(repo, other, vm_id="vm-2", vm_name="db01")
    return [r_full, r_inc1, r_inc2, r_other], [full, inc1, inc2, other]


def check_copy(source, target, records, images):
    """Every record is in the target with its identity, restores exactly and verifies."""
    listed = dict((r.backup_id, r) for r in target.list_backups())
    assert sorted(listed) == sorted(r.backup_id for r in records)
    for record, data in zip(records, images):
        copied = target.get_backup(record.backup_id)
        for field in IDENTITY:
            assert getattr(copied, field) == getattr(record, field), field
        assert copied.values["copy"]["source_repository_id"] == source.config["repository_id"]
        assert read_all(target, record.backup_id) == data
        assert target.read_attachment(record.backup_id, "vm_configuration") == source.read_attachment(record.backup_id, "vm_configuration")
    report = target.verify()
    assert report["ok"] and report["backups_checked"] == len(records)
    # the target orders them as the source did (parents first)
    order = [r.backup_id for r in target.list_backups()]
    assert order == [r.backup_id for r in sorted(records, key=lambda r: r.order_key)]


def test_same_keys_local_copies_ids_only_and_pages_verbatim(tmp_path, monkeypatch):
    source = Repository.init(str(tmp_path / "src"), passphrase="source pass", chunk_size=CHUNK, scrypt_params=FAST_KDF)
    records, images = source_with_chain(source)
    target = repository_copy.init_with_keys_of(source, str(tmp_path / "dst"), passphrase="another pass", scrypt_params=FAST_KDF)
    assert target.config["repository_id"] != source.config["repository_id"]
    assert Repository.open(target.location, passphrase="another pass").keys.id_key == source.keys.id_key
    hashes = HashCount(monkeypatch)
    report = repository_copy.copy_backups(source, target, verify=False)
    assert hashes.calls == 0, "a same-keys copy computed %d chunk ids" % hashes.calls
    assert report["same_keys"] and report["chunks_rehashed"] == 0 and report["chunks_read"] == 0
    assert [e["backup_id"] for e in report["copied"]] == [r.backup_id for r in sorted(records, key=lambda r: r.order_key)]
    # distinct non-zero chunks: 8 + 2 + 2 changed of VM 1 (12 full chunks, every third zero, plus the tail: 9 non-zero),
    # 4 of VM 2; pages: one leaf each; incrementals upload only what they changed
    source_chunks = set(info.key for info in source.store.list("chunks/"))
    target_chunks = set(info.key for info in target.store.list("chunks/"))
    assert source_chunks == target_chunks            # same ids, same pages: nothing more, nothing less
    assert report["chunks_uploaded"] + report["pages_uploaded"] == len(source_chunks)
    inc2 = report["copied"][2]
    assert inc2["backup_id"] == records[2].backup_id and inc2["chunks_uploaded"] == 2 and inc2["pages_uploaded"] == 1
    for record in records:                           # the pages are the source's: equal roots
        assert target.load_disk_manifest(record.backup_id, "disk0").root == source.load_disk_manifest(record.backup_id, "disk0").root
    check_copy(source, target, records, images)
    again = repository_copy.copy_backups(source, target)
    assert again["copied"] == [] and sorted(again["present"]) == sorted(r.backup_id for r in records)
    assert again["chunks_uploaded"] == again["pages_uploaded"] == 0


def test_different_keys_local_rehashes_and_rebuilds_pages(tmp_path, monkeypatch):
    source = Repository.init(str(tmp_path / "src"), passphrase="source pass", chunk_size=CHUNK, scrypt_params=FAST_KDF)
    records, images = source_with_chain(source)
    target = Repository.init(str(tmp_path / "dst"), passphrase="target pass", chunk_size=CHUNK, scrypt_params=FAST_KDF,
                             padding="padme")
    hashes = HashCount(monkeypatch)
    report = repository_copy.copy_backups(source, target, verify=False)
    assert not report["same_keys"]
    # the full (9 non-zero chunks) and VM 2 (4) whole; each incremental only its 2 changed chunks (its parent is there)
    assert report["chunks_read"] == report["chunks_rehashed"] == 9 + 2 + 2 + 4
    assert [e["chunks_read"] for e in report["copied"]] == [9, 2, 2, 4]
    assert hashes.calls >= report["chunks_rehashed"] * 2     # checked against the source id, hashed with the target's
    for record in records:      # ids are keyed per repository: the trees differ
        assert target.load_disk_manifest(record.backup_id, "disk0").root != source.load_disk_manifest(record.backup_id, "disk0").root
    check_copy(source, target, records, images)
    assert not set(info.key for info in source.store.list("chunks/")) & set(info.key for info in target.store.list("chunks/"))
    again = repository_copy.copy_backups(source, target)
    assert again["copied"] == [] and again["chunks_read"] == 0


@pytest.mark.parametrize("direction", ["local_to_s3", "s3_to_local", "s3_to_s3"])
@pytest.mark.parametrize("keys", ["same", "different"])
def test_copy_between_local_and_s3_encrypted(tmp_path, s3_server, direction, keys):
    kinds = {"local_to_s3": ("local", "s3"), "s3_to_local": ("s3", "local"), "s3_to_s3": ("s3", "s3")}[direction]
    src_location, src_s3 = location(tmp_path, s3_server, kinds[0], "src")
    dst_location, dst_s3 = location(tmp_path, s3_server, kinds[1], "dst")
    source = Repository.init(src_location, passphrase="source pass", s3_options=src_s3, chunk_size=CHUNK, scrypt_params=FAST_KDF)
    records, images = source_with_chain(source)
    if keys == "same":
        target = repository_copy.init_with_keys_of(source, dst_location, passphrase="target pass", s3_options=dst_s3,
                                                   scrypt_params=FAST_KDF)
    else:
        target = Repository.init(dst_location, passphrase="target pass", s3_options=dst_s3, chunk_size=CHUNK, scrypt_params=FAST_KDF)
    report = repository_copy.copy_backups(source, target)
    assert report["same_keys"] == (keys == "same")
    assert report["verify"]["ok"] and report["verify"]["backups_checked"] == 4
    reopened = Repository.open(dst_location, passphrase="target pass", s3_options=dst_s3)
    check_copy(source, reopened, records, images)
    assert repository_copy.copy_backups(source, reopened)["copied"] == []


def test_selection_parents_first_latest_per_vm_and_filters(tmp_path):
    source = Repository.init(str(tmp_path / "src"), chunk_size=CHUNK)
    records, images = source_with_chain(source)
    target = Repository.init(str(tmp_path / "dst"), chunk_size=CHUNK)
    plan, _present, _skipped = repository_copy.plan_copy(source, target, vm="db01")
    assert [r.backup_id for r in plan] == [records[3].backup_id]
    # the latest of VM 1 is the second incremental: its parents come first
    report = repository_copy.copy_backups(source, target, latest_per_vm=True, vm="web01")
    assert [e["backup_id"] for e in report["copied"]] == [r.backup_id for r in records[:3]]
    check_copy(source, target, records[:3], images[:3])
    with pytest.raises(RepositoryError, match="is not in"):
        repository_copy.plan_copy(source, target, backup_ids=["20260101T000000Z-000000000000"])
    dry = repository_copy.copy_backups(source, target, dry_run=True)
    assert [e["backup_id"] for e in dry["planned"]] == [records[3].backup_id] and dry["copied"] == []
    assert len(target.list_backups()) == 3


def test_retention_per_repository_and_pruned_backups_are_not_copied_again(tmp_path):
    source = Repository.init(str(tmp_path / "src"), chunk_size=CHUNK)
    records, images = source_with_chain(source)
    target = Repository.init(str(tmp_path / "dst"), chunk_size=CHUNK)
    repository_copy.copy_backups(source, target)
    report = target.prune(RetentionPolicy(keep_last=1), gc=False)      # the target's own policy
    assert sorted(e["backup_id"] for e in report["removed"]) == sorted(r.backup_id for r in records[:2])
    assert len(source.list_backups()) == 4                              # the source keeps its own
    again = repository_copy.copy_backups(source, target)
    assert again["copied"] == []
    assert sorted(e["backup_id"] for e in again["skipped"]) == sorted(r.backup_id for r in records[:2])
    assert all("pruned from the target" in e["reason"] for e in again["skipped"])
    # a new incremental in the source still copies: its parent (the latest) is in the target
    newer = backup(source, change(images[2], [1], seed=20), parent=records[2], changed=[1])
    third = repository_copy.copy_backups(source, target)
    assert [e["backup_id"] for e in third["copied"]] == [newer.backup_id]
    assert third["copied"][0]["chunks_uploaded"] == 1 and third["same_keys"]       # plain to plain: the same ids


def test_an_older_backup_is_not_copied_after_a_newer_one(tmp_path):
    source = Repository.init(str(tmp_path / "src"), chunk_size=CHUNK)
    records, _images = source_with_chain(source)
    target = Repository.init(str(tmp_path / "dst"), chunk_size=CHUNK)
    first = backup(source, image(30, chunks=3), vm_id="vm-3", vm_name="app01")
    second = backup(source, image(31, chunks=3), vm_id="vm-3", vm_name="app01")
    repository_copy.copy_backups(source, target, backup_ids=[second.backup_id])
    report = repository_copy.copy_backups(source, target, vm="app01")
    assert report["copied"] == [] and [e["backup_id"] for e in report["skipped"]] == [first.backup_id]
    assert "older than backup %s" % second.backup_id in report["skipped"][0]["reason"]
    assert records


def test_multi_level_tree_copies_only_the_changed_path(tmp_path):
    """A disk of 2,100 chunks has a depth-2 index: the incremental's copy walks only the changed leaf's path."""
    source = Repository.init(str(tmp_path / "src"), chunk_size=CHUNK)
    size = 2100 * CHUNK
    data = bytearray(size)
    rng = random.Random(5)
    for index in (0, 700, 1500, 2099):
        data[index * CHUNK:(index + 1) * CHUNK] = rng.randbytes(CHUNK)
    full = backup(source, bytes(data), changed=None)
    assert source.load_disk_manifest(full.backup_id, "disk0").index.depth == 2
    changed = bytearray(data)
    changed[1500 * CHUNK:1501 * CHUNK] = bytes(CHUNK)           # a chunk becomes zeros
    changed[1800 * CHUNK:1801 * CHUNK] = rng.randbytes(CHUNK)   # a new one in the same leaf
    inc = backup(source, bytes(changed), parent=full, changed=[1500, 1800])
    events = list(repository_copy.diff_tree(source.load_disk_manifest(inc.backup_id, "disk0").index,
                                            source.load_disk_manifest(full.backup_id, "disk0").index))
    chunks = [e for e in events if e[0] == "chunk"]
    pages = [e for e in events if e[0] == "page"]
    assert [(e[1], e[2] is None) for e in chunks] == [(1500, True), (1800, False)]
    assert len(pages) == 2                                      # the changed leaf and the root
    target = Repository.init(str(tmp_path / "dst"), chunk_size=CHUNK, passphrase="x", scrypt_params=FAST_KDF)
    report = repository_copy.copy_backups(source, target)
    assert [e["chunks_read"] for e in report["copied"]] == [4, 1]
    assert read_all(target, inc.backup_id) == bytes(changed) and read_all(target, full.backup_id) == bytes(data)
    whole = list(repository_copy.diff_tree(source.load_disk_manifest(full.backup_id, "disk0").index))
    assert sorted(e[1] for e in whole if e[0] == "chunk") == [0, 700, 1500, 2099]
    assert len([e for e in whole if e[0] == "page"]) == 4 and chunk_index.FANOUT == 1024     # 3 leaves and the root


def test_refusals(tmp_path):
    plain = Repository.init(str(tmp_path / "plain"), chunk_size=CHUNK)
    enc = Repository.init(str(tmp_path / "enc"), passphrase="p", chunk_size=CHUNK, scrypt_params=FAST_KDF)
    with pytest.raises(RepositoryError, match="without a passphrase"):
        repository_copy.init_with_keys_of(enc, str(tmp_path / "x1"))
    with pytest.raises(RepositoryError, match="is not encrypted"):
        repository_copy.init_with_keys_of(plain, str(tmp_path / "x2"), passphrase="p")
    with pytest.raises(RepositoryError, match="chunk size"):
        repository_copy.init_with_keys_of(plain, str(tmp_path / "x3"), chunk_size=2 * CHUNK)
    big = Repository.init(str(tmp_path / "big"), chunk_size=2 * CHUNK)
    with pytest.raises(RepositoryError, match="keeps the chunk boundaries"):
        repository_copy.copy_backups(plain, big)
    with pytest.raises(RepositoryError, match="same repository"):
        repository_copy.copy_backups(plain, Repository.open(plain.location))
    # plain to plain: the same ids without any key
    assert repository_copy.keys_match(plain, repository_copy.init_with_keys_of(plain, str(tmp_path / "x4")))
    assert not repository_copy.keys_match(plain, enc)


def test_damaged_source_chunk_fails_clearly_and_nothing_is_listed(tmp_path):
    source = Repository.init(str(tmp_path / "src"), chunk_size=CHUNK)
    record = backup(source, image(40, chunks=6))
    cid = source.load_disk_manifest(record.backup_id, "disk0").chunk_id(0)
    source.store.delete("chunks/%s/%s" % (cid[:2], cid))
    for target in (Repository.init(str(tmp_path / "dst1"), chunk_size=CHUNK),
                   Repository.init(str(tmp_path / "dst2"), chunk_size=CHUNK, passphrase="x", scrypt_params=FAST_KDF)):
        with pytest.raises(RepositoryError, match="chunk %s in the source is missing" % cid):
            repository_copy.copy_backups(source, target)
        assert target.list_backups() == [] and target.list_backups(include_in_progress=True) == []


@pytest.mark.parametrize("keys", ["same", "different"])
def test_copy_to_an_object_lock_bucket_locks_every_object(tmp_path, s3_server, keys):
    """With Object Lock on the target, the copy's chunks, pages, manifests and record carry the target's retention (the
    commit touches every chunk and page of the tree it did not write itself)."""
    source = Repository.init(str(tmp_path / "src"), passphrase="source pass", chunk_size=CHUNK, scrypt_params=FAST_KDF)
    records, images = source_with_chain(source)
    location_s3, options = s3_server.new_bucket(object_lock=True)
    if keys == "same":
        target = repository_copy.init_with_keys_of(source, location_s3, passphrase="t", s3_options=options, scrypt_params=FAST_KDF,
                                                   object_lock_days=1)
    else:
        target = Repository.init(location_s3, passphrase="t", s3_options=options, chunk_size=CHUNK, scrypt_params=FAST_KDF,
                                 object_lock_days=1)
    report = repository_copy.copy_backups(source, target)
    assert report["verify"]["ok"] and len(report["copied"]) == 4
    check_copy(source, target, records, images)
    now = target.store.now()
    for record in target.list_backups():
        assert record.retain_until and record.retain_until > now + 0.9 * 86400
    for info in target.store.list("chunks/"):
        assert (target.store.stat(info.key).retain_until or 0) > now + 0.9 * 86400, info.key
