# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""get_disk_changes: one page of the RCT change list of a frozen disk (Windows Server 2016+).

``Msvm_ImageManagementService.GetVirtualDiskChanges(Path, LimitId, TargetSnapshotId, ByteOffset, ByteLength)
-> ProcessedByteLength, ChangedByteOffsets[], ChangedByteLengths[]`` (hyperv_wmi.md section 3.5). The caller
(``recovery_points.collect_changes``) pages with ``byte_offset += processed_byte_length``.

Issue point 12 (UNCONFIRMED which reading Windows has): Microsoft's page says ByteLength "must be less than
the size of the virtual disk", while public production code passes size - offset (the whole disk on the
first call). This code first asks for what the caller asked (size - offset); on 32773 Invalid parameter it
asks again with one sector less (size - offset - 1, rounded down to 512 bytes), then halves the length. A
shorter page is fine: the host answers with its ProcessedByteLength and the caller continues from there.
Once a host refused the full length, later pages start with the shorter one (remembered per bridge).

TargetSnapshotId (UNCONFIRMED: null or ""): it names a VHD Set snapshot, which we never use. This code
sends "" (the empty string of hyperv_wmi.md's sequence). If a call still fails with 32773 at the shortest
length, it is tried once more with null; if that works, null is remembered for the bridge.
Failures are category 'change_tracking' (the caller then takes a full backup), 32779 'not_found'.

``max_pages`` > 1 (issue 14): the pages of the window are asked in one bridge round trip (``invoke_paged``,
the loop runs on the host), up to ``max_pages`` calls, and the answer is their union: processed_byte_length
is what all of them processed, the changed ranges are concatenated in order. A page the host refuses is asked
again alone, through the single-page path above (shorter lengths, null TargetSnapshotId), and paging goes on
after it. A 64 TiB disk is 65,536 pages of 1 GiB in the lab; one round trip per page cost 0.28 ms of CPU each
(and on a real host a WinRM round trip each).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import BridgeError, Paging
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import disks as vm_disks
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.checkpoints import RCT_MIN_BUILD
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.points_common import call, fail, namespace, os_build, the_service

OPERATION = "get_disk_changes"
INVALID_PARAMETER = 32773
SECTOR = 512
SHRINK_ATTEMPTS = 6
COLLECTED = ("ChangedByteOffsets", "ChangedByteLengths")
_STATE = "_hvb_change_tracking"


def _state(bridge):
    state = getattr(bridge, _STATE, None)
    if state is None:
        state = {"strict_length": False, "target": ""}
        try:
            setattr(bridge, _STATE, state)
        except AttributeError:
            pass
    return state


def shorter_lengths(byte_length):
    """The lengths tried after 32773: one sector less (rounded down to a sector), then halves; never below a sector."""
    out = []
    length = ((int(byte_length) - 1) // SECTOR) * SECTOR
    while length >= SECTOR and len(out) < SHRINK_ATTEMPTS:
        out.append(length)
        length = ((length // 2) // SECTOR) * SECTOR
    return out


def _ask(bridge, ns, ims, path, limit_id, target, offset, length):
    return call(bridge, ns, ims["__PATH"], "GetVirtualDiskChanges",
                {"Path": path, "LimitId": limit_id, "TargetSnapshotId": target, "ByteOffset": int(offset), "ByteLength": int(length)},
                OPERATION, "change_tracking", code_categories={32779: "not_found"}, what="GetVirtualDiskChanges(%s)" % path,
                hint="The change-tracking id is no longer valid (or tracking was reset); a full backup starts a new chain.")


def get_disk_changes(bridge, path, limit_id, byte_offset, byte_length, max_pages=1):
    """{processed_byte_length, changed_byte_offsets, changed_byte_lengths, pages} of up to ``max_pages`` pages."""
    if os_build(bridge, OPERATION) < RCT_MIN_BUILD:
        fail(bridge, OPERATION, "unsupported", "GetVirtualDiskChanges needs Windows Server 2016 or later",
             hint="Use VSS full backups on this host.")
    budget = 1 if max_pages is None else int(max_pages)
    if int(byte_offset) < 0 or int(byte_length) <= 0 or budget < 1:
        fail(bridge, OPERATION, "failed", "byte_offset %s / byte_length %s / max_pages %s: the offset must be >= 0, the length "
             "and max_pages > 0" % (byte_offset, byte_length, max_pages),
             hint="Page with byte_offset += processed_byte_length until the virtual size.")
    ns = namespace(bridge, OPERATION)
    ims = the_service(bridge, ns, "Msvm_ImageManagementService", OPERATION)
    start, end = int(byte_offset), int(byte_offset) + int(byte_length)
    offset, pages, offsets, lengths = start, 0, [], []
    while offset < end and pages < budget:
        stopped = None
        if budget - pages > 1:
            answer = _ask_paged(bridge, ns, ims, path, limit_id, offset, end, budget - pages)
            pages += answer["calls"]
            offsets.extend(int(v) for v in answer["collected"].get(COLLECTED[0]) or [])
            lengths.extend(int(v) for v in answer["collected"].get(COLLECTED[1]) or [])
            offset = int(answer["next_offset"])
            stopped = answer.get("stopped")
            if stopped is None:
                continue
            if stopped.get("reason") == "no_progress":
                break
        page = _one_page(bridge, ns, ims, path, limit_id, offset, end - offset)
        pages += 1
        offsets.extend(page["changed_byte_offsets"])
        lengths.extend(page["changed_byte_lengths"])
        if page["processed_byte_length"] <= 0:
            break
        offset += page["processed_byte_length"]
    return {"processed_byte_length": offset - start, "changed_byte_offsets": offsets, "changed_byte_lengths": lengths,
            "pages": pages}


def _ask_paged(bridge, ns, ims, path, limit_id, offset, end, max_calls):
    """The pages of [offset, end) in one round trip, with what this bridge has learnt (strict length, target id)."""
    state = _state(bridge)
    size_or_window = end - offset
    max_length = shorter_lengths(size_or_window)[0] if state["strict_length"] and shorter_lengths(size_or_window) else size_or_window
    paging = Paging("ByteOffset", "ByteLength", "ProcessedByteLength", offset, end, max_length, max_calls, COLLECTED)
    try:
        return bridge.invoke_paged(ns, ims["__PATH"], "GetVirtualDiskChanges",
                                   {"Path": path, "LimitId": limit_id, "TargetSnapshotId": state["target"]}, paging)
    except BridgeError:
        # Whatever refused the round trip (a bridge without the paged script, a call Windows rejected before
        # the first page), the single-page path asks again and reports it as it always has.
        return {"calls": 0, "next_offset": offset, "collected": {}, "counts": {}, "stopped": {"reason": "failed"}}


def _one_page(bridge, ns, ims, path, limit_id, byte_offset, byte_length):
    """{processed_byte_length, changed_byte_offsets, changed_byte_lengths} of one page (the issue point 12 retries)."""
    state = _state(bridge)
    lengths = [int(byte_length)] + shorter_lengths(byte_length)
    if state["strict_length"] and len(lengths) > 1:
        lengths = lengths[1:]
    result, last = None, None
    for index, length in enumerate(lengths):
        try:
            result = _ask(bridge, ns, ims, path, limit_id, state["target"], byte_offset, length)
            if index and length < int(byte_length):
                state["strict_length"] = True
            break
        except HostOperationError as err:
            last = err
            if err.category != "change_tracking" or INVALID_PARAMETER not in _codes(err):
                raise
            if index == 0:
                _refuse_past_the_end(bridge, ns, path, byte_offset, byte_length, err)
    if result is None:
        other = None if state["target"] == "" else ""
        try:
            result = _ask(bridge, ns, ims, path, limit_id, other, byte_offset, lengths[0])
            state["target"] = other
        except HostOperationError:
            raise last
    out = result.get("out") or {}
    offsets = [int(v) for v in out.get("ChangedByteOffsets") or []]
    lengths_out = [int(v) for v in out.get("ChangedByteLengths") or []]
    return {"processed_byte_length": int(out.get("ProcessedByteLength") or 0), "changed_byte_offsets": offsets,
            "changed_byte_lengths": lengths_out}


def _refuse_past_the_end(bridge, ns, path, byte_offset, byte_length, err):
    """A page that reaches past the disk's end is the caller's mistake ('failed'), not the ByteLength reading of
    point 12: shrinking it would hide the bug (and wrongly remember the strict reading). Asked only after 32773."""
    try:
        size = vm_disks.file_facts(bridge, ns, path, OPERATION).get("virtual_size")
    except HostOperationError:
        return              # cannot tell: the shorter lengths decide
    if size and int(byte_offset) + int(byte_length) > int(size):
        fail(bridge, OPERATION, "failed", "byte_offset %d + byte_length %d reaches past the end of %s (virtual size %d): %s"
             % (int(byte_offset), int(byte_length), path, int(size), err.message),
             hint="Page with byte_offset += processed_byte_length and byte_length = virtual size - byte_offset.")


def _codes(err):
    """The return / job error code a HostOperationError from wmi.call carries (from its windows_error text)."""
    text = str(err.windows_error or "")
    digits = "".join(ch if ch.isdigit() else " " for ch in text).split()
    return [int(d) for d in digits]
