# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Recovery points over the bridge: create_recovery_point, get_recovery_points, remove_recovery_point.

Method 'rct' (Windows Server 2016+), hyperv_wmi.md section 3:
``Msvm_VirtualSystemSnapshotService.CreateSnapshot(AffectedSystem=<VM>, SnapshotSettings=<embedded
Msvm_VirtualSystemSnapshotSettingData ConsistencyLevel 1|2, IgnoreNonSnapshottableDisks>, SnapshotType=32768)``;
the new snapshot is the job's affected Msvm_VirtualSystemSettingData whose VirtualSystemType is
'Microsoft:Hyper-V:Snapshot:Recovery' (issue point 11: never the first associated object, which may be the
VM's own settings). It is tagged ``hyperv.backup:<run id>`` through ``ModifySystemSettings`` with an embedded
copy of the snapshot's settings (point 10: ElementName is read-only on the instance, the Modify method is the
documented way). When a step after creation fails, the snapshot is destroyed before the error is raised.
Method 'vss' and ids 'vss:...' are handled by ``vss_points.py``.

Each operation also keeps the run's lease (``locks.py``): create takes it, remove releases it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import Embedded, Ref
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import disks as vm_disks
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import locks
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import vss_points
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import wmi
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.method_choice import rct_eligibility, release_name
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.points_common import (
    RECOVERY_TYPE, call, affected, dmtf_to_iso, fail, find_vm, namespace, os_build, the_service)

TAG_PREFIX = "hyperv.backup:"
RECOVERY_SNAPSHOT_TYPE = 32768           # CreateSnapshot SnapshotType: recovery (backup) checkpoint
CONSISTENCY_LEVELS = {"application": 1, "crash": 2}
RCT_MIN_BUILD = 14393
CONSISTENCY_CHOICES = ("application", "application_or_crash")


def run_id_of(tag):
    """The run id inside our tag (``hyperv.backup:<run id>``), or None for anyone else's name."""
    text = str(tag or "")
    return text[len(TAG_PREFIX):] if text.startswith(TAG_PREFIX) else None


# --- listing ---------------------------------------------------------------------------------------

def recovery_snapshots(bridge, ns, vm):
    """The VM's recovery snapshots (Msvm_SnapshotOfVirtualSystem, VirtualSystemType ...:Snapshot:Recovery)."""
    return [s for s in bridge.associators(ns, vm["__PATH"], "Msvm_SnapshotOfVirtualSystem", "Msvm_VirtualSystemSettingData")
            if s.get("VirtualSystemType") == RECOVERY_TYPE]


def configuration_files(snapshot):
    root, name = snapshot.get("ConfigurationDataRoot"), snapshot.get("ConfigurationFile")
    if not name:
        return []
    return [name if (":" in str(name) or str(name).startswith("\\\\")) else "%s\\%s" % (str(root or "").rstrip("\\"), name)]


def stable_disk_id(bridge, ns, disk, operation):
    """The id of a VM disk that does not change when checkpoints come and go: the base file's VirtualDiskId.

    A checkpoint's differencing file may report its own VirtualDiskId (the lab's AVHDX files do; whether
    Windows copies the parent's into an AVHDX is UNCONFIRMED), so the frozen disks of recovery points and
    the reference points' rct_ids are both keyed by the base of the chain; with no chain it is the file's own.
    """
    chain = disk.get("parent_chain") or []
    if not chain:
        return disk.get("disk_id")
    ids = disk.get("chain_disk_ids") or []
    if len(ids) == len(chain) + 1:
        return ids[-1]          # describe_file read the base's facts already
    try:
        facts = vm_disks.file_facts(bridge, ns, chain[-1], operation)
    except HostOperationError:
        return disk.get("disk_id")
    return facts.get("disk_id") or wmi.substitute_disk_id(chain[-1])


def frozen_disks(bridge, ns, snapshot, operation):
    """The snapshot's virtual hard disks (its SASDs name the files it froze); pass-through disks are left out.

    Each disk's ``disk_id`` is the stable base id (stable_disk_id); ``file_disk_id`` is the frozen file's own
    VirtualDiskId and ``chain_disk_ids`` the ids of the frozen file and its parents, top to base (from
    GetVirtualHardDiskSettingData per file; before 2012 R2, which reports none, wmi.substitute_disk_id of each
    file). A backup records them so that the next one can tell that the disk was rolled back in the meantime
    (a checkpoint applied, the file restored in place) and must be full (issue 12, point 4)."""
    parts = vm_disks.settings_components(bridge, ns, snapshot, operation)
    out = []
    for disk in vm_disks.disks_of(bridge, ns, parts, operation):
        if disk.get("path"):
            disk["disk_id"] = stable_disk_id(bridge, ns, disk, operation)
            out.append(disk)
    return out


def describe_snapshot(bridge, ns, vm, snapshot, operation, consistency=None, lease=None):
    """RECOVERY_POINT_SHAPE of one recovery snapshot (disks = the files it froze)."""
    name = snapshot.get("ElementName")
    point = {"id": snapshot.get("InstanceID"), "vm_id": str(vm.get("Name") or "").lower(), "vm_name": vm.get("ElementName"),
             "name": name, "method": "rct", "consistency": consistency, "created": dmtf_to_iso(snapshot.get("CreationTime")),
             "ours": run_id_of(name) is not None,
             "disks": frozen_disks(bridge, ns, snapshot, operation),
             "configuration": {"files": configuration_files(snapshot)}}
    if lease is not None:
        point["held_by_live_run"] = bool(lease.get("live") and run_id_of(name) == lease.get("owner"))
    return point


def get_recovery_points(bridge, vm_id):
    """Recovery checkpoints (2016+) and host-VSS points of a VM; ``held_by_live_run`` says whose lease is live."""
    ns = namespace(bridge)
    lease = locks.vm_lease_holder(bridge, vm_id)
    out = []
    if os_build(bridge) >= RCT_MIN_BUILD:
        vm = find_vm(bridge, ns, vm_id, "get_recovery_points")
        for snapshot in recovery_snapshots(bridge, ns, vm):
            out.append(describe_snapshot(bridge, ns, vm, snapshot, "get_recovery_points", lease=lease))
    for point in vss_points.list_points(bridge, vm_id):
        point["held_by_live_run"] = bool(lease.get("live") and run_id_of(point.get("name")) == lease.get("owner"))
        out.append(point)
    return out


# --- creating --------------------------------------------------------------------------------------

def _take_snapshot(bridge, ns, vm, level, before):
    """CreateSnapshot with ConsistencyLevel ``level``; returns the new recovery snapshot (point 11) or None."""
    service = the_service(bridge, ns, "Msvm_VirtualSystemSnapshotService", "create_recovery_point")
    settings = Embedded("Msvm_VirtualSystemSnapshotSettingData", {"ConsistencyLevel": level, "IgnoreNonSnapshottableDisks": True})
    result = call(bridge, ns, service["__PATH"], "CreateSnapshot",
                  {"AffectedSystem": Ref(vm["__PATH"]), "SnapshotSettings": settings, "SnapshotType": RECOVERY_SNAPSHOT_TYPE},
                  "create_recovery_point", "recovery_point", code_categories={32775: "recovery_point"})
    # After a job, the out-parameter is not trusted; the job's affected elements name the snapshot (hyperv_wmi.md 1).
    for candidate in affected(result, "Msvm_VirtualSystemSettingData"):
        if candidate.get("VirtualSystemType") == RECOVERY_TYPE:
            return candidate
    snapshots = recovery_snapshots(bridge, ns, vm)
    resulting = (result.get("out") or {}).get("ResultingSnapshot")
    for snapshot in snapshots:
        if resulting and snapshot.get("__PATH") == resulting:
            return snapshot
    # Last resort: the one recovery snapshot that was not there before (found, so it can be tagged or destroyed).
    new = [s for s in snapshots if s.get("InstanceID") not in before]
    return new[0] if len(new) == 1 else None


def destroy_snapshot(bridge, ns, snapshot, operation):
    service = the_service(bridge, ns, "Msvm_VirtualSystemSnapshotService", operation)
    call(bridge, ns, service["__PATH"], "DestroySnapshot", {"AffectedSnapshot": Ref(snapshot["__PATH"])}, operation, "recovery_point")


def tag_snapshot(bridge, ns, vm, snapshot, tag):
    """Point 10: ElementName through ModifySystemSettings with an embedded copy of the snapshot's settings."""
    vsms = the_service(bridge, ns, "Msvm_VirtualSystemManagementService", "create_recovery_point")
    changed = Embedded("Msvm_VirtualSystemSettingData", {"ElementName": tag}, based_on=snapshot["__PATH"])
    call(bridge, ns, vsms["__PATH"], "ModifySystemSettings", {"SystemSettings": changed}, "create_recovery_point", "recovery_point")
    for again in recovery_snapshots(bridge, ns, vm):
        if again.get("InstanceID") == snapshot.get("InstanceID"):
            if again.get("ElementName") != tag:
                fail(bridge, "create_recovery_point", "recovery_point",
                     "ModifySystemSettings returned success but recovery checkpoint %s is still named %r"
                     % (snapshot.get("InstanceID"), again.get("ElementName")), hint="Check the Hyper-V-VMMS Admin event log.")
            return again
    fail(bridge, "create_recovery_point", "recovery_point", "recovery checkpoint %s disappeared after it was named"
         % snapshot.get("InstanceID"), hint="Check the Hyper-V-VMMS Admin event log.")
    return None


def _check_rct_eligible(bridge, ns, vm):
    """Refuse ('unsupported') a VM that cannot have RCT (method_choice.rct_eligibility: configuration version,
    cluster functional level, VHDX): Windows would take its recovery checkpoint and refuse only the
    ConvertToReferencePoint after the copy, so the run learns it now, with every reason."""
    from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import inventory   # inventory is heavier
    operation = "create_recovery_point"
    cluster, csvs = inventory.cluster_facts(bridge, operation)
    context = {"ns": ns, "components": {}, "csvs": csvs, "cluster": cluster, "reference_points": False}
    described = inventory.describe_vm(bridge, vm, context, operation)
    # pass-through disks are left out of checkpoints (IgnoreNonSnapshottableDisks), so they do not count here either
    described["disks"] = [disk for disk in described["disks"] if disk.get("path")]
    eligibility = rct_eligibility({"os_build": os_build(bridge), "cluster": cluster}, described)
    if not eligibility.eligible:
        fail(bridge, operation, "unsupported", "RCT recovery checkpoints are not possible for VM '%s': %s."
             % (vm.get("ElementName"), "; ".join(eligibility.reasons)), hint="Use method 'vss' for this VM.")


def _raise_integration_problem(bridge, ns, vm, err):
    """An application-consistent CreateSnapshot failed: when the VM's backup integration service is missing,
    disabled or not answering, say so with category 'integration' (what the caller can act on: enable it or
    ask for application_or_crash), keeping Windows' error; otherwise return and let ``err`` stand."""
    if err.category != "recovery_point":
        return
    from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import inventory   # inventory is heavier
    try:
        system = inventory.find_vm(bridge, ns, vm.get("Name"), "create_recovery_point")
        parts = vm_disks.settings_components(bridge, ns, inventory.current_settings(bridge, ns, system, "create_recovery_point"),
                                             "create_recovery_point")
        components = inventory.integration_components(bridge, ns, "create_recovery_point")
        services = inventory.integration_services(components.get(wmi.canonical_guid(vm.get("Name")), {}), parts)
    except HostOperationError:
        return          # cannot tell: the job's own error is the one to report
    vss = [entry for entry in services if entry["name"] == "VSS"]
    if not vss:
        problem = "the backup integration service (VSS) is missing"
    elif not vss[0]["enabled"]:
        problem = "the backup integration service (VSS) is disabled"
    elif vss[0]["operational_status"] != "OK":
        problem = "the backup integration service (VSS) reports %s" % vss[0]["operational_status"]
    else:
        return
    raise HostOperationError(wmi.host_of(bridge), "create_recovery_point", "integration",
                             "cannot take an application-consistent recovery checkpoint of VM %s: %s (%s)"
                             % (vm.get("ElementName"), problem, err.message),
                             hint="Enable the backup (VSS) integration service and run the integration components in the guest, "
                                  "or ask for consistency application_or_crash.", windows_error=err.windows_error)


def _create_rct(bridge, vm_id, consistency, tag):
    ns = namespace(bridge)
    if os_build(bridge) < RCT_MIN_BUILD:
        fail(bridge, "create_recovery_point", "unsupported", "recovery checkpoints need Windows Server 2016 (build %d) or later; "
             "this host is build %d (%s), which is older than that" % (RCT_MIN_BUILD, os_build(bridge), release_name(os_build(bridge))),
             hint="Use method vss on this host.")
    vm = find_vm(bridge, ns, vm_id, "create_recovery_point")
    _check_rct_eligible(bridge, ns, vm)
    before = set(s.get("InstanceID") for s in recovery_snapshots(bridge, ns, vm))
    fallback = False
    try:
        snapshot = _take_snapshot(bridge, ns, vm, CONSISTENCY_LEVELS["application"], before)
    except HostOperationError as err:
        # The guest could not be quiesced (backup integration off or failing): crash-consistent only if allowed.
        if consistency != "application_or_crash" or err.category in ("unsupported", "not_found"):
            _raise_integration_problem(bridge, ns, vm, err)
            raise
        snapshot = _take_snapshot(bridge, ns, vm, CONSISTENCY_LEVELS["crash"], before)
        fallback = True
    if snapshot is None:
        fail(bridge, "create_recovery_point", "recovery_point",
             "CreateSnapshot succeeded but no new recovery checkpoint (VirtualSystemType %s) of VM %s can be found"
             % (RECOVERY_TYPE, vm.get("ElementName")), hint="Check the VM's checkpoints in Hyper-V Manager; remove a leftover one.")
    try:
        snapshot = tag_snapshot(bridge, ns, vm, snapshot, tag)
        point = describe_snapshot(bridge, ns, vm, snapshot, "create_recovery_point",
                                  consistency="crash" if fallback else "application")
    except Exception:
        try:
            destroy_snapshot(bridge, ns, snapshot, "create_recovery_point")
        except HostOperationError:
            pass    # the first error is the one to report; an untagged leftover has no tag, a tagged one is stale-cleaned
        raise
    point["consistency_fallback"] = fallback
    return point


def create_recovery_point(bridge, vm_id, method, consistency, tag, serialization_key=None):
    """Create a recovery point (RECOVERY_POINT_SHAPE + consistency_fallback) and take the run's VM lease.

    ``serialization_key`` (optional, from method_choice.parallel_safety): also hold that queue's lease
    (Windows Server 2008 / 2008 R2 CSV rule) until the point is handed back.
    """
    if consistency not in CONSISTENCY_CHOICES:
        fail(bridge, "create_recovery_point", "failed", "consistency %r is not one of %s" % (consistency, ", ".join(CONSISTENCY_CHOICES)),
             hint="Use application or application_or_crash.")
    if method not in ("rct", "vss"):
        fail(bridge, "create_recovery_point", "unsupported", "recovery point method %r is not rct or vss" % (method,),
             hint="Use method rct or vss.")
    owner = run_id_of(tag) or tag
    lease = locks.take_run_leases(bridge, vm_id, owner, serialization_key)
    try:
        if method == "vss":
            return vss_points.create(bridge, vm_id, consistency, tag)
        return _create_rct(bridge, vm_id, consistency, tag)
    except Exception:
        locks.release_run_leases(bridge, vm_id, lease.owner)
        raise


# --- removing --------------------------------------------------------------------------------------

def _refuse_other_snapshot(bridge, ns, vm, snapshot_id):
    """An id that names one of the VM's other (standard) checkpoints is refused, never destroyed: a backup
    removes only recovery checkpoints; a wrong id must say so rather than look like an already-removed point."""
    others = [s for s in bridge.associators(ns, vm["__PATH"], "Msvm_SnapshotOfVirtualSystem", "Msvm_VirtualSystemSettingData")
              if s.get("InstanceID") == snapshot_id]
    if others:
        fail(bridge, "remove_recovery_point", "recovery_point", "checkpoint %s (%r) of VM %s is a %s checkpoint, not a recovery "
             "checkpoint; backups never remove it" % (snapshot_id, others[0].get("ElementName"), vm.get("ElementName"),
                                                      others[0].get("VirtualSystemType")),
             hint="Pass the id of a recovery point (get_recovery_points); remove standard checkpoints in Hyper-V Manager.")


def remove_recovery_point(bridge, vm_id, id):  # pylint: disable=redefined-builtin
    """DestroySnapshot (or the VSS set and marker); releases the lease of the run the point belonged to."""
    if str(id).startswith(vss_points.ID_PREFIX):
        result = vss_points.remove(bridge, vm_id, id)
        if result.get("run_id"):
            locks.release_run_leases(bridge, vm_id, result["run_id"])
        return {"id": id, "removed": bool(result.get("removed"))}
    ns = namespace(bridge)
    if os_build(bridge) < RCT_MIN_BUILD:
        return {"id": id, "removed": False}
    vm = find_vm(bridge, ns, vm_id, "remove_recovery_point")
    found = [s for s in recovery_snapshots(bridge, ns, vm) if s.get("InstanceID") == id]
    if not found:
        _refuse_other_snapshot(bridge, ns, vm, id)
        return {"id": id, "removed": False}
    destroy_snapshot(bridge, ns, found[0], "remove_recovery_point")
    owner = run_id_of(found[0].get("ElementName"))
    if owner:
        locks.release_run_leases(bridge, vm_id, owner)
    return {"id": id, "removed": True}
