"""Schema conformance of the lab's WMI emulation: every class, property, key, method, parameter and association
LabBridge exposes, per era and namespace, must be listed by hyperv_wmi_schema.json for that namespace and era.

Rules where the schema is thin (each one a documented choice, not a guess at a name):
- v1 classes for which the schema's v1 part lists no properties (Msvm_ComputerSystem, RASD, the services,
  Msvm_ConcreteJob) may expose only properties the v2 class of the same name lists without a "since" later than
  2012: both derive from the same CIM class (CIM_ComputerSystem, CIM_ResourceAllocationSettingData, ...).
- v1 associations other than Msvm_SettingsDefineState (named in the v1 notes) are in V1_ASSOCIATIONS_UNCONFIRMED.
- Win32_OperatingSystem is in the schema's "related_not_detailed" part, which names Version, BuildNumber, Caption.
"""
import json
import os

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import (
    NAMESPACE_CIMV2, NAMESPACE_CLUSTER, NAMESPACE_V1, NAMESPACE_V2, Ref)
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin, wmi_classes
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge import METHOD_HANDLERS, LabBridge
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_model import parse_path

from test_lab_helpers import build_host
from test_lab_wmi import Wmi

# The shared reference lives beside the repository (/work/shared/reference); HYPERV_WMI_SCHEMA overrides.
SCHEMA_FILE = os.environ.get("HYPERV_WMI_SCHEMA", os.path.abspath(os.path.join(
    os.path.dirname(os.path.realpath(__file__)), "..", "..", "..", "..", "..", "shared", "reference", "hyperv_wmi_schema.json")))
SINCE = {"2003": "2008r2", "2008": "2008r2", "2008 R2": "2008r2", "2012": "2012", "2012 R2": "2012r2", "2016": "2016",
         "1703": "2019", "1709": "2019", "1803": "2019", "2019": "2019", "2022": "2022"}
# The v1 import is NOT in the schema (the lead is asked to add it); what the emulator exposes of it must be exactly this.
# Sources: learn.microsoft.com/en-us/previous-versions/windows/desktop/virtual/msvm-virtualsystemmanagementservice-importvirtualsystemex
# and ...-getvirtualsystemimportsettingdata; the settings class as Microsoft's blog "Hyper-V R2 Import/Export - Part 2"
# (MicrosoftDocs/Virtualization-Documentation) dumps it.
V1_NOT_IN_SCHEMA_METHODS = {"GetVirtualSystemImportSettingData": {"ImportDirectory"},
                            "ImportVirtualSystemEx": {"ImportDirectory", "ImportSettingData"}}
V1_NOT_IN_SCHEMA_CLASSES = {"Msvm_VirtualSystemImportSettingData": {
    "Caption", "CreateCopy", "CurrentResourcePaths", "Description", "ElementName", "GenerateNewId", "InstanceID", "Name",
    "SecurityScope", "SourceNetworkConnections", "SourceResourcePaths", "SourceSnapshotDataRoot", "SourceVhdDataRoot",
    "SourceVmDataRoot", "TargetNetworkConnections", "TargetResourcePaths", "TargetSnapshotDataRoot", "TargetVhdDataRoot",
    "TargetVmDataRoot"}}
V1_ASSOCIATIONS_UNCONFIRMED = {
    "Msvm_VirtualSystemSettingDataComponent": "os-win's v1 code walked VSSD -> RASD with associators (ResultClass only)",
    "Msvm_AffectedJobElement": "os-win's v1 code read the new snapshot from the job's associators",
}


@pytest.fixture(scope="module")
def schema():
    if not os.path.isfile(SCHEMA_FILE):
        pytest.skip("hyperv_wmi_schema.json not found at %s (set HYPERV_WMI_SCHEMA)" % SCHEMA_FILE)
    with open(SCHEMA_FILE) as handle:
        return json.load(handle)


def exists_in(since, era):
    return not since or wmi_classes.era_index(era) >= wmi_classes.era_index(SINCE[since])


def allowed_properties(schema, namespace, class_name, era):
    """{property: since-ok} the schema lists for the class in that namespace and era."""
    if namespace == NAMESPACE_V2:
        entry = schema["classes"][class_name]
        assert entry["namespace"] == NAMESPACE_V2 and exists_in(entry["since"], era), class_name
        names = set(name for name, prop in entry["properties"].items() if exists_in(prop.get("since"), era)
                    and not (prop.get("removed") and not exists_in(None, era)))
        return names | set(entry["keys"])
    if namespace == NAMESPACE_V1:
        if class_name in V1_NOT_IN_SCHEMA_CLASSES:
            return V1_NOT_IN_SCHEMA_CLASSES[class_name]
        entry = schema["v1"]["classes"][class_name]
        if entry.get("properties"):
            return set(entry["properties"]) | set(entry.get("keys", []))
        v2 = schema["classes"][class_name]
        return set(name for name, prop in v2["properties"].items() if exists_in(prop.get("since"), "2012")) | set(entry.get("keys", []))
    if class_name == "Win32_OperatingSystem":
        text = schema["related_not_detailed"]["Win32_OperatingSystem"]
        return set(name for name in ("Version", "BuildNumber", "Caption") if name in text)
    entry = schema["classes"][class_name]
    assert entry["namespace"] == namespace
    return set(name for name, prop in entry["properties"].items() if exists_in(prop.get("since"), era)) | set(entry["keys"])


def schema_keys(schema, namespace, class_name):
    if class_name in V1_NOT_IN_SCHEMA_CLASSES:
        return []
    if namespace == NAMESPACE_V1:
        return schema["v1"]["classes"][class_name].get("keys", schema["classes"].get(class_name, {}).get("keys", []))
    if class_name == "Win32_OperatingSystem":
        return []
    return schema["classes"][class_name]["keys"]


@pytest.mark.parametrize("era", wmi_classes.ERA_ORDER)
def test_every_class_property_and_key_is_in_the_schema(schema, era):
    for namespace in (NAMESPACE_V2, NAMESPACE_V1, NAMESPACE_CIMV2, NAMESPACE_CLUSTER):
        table = wmi_classes.class_table(namespace, era)
        if table is None:
            assert era not in schema["version_matrix"]["namespaces"].get(
                "root\\virtualization (v1)" if namespace == NAMESPACE_V1 else namespace, [era]) or era == "2012"
            continue
        for class_name, (keys, props) in table.items():
            allowed = allowed_properties(schema, namespace, class_name, era)
            extra = set(props) - allowed
            assert not extra, "%s %s on %s: not in the schema: %s" % (namespace, class_name, era, sorted(extra))
            assert list(keys) == list(schema_keys(schema, namespace, class_name)), class_name


def test_namespaces_per_era(schema):
    v1_eras = [wmi_classes.ERA_ORDER[0] if name == "2008 R2" else name.lower().replace(" ", "")
               for name in schema["version_matrix"]["namespaces"]["root\\virtualization (v1)"] if name != "2008"]
    assert list(wmi_classes.NAMESPACE_ERAS[NAMESPACE_V1]) == v1_eras
    assert wmi_classes.NAMESPACE_ERAS[NAMESPACE_V2][0] == "2012"


@pytest.mark.parametrize("era", wmi_classes.ERA_ORDER)
def test_every_method_and_parameter_is_in_the_schema(schema, era):
    for (namespace_lower, class_name, method), (_handler, parameters) in METHOD_HANDLERS.items():
        namespace = NAMESPACE_V1 if namespace_lower == NAMESPACE_V1.lower() else NAMESPACE_V2
        if wmi_classes.class_table(namespace, era) is None or method not in wmi_classes.methods_of(namespace, class_name, era):
            continue
        if namespace == NAMESPACE_V1 and method in V1_NOT_IN_SCHEMA_METHODS:
            assert set(parameters) == V1_NOT_IN_SCHEMA_METHODS[method]
            continue
        if namespace == NAMESPACE_V1:
            entry = schema["v1"]["classes"][class_name]["methods"][method]
        else:
            klass = schema["classes"][class_name]
            entry = klass["methods"][method]
            assert exists_in(entry.get("since") or klass["since"], era), (class_name, method, era)
        assert set(parameters) == set(entry["in"]), (class_name, method)
    for namespace, classes in wmi_classes.NOT_EMULATED.items():   # refused as "not implemented": must exist on Windows
        for class_name, methods in classes.items():
            if namespace == NAMESPACE_V1:
                listed = schema["v1"]["classes"][class_name]
                names = set(listed.get("methods", {})) | set(listed.get("notes", "").replace(".", ",").replace(":", ",").split(", "))
            else:
                names = set(schema["classes"][class_name]["methods"])
            assert set(methods) <= names, (class_name, sorted(set(methods) - names))


@pytest.mark.parametrize("era", wmi_classes.ERA_ORDER)
def test_every_association_is_in_the_schema(schema, era):
    for namespace in (NAMESPACE_V2, NAMESPACE_V1):
        if wmi_classes.class_table(namespace, era) is None:
            continue
        for name in wmi_classes.associations_of(namespace, era):
            if namespace == NAMESPACE_V2:
                entry = schema["associations"][name]
                assert entry["namespace"] == NAMESPACE_V2 and exists_in(entry["since"], era), (name, era)
            else:
                assert name in schema["v1"]["classes"]["association_notes"] or name in V1_ASSOCIATIONS_UNCONFIRMED, name


@pytest.mark.parametrize("era", wmi_classes.ERA_ORDER)
def test_every_instance_the_lab_builds_conforms(schema, tmp_path, era):
    """Walk every class of a busy host (checkpoints, a reference point, a planned VM is not needed) per era."""
    layout, _transport, _ids = build_host(tmp_path, era=era, vms=("web01", {"name": "gen1", "generation": 1}),
                                          cluster={"name": "CL1"}, csvs=["C:\\ClusterStorage\\Volume1"])
    lab_admin.add_passthrough_disk(layout, "web01")
    bridge = LabBridge(str(tmp_path), "hv01")
    if wmi_classes.class_table(NAMESPACE_V2, era) is not None:
        wmi = Wmi(bridge)
        vm = wmi.vm("web01")
        result = wmi.invoke("Msvm_VirtualSystemSnapshotService", "CreateSnapshot", AffectedSystem=Ref(vm["__PATH"]), SnapshotType=2)
        assert result["ReturnValue"] == 4096
        if wmi_classes.available("2016", era):
            wmi.convert(wmi.recovery_checkpoint(vm))
        lab_admin.add_foreign_reference_point(layout, "gen1", 1)
    seen = 0
    for namespace in (NAMESPACE_V2, NAMESPACE_V1, NAMESPACE_CIMV2, NAMESPACE_CLUSTER):
        table = wmi_classes.class_table(namespace, era)
        if table is None:
            continue
        for class_name, (keys, _props) in table.items():
            if class_name in wmi_classes.EMBEDDED_ONLY.get(namespace, ()):
                continue
            allowed = allowed_properties(schema, namespace, class_name, era)
            for instance in bridge.query(namespace, class_name):
                seen += 1
                extra = set(name for name in instance if not name.startswith("__")) - allowed
                assert not extra, (class_name, extra)
                if keys:
                    assert sorted(parse_path(instance["__PATH"])[2]) == sorted(keys)
                    assert bridge.query(namespace, class_name, where=dict((key, instance[key]) for key in keys))[0]["__PATH"] == \
                        instance["__PATH"]
    assert seen > 20
