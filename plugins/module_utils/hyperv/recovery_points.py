# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Recovery points of a VM: create and validate, remove, clean up stale ones, convert to reference
points with retention, and page through the RCT change list of a frozen disk.

Everything here talks to a host session (``session.run(operation, **params)``, see
``connection.py``) with the operations of ``host_operations.py``. The hyperv_recovery_point module and
the backup engine both call these functions; nothing here parses module arguments.

Our recovery points are named ``hyperv.backup:<run id>`` so that one left behind by a failed run
is recognisable (the host marks it ``ours``) and can be removed without touching anyone else's.
The run that created a point holds the VM's lease on the host while it works (``locks.py``); the
host lists that as ``held_by_live_run``, and stale cleanup never removes such a point. Reference
points are only ever removed when they are ours (an ownership marker on the host) and RCT-based,
and never while another repository's latest backup is based on them (issue point 3).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import os
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError, HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.host.disk_access import map_path
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.method_choice import choose_method, parallel_safety, rct_eligibility

TAG_PREFIX = "hyperv.backup:"
CONSISTENCY_CHOICES = ("application", "application_or_crash")


def new_run_id():
    """A run id that sorts by time and never repeats: 20261125T061100Z-1a2b3c4d."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return "%s-%s" % (stamp, uuid.uuid4().hex[:8])


def recovery_point_tag(run_id):
    """The name our recovery point of one run carries."""
    if not run_id or any(ch in str(run_id) for ch in "\r\n"):
        raise HyperVBackupError("run id %r is empty or spans lines" % (run_id,), hint="Use a short single-line run_id.")
    return TAG_PREFIX + str(run_id)


def is_ours(point):
    """True for a recovery point this collection created (by the host's flag or by its name)."""
    return bool(point.get("ours")) or str(point.get("name") or "").startswith(TAG_PREFIX)


def _host_name(session):
    return getattr(session, "host", None) or "host"


def _accepts(operation, param):
    """Whether the host operation takes ``param`` (optional parameters added with issue 11)."""
    # imported here: host_operations dispatches to modules that import this one
    from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_operations import OPERATIONS
    op = OPERATIONS.get(operation)
    return op is not None and param in op.params


def _optional(operation, **params):
    return dict((k, v) for k, v in params.items() if v is not None and _accepts(operation, k))


# --- create and validate ---------------------------------------------------------------------------

def decide_method(host_facts, vm, requested="auto", previous_method=None):
    """(Eligibility, MethodDecision) for the next recovery point of ``vm``; VSS counts as available
    when the host lists the Hyper-V VSS writer (or would, once its demand-start VSS service runs)."""
    eligibility = rct_eligibility(host_facts, vm)
    writer = host_facts.get("hyperv_vss_writer") or {}
    # A writer not read because VSS is stopped is still available: VSS starts on demand unless it is Disabled.
    available = bool(writer.get("state")) or bool(writer.get("not_read") and writer.get("startable"))
    return eligibility, choose_method(eligibility, requested, previous_method, vss_available=available)


def check_serialization(session, host_facts, vm, all_vms):
    """Refuse (category 'busy') when another VM sharing this VM's serialisation key holds a recovery point of ours.

    On Windows Server 2008 / 2008 R2 VMs on one CSV (or, without a hardware VSS provider, on one host)
    must be backed up one at a time; a recovery point of ours on a sibling VM means its backup is running.
    Both kinds count: checkpoints (the VM's ``checkpoints``) and host-VSS points, which are marker files
    on the host and are listed by ``get_recovery_points`` (issue point 8). Returns this VM's entry of
    ``parallel_safety`` (its ``serialization_key`` is what ``create_recovery_point`` takes as the queue lease).
    """
    keys = parallel_safety(host_facts, all_vms)
    mine = keys[vm["id"]]
    if mine["serialization_key"] is None:
        return mine
    for other in all_vms:
        if other["id"] == vm["id"] or keys[other["id"]]["serialization_key"] != mine["serialization_key"]:
            continue
        holding = [cp for cp in other.get("checkpoints") or [] if cp.get("type") == "Recovery" and is_ours(cp)]
        if not holding:
            holding = [p for p in session.run("get_recovery_points", vm_id=other["id"]) if is_ours(p)]
        if holding:
            raise HostOperationError(
                _host_name(session), "create_recovery_point", "busy",
                "VM %s cannot get a recovery point now: VM %s holds recovery point %s on the same queue (%s). %s."
                % (vm["name"], other["name"], holding[0].get("name"), mine["serialization_key"], mine["reason"]),
                hint="Back up these VMs one after the other (serial: 1 or throttle by serialization_key), or remove "
                     "a stale recovery point with hyperv_recovery_point state: cleaned.",
                serialization_key=mine["serialization_key"], holder_vm=other["name"])
    return mine


def create_recovery_point(session, vm, method, consistency, run_id, local_paths=False, serialization_key=None):
    """Create a recovery point, validate it and return what the backup needs (see ``_describe``).

    consistency 'application' fails when the guest cannot quiesce; 'application_or_crash' falls back
    to crash consistency and the result says so (consistency_fallback, warning). A point that fails
    validation is removed again before the error is raised, so a failure leaves nothing behind.
    The host operation takes the run's VM lease (and, with ``serialization_key`` from
    ``check_serialization``, the queue lease of the 2008 R2 CSV rule); hand-back releases them.
    """
    if consistency not in CONSISTENCY_CHOICES:
        raise HyperVBackupError("consistency %r is not one of %s" % (consistency, ", ".join(CONSISTENCY_CHOICES)))
    tag = recovery_point_tag(run_id)
    created = session.run("create_recovery_point", vm_id=vm["id"], method=method, consistency=consistency, tag=tag,
                          **_optional("create_recovery_point", serialization_key=serialization_key))
    try:
        validated = validate_recovery_point(session, vm, created, method, consistency, local_paths=local_paths)
    except HyperVBackupError:
        try:
            session.run("remove_recovery_point", vm_id=vm["id"], id=created["id"])
        except HyperVBackupError:
            pass  # the validation error is the one to report; a leftover point is found by the stale cleanup
        raise
    result = _describe(validated, method, consistency)
    if method == "rct":
        _attach_previous_rct_ids(session, vm["id"], result)
    return result


def renew_lease(session, vm_id, run_id, interval=None):
    """Keep the run's VM lease alive while a long copy runs: a started ``locks.Renewer`` (call ``stop()`` before the
    hand-back), or None when the session has no bridge (an old transport). The lease itself is taken by the
    create_recovery_point operation and released by the hand-back (convert / remove)."""
    bridge = getattr(session, "bridge", None)
    if bridge is None or not run_id:
        return None
    from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import locks
    return locks.run_renewer(bridge, vm_id, run_id, interval)


def detach_lease(session, vm_id, run_id):
    """Let the run's VM lease outlive this process (``locks.detach_run_leases``): for a point that a later task
    hands back (``hyperv_recovery_point state=present``). Without it the lease ends with the process that
    created the point, which is right for a backup run that creates and hands back in one process."""
    bridge = getattr(session, "bridge", None)
    if bridge is None or not run_id:
        return False
    from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import locks
    return locks.detach_run_leases(bridge, vm_id, run_id)


def _local_path(session, path):
    """Where a host path is readable here: through the session's path map (the lab's), else as given."""
    getter = getattr(session, "path_map", None)
    mapped = map_path(path, getter()) if callable(getter) and getter() else None
    return mapped or path


def validate_recovery_point(session, vm, created, method, consistency, local_paths=False):
    """Check a new point before anyone reads it: listed by the host, disks with paths and chains, consistency.

    Returns the point as ``get_recovery_points`` lists it. ``local_paths`` (lab host, or a proxy that
    sees the host's paths) also checks that every file of every chain exists here.
    """
    host = _host_name(session)
    problems = []
    listed = [p for p in session.run("get_recovery_points", vm_id=vm["id"]) if p.get("id") == created.get("id")]
    if not listed:
        raise HostOperationError(host, "create_recovery_point", "recovery_point",
                                 "recovery point %s of VM %s was reported created but get_recovery_points does not list it"
                                 % (created.get("id"), vm["name"]), hint="Check the VM's checkpoints in Hyper-V Manager.")
    point = listed[0]
    if point.get("method") not in (None, method):
        problems.append("method is %s, %s was asked for" % (point.get("method"), method))
    disks = point.get("disks") or []
    if not disks and vm.get("disks"):
        problems.append("no disks are listed although the VM has %d" % len(vm["disks"]))
    for disk in disks:
        if not disk.get("path"):
            problems.append("disk %s has no path" % disk.get("disk_id"))
            continue
        if not disk.get("disk_id"):
            problems.append("disk %s has no disk_id" % disk["path"])
        if int(disk.get("virtual_size") or 0) <= 0:
            problems.append("disk %s reports virtual size %r" % (disk["path"], disk.get("virtual_size")))
        chain = disk.get("parent_chain") or []
        if disk.get("type") == "differencing" and not chain:
            problems.append("differencing disk %s lists no parent chain" % disk["path"])
        if local_paths:
            problems.extend("file %s of disk %s does not exist" % (path, disk["path"])
                            for path in [disk["path"]] + list(chain) if not os.path.exists(_local_path(session, path)))
    achieved = created.get("consistency") or point.get("consistency")
    if consistency == "application" and achieved != "application":
        problems.append("application consistency was required but the point is %s-consistent" % achieved)
    if achieved not in ("application", "crash"):
        problems.append("consistency %r is neither application nor crash" % (achieved,))
    if problems:
        raise HostOperationError(host, "create_recovery_point", "recovery_point",
                                 "recovery point %s of VM %s failed validation: %s" % (point.get("id"), vm["name"], "; ".join(problems)),
                                 hint="The point was removed again; retry, and check the host's event log "
                                      "(Hyper-V-VMMS) if it keeps failing.", problems=problems)
    merged = dict(point)
    merged["consistency"] = achieved
    merged["consistency_fallback"] = bool(created.get("consistency_fallback")) or (
        consistency == "application_or_crash" and achieved == "crash")
    return merged


def _describe(point, method, consistency):
    fallback = bool(point.get("consistency_fallback"))
    result = {
        "id": point["id"],
        "name": point.get("name"),
        "vm_id": point.get("vm_id"),
        "vm_name": point.get("vm_name"),
        "created": point.get("created"),
        "method": method,
        "consistency": point.get("consistency"),
        "consistency_requested": consistency,
        "consistency_fallback": fallback,
        "warning": None,
        "configuration": point.get("configuration"),
        "disks": [{"disk_id": d.get("disk_id"), "path": d["path"], "virtual_size": int(d["virtual_size"]),
                   "format": d.get("format"), "type": d.get("type"), "block_size": d.get("block_size"),
                   "logical_sector_size": d.get("logical_sector_size"), "parent_chain": list(d.get("parent_chain") or []),
                   "controller_type": d.get("controller_type"), "controller_number": d.get("controller_number"),
                   "controller_location": d.get("controller_location"),
                   # the files' own ids, top to base: recorded by the backup (issue 12, point 4)
                   "file_disk_id": d.get("file_disk_id"), "chain_disk_ids": list(d.get("chain_disk_ids") or []),
                   "previous_rct_id": None, "reference_point_id": None} for d in point.get("disks") or []],
    }
    if fallback:
        result["warning"] = ("VM %s could not be quiesced (guest VSS did not answer); the recovery point is only "
                             "crash-consistent, as after a power loss" % point.get("vm_name"))
    return result


def _attach_previous_rct_ids(session, vm_id, result):
    """Per disk, the RCT id of the newest reference point of ours that tracked that disk (matched by disk_id).

    Another product's point (``ours`` False) is never a base: its changes are not the changes since our backup.
    """
    references = [r for r in session.run("get_reference_points", vm_id=vm_id) if r.get("ours") is not False]
    for disk in result["disks"]:
        for reference in reversed(references):  # oldest first -> newest first
            rct_id = (reference.get("rct_ids") or {}).get(disk["disk_id"])
            if rct_id:
                disk["previous_rct_id"] = rct_id
                disk["reference_point_id"] = reference["id"]
                break


# --- remove and clean up ---------------------------------------------------------------------------

def remove_recovery_point(session, vm_id, point_id, check_mode=False):
    """Remove one recovery point by id; already gone is success with changed False."""
    present = [p for p in session.run("get_recovery_points", vm_id=vm_id) if p.get("id") == point_id]
    if not present:
        return {"id": point_id, "removed": False, "changed": False}
    if check_mode:
        return {"id": point_id, "removed": False, "changed": True}
    result = session.run("remove_recovery_point", vm_id=vm_id, id=point_id)
    return {"id": point_id, "removed": bool(result.get("removed", True)), "changed": True}


def find_stale(session, vm_id, keep_run_id=None):
    """Our recovery points of a VM, except the current run's and those whose run still holds the VM's
    lease on the host (``held_by_live_run``): what a failed run left behind."""
    keep = recovery_point_tag(keep_run_id) if keep_run_id else None
    return [p for p in session.run("get_recovery_points", vm_id=vm_id)
            if is_ours(p) and p.get("name") != keep and not p.get("held_by_live_run")]


def clean_stale(session, vm_id, keep_run_id=None, check_mode=False):
    """Remove our stale recovery points of a VM; returns [{id, name, created, removed}]."""
    report = []
    for point in find_stale(session, vm_id, keep_run_id):
        removed = False
        if not check_mode:
            removed = bool(session.run("remove_recovery_point", vm_id=vm_id, id=point["id"]).get("removed", True))
        report.append({"id": point["id"], "name": point.get("name"), "created": point.get("created"), "removed": removed})
    return report


# --- reference points --------------------------------------------------------------------------------

def removable_reference(reference, repository_id=None):
    """Issue point 3: a reference point may be destroyed only when this collection created it (``ours``, from the
    ownership marker on the host), it is RCT-based (type 2; Replica's log-based type 1 never), and no other
    repository's latest backup is based on it."""
    others = [r for r in reference.get("repositories") or [] if r != repository_id]
    return _ours_rct(reference) and not others


def _ours_rct(reference):
    # hyperv/reference_points.py always says ``ours`` and ``type``; only the per-operation transports that issue 11
    # retires (lab_host.op_*, the PowerShell scripts) report neither, and keep their old behaviour until they go.
    return bool(reference.get("ours", True)) and reference.get("type", "RCT") == "RCT"


def _rct_ids(reference):
    return set(value for value in (reference.get("rct_ids") or {}).values() if value)


def _blocking(guarded, old, reissued):
    shared = _rct_ids(guarded) & _rct_ids(old)
    return shared - set(reissued) if _ours_rct(guarded) else shared


def _reissued_ids(session, recovery_point, references, repository_id):
    """Ids that converting ``recovery_point`` issues again, so destroying another holder first does not lose them
    for good: the ids of another repository's point of ours, also held by another point of ours, on a disk of
    the recovery point that has not changed since that id (an empty, valid change list)."""
    ours = [r for r in references if _ours_rct(r)]
    held = {}
    for point in ours:
        for disk_id, rct_id in (point.get("rct_ids") or {}).items():
            held.setdefault((disk_id, rct_id), []).append(point)
    disks = dict((d.get("disk_id"), d) for d in recovery_point.get("disks") or [])
    reissued = set()
    for (disk_id, rct_id), holders in sorted(held.items()):
        needed = [p for p in holders if not removable_reference(p, repository_id)]
        disk = disks.get(disk_id)
        if rct_id and disk and needed and len(holders) > 1:
            change_list = collect_changes(session, disk["path"], rct_id, disk["virtual_size"])
            if change_list.valid and not change_list.ranges:
                reissued.add(rct_id)
    return reissued


def plan_reference_retention(references, keep_newest, repository_id=None, new_point=None, protect_kept=True, reissued=()):
    """Which of our reference points to destroy now: (destroy, kept), oldest first; kept = [{id, reason}].

    ``references`` as get_reference_points lists them (oldest first). The newest ``keep_newest`` of ours other than
    ``new_point`` stay, and so does ``new_point`` (the point this run converted). Never destroyed: another
    product's points, ours that another repository's latest backup is based on (issue point 3), and (issue 12
    point 7) ours holding an RCT id that a point which stays also holds. Windows gives no guarantee either way
    (docs/lab_wmi.md, RCT ids): a host may give an unchanged disk the same id for every new reference point, and
    destroying one holder may then invalidate the id for all of them, so the next incremental would fall back to
    full. Such a point is destroyed by a later run, once no point that stays shares its ids. With
    ``protect_kept`` False only the ids of points that must always stay (another product's, another repository's)
    protect: that is the cleanup ahead of a conversion (``convert_to_reference_point``), where ``reissued`` are
    the ids that conversion is about to issue again (their disks did not change since): those held by another
    repository's point of ours do not protect either (another product's always do).
    """
    new_id = (new_point or {}).get("id")
    ours = [r for r in references if _ours_rct(r) and r.get("id") != new_id]      # oldest first
    kept_old = ours[max(0, len(ours) - keep_newest):] if keep_newest > 0 else []
    lasting = [r for r in references if not _ours_rct(r)] + [r for r in ours if not removable_reference(r, repository_id)]
    guarded = lasting + ((kept_old + ([new_point] if new_point else [])) if protect_kept else [])
    destroy, kept = [], []
    for old in ours:
        if any(old is k for k in kept_old):
            continue
        if not removable_reference(old, repository_id):
            kept.append({"id": old["id"], "reason": "the latest backup in repository %s is based on it"
                         % ", ".join(r for r in old.get("repositories") or [] if r != repository_id)})
            continue
        sharing = [g for g in guarded if g is not old and _blocking(g, old, reissued)]
        if sharing:
            kept.append({"id": old["id"], "reason": "it holds RCT id %s, which reference point %s that is kept holds too; "
                         "destroying it could invalidate that id (a host may give an unchanged disk the same id again), "
                         "so a later run destroys it once no kept point shares its ids"
                         % (", ".join(sorted(_rct_ids(sharing[0]) & _rct_ids(old))), sharing[0]["id"])})
            continue
        destroy.append(old)
    return destroy, kept


def convert_to_reference_point(session, vm_id, point_id, keep_reference_points=1, check_mode=False, repository_id=None):
    """Convert a completed RCT recovery point into a reference point and keep only the newest N of ours per VM.

    ``repository_id`` (the repository the backup was written to) is recorded in the point's ownership marker,
    so that a backup into another repository never destroys the point this one builds on. Idempotent: a point
    that is already a reference point (same id) is left as it is; retention still applies. Returns
    {reference_point, removed_reference_points, kept_reference_points, changed}.

    Issue 12 point 7 (an idle disk): after converting, an older point holding an RCT id that a kept point holds
    too is not destroyed (``plan_reference_retention``). So that such points cannot pile up while a disk stays
    idle, the points that are surplus even before the new one counts (the newest ``keep_reference_points`` of
    ours stay) are destroyed BEFORE converting: when they share an id with a newer point of ours, destroying
    them may invalidate it, but the conversion then issues the disk's id anew for the new point (the one the
    next incremental uses), and this run has read its changes already. The older of two points that share ids
    is the one destroyed, so at most one extra point per shared id is left. If the conversion then fails, the
    next backup is full, as it would be anyway (its parent has no reference point). A duplicate of another
    repository's point goes first only when the conversion issues that id again (the disk did not change since
    it, ``_reissued_ids``); then that repository's next backup stays incremental too, and two repositories
    taking turns on an idle VM keep one point each. Another product's ids are never put at risk: a point of
    ours sharing one stays until that product's point goes.
    """
    if int(keep_reference_points) < 1:
        raise HyperVBackupError("keep_reference_points must be 1 or more (got %s)" % keep_reference_points,
                                hint="The newest reference point is what the next incremental starts from.")
    keep = int(keep_reference_points)
    host = _host_name(session)
    points = [p for p in session.run("get_recovery_points", vm_id=vm_id) if p.get("id") == point_id]
    references = session.run("get_reference_points", vm_id=vm_id)
    changed = False
    reference = None
    removed, kept = [], []
    if points:
        if points[0].get("method") != "rct":
            raise HostOperationError(host, "convert_to_reference_point", "unsupported",
                                     "recovery point %s is a %s point; only RCT recovery points become reference points"
                                     % (point_id, points[0].get("method")), hint="Remove VSS points with state: absent.")
        changed = True
        if check_mode:
            # the point is not converted: report what retention would do once it is (its ids are not known yet)
            destroy, kept = plan_reference_retention(references, keep - 1, repository_id)
            return {"reference_point": None, "removed_reference_points": [r["id"] for r in destroy],
                    "kept_reference_points": kept, "changed": True}
        early, _kept = plan_reference_retention(references, keep, repository_id, protect_kept=False,
                                                reissued=_reissued_ids(session, points[0], references, repository_id))
        for old in early:
            session.run("remove_reference_point", vm_id=vm_id, id=old["id"])
            removed.append(old["id"])
        reference = session.run("convert_to_reference_point", vm_id=vm_id, id=point_id,
                                **_optional("convert_to_reference_point", repository_id=repository_id))
        references = session.run("get_reference_points", vm_id=vm_id)
    else:
        matching = [r for r in references if r.get("id") == point_id]
        if not matching:
            raise HostOperationError(host, "convert_to_reference_point", "not_found",
                                     "VM %s has neither a recovery point nor a reference point with id %s" % (vm_id, point_id),
                                     hint="Pass the id returned by hyperv_recovery_point state: present.")
        reference = matching[0]
    listed = [r for r in references if r.get("id") == reference.get("id")]
    destroy, kept = plan_reference_retention(references, keep - 1, repository_id, new_point=listed[0] if listed else reference)
    for old in destroy:
        if not check_mode:
            session.run("remove_reference_point", vm_id=vm_id, id=old["id"])
        removed.append(old["id"])
    return {"reference_point": reference, "removed_reference_points": removed, "kept_reference_points": kept,
            "changed": changed or bool(removed)}


# --- change lists ------------------------------------------------------------------------------------

class ChangeList:
    """The changed ranges of one frozen disk since an RCT id, or why they cannot be trusted."""

    def __init__(self, valid, ranges=None, reason=None, windows_error=None, changed_bytes=0):
        self.valid = valid
        self.ranges = ranges or []
        self.reason = reason
        self.windows_error = windows_error
        self.changed_bytes = changed_bytes

    def to_dict(self):
        return {"changes_valid": self.valid, "ranges": [list(r) for r in self.ranges], "reason": self.reason,
                "windows_error": self.windows_error, "changed_bytes": self.changed_bytes}


def merge_ranges(ranges):
    """Sort (offset, length) ranges and merge overlapping or touching ones."""
    merged = []
    for offset, length in sorted((int(o), int(n)) for o, n in ranges if int(n) > 0):
        if merged and offset <= merged[-1][0] + merged[-1][1]:
            end = max(merged[-1][0] + merged[-1][1], offset + length)
            merged[-1] = (merged[-1][0], end - merged[-1][0])
        else:
            merged.append((offset, length))
    return merged


# Pages of GetVirtualDiskChanges the host answers in one round trip (get_disk_changes max_pages): a 64 TiB disk in
# the lab's 1 GiB pages takes 64 round trips instead of 65,536 (issue 14). Not more: a round trip must end well
# within the transport's read timeout even on a host that takes tens of milliseconds per call (UNCONFIRMED).
PAGES_PER_ROUND_TRIP = 1024


def collect_changes(session, path, limit_id, virtual_size, page_bytes=None):
    """Page GetVirtualDiskChanges over the whole disk and return a merged, sorted ChangeList.

    The host may process less than asked, so the loop advances by processed_byte_length until the
    virtual size; each round trip lets the host answer up to PAGES_PER_ROUND_TRIP pages. An unusable limit
    id (category 'change_tracking'), a page that processes nothing or a range outside the disk gives
    ``valid=False`` with the reason: the caller falls back to a full backup instead of trusting a wrong list.
    """
    if not limit_id:
        return ChangeList(False, reason="no change-tracking id of a previous reference point for %s; a full backup is needed" % path)
    virtual_size = int(virtual_size)
    offset = 0
    found = []
    while offset < virtual_size:
        length = virtual_size - offset if page_bytes is None else min(int(page_bytes), virtual_size - offset)
        try:
            page = session.run("get_disk_changes", path=path, limit_id=limit_id, byte_offset=offset, byte_length=length,
                               max_pages=PAGES_PER_ROUND_TRIP)
        except HostOperationError as err:
            if err.category in ("change_tracking", "not_found"):
                return ChangeList(False, reason="change tracking id %s cannot be used for %s: %s" % (limit_id, path, err.message),
                                  windows_error=err.windows_error)
            raise
        processed = int(page.get("processed_byte_length") or 0)
        offsets, lengths = page.get("changed_byte_offsets") or [], page.get("changed_byte_lengths") or []
        if processed <= 0:
            return ChangeList(False, reason="the host processed 0 bytes of %s at offset %d; stopping instead of looping "
                                            "forever (a full backup is needed)" % (path, offset))
        if len(offsets) != len(lengths):
            return ChangeList(False, reason="the host returned %d offsets but %d lengths for %s at offset %d"
                                            % (len(offsets), len(lengths), path, offset))
        for start, size in zip(offsets, lengths):
            start, size = int(start), int(size)
            if start < offset or size < 0 or start + size > min(offset + processed, virtual_size):
                return ChangeList(False, reason="the host reported range (%d, %d) outside the processed window "
                                                "[%d, %d) of %s" % (start, size, offset, offset + processed, path))
            found.append((start, size))
        offset += processed
    ranges = merge_ranges(found)
    return ChangeList(True, ranges=ranges, changed_bytes=sum(n for _o, n in ranges))


def changes_for_recovery_point(session, recovery_point, reference_rct_ids=None, page_bytes=None):
    """ChangeList per disk of a recovery point, against ``reference_rct_ids`` ({disk_id: rct_id}) or,
    when not given, the previous_rct_id the point carries per disk. Returns {disk_id: ChangeList}."""
    out = {}
    for disk in recovery_point["disks"]:
        limit_id = (reference_rct_ids or {}).get(disk["disk_id"]) if reference_rct_ids is not None else disk.get("previous_rct_id")
        out[disk["disk_id"]] = collect_changes(session, disk["path"], limit_id, disk["virtual_size"], page_bytes=page_bytes)
    return out


def changes_since_reference(session, vm_id, point_id, reference_point_id=None, page_bytes=None):
    """The change list of every disk of recovery point ``point_id`` since a reference point (the newest
    when ``reference_point_id`` is None). Returns {recovery_point_id, reference_point_id, changes_valid,
    disks: [{disk_id, path, virtual_size, changes_valid, reason, windows_error, ranges, changed_bytes}]}."""
    host = _host_name(session)
    points = [p for p in session.run("get_recovery_points", vm_id=vm_id) if p.get("id") == point_id]
    if not points:
        raise HostOperationError(host, "get_recovery_points", "not_found", "VM %s has no recovery point %s" % (vm_id, point_id),
                                 hint="Create one with hyperv_recovery_point state: present and pass its id.")
    references = session.run("get_reference_points", vm_id=vm_id)
    if reference_point_id:
        references = [r for r in references if r.get("id") == reference_point_id]
    reference = references[-1] if references else None
    rct_ids = (reference or {}).get("rct_ids") or {}
    disks = []
    for disk in points[0].get("disks") or []:
        change_list = collect_changes(session, disk["path"], rct_ids.get(disk.get("disk_id")), disk["virtual_size"], page_bytes)
        if reference is None:
            change_list.reason = ("VM %s has no reference point%s; a full backup is needed"
                                  % (vm_id, " with id %s" % reference_point_id if reference_point_id else ""))
        entry = {"disk_id": disk.get("disk_id"), "path": disk["path"], "virtual_size": int(disk["virtual_size"])}
        entry.update(change_list.to_dict())
        disks.append(entry)
    return {"recovery_point_id": point_id, "reference_point_id": (reference or {}).get("id"),
            "changes_valid": bool(disks) and all(d["changes_valid"] for d in disks), "disks": disks}
