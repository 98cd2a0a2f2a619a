# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small in-memory bridge for the logic tests of hyperv/inventory.py and hyperv/wmi.py.

It holds instances per namespace and class, explicit associations, and method handlers; it
refuses unknown namespaces and classes the way a host does (BridgeError with the WBEM code), and
records every call so that tests can say what was (not) asked. The lab's LabBridge is the full
emulation; this one lets a test build exactly the odd host it needs (a pass-through disk, an empty
VirtualDiskId, a German host).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import (
    NAMESPACE_CIMV2, NAMESPACE_V1, NAMESPACE_V2, WBEM_E_INVALID_CLASS, WBEM_E_INVALID_NAMESPACE, WBEM_E_METHOD_NOT_IMPLEMENTED,
    Bridge, BridgeError)

BUILDS = {"2008r2": ("6.1.7601", "7601"), "2012": ("6.2.9200", "9200"), "2012r2": ("6.3.9600", "9600"),
          "2016": ("10.0.14393", "14393"), "2019": ("10.0.17763", "17763"), "2022": ("10.0.20348", "20348")}


def setting_xml(class_name, properties):
    """CIM-XML of an embedded instance, as GetVirtualHardDiskSettingData returns it."""
    parts = ['<INSTANCE CLASSNAME="%s">' % class_name]
    for name, value in properties.items():
        if value is None:
            parts.append('<PROPERTY NAME="%s" TYPE="string"></PROPERTY>' % name)
        else:
            parts.append('<PROPERTY NAME="%s" TYPE="string"><VALUE>%s</VALUE></PROPERTY>' % (name, value))
    parts.append("</INSTANCE>")
    return "".join(parts)


class FakeBridge(Bridge):
    def __init__(self, era="2016", host="hv01"):
        self.host = host
        self.era = era
        self.calls = []
        self.instances = {}          # (namespace, class) -> [instance]
        self.links = {}              # (path, association) -> [instance]
        self.methods = {}            # method name -> handler(path, arguments) -> result dict
        self.files = {}              # disk path -> {"Format", "Type", ...} (None = missing file)
        self.services = {"vss": {"name": "VSS", "display_name": "Volume Shadow Copy", "status": "Stopped",
                                 "start_type": "Manual"}}
        self.writers = {"exit_code": 0, "output": ""}
        self.namespaces = {NAMESPACE_CIMV2}
        self.namespaces.add(NAMESPACE_V1 if era == "2008r2" else NAMESPACE_V2)
        if era == "2012":
            self.namespaces.add(NAMESPACE_V1)
        version, build = BUILDS[era]
        self.add(NAMESPACE_CIMV2, "Win32_OperatingSystem", "os", Version=version, BuildNumber=build,
                 Caption="Microsoft Windows Server %s Datacenter" % era)
        ns = self.ns
        self.add(ns, "Msvm_ComputerSystem", "host", Name=host.upper(), ElementName=host.upper(), EnabledState=2)
        self.vsms = self.add(ns, "Msvm_VirtualSystemManagementService", "vmms", Name="vmms")
        self.ims = self.add(ns, "Msvm_ImageManagementService", "vhdsvc", Name="vhdsvc")
        self.methods["GetVirtualHardDiskSettingData"] = self._disk_settings
        self.methods["GetVirtualHardDiskInfo"] = self._disk_info
        self.refused_classes = set()

    @property
    def ns(self):
        return NAMESPACE_V1 if self.era == "2008r2" else NAMESPACE_V2

    def add(self, ns, class_name, key, **properties):
        instance = dict(properties, __CLASS=class_name, __NAMESPACE=ns,
                        __PATH='\\\\HV01\\%s:%s.Key="%s"' % (ns, class_name, key))
        self.instances.setdefault((ns, class_name), []).append(instance)
        return instance

    def link(self, source, association, *targets):
        self.links.setdefault((source["__PATH"], association), []).extend(targets)

    # --- bridge calls ------------------------------------------------------------------------

    def _check(self, ns, class_name):
        if ns not in self.namespaces:
            raise BridgeError("Invalid namespace %s" % ns, code=WBEM_E_INVALID_NAMESPACE)
        if class_name in self.refused_classes:
            raise BridgeError("Invalid class %s" % class_name, code=WBEM_E_INVALID_CLASS)

    def query(self, namespace, class_name, where=None, properties=None):
        self.calls.append(("query", namespace, class_name, dict(where or {})))
        self._check(namespace, class_name)
        if (namespace, class_name) not in self.instances and class_name.startswith(("Msvm_", "MSCluster_")) \
                and class_name not in ("Msvm_VssComponent", "Msvm_VirtualSystemSettingData", "Msvm_VirtualSystemGlobalSettingData"):
            raise BridgeError("Invalid class %s" % class_name, code=WBEM_E_INVALID_CLASS)
        found = list(self.instances.get((namespace, class_name), []))
        for key, value in (where or {}).items():
            found = [i for i in found if i.get(key) == value]
        return [dict(i) for i in found]

    def associators(self, namespace, path, assoc_class, result_class=None):
        self.calls.append(("associators", namespace, path, assoc_class, result_class))
        self._check(namespace, assoc_class)
        found = self.links.get((path, assoc_class), [])
        return [dict(i) for i in found if result_class is None or i["__CLASS"] == result_class]

    def invoke(self, namespace, path, method, arguments=None):
        self.calls.append(("invoke", namespace, path, method, arguments))
        handler = self.methods.get(method)
        if handler is None:
            raise BridgeError("method %s not implemented" % method, code=WBEM_E_METHOD_NOT_IMPLEMENTED)
        return handler(path, arguments or {})

    def _disk_settings(self, path, arguments):
        facts = self.files.get(arguments["Path"])
        if facts is None:
            return {"ReturnValue": 32779, "out": {}, "job": None, "affected": []}
        return {"ReturnValue": 0, "out": {"SettingData": setting_xml("Msvm_VirtualHardDiskSettingData", facts)},
                "job": None, "affected": []}

    def _disk_info(self, path, arguments):
        facts = self.files.get(arguments["Path"])
        if facts is None:
            return {"ReturnValue": 32779, "out": {}, "job": None, "affected": []}
        info = dict((k, v) for k, v in facts.items() if k in ("Type", "MaxInternalSize", "ParentPath", "FileSize"))
        return {"ReturnValue": 0, "out": {"Info": setting_xml("Msvm_VirtualHardDiskInfo", info)}, "job": None, "affected": []}

    def service(self, name, start=False):
        self.calls.append(("service", name, start))
        found = self.services.get(name.lower())
        if found is None:
            raise BridgeError("Cannot find any service with service name '%s'." % name, category="not_found")
        out = dict(found)
        if start:
            out["previous_status"] = found["status"]
            found["status"] = out["status"] = "Running"
        return out

    def vss_writers(self):
        self.calls.append(("vss_writers",))
        return dict(self.writers)

    def host_environment(self):
        return {"ps_version": "2.0", "program_data": "C:\\ProgramData", "computer_name": self.host.upper(),
                "now": "20261202073512.000000+000"}

    def list_directory(self, path):
        # No host files: no host-VSS recovery point markers.
        return {"now": "20261202080000.000000+000", "entries": []}

    def read_file(self, path, max_bytes):
        return None

    def queried(self, class_name):
        return [c for c in self.calls if (c[0] == "query" and c[2] == class_name) or (c[0] == "associators" and c[3] == class_name)]


def add_vm(bridge, vm_id, name, disks=(), version="9.0", subtype="Microsoft:Hyper-V:SubType:2", state=2, scsi=1,
           vss_device=None, vss_state=2, vss_status=2, vss_name="VSS", snapshots=(), ide=False):
    """A VM with controllers, drives and disks (each disk: (path, controller 'IDE'|'SCSI', number, location))."""
    ns = bridge.ns
    v1 = ns == NAMESPACE_V1
    system = bridge.add(ns, "Msvm_ComputerSystem", vm_id.upper(), Name=vm_id.upper(), ElementName=name, EnabledState=state)
    vssd_props = {"InstanceID": "Microsoft:%s" % vm_id.upper(), "ElementName": name}
    if v1:
        vssd_props.update(SettingType=3, SystemName=vm_id.upper())
        bridge.add(ns, "Msvm_VirtualSystemGlobalSettingData", vm_id + "-g", SystemName=vm_id.upper(), Version=version,
                   ExternalDataRoot="D:\\VMs\\%s" % name)
    else:
        vssd_props.update(VirtualSystemType="Microsoft:Hyper-V:System:Realized", Version=version, ConfigurationDataRoot="D:\\VMs\\%s" % name)
        if subtype:
            vssd_props["VirtualSystemSubType"] = subtype
    vssd = bridge.add(ns, "Msvm_VirtualSystemSettingData", vm_id + "-vssd", **vssd_props)
    bridge.link(system, "Msvm_SettingsDefineState", vssd)
    sub = (lambda text: text.replace("Microsoft:Hyper-V:", "Microsoft ")) if v1 else (lambda text: text)
    rasd_class = "Msvm_ResourceAllocationSettingData"
    parts = []
    controllers = {}
    for number in range(2 if ide else 0):
        controllers[("IDE", number)] = bridge.add(ns, rasd_class, "%s-ide%d" % (vm_id, number), InstanceID="%s\\ide%d" % (vm_id, number),
                                                  ResourceSubType=sub("Microsoft:Hyper-V:Emulated IDE Controller"), Address=str(number))
    for number in range(scsi):
        controllers[("SCSI", number)] = bridge.add(ns, rasd_class, "%s-scsi%d" % (vm_id, number), InstanceID="%s\\scsi%d" % (vm_id, number),
                                                   ResourceSubType=sub("Microsoft:Hyper-V:Synthetic SCSI Controller"))
    parts.extend(controllers.values())
    for index, (path, ctype, number, location) in enumerate(disks):
        controller = controllers[(ctype, number)]
        physical = path.startswith("physical:")
        drive = bridge.add(ns, rasd_class, "%s-drive%d" % (vm_id, index), InstanceID="Microsoft:%s\\d%d\\D" % (vm_id, index),
                           ResourceSubType=sub("Microsoft:Hyper-V:Physical Disk Drive" if physical else "Microsoft:Hyper-V:Synthetic Disk Drive"),
                           Parent=controller["__PATH"], AddressOnParent=str(location),
                           HostResource=["\\\\HV01\\root\\virtualization\\v2:Msvm_DiskDrive.DeviceID=\"1\""] if physical else None)
        parts.append(drive)
        if physical:
            continue
        medium_props = {"InstanceID": "Microsoft:%s\\d%d\\L" % (vm_id, index), "Parent": drive["__PATH"],
                        "ResourceSubType": sub("Microsoft:Hyper-V:Virtual Hard Disk")}
        if v1:
            medium_props["Connection"] = [path]
            medium = bridge.add(ns, rasd_class, "%s-medium%d" % (vm_id, index), **medium_props)
        else:
            medium_props.update(HostResource=[path], ResourceType=31)
            medium = bridge.add(ns, "Msvm_StorageAllocationSettingData", "%s-medium%d" % (vm_id, index), **medium_props)
        parts.append(medium)
    if vss_device is not False:
        device = vss_device or "Microsoft:5CED1297-4598-4915-A5FC-AD21BB4D02A4"
        bridge.add(ns, "Msvm_VssComponent", vm_id + "-vss", DeviceID=device, SystemName=vm_id.upper(), ElementName=vss_name,
                   EnabledState=vss_state, OperationalStatus=[vss_status])
        setting = bridge.add(ns, "Msvm_VssComponentSettingData", vm_id + "-vss-sd", ElementName=vss_name,
                             InstanceID="Microsoft:%s\\5CED1297-4598-4915-A5FC-AD21BB4D02A4" % vm_id.upper(), EnabledState=vss_state)
        parts.append(setting)
    bridge.link(vssd, "Msvm_VirtualSystemSettingDataComponent", *parts)
    for snap_id, snap_name, snap_type, created in snapshots:
        props = {"InstanceID": snap_id, "ElementName": snap_name, "CreationTime": created}
        if v1:
            props.update(SystemName=vm_id.upper(), SettingType=5)
        else:
            props["VirtualSystemType"] = snap_type
        snapshot = bridge.add(ns, "Msvm_VirtualSystemSettingData", snap_id, **props)
        if not v1:
            bridge.link(system, "Msvm_SnapshotOfVirtualSystem", snapshot)
    return system
