"""The chunk index tree inside the repository (issue 14): huge disks, shared pages, GC, verify and commit checks.

A 64 TiB disk with a few MiB of data is written chunk by chunk through a real session (local and S3 backends): what
is stored, read back, kept by GC and reported by verify must depend on the data, never on the virtual size.
"""

import random
import tracemalloc

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import chunk_index
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_prune
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import chunk_key

from storage_age import age
from test_repository import CHUNK, backend, new_repo, s3_server  # noqa: F401  pylint: disable=unused-import

TIB = 1 << 40
GRACE = 15 * 60
LONG_AGO = 2 * 3600
HUGE = 64 * TIB


def write(repo, virtual_size, chunks, parent=None, method="rct"):
    """A backup of one disk of ``virtual_size`` with ``chunks`` {index: bytes}; an incremental shares ``parent``'s tree."""
    base = repo.load_disk_manifest(parent.backup_id, "disk0") if parent is not None else None
    with repo.begin_backup(vm_id="vm-1", vm_name="big", host="hv1", method=method, backup_type="incremental" if parent else "full",
                           parent_backup_id=parent.backup_id if parent else None) as session:
        disk = session.add_disk(disk_key="disk0", virtual_size=virtual_size, base=base)
        for index, data in sorted(chunks.items()):
            disk.put_chunk_async(index, data)
        return session.commit()


def data_for(seed, count, chunk_count, chunk_size=CHUNK):
    rng = random.Random(seed)
    return dict((rng.randrange(chunk_count), rng.randbytes(chunk_size)) for _draw in range(count))


def test_a_64_tib_disk_stores_and_reads_only_what_was_written(backend):
    repo = new_repo(backend, chunk_size=1 << 20)       # the default chunk size: 64 Mi chunks, 65536 leaves
    chunk_count = HUGE // repo.chunk_size
    full_data = data_for(1, 24, chunk_count, repo.chunk_size)
    full = write(repo, HUGE, full_data)
    pages_after_full = len(list(repo.store.list("chunks/"))) - len(full_data)
    # <= 24 leaves + <= 24 inner pages + the root, out of 65536 leaves
    assert 0 < pages_after_full <= 24 + 24 + 1
    change = data_for(2, 5, chunk_count, repo.chunk_size)
    tracemalloc.start()
    try:
        incremental = write(repo, HUGE, change, parent=full)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 * 1024 * 1024, peak       # a flat index alone would be 2 GiB
    assert incremental.disks[0]["new_chunks"] == 5
    assert incremental.disks[0]["reused_chunks"] == len(set(full_data) - set(change))
    expected = dict(full_data)
    expected.update(change)
    # the counts kept as entries change (no walk at commit) equal the tree's
    assert incremental.disks[0]["chunk_count"] == len(expected)
    assert incremental.disks[0]["referenced_bytes"] == len(expected) * repo.chunk_size
    reader = repo.open_disk_reader(incremental.backup_id, "disk0")
    assert [offset // repo.chunk_size for offset, _data in reader.iter_chunks()] == sorted(expected)
    for offset, data in reader.iter_chunks():
        assert data == expected[offset // repo.chunk_size]
    assert reader.read(HUGE - 4096, 4096) == bytes(4096)
    report = repo.verify()
    assert report["ok"] and report["chunks_checked"] == len(full_data) + len(set(change) - set(full_data))
    assert report["index_pages_checked"] > 0


def test_gc_keeps_every_index_page_and_removes_the_pruned_backups_pages(backend):
    repo = new_repo(backend)
    chunk_count = 4 * chunk_index.FANOUT
    size = chunk_count * repo.chunk_size
    first = write(repo, size, dict((i * 100, bytes([i + 1]) * CHUNK) for i in range(40)))     # leaves 0-3
    second = write(repo, size, {5: b"x" * CHUNK, 3000: bytes(CHUNK)}, parent=first)
    first_pages = set(repo.load_disk_manifest(first.backup_id, "disk0").page_ids())
    second_pages = set(repo.load_disk_manifest(second.backup_id, "disk0").page_ids())
    shared, own = first_pages & second_pages, first_pages - second_pages
    assert len(shared) == 2 and len(own) == 3        # leaves 1 and 3 shared; leaf 0, leaf 2 and the root changed
    age(repo.store, "chunks/", LONG_AGO)
    report = repo.gc(grace_seconds=GRACE)
    assert report["chunks_removed"] == 0 and report["chunks_referenced"] == 41 + len(first_pages | second_pages)
    repository_prune.delete_backup(repo, first)
    report = repo.gc(grace_seconds=GRACE)
    left = set(info.key.rsplit("/", 1)[1] for info in repo.store.list("chunks/"))
    assert second_pages <= left and not (own & left)
    # the first backup's own pages and the chunk at 3000 (zeros in the second) go
    assert report["chunks_removed"] == len(own) + 1
    expected = dict((i * 100, bytes([i + 1]) * CHUNK) for i in range(40) if i * 100 != 3000)
    expected[5] = b"x" * CHUNK
    assert dict((o // CHUNK, d) for o, d in repo.open_disk_reader(second.backup_id, "disk0").iter_chunks()) == expected


def test_verify_names_a_missing_index_page_in_every_backup_that_shares_it(backend):
    repo = new_repo(backend)
    chunk_count = 8 * chunk_index.FANOUT
    size = chunk_count * repo.chunk_size
    first = write(repo, size, {3: b"a" * CHUNK, 5 * chunk_index.FANOUT: b"b" * CHUNK})
    second = write(repo, size, {7: b"c" * CHUNK}, parent=first)     # changes leaf 0 only: leaf 5 is shared
    leaf = repo.load_disk_manifest(first.backup_id, "disk0").index.leaf_id(5)
    assert repo.load_disk_manifest(second.backup_id, "disk0").index.leaf_id(5) == leaf
    repo.store.delete(chunk_key(leaf))
    report = repo.verify()
    assert not report["ok"] and sorted(report["damaged_backups"]) == sorted([first.backup_id, second.backup_id])
    for entry in report["backups"]:
        assert entry["missing_chunks"][0]["chunk_id"] == leaf
        assert entry["missing_chunks"][0]["offset"] == 5 * chunk_index.FANOUT * repo.chunk_size
        assert "index page" in entry["missing_chunks"][0]["problem"]
    with pytest.raises(RepositoryError, match="index page %s is missing" % leaf):
        list(repo.open_disk_reader(second.backup_id, "disk0").iter_chunks())
    with pytest.raises(RepositoryError, match="Garbage collection stopped before deleting anything"):
        repo.gc(grace_seconds=GRACE)


def test_an_incremental_refuses_to_commit_when_a_chunk_of_a_leaf_it_changed_is_gone(backend):
    repo = new_repo(backend)
    chunk_count = 2 * chunk_index.FANOUT
    size = chunk_count * repo.chunk_size
    first = write(repo, size, {3: b"a" * CHUNK, 4: b"b" * CHUNK})
    parent = repo.load_disk_manifest(first.backup_id, "disk0")
    with repo.begin_backup(vm_id="vm-1", vm_name="big", host="hv1", method="rct", backup_type="incremental",
                           parent_backup_id=first.backup_id) as session:
        disk = session.add_disk(disk_key="disk0", virtual_size=size, base=parent)
        disk.put_chunk(3, b"z" * CHUNK)                    # leaf 0 changes; chunk 4 comes from the parent
        repo.store.delete(chunk_key(parent.chunk_id(4)))
        with pytest.raises(RepositoryError, match="1 chunk"):
            session.commit()


def test_a_base_of_another_size_is_refused(backend):
    repo = new_repo(backend)
    first = write(repo, 10 * repo.chunk_size, {1: b"a" * CHUNK})
    parent = repo.load_disk_manifest(first.backup_id, "disk0")
    with repo.begin_backup(vm_id="vm-1", vm_name="big", host="hv1", method="rct", backup_type="incremental",
                           parent_backup_id=first.backup_id) as session:
        with pytest.raises(RepositoryError, match="full backup"):
            session.add_disk(disk_key="disk0", virtual_size=11 * repo.chunk_size, base=parent)
