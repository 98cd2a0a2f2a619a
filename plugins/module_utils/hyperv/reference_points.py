# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reference points (Windows Server 2016+): convert_to_reference_point, get_reference_points, remove_reference_point.

hyperv_wmi.md section 3.6/3.7: ``Msvm_VirtualSystemSnapshotService.ConvertToReferencePoint(AffectedSnapshot)``
turns a recovery checkpoint into an ``Msvm_VirtualSystemReferencePoint`` (read from the job's affected
elements) and deletes the checkpoint. The class has no creation time (issue point 2), so the checkpoint's
CreationTime is read BEFORE converting and kept in our ownership marker on the host::

    <ProgramData>\\hyperv.backup\\reference-points\\<vm id>\\<sha1 of InstanceID>.json
    {instance_id, vm_id, created, consistency, run_id, recovery_point_id, repositories: [repository ids]}

``repositories`` lists the repositories whose latest backup of the VM is based on that point (a conversion
for repository R moves R to the new point). Issue point 3: only points with our marker and
ReferencePointType 2 (RCT) may be destroyed, and never one another repository still needs; another
product's points (Replica's log-based type 1, a foreign RCT point) are never touched.
Reference points are listed through ``Msvm_ReferencePointOfVirtualSystem``, which exists only from 2016
(issue point 13): older hosts have none and the association is not queried.
Which points to destroy is decided in ``recovery_points.plan_reference_retention``: two points may hold the same
RCT id (a disk that did not change, issue 12 point 7), and destroying one may invalidate it for both.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import Ref
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import disks as vm_disks
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import locks
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.checkpoints import (
    RCT_MIN_BUILD, recovery_snapshots, run_id_of, stable_disk_id)
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.points_common import (
    REALIZED_TYPE, affected, call, dmtf_to_iso, fail, find_vm, namespace, os_build, read_json, state_root, the_service, win_join,
    write_json)

RP_CLASS = "Msvm_VirtualSystemReferencePoint"
TYPES = {1: "Log", 2: "RCT"}               # ReferencePointType on the class (the CreateReferencePoint parameter uses 0/1)
CONSISTENCY = {1: "application", 2: "crash"}


def marker_path(bridge, vm_id, instance_id):
    digest = hashlib.sha1(str(instance_id).encode("utf-8")).hexdigest()
    return win_join(state_root(bridge), "reference-points", str(vm_id).strip("{}").lower(), digest + ".json")


def read_marker(bridge, vm_id, instance_id):
    marker = read_json(bridge, marker_path(bridge, vm_id, instance_id))
    return marker if marker and marker.get("instance_id") == instance_id else None


def _points(bridge, ns, vm):
    return bridge.associators(ns, vm["__PATH"], "Msvm_ReferencePointOfVirtualSystem", RP_CLASS)


class _DiskIds:
    """SASD InstanceID (VirtualDiskIdentifiers) -> disk id of the VM's disk, resolved once per call."""

    def __init__(self, bridge, ns, vm, operation):
        self.bridge, self.ns, self.vm, self.operation = bridge, ns, vm, operation
        self._by_sasd = None

    def _load(self):
        self._by_sasd = {}
        settings = [s for s in self.bridge.associators(self.ns, self.vm["__PATH"], "Msvm_SettingsDefineState",
                                                       "Msvm_VirtualSystemSettingData")
                    if s.get("VirtualSystemType") in (None, REALIZED_TYPE)]
        for vssd in settings[:1]:
            for part in vm_disks.settings_components(self.bridge, self.ns, vssd, self.operation):
                if part.get("__CLASS") == "Msvm_StorageAllocationSettingData" and vm_disks.medium_path(part):
                    self._by_sasd[str(part.get("InstanceID")).lower()] = part

    def disk_id(self, sasd_instance_id):
        if self._by_sasd is None:
            self._load()
        part = self._by_sasd.get(str(sasd_instance_id).lower())
        if part is None:
            # [hv-plugin] resolves the identifier with a WQL query on the SASD's InstanceID.
            rows = self.bridge.query(self.ns, "Msvm_StorageAllocationSettingData", where={"InstanceID": sasd_instance_id})
            part = rows[0] if rows else None
            self._by_sasd[str(sasd_instance_id).lower()] = part
        if part is None or not vm_disks.medium_path(part):
            return None         # the disk was removed from the VM since the point was made
        disk = vm_disks.describe_file(self.bridge, self.ns, vm_disks.medium_path(part), operation=self.operation)
        return stable_disk_id(self.bridge, self.ns, disk, self.operation)


def describe(bridge, vm_id, point, disk_ids):
    """The reference point shape: {id, vm_id, created, consistency, type, ours, rct_ids, problem, run_id,
    recovery_point_id, repositories}."""
    instance_id = point.get("InstanceID")
    marker = read_marker(bridge, vm_id, instance_id)
    rct = list(point.get("ResilientChangeTrackingIdentifiers") or [])
    sasds = list(point.get("VirtualDiskIdentifiers") or [])
    rct_ids, problem = {}, None
    if len(rct) != len(sasds):
        # [hv-plugin] rejects such a point: which id belongs to which disk cannot be known.
        problem = ("ResilientChangeTrackingIdentifiers has %d entries but VirtualDiskIdentifiers %d; the point cannot be "
                   "used for change tracking" % (len(rct), len(sasds)))
    else:
        for rct_id, sasd in zip(rct, sasds):
            disk_id = disk_ids.disk_id(sasd) if rct_id else None
            if disk_id:
                rct_ids[disk_id] = rct_id
    kind = TYPES.get(int(point.get("ReferencePointType") or 0))
    return {"id": instance_id, "vm_id": str(vm_id).lower(), "created": (marker or {}).get("created"),
            "consistency": CONSISTENCY.get(int(point.get("ConsistencyLevel") or 0)), "type": kind, "ours": marker is not None,
            "rct_ids": rct_ids if kind == "RCT" else {}, "problem": problem, "run_id": (marker or {}).get("run_id"),
            "recovery_point_id": (marker or {}).get("recovery_point_id"), "repositories": list((marker or {}).get("repositories") or [])}


def _sorted(points):
    """Oldest first: ours by the recorded creation time; points without one (others') first, in WMI's order."""
    return [p for _i, p in sorted(enumerate(points), key=lambda item: (item[1]["created"] or "", item[0]))]


def get_reference_points(bridge, vm_id):
    """Reference points of a VM, oldest first (an empty list before Windows Server 2016)."""
    if os_build(bridge, "get_reference_points") < RCT_MIN_BUILD:
        return []
    ns = namespace(bridge, "get_reference_points")
    vm = find_vm(bridge, ns, vm_id, "get_reference_points")
    disk_ids = _DiskIds(bridge, ns, vm, "get_reference_points")
    return _sorted([describe(bridge, vm_id, p, disk_ids) for p in _points(bridge, ns, vm)])


def set_repository(bridge, vm_id, instance_id, repository_id):
    """Record that ``repository_id``'s latest backup of the VM is based on ``instance_id``: add it to that marker
    and take it off every other marker of the VM."""
    if not repository_id:
        return
    folder = win_join(state_root(bridge), "reference-points", str(vm_id).strip("{}").lower())
    for entry in bridge.list_directory(folder).get("entries") or []:
        if entry.get("directory") or not entry["name"].endswith(".json"):
            continue
        path = win_join(folder, entry["name"])
        marker = read_json(bridge, path)
        if not marker:
            continue
        repositories = list(marker.get("repositories") or [])
        wanted = marker.get("instance_id") == instance_id
        if wanted and repository_id not in repositories:
            marker["repositories"] = repositories + [repository_id]
        elif not wanted and repository_id in repositories:
            marker["repositories"] = [r for r in repositories if r != repository_id]
        else:
            continue
        write_json(bridge, path, marker)


def convert_to_reference_point(bridge, vm_id, id, repository_id=None):  # pylint: disable=redefined-builtin
    """Convert our RCT recovery checkpoint into a reference point, record ownership, release the run's lease."""
    op = "convert_to_reference_point"
    if str(id).startswith("vss:"):
        fail(bridge, op, "unsupported", "recovery point %s is a host VSS shadow copy, not an RCT checkpoint" % id,
             hint="Remove it with remove_recovery_point instead.")
    if os_build(bridge, op) < RCT_MIN_BUILD:
        fail(bridge, op, "unsupported", "reference points need Windows Server 2016 or later", hint="Use VSS full backups on this host.")
    ns = namespace(bridge, op)
    vm = find_vm(bridge, ns, vm_id, op)
    found = [s for s in recovery_snapshots(bridge, ns, vm) if s.get("InstanceID") == id]
    if not found:
        fail(bridge, op, "not_found", "VM %s has no recovery checkpoint with id %s" % (vm.get("ElementName"), id),
             hint="List them with get_recovery_points.")
    snapshot = found[0]
    # Point 2: the reference point has no creation time; the checkpoint's is read now, before it is gone.
    created = dmtf_to_iso(snapshot.get("CreationTime"))
    run_id = run_id_of(snapshot.get("ElementName"))
    before = set(p.get("InstanceID") for p in _points(bridge, ns, vm))
    service = the_service(bridge, ns, "Msvm_VirtualSystemSnapshotService", op)
    result = call(bridge, ns, service["__PATH"], "ConvertToReferencePoint", {"AffectedSnapshot": Ref(snapshot["__PATH"])},
                  op, "recovery_point")
    made = affected(result, RP_CLASS)
    if not made:
        resulting = (result.get("out") or {}).get("ResultingReferencePoint")
        listed = _points(bridge, ns, vm)
        made = [p for p in listed if resulting and p.get("__PATH") == resulting] or \
            [p for p in listed if p.get("InstanceID") not in before]
    if not made:
        fail(bridge, op, "recovery_point", "ConvertToReferencePoint succeeded but the new reference point of VM %s cannot be found"
             % vm.get("ElementName"), hint="Check the VM's reference points (Get-VMReferencePoint / WMI) on the host.")
    point = made[0]
    marker = {"instance_id": point.get("InstanceID"), "vm_id": str(vm_id).lower(), "created": created,
              "consistency": CONSISTENCY.get(int(point.get("ConsistencyLevel") or 0)), "run_id": run_id,
              "recovery_point_id": id, "repositories": [repository_id] if repository_id else []}
    write_json(bridge, marker_path(bridge, vm_id, point.get("InstanceID")), marker)
    set_repository(bridge, vm_id, point.get("InstanceID"), repository_id)
    if run_id:
        locks.release_run_leases(bridge, vm_id, run_id)   # the point is handed back: the run's hold on the VM ends
    return describe(bridge, vm_id, point, _DiskIds(bridge, ns, vm, op))


def remove_reference_point(bridge, vm_id, id):  # pylint: disable=redefined-builtin
    """DestroyReferencePoint of one of OUR RCT points; anyone else's is refused (category 'unsupported')."""
    op = "remove_reference_point"
    if os_build(bridge, op) < RCT_MIN_BUILD:
        return {"id": id, "removed": False}
    ns = namespace(bridge, op)
    vm = find_vm(bridge, ns, vm_id, op)
    found = [p for p in _points(bridge, ns, vm) if p.get("InstanceID") == id]
    if not found:
        return {"id": id, "removed": False}
    point = found[0]
    kind = int(point.get("ReferencePointType") or 0)
    marker = read_marker(bridge, vm_id, id)
    if marker is None or kind != 2:
        fail(bridge, op, "unsupported", "reference point %s of VM %s is %s; only RCT reference points this collection created "
             "are destroyed (another product's or Hyper-V Replica's points keep their chains)"
             % (id, vm.get("ElementName"), "a log-based (Replica) point" if kind == 1 else "not ours (no ownership marker)"),
             hint="Remove it with the product that created it.")
    service = the_service(bridge, ns, "Msvm_VirtualSystemReferencePointService", op)
    call(bridge, ns, service["__PATH"], "DestroyReferencePoint", {"AffectedReferencePoint": Ref(point["__PATH"])}, op,
         "recovery_point")
    bridge.remove_file(marker_path(bridge, vm_id, id))
    return {"id": id, "removed": True}


def repositories_needing(reference, repository_id=None):
    """Repositories other than ``repository_id`` whose latest backup is based on ``reference``."""
    return [r for r in reference.get("repositories") or [] if r != repository_id]
