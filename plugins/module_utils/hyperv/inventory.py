# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Inventory operations over the WMI bridge: get_host_info, get_service, start_service, get_vms,
enable_integration_service. Each is ``fn(bridge, **params)`` and returns the shape documented in
``host_operations.OPERATIONS``; the same code serves real hosts (psrp/winrm bridges) and the lab.

Eras: 2008 R2 uses root\\virtualization (v1), 2012 and later root\\virtualization\\v2 (``wmi.namespace``).
Nothing here matches localised text: VMs are the Msvm_ComputerSystem instances whose Name is a GUID,
integration components are known by the GUID at the end of their DeviceID, the VSS writer by its id
and state number (``vss_writer``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import (
    NAMESPACE_CIMV2, NAMESPACE_CLUSTER, BridgeError, Embedded, Ref)
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import disks as disk_info
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import wmi
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.vss_writer import hyperv_vss_writer

TAG_PREFIX = "hyperv.backup:"           # our checkpoints' ElementName prefix (recovery_points.TAG_PREFIX)
VSS_INTEGRATION_GUID = "5ced1297-4598-4915-a5fc-ad21bb4d02a4"
# Integration components: GUID -> (our name, component class, setting class). Only the backup one: the
# schema names the other components' classes (integration_service_ids) but lists neither them nor
# their properties, so they are not read (Heartbeat, Key-Value Pair Exchange, Shutdown, Time
# Synchronization and Guest Service Interface are left out of integration_services). The name is
# Get-VMIntegrationService's English 'VSS', never the host's localised ElementName.
INTEGRATION_COMPONENTS = (
    (VSS_INTEGRATION_GUID, "VSS", "Msvm_VssComponent", "Msvm_VssComponentSettingData"),
)
# Msvm_VssComponent.OperationalStatus[0] (schema): 2 OK, 3 Degraded, 7 Non-Recoverable Error, 12 No Contact,
# 13 Lost Communication. Spelt as VM_SHAPE says ('OK', not PowerShell's 'Ok': issue point 7).
OPERATIONAL_STATUS = {2: "OK", 3: "Degraded", 7: "Error", 12: "NoContact", 13: "LostCommunication"}
# EnabledState: v2 (os-win) 2 running, 3 off, 6 saved, 9 paused, 10 starting, 4 shutting down; v1
# 32768 paused, 32769 saved, 32770 starting, 32773 saving, 32774 stopping, 32776 pausing, 32777 resuming.
STATES_V2 = {2: "Running", 3: "Off", 6: "Saved", 9: "Paused", 10: "Starting", 4: "Stopping", 32773: "Saving",
             32776: "Pausing", 32777: "Resuming"}
STATES_V1 = {2: "Running", 3: "Off", 32768: "Paused", 32769: "Saved", 32770: "Starting", 32773: "Saving",
             32774: "Stopping", 32776: "Pausing", 32777: "Resuming"}
REALIZED = "Microsoft:Hyper-V:System:Realized"
RECOVERY_SNAPSHOT = "Microsoft:Hyper-V:Snapshot:Recovery"
CURRENT_SETTING_TYPE_V1 = 3             # v1 VSSD.SettingType of the current settings (os-win)
REFERENCE_POINTS_MIN_BUILD = 14393      # Msvm_ReferencePointOfVirtualSystem: Windows Server 2016 (issue point 13)
# Functional level of a cluster before ClusterFunctionalLevel existed (2016): its nodes' release, since
# mixed-version clusters came with 2016's rolling upgrade. 6/7/8 as the lab and method_choice use them.
LEGACY_CLUSTER_LEVELS = ((9600, 8), (9200, 7), (7600, 6))
_CSV_PATH = re.compile(r"^([A-Za-z]:\\ClusterStorage\\[^\\]+)", re.IGNORECASE)


# --- host ------------------------------------------------------------------------------------------

def get_host_info(bridge):
    facts = wmi.os_facts(bridge, "get_host_info")
    try:
        environment = bridge.host_environment()
    except BridgeError as exc:
        raise wmi.bridge_failure(bridge, "get_host_info", exc, "reading the host environment")
    cluster, csvs = cluster_facts(bridge, "get_host_info")
    return {"computer_name": environment.get("computer_name") or wmi.host_of(bridge), "os_name": facts["caption"],
            "os_version": facts["version"], "os_build": facts["build"], "cluster": cluster, "csvs": csvs,
            "vss_providers": vss_providers(bridge), "hyperv_vss_writer": hyperv_vss_writer(bridge)}


def cluster_facts(bridge, operation):
    """({name, functional_level} | None, [{name, path}]): no root\\MSCluster namespace or class = not clustered."""
    try:
        clusters = bridge.query(NAMESPACE_CLUSTER, "MSCluster_Cluster")
    except BridgeError as exc:
        if wmi.is_missing(exc) or getattr(exc, "code", None) == 0x80041002:
            return None, []
        raise wmi.bridge_failure(bridge, operation, exc, "reading the failover cluster (root\\MSCluster)",
                                 hint="Check the Cluster service on the host (Get-Service ClusSvc).")
    if not clusters:
        return None, []
    host_build = wmi.build(bridge, operation)
    # ClusterFunctionalLevel exists from 2016 (schema); asking for it earlier would be reading a name the era lacks.
    level = wmi.as_int(clusters[0].get("ClusterFunctionalLevel")) if host_build >= REFERENCE_POINTS_MIN_BUILD else None
    if level is None:
        level = next((value for first, value in LEGACY_CLUSTER_LEVELS if host_build >= first), None)
    cluster = {"name": clusters[0].get("Name"), "functional_level": level}
    try:
        volumes = bridge.query(NAMESPACE_CLUSTER, "MSCluster_ClusterSharedVolume")
    except BridgeError as exc:
        if not wmi.is_missing(exc):
            raise wmi.bridge_failure(bridge, operation, exc, "listing the Cluster Shared Volumes")
        volumes = []
    return cluster, [{"name": v.get("Name"), "path": _csv_path(bridge, v.get("VolumeName"))} for v in volumes]


def _csv_path(bridge, volume_name):
    """The C:\\ClusterStorage\\VolumeN path of a CSV.

    UNCONFIRMED what MSCluster_ClusterSharedVolume.VolumeName holds: a path is used as it is; a volume
    GUID path (\\\\?\\Volume{...}\\) is looked up in Win32_Volume (DeviceID -> Name).
    """
    text = str(volume_name or "")
    if not text.startswith("\\\\?\\"):
        return text.rstrip("\\") or None
    try:
        found = bridge.query(NAMESPACE_CIMV2, "Win32_Volume", where={"DeviceID": text}, properties=["Name"])
    except BridgeError:
        found = []
    name = found[0].get("Name") if found else None
    return str(name).rstrip("\\") if name else text


def vss_providers(bridge):
    """Win32_ShadowProvider: Type 3 is hardware; 1 System (Microsoft's) and 2 Software are software."""
    try:
        providers = bridge.query(NAMESPACE_CIMV2, "Win32_ShadowProvider")
    except BridgeError as exc:
        if wmi.is_missing(exc):
            return []
        raise wmi.bridge_failure(bridge, "get_host_info", exc, "listing the VSS providers (Win32_ShadowProvider)")
    return [{"name": p.get("Name"), "id": p.get("ID"), "type": "hardware" if wmi.as_int(p.get("Type")) == 3 else "software"}
            for p in providers]


# --- services ---------------------------------------------------------------------------------------

def _service_failure(bridge, operation, exc, name):
    category = exc.category if getattr(exc, "category", None) in ("not_found", "unreachable", "authentication") else "service"
    return HostOperationError(wmi.host_of(bridge), operation, category, "service %s: %s" % (name, exc.message),
                              hint=exc.hint or "Check the service with Get-Service / sc.exe qc on the host and the System "
                                               "event log.", windows_error=wmi.code_text(getattr(exc, "code", None)))


def get_service(bridge, name):
    try:
        found = bridge.service(name)
    except BridgeError as exc:
        raise _service_failure(bridge, "get_service", exc, name)
    return {"name": found.get("name") or name, "display_name": found.get("display_name"), "status": found.get("status"),
            "start_type": found.get("start_type")}


def start_service(bridge, name):
    try:
        found = bridge.service(name, start=True)
    except BridgeError as exc:
        raise _service_failure(bridge, "start_service", exc, name)
    previous = found.get("previous_status")
    return {"name": found.get("name") or name, "display_name": found.get("display_name"), "status": found.get("status"),
            "previous_status": previous, "changed": previous != "Running"}


# --- VMs --------------------------------------------------------------------------------------------

def _fail(bridge, operation, category, message, hint=None):
    raise HostOperationError(wmi.host_of(bridge), operation, category, message, hint=hint)


def virtual_machines(bridge, ns, operation):
    """Msvm_ComputerSystem instances that are VMs: Name is a GUID (the host's own instance has its computer name)."""
    try:
        systems = bridge.query(ns, "Msvm_ComputerSystem")
    except BridgeError as exc:
        raise wmi.bridge_failure(bridge, operation, exc, "listing virtual machines (Msvm_ComputerSystem)",
                                 hint="Check that the Hyper-V role and the vmms service run on the host.")
    return [s for s in systems if s.get("__CLASS", "Msvm_ComputerSystem") == "Msvm_ComputerSystem" and wmi.canonical_guid(s.get("Name"))]


def find_vm(bridge, ns, vm_id, operation):
    """The Msvm_ComputerSystem of a VM id (any case, with or without braces); not_found otherwise."""
    wanted = wmi.canonical_guid(vm_id)
    for system in virtual_machines(bridge, ns, operation) if wanted else []:
        if wmi.canonical_guid(system.get("Name")) == wanted:
            return system
    _fail(bridge, operation, "not_found", "Hyper-V was unable to find a virtual machine with id '%s'." % vm_id,
          hint="List the VMs with get_vms; the VM may have been removed or moved to another host.")
    return None


def current_settings(bridge, ns, system, operation):
    """The VM's current Msvm_VirtualSystemSettingData (v2: Msvm_SettingsDefineState; v1: SettingType 3)."""
    try:
        if wmi.is_v1(ns):
            # v1: the VM's VSSDs carry SystemName = VM GUID; SettingType 3 is the current one (os-win v1, duplicati).
            found = bridge.query(ns, "Msvm_VirtualSystemSettingData", where={"SystemName": system.get("Name")})
        else:
            found = bridge.associators(ns, system["__PATH"], "Msvm_SettingsDefineState", "Msvm_VirtualSystemSettingData")
    except BridgeError as exc:
        raise wmi.bridge_failure(bridge, operation, exc, "reading the settings of VM %s" % system.get("ElementName"))
    if wmi.is_v1(ns):
        current = [s for s in found if wmi.as_int(s.get("SettingType")) == CURRENT_SETTING_TYPE_V1]
        found = current
    else:
        current = [s for s in found if s.get("VirtualSystemType") in (None, REALIZED)]
    if not (current or found):
        _fail(bridge, operation, "failed", "VM %s has no current settings (Msvm_SettingsDefineState)" % system.get("ElementName"),
              hint="Check the VM in Hyper-V Manager; its configuration may be damaged.")
    return (current or found)[0]


def _vm_key(system, key):
    """The value a get_vms filter compares: the name (case-insensitive, as Windows) or the canonical id."""
    if key == "name":
        return str(system.get("ElementName") or "").lower()
    return wmi.canonical_guid(system.get("Name"))


def _wanted_key(item, key):
    if key == "name":
        return str(item).lower()
    return wmi.canonical_guid(item) or str(item).lower()


def get_vms(bridge, names=None, ids=None):
    operation = "get_vms"
    ns = wmi.namespace(bridge, operation)
    systems = virtual_machines(bridge, ns, operation)
    for wanted, key in ((names, "name"), (ids, "id")):
        if not wanted:
            continue
        known = set(_vm_key(s, key) for s in systems)
        missing = [item for item in wanted if _wanted_key(item, key) not in known]
        if missing:
            listed = sorted(str(s.get("ElementName") if key == "name" else _vm_key(s, key)) for s in systems)
            _fail(bridge, operation, "not_found", "Hyper-V was unable to find a virtual machine with %s %s."
                  % (key, ", ".join("'%s'" % item for item in missing)),
                  hint="Check the VM %s(s); the host has: %s." % (key, ", ".join(listed) or "no VMs"))
        chosen = set(_wanted_key(item, key) for item in wanted)
        systems = [s for s in systems if _vm_key(s, key) in chosen]
    context = {"ns": ns, "components": integration_components(bridge, ns, operation), "csvs": None, "cluster": None,
               "reference_points": not wmi.is_v1(ns) and wmi.build(bridge, operation) >= REFERENCE_POINTS_MIN_BUILD}
    context["cluster"], context["csvs"] = cluster_facts(bridge, operation)
    out = []
    for system in systems:
        try:
            out.append(describe_vm(bridge, system, context, operation))
        except HostOperationError as exc:
            # One VM Hyper-V cannot describe must not hide the others (issue point 14).
            if exc.category in ("unreachable", "authentication"):
                raise
            out.append(_vm_stub(system, ns, "VM %s could not be read: %s" % (system.get("ElementName"), exc.message)))
    out.sort(key=lambda vm: (str(vm["name"] or "").lower(), vm["id"]))
    return out


def _state(ns, system):
    table = STATES_V1 if wmi.is_v1(ns) else STATES_V2
    return table.get(wmi.as_int(system.get("EnabledState")))


def _vm_stub(system, ns, problem):
    return {"id": wmi.canonical_guid(system.get("Name")), "name": system.get("ElementName"), "generation": None,
            "configuration_version": None, "state": _state(ns, system), "path": None, "windows_path": None, "clustered": False,
            "csv_path": None, "scsi_controllers": 0, "integration_services": [], "disks": [], "checkpoints": [],
            "reference_points": [], "problem": problem}


def describe_vm(bridge, system, context, operation="get_vms"):
    """VM_SHAPE of one Msvm_ComputerSystem."""
    ns = context["ns"]
    vm_id = wmi.canonical_guid(system.get("Name"))
    vssd = current_settings(bridge, ns, system, operation)
    parts = disk_info.settings_components(bridge, ns, vssd, operation)
    problems = []
    if wmi.is_v1(ns):
        version, path = _v1_global_settings(bridge, ns, system)
        generation = 1              # generation 2 VMs came with 2012 R2
    else:
        # An empty Version (seen on imported or damaged configurations) must not abort: report None.
        version = str(vssd.get("Version") or "").strip() or None
        path = vssd.get("ConfigurationDataRoot")
        # VirtualSystemSubType (generation) exists from 2012 R2; 2012 has generation 1 VMs only.
        subtype = vssd.get("VirtualSystemSubType") if wmi.build(bridge, operation) >= 9600 else None
        generation = 2 if str(subtype or "").endswith("SubType:2") else 1
    disks = disk_info.disks_of(bridge, ns, parts, operation)
    csv_path = _csv_of(context["csvs"], [path] + [d["path"] for d in disks])
    vm = {"id": vm_id, "name": system.get("ElementName"), "generation": generation, "configuration_version": version,
          "state": _state(ns, system), "path": path, "windows_path": path,
          "clustered": bool(csv_path) and bool(context["cluster"]), "csv_path": csv_path,
          "scsi_controllers": disk_info.count_scsi_controllers(parts, ns),
          "integration_services": integration_services(context["components"].get(vm_id, {}), parts),
          "disks": disks, "checkpoints": checkpoints(bridge, ns, system, vssd, operation), "reference_points": []}
    if context["reference_points"]:
        try:
            vm["reference_points"] = reference_points(bridge, vm_id)
        except (HostOperationError, ImportError) as exc:
            if getattr(exc, "category", None) in ("unreachable", "authentication"):
                raise
            problems.append("its reference points could not be read: %s" % getattr(exc, "message", exc))
    problems.extend("disk %s: %s" % (d.get("path") or "(no file)", d["problem"]) for d in disks if d.get("problem"))
    if problems:
        vm["problem"] = "; ".join(problems)
    return vm


def _v1_global_settings(bridge, ns, system):
    """(Version, ExternalDataRoot) from v1's Msvm_VirtualSystemGlobalSettingData; (None, None) when unreadable."""
    try:
        found = bridge.query(ns, "Msvm_VirtualSystemGlobalSettingData", where={"SystemName": system.get("Name")})
    except BridgeError:
        return None, None
    if not found:
        return None, None
    return (str(found[0].get("Version") or "").strip() or None), found[0].get("ExternalDataRoot")


def _csv_of(csvs, paths):
    """The CSV (C:\\ClusterStorage\\VolumeN) that holds the VM's configuration or a disk, or None."""
    roots = [c["path"] for c in csvs or [] if c.get("path")]
    for path in paths:
        text = str(path or "")
        for root in roots:
            if text.lower().startswith(root.rstrip("\\").lower() + "\\"):
                return root
        match = _CSV_PATH.match(text)
        if match and csvs:
            return match.group(1)
    return None


def reference_points(bridge, vm_id):
    """The VM's reference points as VM_SHAPE lists them (helper H5's hyperv.reference_points)."""
    from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.reference_points import get_reference_points
    out = []
    for point in get_reference_points(bridge, vm_id=vm_id):
        entry = dict(point)
        entry.setdefault("type", "RCT")
        out.append(entry)
    return out


def checkpoints(bridge, ns, system, vssd, operation):
    """[{id, name, type: Standard|Recovery, created, ours}] oldest first."""
    try:
        if wmi.is_v1(ns):
            # v1 has no Msvm_SnapshotOfVirtualSystem: a VM's other VSSDs (SystemName = VM GUID) are its snapshots.
            found = [s for s in bridge.query(ns, "Msvm_VirtualSystemSettingData", where={"SystemName": system.get("Name")})
                     if s.get("InstanceID") != vssd.get("InstanceID")
                     and wmi.as_int(s.get("SettingType")) != CURRENT_SETTING_TYPE_V1]
        else:
            found = bridge.associators(ns, system["__PATH"], "Msvm_SnapshotOfVirtualSystem", "Msvm_VirtualSystemSettingData")
    except BridgeError as exc:
        raise wmi.bridge_failure(bridge, operation, exc, "listing the checkpoints of VM %s" % system.get("ElementName"))
    out = []
    for snapshot in found:
        name = snapshot.get("ElementName")
        out.append({"id": snapshot.get("InstanceID"), "name": name,
                    "type": "Recovery" if snapshot.get("VirtualSystemType") == RECOVERY_SNAPSHOT else "Standard",
                    "created": wmi.dmtf_to_iso(snapshot.get("CreationTime")),
                    "ours": str(name or "").startswith(TAG_PREFIX)})
    # Host-VSS recovery points are shadow copy sets with a marker, not checkpoints; they are listed here too so
    # that the stray-point and serialization checks, which read a VM's checkpoints, see them (issue point 8).
    from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import vss_points
    try:
        out.extend(vss_points.checkpoint_entries(bridge, system.get("Name")))
    except BridgeError as exc:
        raise wmi.bridge_failure(bridge, operation, exc, "listing the host-VSS recovery points of VM %s" % system.get("ElementName"))
    out.sort(key=lambda cp: (cp["created"] or "", cp["id"] or ""))
    return out


# --- integration services ---------------------------------------------------------------------------

def integration_components(bridge, ns, operation):
    """{vm id: {component GUID: component instance}} for every integration component class the host has.

    A class the host (or the lab) does not have is skipped: the schema names the classes of the
    other components but details only Msvm_VssComponent.
    """
    out = {}
    for guid, _name, class_name, _setting in INTEGRATION_COMPONENTS:
        try:
            found = bridge.query(ns, class_name)
        except BridgeError as exc:
            if wmi.is_missing(exc) or class_name != "Msvm_VssComponent":
                continue
            raise wmi.bridge_failure(bridge, operation, exc, "reading the backup integration components (Msvm_VssComponent)")
        for item in found:
            # DeviceID "Microsoft:<GUID>" (observed) or "Microsoft:<VM GUID>\<GUID>" (doc): the GUID after the last ':' or '\'.
            if wmi.guid_suffix(item.get("DeviceID")) != guid:
                continue
            vm_id = wmi.canonical_guid(item.get("SystemName"))
            if vm_id:
                out.setdefault(vm_id, {})[guid] = item
    return out


def _setting_of(parts, guid, setting_class):
    mine = [p for p in parts if p.get("__CLASS") == setting_class]
    if len(mine) == 1:
        return mine[0]          # one setting of a component-specific class: it is that component's
    exact = [p for p in mine if wmi.guid_suffix(p.get("InstanceID")) == guid]
    return (exact or mine or [None])[0]


def _enabled(state):
    value = wmi.as_int(state)
    return {2: True, 3: False}.get(value)


def integration_service_entry(guid, name, component, setting):
    """{name, id, enabled, operational_status} from the component (runtime) and its setting data (configured)."""
    enabled = _enabled((component or {}).get("EnabledState"))
    if enabled is None:
        enabled = _enabled((setting or {}).get("EnabledState"))
    enabled = True if enabled is None else enabled
    if not enabled:
        status = "Disabled"
    else:
        codes = (component or {}).get("OperationalStatus") or []
        code = wmi.as_int(wmi.first(codes))
        # No component or no status: the guest has not been contacted (12 No Contact); an unknown code is an error.
        status = "NoContact" if code is None else OPERATIONAL_STATUS.get(code, "Error")
    return {"name": name, "id": guid.upper(), "enabled": enabled, "operational_status": status}


def integration_services(components, parts):
    out = []
    for guid, name, _class_name, setting_class in INTEGRATION_COMPONENTS:
        component = components.get(guid)
        setting = _setting_of(parts, guid, setting_class)
        if component is None and setting is None:
            continue
        out.append(integration_service_entry(guid, name, component, setting))
    return out


def _integration_by_name(bridge, vm_name, name):
    text = str(name or "").strip().lower()
    for entry in INTEGRATION_COMPONENTS:
        if text in (entry[1].lower(), entry[0]) or wmi.guid_suffix(text) == entry[0]:
            return entry
    _fail(bridge, "enable_integration_service", "not_found",
          "No integration service named '%s' is available for VM '%s'." % (name, vm_name),
          hint="Use one of: %s (the backup one is 'VSS')." % ", ".join(e[1] for e in INTEGRATION_COMPONENTS))
    return None


def enable_integration_service(bridge, vm_id, name):
    operation = "enable_integration_service"
    ns = wmi.namespace(bridge, operation)
    system = find_vm(bridge, ns, vm_id, operation)
    guid, canonical, class_name, setting_class = _integration_by_name(bridge, system.get("ElementName"), name)
    vssd = current_settings(bridge, ns, system, operation)
    setting = _setting_of(disk_info.settings_components(bridge, ns, vssd, operation), guid, setting_class)
    if setting is None:
        _fail(bridge, operation, "not_found", "VM '%s' has no %s integration service settings (%s)."
              % (system.get("ElementName"), canonical, setting_class),
              hint="A guest without integration components has no '%s' service; install them in the guest." % canonical)
    changed = _enabled(setting.get("EnabledState")) is not True
    if changed:
        vsms = wmi.service(bridge, wmi.VSMS, operation, ns)
        embedded = Embedded(setting_class, {"EnabledState": 2}, based_on=setting["__PATH"])
        if wmi.is_v1(ns):
            # v1: ModifyVirtualSystemResources(ComputerSystem, ResourceSettingData[]) (previous-versions "virtual"
            # docs, modifyvirtualsystemresources-msvm-virtualsystemmanagementservice; 32768.. return codes).
            wmi.call(bridge, operation, ns, vsms["__PATH"], "ModifyVirtualSystemResources",
                     {"ComputerSystem": Ref(system["__PATH"]), "ResourceSettingData": [embedded]}, category="integration",
                     what="ModifyVirtualSystemResources (enable %s)" % canonical)
        else:
            # Documented way: ModifyResourceSettings with the embedded setting, EnabledState 2 (hyperv_wmi.md section 4).
            wmi.call(bridge, operation, ns, vsms["__PATH"], "ModifyResourceSettings", {"ResourceSettings": [embedded]},
                     category="integration", what="ModifyResourceSettings (enable %s)" % canonical)
    components = integration_components(bridge, ns, operation).get(wmi.canonical_guid(system.get("Name")), {})
    setting = _setting_of(disk_info.settings_components(bridge, ns, vssd, operation), guid, setting_class) or setting
    component = components.get(guid)
    # Enabled now; the guest's answer (OperationalStatus) says whether it is working yet.
    entry = integration_service_entry(guid, canonical, dict(component, EnabledState=2) if component else None,
                                      dict(setting, EnabledState=2))
    return {"vm_id": wmi.canonical_guid(system.get("Name")), "name": canonical, "enabled": True,
            "operational_status": entry["operational_status"], "changed": changed}
