"""The chunk index tree (issue 14): copy-on-write pages, zero subtrees, cost with the data rather than the disk size.

The pages live in a dict here (id = sha256 of the bytes); the repository stores them as chunks (test_repository.py).
"""

import hashlib
import random
import tracemalloc

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.repository import chunk_index
from ansible_collections.hyperv.backup.plugins.module_utils.repository.chunk_index import (
    FANOUT, IndexBuilder, IndexDamaged, IndexReader, root_of, tree_depth, walk,
)

TIB_CHUNKS = 1 << 20            # 1 TiB of 1 MiB chunks
MAX_CHUNKS = 64 * TIB_CHUNKS    # a 64 TiB VHDX


class PageStore:
    def __init__(self):
        self.pages = {}
        self.reads = 0
        self.writes = 0

    def store(self, data):
        self.writes += 1
        page_id = hashlib.sha256(data).hexdigest()
        self.pages[page_id] = bytes(data)
        return page_id

    def fetch(self, page_id):
        self.reads += 1
        return self.pages[page_id]


def cid(n):
    return hashlib.sha256(b"chunk %d" % n).hexdigest()


def build(store, chunk_count, entries, base=None):
    builder = IndexBuilder(chunk_count, store.store, store.fetch, base=base)
    for index, value in entries.items():
        builder.set(index, value)
    root = builder.finish()
    return IndexReader(store.fetch, chunk_count, root), builder


def test_depth_grows_with_the_disk_not_the_data():
    assert tree_depth(1) == 1 and tree_depth(FANOUT) == 1 and tree_depth(FANOUT + 1) == 2
    assert tree_depth(MAX_CHUNKS) == 3


def test_entries_read_back_and_zero_subtrees_store_nothing():
    store = PageStore()
    entries = {0: cid(0), 5: cid(5), 3 * FANOUT + 7: cid(7), MAX_CHUNKS - 1: cid(9)}
    reader, builder = build(store, MAX_CHUNKS, entries)
    # three non-zero leaves, two inner pages on level 2 (first and last TiB), the root
    assert builder.pages_stored == 3 + 2 + 1
    assert list(reader.iter_chunks()) == sorted(entries.items())
    for index, value in entries.items():
        assert reader.chunk_id(index) == value
    assert reader.chunk_id(1) is None and reader.chunk_id(MAX_CHUNKS // 2) is None
    assert IndexReader(store.fetch, MAX_CHUNKS, None).chunk_id(17) is None


def test_an_incremental_writes_only_the_pages_above_its_changes():
    store = PageStore()
    full = dict((i * 4, cid(i)) for i in range(2000))           # spread over ~8 GiB: 8 leaves
    parent, _builder = build(store, 16 * FANOUT, full)
    before = set(store.pages)
    child, builder = build(store, 16 * FANOUT, {4: cid(-1), 10: cid(-2)}, base=parent)
    assert builder.pages_stored == 1 + 1           # the one changed leaf (both entries are in leaf 0) and the root
    assert len(set(store.pages) - before) == 2
    expected = dict(full)
    expected.update({4: cid(-1), 10: cid(-2)})
    assert dict(child.iter_chunks()) == expected
    # the leaves the incremental did not touch are the parent's pages
    assert [child.leaf_id(n) for n in range(1, 8)] == [parent.leaf_id(n) for n in range(1, 8)]


def test_a_chunk_set_back_to_zeros_disappears_and_an_empty_leaf_becomes_a_zero_entry():
    store = PageStore()
    parent, _builder = build(store, 4 * FANOUT, {FANOUT + 1: cid(1), 5: cid(5)})
    child, _builder = build(store, 4 * FANOUT, {FANOUT + 1: None}, base=parent)
    assert list(child.iter_chunks()) == [(5, cid(5))]
    assert child.leaf_id(1) is None


def test_equal_content_gives_equal_roots_whatever_the_history():
    store = PageStore()
    target = dict((i * 37, cid(i)) for i in range(3000))
    direct, _builder = build(store, 200 * FANOUT, target)
    parent, _builder = build(store, 200 * FANOUT, dict((i * 37, cid(i + 1)) for i in range(3000)))
    rebuilt, _builder = build(store, 200 * FANOUT, target, base=parent)
    assert direct.root == rebuilt.root
    assert root_of(sorted(target.items()), 200 * FANOUT, lambda data: hashlib.sha256(data).hexdigest()) == direct.root
    target[37] = cid(999999)
    assert root_of(sorted(target.items()), 200 * FANOUT, lambda data: hashlib.sha256(data).hexdigest()) != direct.root


def test_out_of_order_sets_beyond_the_dirty_limit_read_their_leaf_back():
    store = PageStore()
    builder = IndexBuilder(64 * FANOUT, store.store, store.fetch, dirty_limit=2)
    order = list(range(0, 64 * FANOUT, 97))
    random.Random(4).shuffle(order)
    for index in order:
        builder.set(index, cid(index))
    reader = IndexReader(store.fetch, 64 * FANOUT, builder.finish())
    assert dict(reader.iter_chunks()) == dict((i, cid(i)) for i in order)


def test_walk_reads_each_shared_page_once_across_backups():
    store = PageStore()
    readers = []
    base = None
    for generation in range(20):
        entries = {generation * FANOUT + 3: cid(generation)} if generation else dict((i * 500, cid(i)) for i in range(60))
        base, _builder = build(store, 32 * FANOUT, entries, base=base)
        readers.append(base)
    seen, chunks = set(), set()
    store.reads = 0
    for reader in [IndexReader(store.fetch, r.chunk_count, r.root) for r in readers]:     # cold caches
        walk(reader, seen, lambda _i, c: chunks.add(c), pytest.fail)
    assert store.reads == len(seen) == len(store.pages)      # every distinct page read exactly once
    assert chunks == set([cid(i) for i in range(60)] + [cid(g) for g in range(1, 20)])


def test_a_missing_or_tampered_page_is_reported_not_read_as_zeros():
    store = PageStore()
    reader, _builder = build(store, 8 * FANOUT, {3: cid(3), 5 * FANOUT: cid(5)})
    leaf = reader.leaf_id(5)
    del store.pages[leaf]
    fresh = IndexReader(store.fetch, 8 * FANOUT, reader.root)
    assert fresh.chunk_id(3) == cid(3)
    with pytest.raises(IndexDamaged, match="is missing"):
        fresh.chunk_id(5 * FANOUT)
    damaged = []
    walk(fresh, set(), lambda _i, _c: None, lambda err, first: damaged.append((err.page_id, first)))
    assert damaged == [(leaf, 5 * FANOUT)]
    # an entry past the end of the disk (a page that fits another, longer disk) is refused
    longer, _builder = build(store, 8 * FANOUT, {8 * FANOUT - 1: cid(1)})
    with pytest.raises(IndexDamaged, match="past the end"):
        list(IndexReader(store.fetch, 8 * FANOUT - 1, longer.root).iter_chunks())


def test_an_incremental_of_a_64_tib_disk_costs_pages_of_its_change_not_of_the_disk():
    """Memory and pages stored stay those of the change: the builder keeps 32 bytes per GiB of disk plus its dirty leaves."""
    store = PageStore()
    rng = random.Random(14)
    full = dict((rng.randrange(MAX_CHUNKS), cid(i)) for i in range(256))
    parent, _builder = build(store, MAX_CHUNKS, full)
    change = dict((rng.randrange(MAX_CHUNKS), cid(-i)) for i in range(1, 41))
    tracemalloc.start()
    try:
        child, builder = build(store, MAX_CHUNKS, change, base=parent)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # <= 40 changed leaves + <= 40 inner pages + root; the disk has 65536 leaves
    assert builder.pages_stored <= 40 + 40 + 1
    assert peak < 16 * 1024 * 1024, peak        # a flat table would be 2 GiB
    full.update(change)
    assert dict(child.iter_chunks()) == full


def test_the_repository_stores_index_pages_as_chunks_with_the_same_id_function():
    assert chunk_index.PAGE_BYTES == FANOUT * 32
