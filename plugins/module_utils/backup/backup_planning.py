# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Before a backup copies anything: which disks, full or incremental (and why), and what it will cost.

Workflow steps 3 and 4 of hyperv_backup. The type rules: the first backup of a VM is full; every later
one is incremental unless there is no usable parent, the parent's RCT reference point (and so its change
tracking id) is gone or invalid, the disk set or a disk's size changed, or the method changed. The
estimate counts the chunks the copy will read: from the allocated ranges (BAT) for a full or a VSS
incremental, from the RCT change list for an RCT incremental.

Rolled-back disks (issue 12, point 4): an RCT change list lists the blocks written since the parent's reference
point, on the files of the disk's chain now. A disk rolled back since (a checkpoint applied: its differencing
file is discarded; the file restored in place by an operator) has blocks that differ from the parent backup but
were never written, and the change tracking ids may stay valid. So every backup records each disk's files (the
frozen file's and its parents' VirtualDiskIds and paths, ``identity_metadata``) and an RCT incremental needs the
file its parent read to be still in the disk's chain (``identity_problem``); otherwise the backup is full and
says why. A recovery point given by id that is provably older than the parent's is refused
(``point_older_than_parent``, point 5).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import bisect
import operator
import re
from array import array
from collections.abc import Sequence

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError

BACKUP_TYPES = ("auto", "full", "incremental")


def disk_key(disk):
    """The stable name of a VM disk across backups: its controller slot, e.g. ``scsi0-1`` (disk ids can change)."""
    if disk.get("controller_type") is not None and disk.get("controller_location") is not None:
        return "%s%d-%d" % (str(disk["controller_type"]).lower(), int(disk.get("controller_number") or 0),
                            int(disk["controller_location"]))
    return str(disk.get("disk_id") or disk["path"])


_SLOT = re.compile(r"^(ide|scsi)\s*(\d+)\s*[:-]\s*(\d+)$", re.IGNORECASE)


def parse_slot(text):
    """The canonical key (``scsi0-1``) of a controller slot however it is spelled: ``SCSI 0:1``, ``scsi0-1``,
    ``Scsi 0-1`` ...; None if ``text`` is not a slot. The one parser of slot spellings, for every option that
    names disks (exclude_disks, disk_names), so a spelling that works in one works in all."""
    match = _SLOT.match(str(text).strip())
    return "%s%d-%d" % (match.group(1).lower(), int(match.group(2)), int(match.group(3))) if match else None


def names_disk(pattern, key, paths=()):
    """Whether ``pattern`` names the disk whose key is ``key`` and whose file is at one of ``paths``.

    ``pattern`` is the disk's controller slot in any spelling (parse_slot), its key itself (a disk without a
    slot is keyed by its id or path), or its path (Windows or local) or file name; case never matters, as
    Windows names are case-insensitive.
    """
    text = str(pattern).strip()
    low = text.lower().replace("/", "\\")
    files = [str(p).lower().replace("/", "\\") for p in paths if p]
    if low in files or any(f.rsplit("\\", 1)[-1] == low for f in files):
        return True
    slot = parse_slot(text)
    if slot:
        return slot == parse_slot(key)
    return low == str(key).lower().replace("/", "\\")


def _exclude_matches(pattern, disk):
    """``pattern`` is a path (Windows or local, or a file name) or a controller slot (``SCSI 0:1``, ``scsi0-1``)."""
    return names_disk(pattern, disk_key(disk), (disk.get("windows_path"), disk.get("path")))


def select_disks(disks, exclude_disks=None):
    """(kept, excluded) disks; an exclude pattern that matches no disk is an error (a typo must not go unnoticed)."""
    patterns = list(exclude_disks or [])
    kept, excluded, used = [], [], set()
    for disk in disks:
        hits = [p for p in patterns if _exclude_matches(p, disk)]
        used.update(hits)
        (excluded if hits else kept).append(disk)
    unused = [p for p in patterns if p not in used]
    if unused:
        raise HyperVBackupError("exclude_disks entr%s %s match%s no disk of the VM." % (
            "y" if len(unused) == 1 else "ies", ", ".join(repr(p) for p in unused), "es" if len(unused) == 1 else ""),
            hint="The VM's disks: %s (give a path, a file name or a controller slot like 'SCSI 0:1')." % ", ".join(
                "%s (%s)" % (disk_key(d), d.get("windows_path") or d["path"]) for d in disks))
    if not kept:
        raise HyperVBackupError("Every disk of the VM is excluded; there is nothing to back up.",
                                hint="Remove an entry from exclude_disks.")
    return kept, excluded


class ChunkIndexes(Sequence):
    """A sorted sequence of chunk indexes kept as runs [first, end): memory ~ runs, not chunks.

    A whole 64 TiB disk at 1 MiB chunks is 64 Mi indexes; as a list (or the set that built it) that is gigabytes,
    as one run it is two numbers. Iterating yields the indexes in order; ``len``, ``in`` and ``[i]`` cost a
    bisection. ``runs()`` gives the (first, end) runs to callers that can work a run at a time. Equal to any
    sequence holding the same indexes (a list in a test, say).
    """

    def __init__(self, starts, ends):
        self._starts, self._ends = starts, ends
        self._before = array("q")           # indexes in the runs before run i
        total = 0
        for first, end in zip(starts, ends):
            self._before.append(total)
            total += end - first
        self._length = total

    def __len__(self):
        return self._length

    def __iter__(self):
        for first, end in zip(self._starts, self._ends):
            yield from range(first, end)

    def __contains__(self, index):
        if not isinstance(index, int):
            return False
        run = bisect.bisect_right(self._starts, index) - 1
        return run >= 0 and index < self._ends[run]

    def __getitem__(self, position):
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(self._length))]
        if position < 0:
            position += self._length
        if not 0 <= position < self._length:
            raise IndexError("chunk index position %d out of range (%d indexes)" % (position, self._length))
        run = bisect.bisect_right(self._before, position) - 1
        return self._starts[run] + position - self._before[run]

    def __eq__(self, other):
        if isinstance(other, ChunkIndexes):
            return list(self.runs()) == list(other.runs())
        if isinstance(other, (list, tuple, Sequence)):
            return len(other) == self._length and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None

    def __repr__(self):
        return "ChunkIndexes(%s)" % ", ".join("%d..%d" % (first, end - 1) for first, end in self.runs())

    def runs(self):
        """(first, end) of each run of consecutive indexes, in order."""
        return zip(self._starts, self._ends)


def chunk_indexes(ranges, chunk_size, virtual_size):
    """Sorted indexes of the chunks that ``ranges`` [(offset, length)] touch (chunk-aligned cover), as ChunkIndexes.

    Costs ~ the number of ranges (sorted), never the number of chunks."""
    last = (virtual_size - 1) // chunk_size
    covers = []
    for offset, length in ranges:
        if length <= 0:
            continue
        first = max(0, int(offset) // chunk_size)
        end = min(last, (int(offset) + int(length) - 1) // chunk_size) + 1
        if first < end:
            covers.append((first, end))
    covers.sort()
    starts, ends = array("q"), array("q")
    for first, end in covers:
        if ends and first <= ends[-1]:
            ends[-1] = max(ends[-1], end)      # overlapping or adjacent: one run
        else:
            starts.append(first)
            ends.append(end)
    return ChunkIndexes(starts, ends)


def chunk_bytes(indexes, chunk_size, virtual_size):
    """Bytes of the chunks ``indexes`` (the last chunk of the disk may be short)."""
    if isinstance(indexes, ChunkIndexes):
        total = 0
        for first, end in indexes.runs():
            total += min(end * chunk_size, virtual_size) - first * chunk_size
        return total
    return sum(min(chunk_size, virtual_size - i * chunk_size) for i in indexes)


class TypeDecision:
    """Full or incremental, why, and the parent backup an incremental builds on."""

    def __init__(self, backup_type, reason, parent=None):
        self.type = backup_type
        self.reason = reason
        self.parent = parent if backup_type == "incremental" else None

    def to_dict(self):
        return {"type": self.type, "reason": self.reason, "parent_backup_id": self.parent.backup_id if self.parent else None}


def reference_rct_ids(parent, reference_points):
    """({disk_id: rct_id}, None) of the reference point the parent backup left behind, or (None, why not).

    The parent's recovery point became a reference point when the parent was handed back. Windows gives a
    reference point no creation time (issue point 2), so it is recognised by id: the reference point id when the
    parent's metadata records it (``recovery_point.reference_point_id``), else the recovery point id the host's
    ownership marker keeps for the point (``recovery_point_id``, the checkpoint it was converted from). Only for
    backups made before either existed is it matched by creation time. Another product's point never matches.
    """
    recorded = (parent.metadata or {}).get("recovery_point") or {}
    references = [r for r in reference_points or [] if r.get("ours") is not False and r.get("type") in (None, "RCT")]
    if recorded.get("reference_point_id"):
        wanted = [r for r in references if r.get("id") == recorded["reference_point_id"]]
    else:
        wanted = [r for r in references if recorded.get("id") and r.get("recovery_point_id") == recorded["id"]]
        if not wanted and recorded.get("created"):
            wanted = [r for r in references if not r.get("recovery_point_id") and r.get("created") == recorded["created"]]
    for reference in reversed(wanted):
        if reference.get("problem"):
            return None, "the RCT reference point %s of the parent backup %s cannot be used: %s" % (
                reference.get("id"), parent.backup_id, reference["problem"])
        return dict(reference.get("rct_ids") or {}), None
    return None, ("the RCT reference point of the parent backup %s is gone from the host (removed, or the VM moved)"
                  % parent.backup_id)


# --- disk identity: was the disk rolled back since the parent backup? (issue 12, points 4 and 5) ---------

def _norm_path(path):
    return str(path or "").replace("/", "\\").lower()


def disk_identity(disk):
    """[(path, VirtualDiskId)] of a disk's files, top (the file read) to base; None when not known.

    ``disk`` is a host DISK (path, parent_chain, chain_disk_ids: recovery_points / get_vms) or the metadata a
    backup recorded for one (chain_paths, chain_disk_ids: ``identity_metadata``). Where paths are compared, they
    are compared as Windows compares them (case-insensitive, either slash).
    """
    ids = disk.get("chain_disk_ids")
    if not ids:
        return None
    paths = disk.get("chain_paths")
    if paths is None:
        paths = [disk.get("windows_path") or disk.get("path")] + list(disk.get("parent_chain") or [])
    if len(paths) != len(ids) or not all(ids):
        return None
    return [(str(path), str(disk_id).lower()) for path, disk_id in zip(paths, ids)]


def identity_metadata(disk):
    """What a backup records of the files it read ({} when the host reports no identity)."""
    if disk_identity(disk) is None:
        return {}
    return {"file_disk_id": disk.get("file_disk_id") or disk["chain_disk_ids"][0], "chain_disk_ids": list(disk["chain_disk_ids"]),
            "chain_paths": [disk.get("windows_path") or disk.get("path")] + list(disk.get("parent_chain") or [])}


def _file_key(*chains):
    """How files are matched: by VirtualDiskId, which survives a storage migration (another path); by path and id
    when a chain repeats an id (a host whose differencing files copy their parent's id, UNCONFIRMED for Windows:
    the lab gives each file its own), as an id alone would then not tell an applied checkpoint's new file apart."""
    repeated = any(len(set(disk_id for _path, disk_id in chain)) < len(chain) for chain in chains)
    return _whole if repeated else operator.itemgetter(1)


def _whole(item):
    return _norm_path(item[0]), item[1]


def _recorded(parent):
    return dict((d["disk_key"], disk_identity(d.get("metadata") or {})) for d in parent.disks)


def identity_problem(parent, disks):
    """Why the recovery point's ``disks`` are not a continuation of what ``parent`` read (-> a full backup), or None.

    A disk continues the parent when the file the parent read is still in its chain: unchanged on top, or frozen
    under a checkpoint taken since (a new user checkpoint or our own recovery checkpoint: the file only became
    read-only; RCT lists every write since the parent's point, before the freeze into that file, after it into the
    new child). Not so when that file is gone from the chain (a checkpoint applied: the differencing file is
    discarded and a new one starts from an older state; a checkpoint deleted: its file merged into its parent,
    which cannot be told apart from an applied one by ids) or the base is another disk (restored in place). Those
    revert blocks that RCT does not report as changed. A parent that recorded no identity (made by an older
    version) cannot rule a rollback out either. When the host reports no identity for the point's disks there is
    nothing to compare (None).
    """
    now = dict((d["disk_key"], disk_identity(d)) for d in disks)
    if not now or any(chain is None for chain in now.values()):
        return None
    recorded = _recorded(parent)
    for key in sorted(now):
        chain, then = now[key], recorded.get(key)
        if then is None:
            return ("backup %s recorded no identity of disk %s (it was made by an older version of this collection), so a "
                    "rollback of the disk since then (a checkpoint applied, the disk restored in place) cannot be ruled out; "
                    "this backup records it" % (parent.backup_id, key))
        file_key = _file_key(chain, then)
        if then[-1][1] != chain[-1][1]:
            return ("disk %s is not the virtual disk that backup %s read: its base file %s had VirtualDiskId %s and has %s now "
                    "(the disk was replaced or restored in place)" % (key, parent.backup_id, chain[-1][0], then[-1][1], chain[-1][1]))
        if file_key(then[0]) not in [file_key(item) for item in chain]:
            return ("disk %s was rolled back or replaced since backup %s: the file that backup read (%s, VirtualDiskId %s) is no "
                    "longer in the disk's chain (a checkpoint was applied or deleted, or the disk restored in place), so RCT "
                    "cannot list every block that differs from that backup" % (key, parent.backup_id, then[0][0], then[0][1]))
    return None


def point_older_than_parent(parent, point_disks, live_disks):
    """Why the recovery point (``point_disks``, its frozen DISKs) is older than the point ``parent`` read, or None.

    Not decided by creation times (host clock, which may be stepped back): by the disk files. The VM's live chain
    grows only on top; a checkpoint freezes the file then on top. When the file the parent read is in the live
    chain and the point's frozen file is strictly below it, the point froze that file before the parent's file
    existed, so the point is the older one. A point taken after a rollback is not caught here (the parent's file is
    no longer live); identity_problem makes its backup full, which is right for a newer point.
    """
    live = dict((disk_key(d), disk_identity(d)) for d in live_disks if d.get("path"))
    recorded = _recorded(parent)
    for disk in sorted(point_disks, key=disk_key):
        key = disk_key(disk)
        frozen, then, now = disk_identity(disk), recorded.get(key), live.get(key)
        if not (frozen and then and now):
            continue
        file_key = _file_key(frozen, then, now)
        order = [file_key(item) for item in now]
        read, point = file_key(then[0]), file_key(frozen[0])
        if read in order and point in order and order.index(point) > order.index(read):
            return ("disk %s: the recovery point froze %s, which is below %s (the file backup %s read) in the disk's chain, so "
                    "the point was taken before that backup's point" % (key, frozen[0][0], then[0][0], parent.backup_id))
    return None


def decide_type(requested, method, method_reason, parent, disks, change_lists=None, rct_problem=None):
    """Decide full or incremental for the disks ``disks`` (the recovery point's, each with ``disk_key``).

    ``change_lists`` ({disk_id: recovery_points.ChangeList}) is needed for an RCT incremental;
    ``rct_problem`` says why no change list could be asked for. Raises when ``incremental`` was asked for
    but is impossible.
    """
    if requested not in BACKUP_TYPES:
        raise HyperVBackupError("type %r is not one of %s." % (requested, ", ".join(BACKUP_TYPES)))
    decision = _decide(requested, method, method_reason, parent, disks, change_lists, rct_problem)
    if requested == "incremental" and decision.type != "incremental":
        raise HyperVBackupError("An incremental backup was asked for but is not possible: %s." % decision.reason,
                                hint="Use type: auto (a full backup is then taken) or type: full.", reason=decision.reason)
    return decision


def _decide(requested, method, method_reason, parent, disks, change_lists, rct_problem):
    if requested == "full":
        return TypeDecision("full", "a full backup was asked for (type: full)")
    if parent is None:
        return TypeDecision("full", "first backup of this VM in the repository")
    if parent.method != method:
        return TypeDecision("full", "the method changed from %s (parent backup %s) to %s: %s"
                            % (parent.method, parent.backup_id, method, method_reason))
    before = dict((d["disk_key"], d) for d in parent.disks)
    now = dict((d["disk_key"], d) for d in disks)
    if set(before) != set(now):
        added, removed = sorted(set(now) - set(before)), sorted(set(before) - set(now))
        return TypeDecision("full", "the disk set changed since backup %s (added: %s; removed: %s)"
                            % (parent.backup_id, ", ".join(added) or "none", ", ".join(removed) or "none"))
    for key in sorted(now):
        if int(before[key]["virtual_size"]) != int(now[key]["virtual_size"]):
            return TypeDecision("full", "disk %s changed size from %d to %d bytes since backup %s"
                                % (key, int(before[key]["virtual_size"]), int(now[key]["virtual_size"]), parent.backup_id))
    if method == "rct":
        if rct_problem:
            return TypeDecision("full", rct_problem)
        rolled_back = identity_problem(parent, disks)
        if rolled_back:
            return TypeDecision("full", rolled_back)
        for disk in disks:
            change_list = (change_lists or {}).get(disk["disk_id"])
            if change_list is None or not change_list.valid:
                return TypeDecision("full", "no usable RCT change list for disk %s: %s" % (
                    disk["disk_key"], change_list.reason if change_list else "none was returned"))
        return TypeDecision("incremental", "parent backup %s; RCT change lists give the changed ranges" % parent.backup_id, parent)
    return TypeDecision("incremental", "parent backup %s; VSS has no change list, so every allocated chunk is read and only "
                                       "chunks that differ from the parent are stored" % parent.backup_id, parent)


def estimate_disk(disk_key_name, virtual_size, chunk_size, source, ranges):
    """Estimate for one disk: ``ranges`` are allocated (full / VSS) or changed (RCT) byte ranges."""
    indexes = chunk_indexes(ranges, chunk_size, virtual_size)
    return {"disk_key": disk_key_name, "virtual_size": virtual_size, "source": source,
            "range_bytes": sum(int(n) for _o, n in ranges), "chunks_to_read": len(indexes),
            "bytes_to_read": chunk_bytes(indexes, chunk_size, virtual_size), "indexes": indexes}


def expected_write_ratio(parent):
    """Stored bytes per new byte in the parent backup (its compression ratio), 1.0 without history."""
    stats = (parent.stats if parent is not None else None) or {}
    new, stored = stats.get("new_bytes") or 0, stats.get("stored_bytes") or 0
    return stored / float(new) if new and stored else 1.0


def summarise_estimate(disks, parent, backup_type, method):
    """The whole-VM estimate from the per-disk ones (their chunk index lists left out)."""
    to_read = sum(d["bytes_to_read"] for d in disks)
    ratio = expected_write_ratio(parent)
    # a VSS incremental reads everything but stores only what changed: without a change list the write
    # estimate is an upper bound (as if every chunk read were new)
    basis = "upper bound: every chunk read is new" if (method == "vss" and backup_type == "incremental") else (
        "chunks to read x the compression ratio of the parent backup" if parent is not None else
        "chunks to read (no earlier backup to learn the compression ratio from)")
    return {"bytes_to_read": to_read, "bytes_to_write": int(to_read * ratio), "write_basis": basis,
            "disks": [dict((k, v) for k, v in d.items() if k != "indexes") for d in disks]}
