# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VHDX Block Allocation Table (MS-VHDX 2.5): entry states, entry counts, the BAT read in pages, and the checks
that every entry points where a valid file can point.

A 64 TiB disk of 32 MiB blocks has a 16 MiB BAT (512 MiB at 1 MiB blocks). ``vhdx.VhdxImage`` holds a small BAT in
memory and checks the whole layout at open. A big one is a ``PagedBat``: an incremental backup of a 64 TiB disk reads
the few 32 KiB pages its changed blocks fall in (each page checked as it is read, ``check_page``), and the whole layout
(every block against every other) is checked the first time something reads the whole table. A writer of a big disk
(a restore creating a 64 TiB VHDX, the lab writing into its own files) reads and keeps the pages it sets entries in.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import sys
from array import array

MiB = 1024 * 1024

# Payload block states (MS-VHDX 2.5.1.1) and sector bitmap block states (2.5.1.2).
PAYLOAD_NOT_PRESENT = 0
PAYLOAD_UNDEFINED = 1
PAYLOAD_ZERO = 2
PAYLOAD_UNMAPPED = 3
PAYLOAD_UNMAPPED_V095 = 5   # the 0.95 draft's UNMAPPED value; qemu still reads it as zeros
PAYLOAD_FULLY_PRESENT = 6
PAYLOAD_PARTIALLY_PRESENT = 7
SB_NOT_PRESENT = 0
SB_PRESENT = 6
ZERO_STATES = (PAYLOAD_UNDEFINED, PAYLOAD_ZERO, PAYLOAD_UNMAPPED, PAYLOAD_UNMAPPED_V095)
OFFSET_MASK = 0xFFFFFFFFFFF00000
SECTORS_PER_BITMAP = 1 << 23   # one 1 MiB sector bitmap block covers 2**23 sectors

STATE_TABLE = bytes(value & 7 for value in range(256))

# An image holds a BAT up to this size in memory and checks it whole at open; a larger one is read in pages as it is
# used. 1 MiB is a 4 TiB disk of 32 MiB blocks: reading it costs well under a millisecond.
LAZY_BAT_BYTES = 1 * MiB
# A BAT past this size is never held whole (a 64 TiB disk of 1 MiB blocks: 512 MiB), so that a module process stays
# well under 256 MiB for any VHDX; smaller ones are loaded whole once something reads all of them.
BAT_IN_MEMORY_LIMIT = 64 * MiB

_STATE_SCAN_BYTES = 4096     # 512 entries: a sparse BAT is mostly zero pieces, which are compared, not converted


def chunk_ratio_for(block_size, logical_sector_size):
    """Payload blocks per sector bitmap block (MS-VHDX 2.5)."""
    return (SECTORS_PER_BITMAP * logical_sector_size) // block_size


def bat_entry_count(virtual_size, block_size, logical_sector_size, has_parent):
    """Number of BAT entries (payload + interleaved sector bitmap entries), MS-VHDX 2.5."""
    blocks = -(-virtual_size // block_size)
    ratio = chunk_ratio_for(block_size, logical_sector_size)
    if has_parent:
        return -(-blocks // ratio) * (ratio + 1)
    return blocks + (blocks - 1) // ratio


def states_of(entries, table=STATE_TABLE):
    """bytes: ``table`` applied to the low byte (the state bits live there) of each entry of an array('Q').

    Most of a big disk's BAT is zero (never written): a zero piece of 512 entries only costs a compare, so the
    states of a sparse 64 TiB disk (2 Mi entries) take a few ms instead of a strided copy of all 16 MiB."""
    raw = memoryview(entries).cast("B")
    lane = 0 if sys.byteorder == "little" else 7
    out = bytearray(table[0:1] * len(entries))
    zero = bytes(_STATE_SCAN_BYTES)
    for start in range(0, len(raw), _STATE_SCAN_BYTES):
        piece = bytes(raw[start:start + _STATE_SCAN_BYTES])
        if piece != zero:
            out[start // 8:(start + len(piece)) // 8] = piece[lane::8].translate(table)
    return bytes(out)


def read_entries(image, bat_offset, first, count):
    """array('Q'): ``count`` entries from entry ``first``, read through ``image.read_structure_into`` (log applied)."""
    page = array("Q", bytes(8)) * count
    image.read_structure_into(memoryview(page).cast("B"), bat_offset + first * 8)
    if sys.byteorder != "little":
        page.byteswap()
    return page


class PagedBat:
    """The BAT of a VhdxImage read in pages on demand: ``bat[i]`` (and slices), ``len(bat)``, the entry states.

    Each page is handed to ``check(first, entries)`` when it is read, before any of its entries is used. A reader keeps
    at most KEEP pages of PAGE_ENTRIES entries (16 MiB), plus one byte per entry when the states are asked for. A writer
    (``keep_all``) sets entries (``bat[i] = value``) and keeps every page it has read, so that an entry it set is never
    read again from the file before the writer has flushed it."""

    PAGE_ENTRIES = 4096      # 32 KiB: at 32 MiB blocks, 128 GiB of disk per read
    KEEP = 512

    def __init__(self, image, offset, count, check=None, keep_all=False):
        self._image, self._offset, self._count, self._check = image, offset, count, check
        self._keep_all = keep_all
        self._pages = {}

    def __len__(self):
        return self._count

    def _page(self, number):
        page = self._pages.get(number)
        if page is None:
            first = number * self.PAGE_ENTRIES
            page = read_entries(self._image, self._offset, first, min(self.PAGE_ENTRIES, self._count - first))
            if self._check is not None:
                self._check(first, page)
            if not self._keep_all and len(self._pages) >= self.KEEP:
                self._pages.pop(next(iter(self._pages)))
            self._pages[number] = page
        return page

    def _index(self, index):
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("BAT entry %d out of range (%d entries)" % (index, self._count))
        return divmod(index, self.PAGE_ENTRIES)

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self._count)
            if step != 1:
                raise ValueError("a BAT slice takes consecutive entries")
            out = array("Q")
            while start < stop:
                number, within = divmod(start, self.PAGE_ENTRIES)
                take = min(stop - start, self.PAGE_ENTRIES - within)
                out.extend(self._page(number)[within:within + take])
                start += take
            return out
        number, within = self._index(index)
        return self._page(number)[within]

    def __setitem__(self, index, value):
        if not self._keep_all:
            raise TypeError("this BAT is read-only")
        number, within = self._index(index)
        self._page(number)[within] = value

    def _overlaid(self, first, entries):
        """``entries`` (read from the file from entry ``first``) with the pages held here laid over them."""
        for number, page in self._pages.items():
            start = number * self.PAGE_ENTRIES
            lo, hi = max(start, first), min(start + len(page), first + len(entries))
            if lo < hi:
                entries[lo - first:hi - first] = page[lo - start:hi - start]
        return entries

    def whole(self):
        """array('Q') of every entry, as set here (for a BAT up to BAT_IN_MEMORY_LIMIT)."""
        return self._overlaid(0, read_entries(self._image, self._offset, 0, self._count))

    def states(self, table=STATE_TABLE):
        """The state of every entry through ``table`` (one byte each), read through the whole BAT 1 MiB at a time."""
        out = bytearray()
        step = MiB // 8
        for first in range(0, self._count, step):
            entries = read_entries(self._image, self._offset, first, min(step, self._count - first))
            out += states_of(self._overlaid(first, entries), table)
        return out


def check_entries(image, states, first, entries):
    """Refuse reserved states and entries that point outside the file; return the file spans the entries use.

    ``states``: the entries' states (STATE_TABLE) from entry ``first`` on; ``entries[i]`` is entry ``first + i``.
    Spans are (start, end, name); ``check_layout`` and ``check_page`` compare them with the regions and each other.
    """
    ratio = image.chunk_ratio
    # the sector bitmap entries among these: every (ratio + 1)-th entry overall, the first at index ``ratio``
    lead = (ratio - first) % (ratio + 1)
    bitmap_states = states[lead::ratio + 1]
    if bitmap_states.translate(None, bytes((SB_NOT_PRESENT, SB_PRESENT))):
        for number, state in enumerate(bitmap_states):
            if state not in (SB_NOT_PRESENT, SB_PRESENT):
                image.fail("BAT entry %d (a sector bitmap) has the invalid state %d" % (first + lead + number * (ratio + 1), state))
    spans = []
    block_size, file_size = image.block_size, image.file_size
    # Only entries in states 4, 6 and 7 need a closer look; finding them by regex keeps 2 Mi entries fast.
    for match in re.finditer(b"[\x04\x06\x07]", states):
        index = first + match.start()
        entry = entries[match.start()]
        state = entry & 7
        if index % (ratio + 1) == ratio:
            offset = entry & OFFSET_MASK
            if offset + MiB > file_size:
                image.fail("sector bitmap entry %d points beyond the end of the file" % index)
            spans.append((offset, offset + MiB, "sector bitmap entry %d" % index))
            continue
        block = index - index // (ratio + 1)
        if state == PAYLOAD_PARTIALLY_PRESENT and not image.has_parent:
            image.fail("block %d is PARTIALLY_PRESENT in a disk without a parent" % block)
        if state not in (PAYLOAD_FULLY_PRESENT, PAYLOAD_PARTIALLY_PRESENT):
            image.fail("BAT entry for block %d has the reserved state %d" % (block, state))
        if block >= image.block_count:
            image.fail("BAT entry %d holds data for block %d, past the end of the virtual disk" % (index, block))
        offset = entry & OFFSET_MASK
        in_disk = min(block_size, image.virtual_size - block * block_size)
        if offset < MiB:
            image.fail("BAT entry for block %d points into the header section (offset %d)" % (block, offset))
        if offset + in_disk > file_size:
            image.fail("BAT entry for block %d points beyond the end of the file (offset %d, file size %d)"
                       % (block, offset, file_size))
        spans.append((offset, offset + in_disk, "payload block %d" % block))
    return spans


OVERLAP_HINT = "Two BAT entries or regions share file space; the file is corrupt."


def check_layout(image, region_spans, states, entries):
    """The whole-file check: every entry valid, and no two of regions, blocks and sector bitmaps overlap."""
    spans = list(region_spans) + check_entries(image, states, 0, entries)
    spans.sort()
    for (start_a, end_a, name_a), (start_b, _end_b, name_b) in zip(spans, spans[1:]):
        if start_b < end_a:
            image.fail("%s (at %d) overlaps %s (at %d)" % (name_b, start_b, name_a, start_a), hint=OVERLAP_HINT)


def check_page(image, region_spans, first, entries):
    """The check of one page of a PagedBat: its entries valid, and none of them over a region of the file.

    Two blocks sharing file space are found by ``check_layout`` once the whole table is read; a reader of a few
    pages reads what the file says there, as Hyper-V would."""
    for start_b, end_b, name_b in check_entries(image, states_of(entries), first, entries):
        for start_a, end_a, name_a in region_spans:
            if start_b < end_a and start_a < end_b:
                image.fail("%s (at %d) overlaps %s (at %d)" % (name_b, start_b, name_a, start_a), hint=OVERLAP_HINT)
