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
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import disks as vm_disks
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.checkpoints import RCT_MIN_BUILD
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.points_common import call, fail, namespace, os_build, the_service

OPERATION = "get_disk_changes"
INVALID_PARAMETER = 32773
SECTOR = 512
SHRINK_ATTEMPTS = 6
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


def get_disk_changes(bridge, path, limit_id, byte_offset, byte_length):
    """{processed_byte_length, changed_byte_offsets, changed_byte_lengths} of one page."""
    if os_build(bridge, OPERATION) < RCT_MIN_BUILD:
        fail(bridge, OPERATION, "unsupported", "GetVirtualDiskChanges needs Windows Server 2016 or later",
             hint="Use VSS full backups on this host.")
    if int(byte_offset) < 0 or int(byte_length) <= 0:
        fail(bridge, OPERATION, "failed", "byte_offset %s / byte_length %s: the offset must be >= 0 and the length > 0"
             % (byte_offset, byte_length), hint="Page with byte_offset += processed_byte_length until the virtual size.")
    ns = namespace(bridge, OPERATION)
    ims = the_service(bridge, ns, "Msvm_ImageManagementService", OPERATION)
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
