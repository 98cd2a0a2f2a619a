# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The chunk index of one disk in one backup: a tree of content-addressed pages (issue 14).

A flat table of every chunk id costs 32 bytes per chunk per backup: 2 GiB for a 64 TiB disk at 1 MiB chunks, read and
written whole by every backup, restore and GC. Instead the ids live in pages of ``FANOUT`` entries (32 KiB):

- a leaf page holds the ids of ``FANOUT`` consecutive chunks (1 GiB of disk at 1 MiB chunks); an inner page holds the
  ids of ``FANOUT`` pages of the level below; the manifest names the root page and the depth;
- an all-zero entry (``ZERO_ID``) is a zero chunk, or a whole zero subtree: nothing is stored for empty space;
- a page is stored like a chunk (``chunks/<id>``, its id the repository's keyed hash of its bytes), so equal pages are
  stored once: an incremental writes only the leaf pages it changed and the inner pages above them, and shares the
  rest with its parent (copy-on-write). The root id authenticates the whole tree, as a Merkle tree.

Cost: reading one chunk's id reads at most ``depth`` pages (cached); walking a tree reads its non-zero pages only;
building one keeps the leaf-page ids (32 bytes per GiB of disk: 2 MiB at 64 TiB) and a bounded set of dirty leaves.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import threading

FANOUT = 1024
ENTRY_BYTES = 32
PAGE_BYTES = FANOUT * ENTRY_BYTES
ZERO_ID = bytes(ENTRY_BYTES)
ZERO_PAGE = bytes(PAGE_BYTES)
CACHED_PAGES = 64               # 2 MiB of pages per open index
DIRTY_LEAVES = 64               # leaf pages a builder holds before it stores the least recently touched one


def tree_depth(chunk_count):
    """Levels of pages for ``chunk_count`` chunks (1: the root is the only leaf)."""
    depth, span = 1, FANOUT
    while span < chunk_count:
        depth += 1
        span *= FANOUT
    return depth


def level_counts(chunk_count):
    """Entries at each level, leaves' entries (chunks) first, up to the root's."""
    counts = [max(1, chunk_count)]
    for _level in range(tree_depth(chunk_count)):
        counts.append((counts[-1] + FANOUT - 1) // FANOUT)
    return counts           # counts[1] leaf pages ... counts[-1] == 1 (the root)


class IndexDamaged(ValueError):
    """A page of the index is missing, corrupt or malformed (``page_id`` says which)."""

    def __init__(self, page_id, problem):
        ValueError.__init__(self, "index page %s %s" % (page_id, problem))
        self.page_id = page_id
        self.problem = problem


class IndexReader:
    """Read access to one tree. ``fetch_page(id_hex)`` returns a page's checked bytes or raises KeyError/ValueError."""

    def __init__(self, fetch_page, chunk_count, root, depth=None):
        self._fetch = fetch_page
        self.chunk_count = chunk_count
        self.root = root                    # hex, or None: the whole disk is zeros
        self.depth = depth if depth is not None else tree_depth(chunk_count)
        if self.depth != tree_depth(chunk_count):
            raise ValueError("index depth %r does not fit %d chunks (expected %d)" % (depth, chunk_count, tree_depth(chunk_count)))
        self.leaf_count = level_counts(chunk_count)[1]
        self._levels = None
        self._cache = collections.OrderedDict()
        self._lock = threading.Lock()

    def page(self, page_id, cache=True):
        """The bytes of page ``page_id`` (hex), checked and cached; IndexDamaged if it cannot be read."""
        with self._lock:
            data = self._cache.get(page_id)
            if data is not None:
                self._cache.move_to_end(page_id)
                return data
        try:
            data = self._fetch(page_id)
        except KeyError:
            raise IndexDamaged(page_id, "is missing")
        except ValueError as err:
            raise IndexDamaged(page_id, "is corrupt (%s)" % err)
        if len(data) != PAGE_BYTES:
            raise IndexDamaged(page_id, "has %d bytes, expected %d" % (len(data), PAGE_BYTES))
        if not cache:
            return data
        with self._lock:
            self._cache[page_id] = data
            if len(self._cache) > CACHED_PAGES:
                self._cache.popitem(last=False)
        return data

    def level_ids(self, level):
        """The ids of every page at ``level`` (1: the leaves), concatenated, ZERO_ID for an empty subtree; the inner pages
        are read once. At 64 TiB: 2 MiB of leaf ids, 2 KiB above them."""
        if self._levels is None:
            counts = level_counts(self.chunk_count)
            ids = ZERO_ID if self.root is None else bytes.fromhex(self.root)
            levels = {self.depth: ids}
            for lvl in range(self.depth, 1, -1):          # expand inner levels down to the leaves' ids
                below = bytearray()
                for pos in range(0, len(ids), ENTRY_BYTES):
                    entry = ids[pos:pos + ENTRY_BYTES]
                    below += ZERO_PAGE if entry == ZERO_ID else self.page(entry.hex())
                self._check_tail(below, counts[lvl - 1], ids, lvl)
                ids = bytes(below[:counts[lvl - 1] * ENTRY_BYTES])
                levels[lvl - 1] = ids
            self._levels = levels
        return self._levels[level]

    def leaf_ids(self):
        """The ids of every leaf page, concatenated (ZERO_ID for an empty GiB)."""
        return self.level_ids(1)

    @staticmethod
    def _check_tail(page_bytes, used, parent_ids, level):
        if any(page_bytes[used * ENTRY_BYTES:]):
            raise IndexDamaged("at level %d under %s" % (level, bytes(parent_ids[-ENTRY_BYTES:]).hex()),
                               "has entries past the end of the disk")

    def leaf_id(self, leaf):
        ids = self.leaf_ids()
        entry = ids[leaf * ENTRY_BYTES:(leaf + 1) * ENTRY_BYTES]
        return None if entry == ZERO_ID else entry.hex()

    def leaf(self, leaf):
        """The page of leaf number ``leaf`` (ZERO_PAGE for an empty one), its entries past the disk's end checked."""
        page_id = self.leaf_id(leaf)
        if page_id is None:
            return ZERO_PAGE
        data = self.page(page_id)
        if leaf == self.leaf_count - 1:
            used = self.chunk_count - leaf * FANOUT
            if any(data[used * ENTRY_BYTES:]):
                raise IndexDamaged(page_id, "has entries past the end of the disk")
        return data

    def chunk_id(self, index):
        """The hex id of chunk ``index``, or None for a zero chunk."""
        if not 0 <= index < self.chunk_count:
            raise IndexError("chunk %d is outside 0..%d" % (index, self.chunk_count - 1))
        data = self.leaf(index // FANOUT)
        pos = (index % FANOUT) * ENTRY_BYTES
        entry = data[pos:pos + ENTRY_BYTES]
        return None if entry == ZERO_ID else entry.hex()

    def iter_chunks(self, start=0):
        """Yield (index, hex id) of every non-zero chunk from ``start`` on, in order; zero leaves are skipped unread."""
        for leaf in range(start // FANOUT, self.leaf_count):
            if self.leaf_id(leaf) is None:
                continue
            data = self.leaf(leaf)
            base = leaf * FANOUT
            for pos in nonzero_entries(data):
                index = base + pos // ENTRY_BYTES
                if index >= start:
                    yield index, data[pos:pos + ENTRY_BYTES].hex()

    def page_ids(self):
        """Every page of the tree (root, inner, non-zero leaves), hex; reads every non-zero page."""
        seen = set()
        walk(self, seen, lambda _index, _cid: None, raise_damage)
        return seen


def raise_damage(err, _first_index):
    raise err


def walk(reader, seen, on_chunk, on_damage):
    """Visit the pages of ``reader``'s tree that are not in ``seen`` (adding them), depth-first in disk order.

    ``on_chunk(index, hex id)`` is called for every non-zero entry of each newly seen leaf; a page already in ``seen``
    is skipped with its whole subtree (walking many backups that share pages reads each page once).
    ``on_damage(IndexDamaged, first chunk index)`` is called for a page that cannot be read or is malformed; its subtree
    is skipped.
    """
    if reader.root is None:
        return
    chunk_count = reader.chunk_count

    def visit(page_id, level, first):
        if page_id in seen:
            return
        seen.add(page_id)
        try:
            data = reader.page(page_id, cache=False)     # each page once: a cache per tree would grow with the backups walked
        except IndexDamaged as err:
            on_damage(err, first)
            return
        span = FANOUT ** (level - 1)                    # chunks per entry at this level
        used = min(FANOUT, (chunk_count - first + span - 1) // span)
        if any(data[used * ENTRY_BYTES:]):
            on_damage(IndexDamaged(page_id, "has entries past the end of the disk"), first)
            return
        for pos in nonzero_entries(data):
            index = first + (pos // ENTRY_BYTES) * span
            entry = data[pos:pos + ENTRY_BYTES].hex()
            if level == 1:
                on_chunk(index, entry)
            else:
                visit(entry, level - 1, index)

    visit(reader.root, reader.depth, 0)


def nonzero_entries(data):
    """Byte offsets of the non-zero 32-byte entries of ``data``; skips zero runs with bytes.find (C speed)."""
    view = bytes(data)
    out = []
    pos, end = 0, len(view)
    while pos < end:
        # the next non-zero byte: strip zeros by comparing 1 KiB slices, then finish entry by entry
        if view[pos:pos + 1024] == ZERO_PAGE[:min(1024, end - pos)]:
            pos += 1024
            continue
        stop = min(end, pos + 1024)
        while pos < stop:
            if view[pos:pos + ENTRY_BYTES] != ZERO_ID:
                out.append(pos)
            pos += ENTRY_BYTES
    return out


class IndexBuilder:
    """Builds the tree of a new backup, copy-on-write from ``base`` (the parent's IndexReader, same chunk count) or empty.

    ``set`` changes one entry; ``finish`` stores the changed leaves and the inner pages above them (the others are the
    base's) and returns the root id. ``store_page(bytes)`` stores a page and returns its hex id; ``fetch_page`` reads
    one back (a stored dirty leaf that is touched again). Not thread-safe: the caller serialises ``set``.
    """

    def __init__(self, chunk_count, store_page, fetch_page, base=None, dirty_limit=DIRTY_LEAVES):
        if base is not None and base.chunk_count != chunk_count:
            raise ValueError("the parent index has %d chunks, this disk %d" % (base.chunk_count, chunk_count))
        self.chunk_count = chunk_count
        self.depth = tree_depth(chunk_count)
        counts = level_counts(chunk_count)
        self.leaf_count = counts[1]
        self._store = store_page
        self._fetch = fetch_page
        # ids per level (1 = leaves), the base's to start with; changed[level] = page numbers whose id changed
        self._levels = dict((level, bytearray(base.level_ids(level)) if base is not None else bytearray(counts[level] * ENTRY_BYTES))
                            for level in range(1, self.depth + 1))
        self._changed = set()
        self._dirty = collections.OrderedDict()       # leaf number -> bytearray page
        self._dirty_limit = dirty_limit
        self.pages_stored = 0

    def _page_for(self, leaf):
        page = self._dirty.get(leaf)
        if page is not None:
            self._dirty.move_to_end(leaf)
            return page
        leaf_ids = self._levels[1]
        entry = bytes(leaf_ids[leaf * ENTRY_BYTES:(leaf + 1) * ENTRY_BYTES])
        if entry == ZERO_ID:
            page = bytearray(PAGE_BYTES)
        else:
            data = self._fetch(entry.hex())
            if len(data) != PAGE_BYTES:
                raise IndexDamaged(entry.hex(), "has %d bytes, expected %d" % (len(data), PAGE_BYTES))
            page = bytearray(data)
        self._dirty[leaf] = page
        while len(self._dirty) > self._dirty_limit:
            old, old_page = self._dirty.popitem(last=False)
            self._seal_leaf(old, old_page)
        return page

    def get(self, index):
        """The current entry of chunk ``index`` (hex or None)."""
        page = self._page_for(index // FANOUT)
        pos = (index % FANOUT) * ENTRY_BYTES
        entry = bytes(page[pos:pos + ENTRY_BYTES])
        return None if entry == ZERO_ID else entry.hex()

    def set(self, index, chunk_id):
        """Entry ``index`` := ``chunk_id`` (hex) or zeros (None)."""
        if not 0 <= index < self.chunk_count:
            raise IndexError("chunk %d is outside 0..%d" % (index, self.chunk_count - 1))
        page = self._page_for(index // FANOUT)
        pos = (index % FANOUT) * ENTRY_BYTES
        page[pos:pos + ENTRY_BYTES] = bytes.fromhex(chunk_id) if chunk_id else ZERO_ID

    def _seal(self, page):
        if page == ZERO_PAGE:
            return ZERO_ID
        self.pages_stored += 1
        return bytes.fromhex(self._store(bytes(page)))

    def _seal_leaf(self, leaf, page):
        new = self._seal(page)
        ids = self._levels[1]
        if ids[leaf * ENTRY_BYTES:(leaf + 1) * ENTRY_BYTES] != new:
            ids[leaf * ENTRY_BYTES:(leaf + 1) * ENTRY_BYTES] = new
            self._changed.add(leaf)

    def finish(self):
        """Store every changed page, bottom-up; returns the root id (hex), or None when the whole disk is zeros."""
        while self._dirty:
            leaf, page = self._dirty.popitem(last=False)
            self._seal_leaf(leaf, page)
        changed = self._changed
        for level in range(1, self.depth):
            ids, above = self._levels[level], self._levels[level + 1]
            parents = set()
            for group in sorted(set(n // FANOUT for n in changed)):
                page = bytes(ids[group * PAGE_BYTES:(group + 1) * PAGE_BYTES])
                new = self._seal(page + bytes(PAGE_BYTES - len(page)))
                if above[group * ENTRY_BYTES:(group + 1) * ENTRY_BYTES] != new:
                    above[group * ENTRY_BYTES:(group + 1) * ENTRY_BYTES] = new
                    parents.add(group)
            changed = parents
        self._changed = set()
        root = bytes(self._levels[self.depth])
        return None if root == ZERO_ID else root.hex()


def root_of(entries, chunk_count, hash_page):
    """The root id the tree of ``entries`` [(index, hex id)] in ascending order would have, computed without storing anything.

    ``hash_page(bytes)`` is the repository's page id function; equal disks give equal roots (restore verification)."""
    builder = IndexBuilder(chunk_count, hash_page, _no_fetch, dirty_limit=1)    # ascending entries: a leaf is final once passed
    for index, chunk_id in entries:
        builder.set(index, chunk_id)
    return builder.finish()


def _no_fetch(page_id):
    raise KeyError(page_id)
