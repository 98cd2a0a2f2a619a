# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Before a backup copies anything: which disks, full or incremental (and why), and what it will cost.

Workflow steps 3 and 4 of hyperv_backup. The type rules: the first backup of a VM is full; every later
one is incremental unless there is no usable parent, the parent's RCT reference point (and so its change
tracking id) is gone or invalid, the disk set or a disk's size changed, or the method changed. The
estimate counts the chunks the copy will read: from the allocated ranges (BAT) for a full or a VSS
incremental, from the RCT change list for an RCT incremental.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

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


def chunk_indexes(ranges, chunk_size, virtual_size):
    """Sorted indexes of the chunks that ``ranges`` [(offset, length)] touch (chunk-aligned cover)."""
    last = (virtual_size - 1) // chunk_size
    out = set()
    for offset, length in ranges:
        if length <= 0:
            continue
        first = max(0, int(offset) // chunk_size)
        end = min(last, (int(offset) + int(length) - 1) // chunk_size)
        out.update(range(first, end + 1))
    return sorted(out)


def chunk_bytes(indexes, chunk_size, virtual_size):
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
