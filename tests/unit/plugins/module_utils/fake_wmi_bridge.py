"""A small in-memory WMI bridge for the register tests (get_vm_configuration / import_vm / restore register).

It answers the bridge calls of host/bridge.py with the classes, associations and methods Windows documents for
configuration capture and import (hyperv_wmi.md 3.4, 3.9): Msvm_ComputerSystem, Msvm_VirtualSystemSettingData
(realized, recovery snapshot, planned), controller/drive RASDs, SASDs, Msvm_EthernetPortAllocationSettingData,
Msvm_VirtualEthernetSwitch, ImportSystemDefinition -> Msvm_PlannedComputerSystem, ModifyResourceSettings,
ModifySystemSettings, ValidatePlannedSystem, RealizePlannedSystem, DestroySystem; v1 (2008 R2) VMs through
Msvm_VirtualSystemGlobalSettingData. A configuration file's content is JSON in this fake (the real ones are .vmcx /
.xml): {"name", "generation", "version", "disks": [[type, number, location, path]], "nics": [switch name]}.
The planned VM lists its disks in REVERSE order, so attaching by enumeration order would be caught.
"""
import json
import ntpath
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import (
    NAMESPACE_CIMV2, NAMESPACE_V1, NAMESPACE_V2, Bridge, BridgeError, Embedded, Ref,
)

OS_VERSIONS = {"2008r2": "6.1.7601", "2012": "6.2.9200", "2012r2": "6.3.9600", "2016": "10.0.14393",
               "2019": "10.0.17763", "2022": "10.0.20348"}
SUBTYPE_SCSI = "Microsoft:Hyper-V:Synthetic SCSI Controller"
SUBTYPE_IDE = "Microsoft:Hyper-V:Emulated IDE Controller"


def config_bytes(name, disks, generation=2, version="10.0", nics=()):
    return json.dumps({"name": name, "generation": generation, "version": version, "disks": [list(d) for d in disks],
                       "nics": list(nics)}).encode("utf-8")


class FakeWmiBridge(Bridge):
    def __init__(self, era="2022", host="hv01"):
        self.host = host
        self.era = era
        self.ns = NAMESPACE_V1 if era == "2008r2" else NAMESPACE_V2
        self.files = {}            # lower-case Windows path -> (path, bytes)
        self.instances = []        # dicts with __CLASS, __PATH (+ "_owner" for settings / "_kind")
        self.links = []            # (assoc, from path, to path)
        self.calls = []
        self.switches = {}
        self.fail_method = {}      # method -> ReturnValue to answer

    # -- model building ---------------------------------------------------------------------------
    def _path(self, cls, key):
        return '\\\\%s\\%s:%s.%s' % (self.host.upper(), self.ns, cls, key)

    def add(self, cls, props, key):
        inst = dict(props, __CLASS=cls, __NAMESPACE=self.ns, __PATH=self._path(cls, key))
        self.instances.append(inst)
        return inst

    def put_file(self, path, data):
        self.files[path.lower()] = (path, bytes(data))

    def add_switch(self, name):
        guid = str(uuid.uuid4()).upper()
        self.switches[name] = self.add("Msvm_VirtualEthernetSwitch", {"Name": guid, "ElementName": name},
                                       'CreationClassName="Msvm_VirtualEthernetSwitch",Name="%s"' % guid)
        return self.switches[name]

    def _settings(self, owner, guid, vtype, name, version, generation, root, config_file, disks, nics):
        iid = "Microsoft:%s" % guid
        vssd = self.add("Msvm_VirtualSystemSettingData", {
            "InstanceID": iid, "ElementName": name, "VirtualSystemType": vtype, "Version": version,
            "VirtualSystemSubType": "Microsoft:Hyper-V:SubType:%d" % generation, "ConfigurationDataRoot": root,
            "ConfigurationFile": config_file, "ConfigurationID": owner["Name"]}, 'InstanceID="%s"' % iid.replace("\\", "\\\\"))
        controllers = {}
        for kind, number, location, path in disks:
            if (kind, number) not in controllers:
                cid = "%s\\ctrl-%s-%d" % (iid, kind, number)
                controllers[(kind, number)] = self.add("Msvm_ResourceAllocationSettingData", {
                    "InstanceID": cid, "ResourceSubType": SUBTYPE_IDE if kind == "IDE" else SUBTYPE_SCSI,
                    "Address": str(number) if kind == "IDE" else None}, 'InstanceID="%s"' % cid.replace("\\", "\\\\"))
        ordered = sorted(controllers.items(), key=lambda item: (item[0][0], item[0][1]))
        for _key, rasd in ordered:
            self.links.append(("Msvm_VirtualSystemSettingDataComponent", vssd["__PATH"], rasd["__PATH"]))
        for kind, number, location, path in disks:
            did = "%s\\drive-%s-%d-%d\\D" % (iid, kind, number, location)
            drive = self.add("Msvm_ResourceAllocationSettingData", {
                "InstanceID": did, "ResourceSubType": "Microsoft:Hyper-V:Synthetic Disk Drive",
                "Parent": controllers[(kind, number)]["__PATH"], "AddressOnParent": str(location)},
                'InstanceID="%s"' % did.replace("\\", "\\\\"))
            sid = did[:-1] + "L"
            sasd = self.add("Msvm_StorageAllocationSettingData", {
                "InstanceID": sid, "ResourceType": 31, "ResourceSubType": "Microsoft:Hyper-V:Virtual Hard Disk",
                "Parent": drive["__PATH"], "HostResource": [path]}, 'InstanceID="%s"' % sid.replace("\\", "\\\\"))
            self.links.append(("Msvm_VirtualSystemSettingDataComponent", vssd["__PATH"], drive["__PATH"]))
            self.links.append(("Msvm_VirtualSystemSettingDataComponent", vssd["__PATH"], sasd["__PATH"]))
        for index, switch in enumerate(nics):
            pid = "%s\\port-%d" % (iid, index)
            target = self.switches.get(switch)
            port = self.add("Msvm_EthernetPortAllocationSettingData", {
                "InstanceID": pid, "HostResource": [target["__PATH"]] if target else [], "LastKnownSwitchName": switch},
                'InstanceID="%s"' % pid.replace("\\", "\\\\"))
            self.links.append(("Msvm_VirtualSystemSettingDataComponent", vssd["__PATH"], port["__PATH"]))
        return vssd

    def add_vm(self, name, disks, generation=2, version="10.0", root="D:\\VMs\\web01", state=3, nics=(), guid=None,
               extension=".vmcx"):
        """A realized VM with its configuration file (+ .vmrs sibling for .vmcx); returns (vm, vssd)."""
        guid = guid or str(uuid.uuid4()).upper()
        vm = self.add("Msvm_ComputerSystem", {"Name": guid, "ElementName": name, "EnabledState": state},
                      'CreationClassName="Msvm_ComputerSystem",Name="%s"' % guid)
        config = "Virtual Machines\\%s%s" % (guid, extension)
        if self.ns == NAMESPACE_V1:
            self.add("Msvm_VirtualSystemGlobalSettingData", {"InstanceID": "Microsoft:%s\\Global" % guid, "SystemName": guid,
                                                             "ExternalDataRoot": root, "Version": "2.0"},
                     'InstanceID="Microsoft:%s\\\\Global"' % guid)
            self.add("Msvm_VirtualSystemSettingData", {"InstanceID": "Microsoft:%s" % guid, "SystemName": guid,
                                                       "ElementName": name, "SettingType": 3}, 'InstanceID="Microsoft:%s"' % guid)
            self.put_file(ntpath.join(root, "Virtual Machines", guid + ".xml"), config_bytes(name, disks, 1, "2.0"))
            return vm, None
        vssd = self._settings(vm, guid, "Microsoft:Hyper-V:System:Realized", name, version, generation, root, config, disks, nics)
        self.links.append(("Msvm_SettingsDefineState", vm["__PATH"], vssd["__PATH"]))
        self.put_file(ntpath.join(root, config), config_bytes(name, disks, generation, version, nics))
        if extension == ".vmcx":
            self.put_file(ntpath.join(root, "Virtual Machines", guid + ".vmrs"), b"runtime state")
        return vm, vssd

    def add_recovery_snapshot(self, vm, name, disks, version="10.0", root="D:\\VMs\\web01", nics=()):
        """A recovery checkpoint with its own configuration files (Snapshots\\<id>.vmcx + .vmrs); returns its VSSD."""
        sid = str(uuid.uuid4()).upper()
        config = "Snapshots\\%s.vmcx" % sid
        vssd = self._settings(vm, sid, "Microsoft:Hyper-V:Snapshot:Recovery", name, version, 2, root, config, disks, nics)
        self.links.append(("Msvm_SnapshotOfVirtualSystem", vm["__PATH"], vssd["__PATH"]))
        self.put_file(ntpath.join(root, config), config_bytes(vm["ElementName"], disks, 2, version, nics))
        self.put_file(ntpath.join(root, "Snapshots", sid + ".vmrs"), b"snapshot runtime")
        self.put_file(ntpath.join(root, "Snapshots", "OTHER.vmcx"), b"another snapshot")
        return vssd

    def convert_to_reference_point(self, vssd):
        """What ConvertToReferencePoint does to the checkpoint: gone, with its files."""
        self.instances.remove(vssd)
        self.links = [link for link in self.links if vssd["__PATH"] not in link[1:]]
        for ext in (".vmcx", ".vmrs"):
            self.files.pop(ntpath.join(vssd["ConfigurationDataRoot"], vssd["ConfigurationFile"][:-5] + ext).lower(), None)

    # -- bridge calls -------------------------------------------------------------------------------
    def query(self, namespace, class_name, where=None, properties=None):
        self.calls.append(("query", class_name, dict(where or {})))
        if namespace == NAMESPACE_CIMV2 and class_name == "Win32_OperatingSystem":
            version = OS_VERSIONS[self.era]
            return [{"__CLASS": class_name, "__PATH": "os", "Version": version, "BuildNumber": version.split(".")[-1],
                     "Caption": "Windows Server"}]
        if namespace != self.ns:
            raise BridgeError("invalid namespace %s" % namespace, code=0x8004100E)
        if class_name == "Msvm_VirtualSystemManagementService":
            return [{"__CLASS": class_name, "__PATH": self._path(class_name, 'Name="vmms"'), "Name": "vmms"}]
        out = []
        for inst in self.instances:
            if inst["__CLASS"] != class_name:
                continue
            if all(str(inst.get(k)).lower() == str(v).lower() for k, v in (where or {}).items()):   # WQL '=' ignores case
                out.append(dict(inst))
        return out

    def _by_path(self, path):
        for inst in self.instances:
            if inst["__PATH"] == path:
                return inst
        raise BridgeError("not found: %s" % path, code=0x80041002)

    def associators(self, namespace, path, assoc_class, result_class=None):
        self.calls.append(("associators", assoc_class, result_class))
        out = [self._by_path(to) for assoc, src, to in self.links if assoc == assoc_class and src == path]
        return [dict(i) for i in out if not result_class or i["__CLASS"] == result_class]

    def _job(self, affected=(), code=0, text=None):
        return {"ReturnValue": 4096, "out": {}, "affected": [dict(a, ElementEffects=[5]) for a in affected],
                "job": {"InstanceID": str(uuid.uuid4()), "JobState": 10 if code else 7, "ErrorCode": code,
                        "ErrorDescription": text, "ErrorSummaryDescription": None, "errors": []}}

    def invoke(self, namespace, path, method, arguments=None):
        arguments = arguments or {}
        self.calls.append(("invoke", method, arguments))
        if method in self.fail_method:
            return {"ReturnValue": self.fail_method[method], "out": {}, "job": None, "affected": []}
        return getattr(self, "_m_" + method)(**arguments)

    def _m_ImportSystemDefinition(self, SystemDefinitionFile, SnapshotFolder, GenerateNewSystemIdentifier):  # noqa: N802,N803
        data = self.read_file(SystemDefinitionFile, 1 << 20)
        if data is None:
            return {"ReturnValue": 32779, "out": {}, "job": None, "affected": []}
        doc = json.loads(data.decode("utf-8"))
        guid = str(uuid.uuid4()).upper() if GenerateNewSystemIdentifier else ntpath.basename(SystemDefinitionFile).split(".")[0]
        if any(i["__CLASS"] in ("Msvm_ComputerSystem", "Msvm_PlannedComputerSystem") and i["Name"] == guid for i in self.instances):
            return self._job(code=32774, text="a VM with this id exists")
        planned = self.add("Msvm_PlannedComputerSystem", {"Name": guid, "ElementName": doc["name"], "EnabledState": 3},
                           'CreationClassName="Msvm_PlannedComputerSystem",Name="%s"' % guid)
        disks = [tuple(d) for d in reversed(doc["disks"])]         # another enumeration order than the capture
        vssd = self._settings(planned, guid, "Microsoft:Hyper-V:System:Planned", doc["name"], doc["version"], doc["generation"],
                              ntpath.dirname(ntpath.dirname(SystemDefinitionFile)), SystemDefinitionFile, disks, doc["nics"])
        self.links.append(("Msvm_SettingsDefineState", planned["__PATH"], vssd["__PATH"]))
        return self._job([planned])

    def _m_ModifyResourceSettings(self, ResourceSettings):  # noqa: N803
        for item in ResourceSettings:
            assert isinstance(item, Embedded) and item.based_on, item
            self._by_path(item.based_on).update(item.properties)
        return self._job()

    def _m_ModifySystemSettings(self, SystemSettings):  # noqa: N803
        target = self._by_path(SystemSettings.based_on)
        target.update(SystemSettings.properties)
        return self._job()

    def _planned_vssd(self, ref):
        assert isinstance(ref, Ref)
        return [self._by_path(to) for assoc, src, to in self.links if assoc == "Msvm_SettingsDefineState" and src == ref.path][0]

    def _m_ValidatePlannedSystem(self, PlannedSystem):  # noqa: N803
        vssd = self._planned_vssd(PlannedSystem)
        for assoc, src, to in self.links:
            if src != vssd["__PATH"]:
                continue
            inst = self._by_path(to)
            if inst["__CLASS"] == "Msvm_StorageAllocationSettingData" and inst["HostResource"][0].lower() not in self.files:
                return self._job(code=32768, text="file not found: %s" % inst["HostResource"][0])
            if inst["__CLASS"] == "Msvm_EthernetPortAllocationSettingData" and not inst["HostResource"]:
                return self._job(code=32768, text="could not find Ethernet switch %s" % inst["LastKnownSwitchName"])
        return self._job()

    def _m_RealizePlannedSystem(self, PlannedSystem):  # noqa: N803
        planned = self._by_path(PlannedSystem.path)
        vssd = self._planned_vssd(PlannedSystem)
        planned.update(__CLASS="Msvm_ComputerSystem", __PATH=planned["__PATH"].replace("Msvm_PlannedComputerSystem", "Msvm_ComputerSystem"),
                       ElementName=vssd["ElementName"])
        self.links = [(a, planned["__PATH"] if "PlannedComputerSystem" in s else s, t) for a, s, t in self.links]
        vssd["VirtualSystemType"] = "Microsoft:Hyper-V:System:Realized"
        return self._job([planned])

    def _m_DestroySystem(self, AffectedSystem):  # noqa: N803
        self.instances = [i for i in self.instances if i["__PATH"] != AffectedSystem.path]
        return self._job()

    def read_file(self, path, max_bytes):
        item = self.files.get(path.lower())
        return None if item is None else item[1][:max_bytes]

    def write_file(self, path, data, exclusive=False):
        if exclusive and path.lower() in self.files:
            raise BridgeError("%s exists" % path, code="exists")
        self.put_file(path, data)
        return {"modified": "20261202000000.000000+000", "now": "20261202000000.000000+000"}

    def remove_file(self, path):
        return self.files.pop(path.lower(), None) is not None

    def list_directory(self, path):
        prefix = path.rstrip("\\").lower() + "\\"
        entries = {}
        for low, (real, data) in self.files.items():
            if low.startswith(prefix):
                rest = real[len(prefix):]
                name = rest.split("\\", 1)[0]
                entries[name] = {"name": name, "directory": "\\" in rest, "length": 0 if "\\" in rest else len(data),
                                 "modified": "20261202000000.000000+000"}
        return {"now": "20261202000000.000000+000", "entries": sorted(entries.values(), key=lambda e: e["name"])}

    def host_environment(self):
        return {"ps_version": "2.0", "program_data": "C:\\ProgramData", "computer_name": self.host.upper(),
                "now": "20261202000000.000000+000"}
