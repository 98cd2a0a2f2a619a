# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Resilient Change Tracking as the lab host emulates it: one ``<disk>.rct.json`` per virtual disk.

Every guest write is recorded as a numbered record (``seq``) of the 64 KiB granules it touched.
An RCT id ``rctX:<disk id>:<seq>`` names the point in that sequence where a reference point was
taken; the changes since an id are the union of the granules of the later records, up to the
point the queried file stands for (a frozen checkpoint file stops at its freeze ``seq``).

Granularity: 64 KiB, aligned to the start of the virtual disk. A write of one byte reports the
whole 64 KiB granule around it, as a real RCT bitmap reports whole blocks; ranges are merged and
clipped to the virtual size and to the page asked for.

Invalidation (as Windows reports it): a resized or offline-edited disk makes every id of the disk
invalid (0xC03A0022 ERROR_CTLOG_VHD_CHANGED_OFFLINE); an id the disk never issued, one from another
disk, or one of a destroyed reference point is 0xC03A0029 ERROR_VHD_INVALID_CHANGE_TRACKING_ID /
0xC03A0030 ERROR_VHD_MISSING_CHANGE_TRACKING_INFORMATION. Callers fall back to a full backup.

Ids of a disk that did not change (issue 12 point 7). What Windows does here is undocumented:

- Msvm_VirtualSystemReferencePoint only says ResilientChangeTrackingIdentifiers are "RCT IDs corresponding to the
  virtual disks of the VM at the time this reference point was created"; DestroyReferencePoint only "deletes the
  specified reference point" (learn.microsoft.com hyperv_v2 pages; the collection variant adds that it "may as a
  side effect destroy other reference points that are dependent on" it, without saying which).
- The native API treats an id as the name of a disk *state*, not of a reference point: GET_VIRTUAL_DISK_INFO
  ChangeTrackingState reports the disk's MostRecentId and NewerChanges ("whether the virtual disk has changed
  since the change identified by MostRecentId"), and QueryChangesVirtualDisk reports changes "since the change
  tracking identifier ... was sealed" (MicrosoftDocs sdk-api virtdisk pages). Public ids look like
  ``rctX:<disk guid>:<counter>`` (cloudbase/rct-service README), a per-disk counter. That an unchanged disk
  gets its current id again for a new reference point fits this, but no source says so, and none says whether
  destroying one of two points that hold one id keeps it valid for the other.
- Public code does not settle it: Bareos (core/src/win32/plugins/filed/hyper-v.cc) and nxmBackup destroy the
  previous point right after converting the new one, and neither compares ids.

So the lab does both, chosen per host: by default an unchanged disk gets the same id again and destroying ANY
reference point that holds an id invalidates it for every holder (``forget_id``), the harsh reading that code
must survive; with the host quirk ``rct_id_per_reference_point`` every issued id is new (a per-disk issue
counter: ``rctX:<disk id>:<seq>-<n>``, still naming state ``seq``), so destroying a point invalidates only its own.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import bisect
import functools
import os
from array import array

from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import read_json, write_json_atomic

GRANULE = 64 * 1024
# GetVirtualDiskChanges may process less than asked ("ProcessedByteLength may be ... less"); the lab
# processes at most this much virtual space per call so that callers must page, as on Windows.
MAX_PAGE_BYTES = 1024 * 1024 * 1024

ERROR_CTLOG_VHD_CHANGED_OFFLINE = "0xC03A0022"
ERROR_VHD_INVALID_CHANGE_TRACKING_ID = "0xC03A0029"
ERROR_VHD_MISSING_CHANGE_TRACKING_INFORMATION = "0xC03A0030"


class RctLookupError(Exception):
    """A limit id cannot be used; carries the Windows error code and the reason."""

    def __init__(self, message, windows_error):
        super(RctLookupError, self).__init__(message)
        self.windows_error = windows_error


def rct_path_for(base_disk_path):
    return base_disk_path + ".rct.json"


def new_tracking(disk_id):
    return {"disk_id": disk_id, "granularity": GRANULE, "sequence": 0, "records": [], "ids": {}, "invalidated": {}}


def load(path, disk_id):
    if os.path.exists(path):
        return read_json(path)
    return new_tracking(disk_id)


def save(path, tracking):
    write_json_atomic(path, tracking)


def granules(offset, length):
    """[first, end) granule numbers covering the byte range."""
    return offset // GRANULE, (offset + length + GRANULE - 1) // GRANULE


def record_writes(tracking, ranges):
    """Append one record per written (offset, length) range; returns the new sequence number."""
    for offset, length in ranges:
        if length <= 0:
            continue
        tracking["sequence"] += 1
        first, end = granules(offset, length)
        tracking["records"].append([tracking["sequence"], first, end])
    return tracking["sequence"]


def issue_id(tracking, seq, per_reference_point=False):
    """An RCT id for the state after record ``seq``: the same id for the same state (the default), or with
    ``per_reference_point`` (host quirk rct_id_per_reference_point) a new one on every call."""
    rct_id = "rctX:%s:%d" % (tracking["disk_id"], seq)
    if per_reference_point:
        tracking["issued"] = int(tracking.get("issued") or 0) + 1
        rct_id = "%s-%d" % (rct_id, tracking["issued"])
    tracking["ids"][rct_id] = seq
    tracking["invalidated"].pop(rct_id, None)
    return rct_id


def invalidate_all(tracking, reason, windows_error=ERROR_CTLOG_VHD_CHANGED_OFFLINE):
    """Every issued id stops working (disk resized, restored, migrated to a host without RCT)."""
    for rct_id in tracking["ids"]:
        tracking["invalidated"][rct_id] = {"reason": reason, "windows_error": windows_error}
    tracking["ids"] = {}


def forget_id(tracking, rct_id, reason):
    """One id stops working (a reference point holding it was destroyed): for every point that holds it, since
    ids are per disk state; with per-reference-point ids only the destroyed point held it."""
    if tracking["ids"].pop(rct_id, None) is not None:
        tracking["invalidated"][rct_id] = {"reason": reason, "windows_error": ERROR_VHD_MISSING_CHANGE_TRACKING_INFORMATION}


def lookup(tracking, rct_id):
    """The sequence number behind ``rct_id`` or RctLookupError saying why it is unusable."""
    if rct_id in tracking["ids"]:
        return tracking["ids"][rct_id]
    gone = tracking["invalidated"].get(rct_id)
    if gone:
        raise RctLookupError("change tracking id %s is no longer valid: %s" % (rct_id, gone["reason"]), gone["windows_error"])
    raise RctLookupError("the specified change tracking identifier %s is not valid for disk %s"
                         % (rct_id, tracking["disk_id"]), ERROR_VHD_INVALID_CHANGE_TRACKING_ID)


# The merged change list of one (disk, since, upto, records) as two arrays of byte offsets, kept for the next pages:
# a caller pages a 64 TiB disk in 65536 calls of 1 GiB, and each page must cost a bisection, not a scan of every record.
# Records are only ever appended, so the number of records and the last one name the list. A few lists are kept.
_MERGED = {}
_MERGED_KEEP = 8


def _merged_ranges(tracking, since_seq, upto_seq):
    """(starts, ends): sorted, disjoint, non-adjacent [start, end) byte ranges (granule-aligned) of the records in (since, upto]."""
    records = tracking["records"]
    key = (tracking["disk_id"], since_seq, upto_seq, len(records), tuple(records[-1]) if records else None)
    cached = _MERGED.get(key)
    if cached is not None:
        return cached
    starts, ends = array("q"), array("q")
    for first, end in sorted((first, end) for seq, first, end in records if since_seq < seq <= upto_seq):
        if ends and first * GRANULE <= ends[-1]:
            ends[-1] = max(ends[-1], end * GRANULE)
        else:
            starts.append(first * GRANULE)
            ends.append(end * GRANULE)
    if len(_MERGED) >= _MERGED_KEEP:
        _MERGED.pop(next(iter(_MERGED)))
    _MERGED[key] = (starts, ends)
    return starts, ends


def changes(tracking, since_seq, upto_seq, byte_offset, byte_length, virtual_size):
    """One page of changes: (processed_byte_length, offsets, lengths), ranges merged and clipped."""
    return window_finder(tracking, since_seq, upto_seq)(byte_offset, byte_length, virtual_size)


def window_finder(tracking, since_seq, upto_seq):
    """``page(byte_offset, byte_length, virtual_size)`` -> one page of ``changes``, the merged records looked up once."""
    starts, ends = _merged_ranges(tracking, since_seq, upto_seq)
    return functools.partial(_window, starts, ends, len(starts))


def _window(starts, ends, count, byte_offset, byte_length, virtual_size, page_bytes=MAX_PAGE_BYTES, after=bisect.bisect_right):
    # called once per page (65,536 times for a 64 TiB disk): comparisons instead of min/max, names bound once
    processed = virtual_size - byte_offset
    if processed > byte_length:
        processed = byte_length
    if processed > page_bytes:
        processed = page_bytes
    if processed < 0:
        processed = 0
    window_end = byte_offset + processed
    # the first range that ends after the window starts; ranges are disjoint, so ends are sorted too
    index = after(ends, byte_offset)
    if index == count or starts[index] >= window_end:
        return processed, [], []
    offsets, lengths = [], []
    while index < count and starts[index] < window_end:
        start, stop = starts[index], ends[index]
        if start < byte_offset:
            start = byte_offset
        if stop > window_end:
            stop = window_end
        if start < stop:
            offsets.append(start)
            lengths.append(stop - start)
        index += 1
    return processed, offsets, lengths
