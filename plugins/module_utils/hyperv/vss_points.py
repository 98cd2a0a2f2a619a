# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host-VSS recovery points (method ``vss``, Windows Server 2008 R2 .. 2025): diskshadow with the Hyper-V writer.

A recovery point is one persistent shadow copy set of the volumes that hold the VM's files, exposed at
mount folders under ``<ProgramData>\\hyperv.backup\\vss\\<work id>\\m<n>``; ``marker.json`` there records
the set, the mounts, the tag and the frozen disks, so listing and removal need no diskshadow output.
Id: ``vss:<work id>:<shadow set id>``. The diskshadow script (diskshadow command pages of Windows Server):

    set context persistent              shadow copies survive diskshadow's exit (not 'nowriters')
    set metadata <work>\\backup.cab
    set verbose on
    begin backup                        a full backup session: the writers get BackupComplete at 'end backup'
    writer verify {66841cd4-6ded-4f4b-8f17-fd23f8ddc3de}   fail unless the Hyper-V VSS writer takes part
    add volume <X: | mount folder\\> alias hvb<n>
    create
    expose %hvb<n>% <mount folder>
    end backup

The set is found afterwards through ``Win32_ShadowCopy`` (ExposedName = our mount folder, SetID), never by
reading diskshadow's localised text. Every value written into the script is validated right before: GUIDs
in canonical form, paths absolute (``X:\\``) without quote, ``%`` or line break (quoted when they hold a space:
UNCONFIRMED whether diskshadow accepts quoted paths; the command pages only show paths without spaces).

Issue point 8: VSS creates one shadow copy set per host at a time (StartSnapshotSet .. DoSnapshotSet, else
VSS_E_SNAPSHOT_SET_IN_PROGRESS 0x80042316). Creation is serialised per host with ``locks.py``'s
``vss-snapshot-set.lock`` (held only while creating) and retried with backoff when another product creates a
set at the same moment; many sets may exist at once, so copies overlap.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import time
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import NAMESPACE_CIMV2, NAMESPACE_V1, BridgeError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import disks as vm_disks
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import locks
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.points_common import (
    REALIZED_TYPE, dmtf_to_iso, fail, find_vm, namespace, os_build, read_json, state_root, win_join, write_json)

ID_PREFIX = "vss:"
TAG_PREFIX = "hyperv.backup:"
HYPERV_WRITER_ID = "66841cd4-6ded-4f4b-8f17-fd23f8ddc3de"
VSS_E_SNAPSHOT_SET_IN_PROGRESS = 0x80042316
SNAPSHOT_SET_IN_PROGRESS = ("80042316", "VSS_E_SNAPSHOT_SET_IN_PROGRESS")
# HRESULT_FROM_WIN32 of the service control manager's refusals when COM demand-starts vss: 1053 no response,
# 1058 disabled, 1060 does not exist (language-neutral, unlike diskshadow's text).
SERVICE_HRESULTS = ("0x8007041D", "0x80070422", "0x80070424")
MAX_ATTEMPTS = 6                      # diskshadow runs when another requestor holds the host's creation slot
RETRY_FIRST_SECONDS = 5.0
RETRY_MAX_SECONDS = 60.0
SET_LOCK_WAIT_SECONDS = 30 * 60       # our own runs queue for the host's creation slot this long
SET_LOCK_POLL_SECONDS = 2.0
SLEEP = time.sleep                    # tests replace these two
CLOCK = time.monotonic
OPERATION = "create_recovery_point"
_CSV = re.compile(r"^([A-Za-z]:\\ClusterStorage\\[^\\]+\\)", re.IGNORECASE)
_SCRIPT_PATH = re.compile(r"^[A-Za-z]:(\\|$)")


def vss_root(bridge):
    return win_join(state_root(bridge), "vss")


def canonical_guid(value, what, operation=OPERATION, bridge=None):
    """The GUID in canonical lowercase form (hex digits and dashes only), so it can hold no script syntax."""
    try:
        return str(uuid.UUID(str(value).strip().strip("{}")))
    except (ValueError, AttributeError, TypeError):
        raise HostOperationError(getattr(bridge, "host", None) or "host", operation, "not_found",
                                 "%s is not a GUID: %r" % (what, value), hint="Pass the id as returned by get_vms / get_recovery_points.")


def script_path(bridge, value, what):
    """A path for one diskshadow line: absolute, no quote / % / line break; quoted when it holds a space."""
    text = str(value or "")
    if not _SCRIPT_PATH.match(text) or re.search(r'["%\r\n]', text):
        fail(bridge, OPERATION, "unsupported", "%s cannot be written into a diskshadow script: %r" % (what, text),
             hint="Keep the VM files on local volumes or CSVs whose paths have no quote, % or line break.")
    return '"%s"' % text if " " in text else text


def volume_of(path):
    """The volume holding a path: a Cluster Shared Volume folder (C:\\ClusterStorage\\VolumeN\\) or the drive root."""
    match = _CSV.match(str(path))
    return match.group(1) if match else str(path)[:2].upper() + "\\"


def create_script(bridge, vm_id, mounts, cab_path):
    """The diskshadow text of one recovery point (see the module docstring); ``mounts``: [{alias, volume, mount}]."""
    guid = canonical_guid(vm_id, "VM id", bridge=bridge)
    if not mounts:
        fail(bridge, OPERATION, "failed", "a diskshadow script needs at least one volume", hint="Report this as a bug.")
    lines = ["# hyperv.backup recovery point of VM %s" % guid, "set context persistent",
             "set metadata %s" % script_path(bridge, cab_path, "metadata file"), "set verbose on", "begin backup",
             "writer verify {%s}" % HYPERV_WRITER_ID]
    for mount in mounts:
        volume = mount["volume"]
        text = volume[:2] if re.match(r"^[A-Za-z]:\\$", volume) else volume   # drive roots as X:, like the examples
        lines.append("add volume %s alias %s" % (script_path(bridge, text, "volume"), mount["alias"]))
    lines.append("create")
    for mount in mounts:
        lines.append("expose %%%s%% %s" % (mount["alias"], script_path(bridge, mount["mount"], "mount folder")))
    lines.append("end backup")
    return "\r\n".join(lines) + "\r\n"


def delete_script(bridge, set_id, mounts):
    if set_id:
        return "delete shadows set {%s}\r\n" % canonical_guid(set_id, "shadow copy set id", bridge=bridge)
    return "".join("delete shadows exposed %s\r\n" % script_path(bridge, m["mount"], "mount folder") for m in mounts or [])


def shadow_copies(bridge):
    """Win32_ShadowCopy: ID, SetID, ExposedName, DeviceObject of every shadow copy on the host."""
    try:
        return bridge.query(NAMESPACE_CIMV2, "Win32_ShadowCopy", properties=["ID", "SetID", "ExposedName", "DeviceObject"])
    except BridgeError:
        return []


def _bare(guid_text):
    return str(guid_text or "").strip().strip("{}").lower()


def _same_folder(a, b):
    return str(a or "").rstrip("\\").lower() == str(b or "").rstrip("\\").lower()


def shadow_path(path, mounts):
    """A host path -> the same file under the exposed shadow copy of its volume (paths off the set stay as they are)."""
    text = str(path or "")
    for mount in sorted(mounts, key=lambda m: len(m["volume"]), reverse=True):
        if text.lower().startswith(mount["volume"].lower()):
            return win_join(mount["mount"], text[len(mount["volume"]):])
    return text


# --- the VM's files --------------------------------------------------------------------------------

def _current_settings(bridge, ns, vm):
    if ns == NAMESPACE_V1:
        rows = bridge.query(ns, "Msvm_VirtualSystemSettingData", where={"SystemName": vm.get("Name")})
        return ([r for r in rows if int(r.get("SettingType") or 3) == 3] or rows or [None])[0]
    rows = bridge.associators(ns, vm["__PATH"], "Msvm_SettingsDefineState", "Msvm_VirtualSystemSettingData")
    return ([r for r in rows if r.get("VirtualSystemType") == REALIZED_TYPE] or rows or [None])[0]


def _configuration_paths(bridge, ns, vm, settings):
    """The configuration file the VM's volumes must include (v2: ConfigurationDataRoot\\ConfigurationFile;
    v1: <ExternalDataRoot>\\Virtual Machines\\<GUID>.xml, the layout Hyper-V Manager creates: UNCONFIRMED by a doc)."""
    if ns == NAMESPACE_V1:
        rows = bridge.query(ns, "Msvm_VirtualSystemGlobalSettingData", where={"SystemName": vm.get("Name")})
        root = rows[0].get("ExternalDataRoot") if rows else None
        return [win_join(root, "Virtual Machines", str(vm.get("Name")).upper() + ".xml")] if root else []
    name = (settings or {}).get("ConfigurationFile")
    if not name:
        return []
    if re.match(r"^[A-Za-z]:\\", str(name)):
        return [name]
    return [win_join(settings.get("ConfigurationDataRoot"), name)]


def _guest_state(bridge, ns, vm, parts):
    """How the Hyper-V writer will take the VM: ('offline'|'child_vm_snapshot'|'saved_state'|'unknown', problem)."""
    if int(vm.get("EnabledState") or 0) != 2:
        return "offline", None
    if ns == NAMESPACE_V1:
        return "unknown", None            # v1 has no Msvm_VssComponent in the schema: judged from the writer's result
    rows = bridge.query(ns, "Msvm_VssComponent", where={"SystemName": vm.get("Name")})
    status = [int(s) for s in (rows[0].get("OperationalStatus") or [])] if rows else []
    if not status:
        return "saved_state", "the backup integration service (VSS) does not answer"
    if status[0] != 2:
        return "saved_state", "the backup integration service (VSS) reports status %d" % status[0]
    if os_build(bridge) == 9600 and vm_disks.count_scsi_controllers(parts, ns) == 0:
        return "saved_state", "the VM has no SCSI controller, so Windows Server 2012 R2 cannot back it up online (event 10103)"
    return "child_vm_snapshot", None


# --- creating ------------------------------------------------------------------------------------

def _in_progress(run):
    """VSS_E_SNAPSHOT_SET_IN_PROGRESS: diskshadow's exit code is the failing HRESULT (UNCONFIRMED: no page documents
    diskshadow's exit codes; the code or its name in the output is accepted, both are language-neutral)."""
    code = run.get("exit_code")
    if isinstance(code, int) and (code & 0xFFFFFFFF) == VSS_E_SNAPSHOT_SET_IN_PROGRESS:
        return True
    text = str(run.get("output") or "").upper()
    return any(word.upper() in text for word in SNAPSHOT_SET_IN_PROGRESS)


def _find_set(bridge, mounts):
    """Fill shadow_id / set_id of each mount from Win32_ShadowCopy (ExposedName = our mount folder)."""
    copies = shadow_copies(bridge)
    for mount in mounts:
        hit = [c for c in copies if _same_folder(c.get("ExposedName"), mount["mount"])]
        mount["shadow_id"] = _bare(hit[0].get("ID")) if hit else None
        mount["set_id"] = _bare(hit[0].get("SetID")) if hit else None
        mount["device_object"] = hit[0].get("DeviceObject") if hit else None
    return sorted(set(m["set_id"] for m in mounts if m["set_id"]))


def _hresult_of(run):
    """diskshadow's exit code as the HRESULT text ('0x800423F3') when it is one (negative / high bit set), else None."""
    code = run.get("exit_code")
    if isinstance(code, int) and (code & 0x80000000):
        return "0x%08X" % (code & 0xFFFFFFFF)
    return None


def _holders_text(bridge, volumes, own_work_id):
    """Which of our host-VSS points hold shadow copies of these volumes (e.g. a 2008 R2 CSV that is in backup for
    another VM): ' (our recovery point of VM 'a' holds C:\\ClusterStorage\\Volume1\\)', or '' when none does."""
    try:
        found = markers(bridge)
    except (BridgeError, HostOperationError):
        return ""
    held = []
    for marker in found:
        if marker.get("work_id") == own_work_id:
            continue
        for mount in marker.get("mounts") or []:
            volume = [v for v in volumes if _same_folder(mount.get("volume"), v)]
            if volume:
                held.append("our recovery point of VM '%s' holds %s" % (marker.get("vm_name"), volume[0]))
    return " (%s)" % "; ".join(sorted(set(held))) if held else ""


def _run_diskshadow(bridge, text):
    try:
        return bridge.diskshadow(text)
    except BridgeError as err:
        return {"exit_code": None, "output": "diskshadow could not run: %s" % err}


def _create_set(bridge, work_id, vm_id, mounts, cab):
    """Run the create script under the host's set lock, retrying while another requestor creates a set."""
    text = create_script(bridge, vm_id, mounts, cab)
    delay = RETRY_FIRST_SECONDS
    run = {}
    for attempt in range(1, MAX_ATTEMPTS + 1):
        lease = locks.Lease(bridge, locks.VSS_SET_LOCK_NAME, work_id, locks.VSS_SET_LOCK_SECONDS, operation=OPERATION)
        lease.acquire(wait_seconds=SET_LOCK_WAIT_SECONDS, poll_seconds=SET_LOCK_POLL_SECONDS, sleep=SLEEP, clock=CLOCK)
        try:
            run = _run_diskshadow(bridge, text)
            set_ids = _find_set(bridge, mounts)
        finally:
            lease.release()
        if set_ids or not _in_progress(run) or attempt == MAX_ATTEMPTS:
            return run, set_ids
        SLEEP(delay)          # another product is creating a set: VSS says wait and try again
        delay = min(delay * 2, RETRY_MAX_SECONDS)
    return run, []


def _prepare_mount(bridge, mount):
    # expose needs an existing empty folder; the bridge creates parents when it writes a file, so a
    # placeholder is written inside and removed again.
    placeholder = win_join(mount, ".hyperv-backup-mount")
    bridge.write_file(placeholder, b"")
    bridge.remove_file(placeholder)


def create(bridge, vm_id, consistency, tag):
    """A host-VSS recovery point of one VM (RECOVERY_POINT_SHAPE + consistency_fallback)."""
    ns = namespace(bridge, OPERATION)
    vm = find_vm(bridge, ns, vm_id, OPERATION)
    guid = canonical_guid(vm.get("Name"), "VM id", bridge=bridge)
    settings = _current_settings(bridge, ns, vm)
    parts = vm_disks.settings_components(bridge, ns, settings, OPERATION) if settings else []
    mode, problem = _guest_state(bridge, ns, vm, parts)
    if consistency == "application" and problem:
        fail(bridge, OPERATION, "integration", "cannot take an application-consistent VSS backup of VM %s: %s"
             % (vm.get("ElementName"), problem),
             hint="Enable the backup (VSS) integration service and run the integration components in the guest, "
                  "or ask for consistency application_or_crash.")
    disks = [d for d in vm_disks.disks_of(bridge, ns, parts, OPERATION) if d.get("path")]
    config_files = _configuration_paths(bridge, ns, vm, settings)
    files = list(config_files)
    for disk in disks:
        files.extend([disk["path"]] + list(disk.get("parent_chain") or []))
    volumes = sorted(set(volume_of(f) for f in files if f))
    if not volumes:
        fail(bridge, OPERATION, "unsupported", "VM %s has no file-backed disk or configuration to shadow-copy" % vm.get("ElementName"),
             hint="Pass-through disks are not backed up by the Hyper-V writer.")
    work_id = str(uuid.uuid4())
    folder = win_join(vss_root(bridge), work_id)
    mounts = []
    for index, volume in enumerate(volumes):
        mounts.append({"alias": "hvb%d" % index, "volume": volume, "mount": win_join(folder, "m%d" % index),
                       "shadow_id": None, "set_id": None, "device_object": None})
    marker = {"work_id": work_id, "set_id": None, "vm_id": guid, "vm_name": vm.get("ElementName"), "tag": tag,
              "created": dmtf_to_iso(bridge.host_environment().get("now")), "consistency": None, "vss_backup_type": mode,
              "mounts": mounts, "disks": [], "configuration_files": [], "live_configuration_files": config_files}
    marker_path = win_join(folder, "marker.json")
    # The marker goes first: a run that dies mid-way leaves a point get_recovery_points lists and remove can delete.
    write_json(bridge, marker_path, marker)
    for mount in mounts:
        _prepare_mount(bridge, mount["mount"])
    run, set_ids = _create_set(bridge, work_id, guid, mounts, win_join(folder, "backup.cab"))
    if len(set_ids) != 1 or any(not m["shadow_id"] for m in mounts):
        tail = str(run.get("output") or "")[-1500:]
        try:
            _remove_work(bridge, marker, folder, set_ids[0] if set_ids else None)
        except HostOperationError as err:
            tail += " (cleanup failed: %s)" % err.message
        busy = _in_progress(run)
        hresult = _hresult_of(run)
        if hresult in SERVICE_HRESULTS:
            # COM could not demand-start the Volume Shadow Copy service (disabled, hanging, missing): a service fault.
            fail(bridge, OPERATION, "service", "diskshadow could not start the Volume Shadow Copy service (vss) for VM %s "
                 "(exit %s): %s" % (vm.get("ElementName"), run.get("exit_code"), tail),
                 hint="Set the vss service's start type to Manual or Automatic and check it starts (Start-Service vss); "
                      "see the System event log.", windows_error=hresult)
        fail(bridge, OPERATION, "busy" if busy else "recovery_point",
             "diskshadow did not create the shadow copies of VM %s (exit %s)%s: %s"
             % (vm.get("ElementName"), run.get("exit_code"), _holders_text(bridge, volumes, work_id) if busy else "", tail),
             hint="Check vssadmin list writers (Microsoft Hyper-V VSS Writer state) and the Application event log on the host.",
             windows_error=hresult)
    marker["set_id"] = set_ids[0]
    fallback = False
    achieved = "application"
    if mode not in ("offline", "child_vm_snapshot"):
        # The writer put the VM in saved state (or, on 2008 R2, could not be asked): the disks are what they were
        # at that instant without the guest flushing them, i.e. crash-consistent. 'unknown' (v1) counts as
        # application-consistent unless the guest is known not to answer: VSS in the guest is the writer's default.
        if mode != "unknown":
            if consistency == "application":
                _remove_work(bridge, marker, folder, set_ids[0])
                fail(bridge, OPERATION, "integration", "the Hyper-V writer backed up VM %s without the guest (%s); the shadow "
                     "copy was deleted" % (vm.get("ElementName"), mode),
                     hint="Check the backup integration service in the guest, or ask for consistency application_or_crash.")
            achieved, fallback = "crash", True
    frozen = []
    for disk in disks:
        entry = dict(disk)
        entry["live_path"] = disk["path"]
        entry["path"] = entry["windows_path"] = shadow_path(disk["path"], mounts)
        entry["parent_chain"] = [shadow_path(p, mounts) for p in disk.get("parent_chain") or []]
        frozen.append(entry)
    marker.update(consistency=achieved, disks=frozen, configuration_files=[shadow_path(p, mounts) for p in config_files])
    write_json(bridge, marker_path, marker)
    point = point_of(marker, present=True)
    point["consistency_fallback"] = fallback
    return point


# --- listing, describing, removing -----------------------------------------------------------------

def point_of(marker, present=None):
    """RECOVERY_POINT_SHAPE from a marker."""
    tag = str(marker.get("tag") or "")
    return {"id": "%s%s:%s" % (ID_PREFIX, marker.get("work_id"), marker.get("set_id") or ""), "vm_id": marker.get("vm_id"),
            "vm_name": marker.get("vm_name"), "name": tag, "method": "vss", "consistency": marker.get("consistency"),
            "created": marker.get("created"), "ours": tag.startswith(TAG_PREFIX), "vss_backup_type": marker.get("vss_backup_type"),
            "shadow_set_id": marker.get("set_id"), "shadow_present": present, "disks": list(marker.get("disks") or []),
            "configuration": {"files": list(marker.get("configuration_files") or [])}}


def markers(bridge, vm_id=None):
    """Every VSS marker on the host (of one VM when ``vm_id`` is given)."""
    root = vss_root(bridge)
    wanted = _bare(vm_id) if vm_id else None
    out = []
    for entry in bridge.list_directory(root).get("entries") or []:
        if not entry.get("directory"):
            continue
        try:
            uuid.UUID(entry["name"])
        except ValueError:
            continue          # not one of our work folders
        marker = read_json(bridge, win_join(root, entry["name"], "marker.json"))
        if marker and (wanted is None or _bare(marker.get("vm_id")) == wanted):
            out.append(marker)
    return sorted(out, key=lambda m: (m.get("created") or "", m.get("work_id") or ""))


def list_points(bridge, vm_id):
    found = markers(bridge, vm_id)
    if not found:
        return []
    live_sets = set(_bare(c.get("SetID")) for c in shadow_copies(bridge))
    return [point_of(m, present=bool(m.get("set_id")) and _bare(m["set_id"]) in live_sets) for m in found]


def checkpoint_entries(bridge, vm_id):
    """A VM's VSS points as VM_SHAPE ``checkpoints`` entries ({id, name, type 'Recovery', created, ours, method}), so
    that the stray-point check and the 2008 R2 serialization check, which read a VM's checkpoints, count them too
    (issue point 8: VSS points are marker files, not checkpoints)."""
    return [{"id": p["id"], "name": p["name"], "type": "Recovery", "created": p["created"], "ours": p["ours"], "method": "vss"}
            for p in (point_of(m) for m in markers(bridge, vm_id))]


def parse_id(bridge, point_id, operation):
    parts = str(point_id).split(":")
    if len(parts) != 3 or parts[0] + ":" != ID_PREFIX:
        fail(bridge, operation, "not_found", "not a VSS recovery point id: %r" % (point_id,), hint="Use an id from get_recovery_points.")
    work_id = canonical_guid(parts[1], "recovery point work id", operation, bridge)
    set_id = canonical_guid(parts[2], "shadow copy set id", operation, bridge) if parts[2] else None
    return work_id, set_id


def describe(bridge, point_id):
    """The marker of a VSS point (for get_vm_configuration, issue point 1): mounts [{volume, mount, ...}],
    disks (frozen paths), configuration_files (exposed paths), live_configuration_files, vm_id, tag, created."""
    work_id, _set_id = parse_id(bridge, point_id, "get_vm_configuration")
    marker = read_json(bridge, win_join(vss_root(bridge), work_id, "marker.json"))
    if not marker:
        fail(bridge, "get_vm_configuration", "not_found", "host-VSS recovery point %s does not exist (no marker)" % point_id,
             hint="The configuration is captured while the recovery point exists.")
    marker = dict(marker)
    marker["id"] = point_of(marker)["id"]
    return marker


def _remove_work(bridge, marker, folder, set_id):
    """Delete the shadow set (or each exposed mount), check with Win32_ShadowCopy, then our files."""
    mounts = marker.get("mounts") or []
    if set_id or mounts:
        run = _run_diskshadow(bridge, delete_script(bridge, set_id, mounts))
        copies = shadow_copies(bridge)
        left = [c for c in copies if (set_id and _bare(c.get("SetID")) == _bare(set_id))
                or any(_same_folder(c.get("ExposedName"), m["mount"]) for m in mounts)]
        if left:
            fail(bridge, "remove_recovery_point", "recovery_point", "shadow copy set %s is still there after delete shadows (exit %s): %s"
                 % (set_id, run.get("exit_code"), str(run.get("output") or "")[-800:]),
                 hint="Delete it with diskshadow (delete shadows set <set id>) or vssadmin delete shadows on the host.")
    for name in ("marker.json", "backup.cab"):
        bridge.remove_file(win_join(folder, name))
    for path in [m["mount"] for m in mounts] + [folder]:
        try:
            bridge.remove_file(path)      # empty folders; a bridge that removes files only leaves them (harmless)
        except BridgeError:
            pass


def remove(bridge, vm_id, point_id):
    """Delete a VSS point's shadow set and marker: {removed, run_id}."""
    work_id, set_id = parse_id(bridge, point_id, "remove_recovery_point")
    folder = win_join(vss_root(bridge), work_id)
    marker = read_json(bridge, win_join(folder, "marker.json"))
    if not marker:
        if not set_id or not any(_bare(c.get("SetID")) == set_id for c in shadow_copies(bridge)):
            return {"removed": False, "run_id": None}
        marker = {"mounts": []}
    elif vm_id and _bare(marker.get("vm_id")) != _bare(vm_id):
        fail(bridge, "remove_recovery_point", "not_found", "recovery point %s belongs to VM %s" % (point_id, marker.get("vm_id")),
             hint="Pass the VM id the point was created for.")
    _remove_work(bridge, marker, folder, set_id or marker.get("set_id"))
    tag = str(marker.get("tag") or "")
    return {"removed": True, "run_id": tag[len(TAG_PREFIX):] if tag.startswith(TAG_PREFIX) else None}
