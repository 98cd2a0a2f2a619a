"""Every WMI name the Python Hyper-V logic uses is in Microsoft's schema, for the era it talks to.

The operations of ``hyperv/host_operations.py`` run against a lab host of each era through a bridge
that records every call (class, properties asked for or filtered on, properties read from the
results, methods and their parameter names, associations). Each recorded name is then checked
against ``shared/reference/hyperv_wmi_schema.json``: a name the schema does not list for that
namespace and era fails the test, whoever wrote it (the logic or the emulator answering it).
"""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import Embedded
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout

from wmi_schema import SCHEMA_PATH, Schema

pytestmark = pytest.mark.skipif(not SCHEMA_PATH.is_file(), reason="shared/reference is not beside the checkout")

MIB = 1024 * 1024


class TrackedInstance(dict):
    """An instance that remembers which properties the caller read."""

    def __init__(self, data, reads):
        super().__init__(data)
        self._reads = reads
        self._key = (data.get("__NAMESPACE"), data.get("__CLASS"))

    def _note(self, name):
        if isinstance(name, str) and not name.startswith("__") and name not in ("ElementEffects",):
            # A read of a property the instance lacks is a defensive fallback: it only has to exist in some era.
            self._reads.add(self._key + (name, dict.__contains__(self, name)))

    def __getitem__(self, name):
        self._note(name)
        return super().__getitem__(name)

    def get(self, name, default=None):
        self._note(name)
        return super().get(name, default)


class RecordingBridge:
    """Wraps a bridge; every WMI name that crosses it is kept in ``calls``/``reads``."""

    def __init__(self, inner):
        self.inner = inner
        self.host = inner.host
        self.classes = set()        # (namespace, class)
        self.properties = set()     # (namespace, class, property) named in queries
        self.reads = set()          # (namespace, class, property, present) read from results
        self.methods = set()        # (namespace, class, method, (param names))
        self.path_map = getattr(inner, "path_map", None)

    def _track(self, items):
        out = []
        for item in items:
            self.classes.add((item.get("__NAMESPACE"), item.get("__CLASS")))
            out.append(TrackedInstance(item, self.reads))
        return out

    def query(self, namespace, class_name, where=None, properties=None):
        self.classes.add((namespace, class_name))
        for prop in list(where or {}) + list(properties or []):
            self.properties.add((namespace, class_name, prop))
        return self._track(self.inner.query(namespace, class_name, where=where, properties=properties))

    def associators(self, namespace, path, assoc_class, result_class=None):
        self.classes.add((namespace, assoc_class))
        if result_class:
            self.classes.add((namespace, result_class))
        return self._track(self.inner.associators(namespace, path, assoc_class, result_class=result_class))

    def invoke(self, namespace, path, method, arguments=None):
        target = path.rsplit(":", 1)[-1].split(".", 1)[0]
        self.methods.add((namespace, target, method, tuple(sorted(arguments or {}))))
        for value in (arguments or {}).values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, Embedded):
                    self.classes.add((namespace, item.class_name))
                    for prop in item.properties:
                        self.properties.add((namespace, item.class_name, prop))
        result = self.inner.invoke(namespace, path, method, arguments)
        result = dict(result)
        result["affected"] = self._track(result.get("affected") or [])
        return result

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _problems(schema, recorder, era):
    problems = []
    for namespace, class_name in sorted(recorder.classes, key=str):
        if namespace and class_name:
            problems += schema.check_class(namespace, class_name, era)
    for namespace, class_name, prop in sorted(recorder.properties, key=str):
        if namespace and class_name:
            problems += schema.check_property(namespace, class_name, prop, era)
    for namespace, class_name, prop, present in sorted(recorder.reads, key=str):
        if namespace and class_name:
            problems += schema.check_property(namespace, class_name, prop, era if present else "2025")
    for namespace, class_name, method, params in sorted(recorder.methods, key=str):
        problems += schema.check_method(namespace, class_name, method, params, era)
    return sorted(set(problems))


def _run_workflow(bridge, vm_name, era):
    from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_operations import run_operation

    def run(operation, **params):
        return run_operation(bridge, operation, params)
    run("get_host_info")
    run("get_service", name="vss")
    vm = [v for v in run("get_vms") if v["name"] == vm_name][0]
    method = "rct" if era not in ("2008r2", "2012", "2012r2") else "vss"
    point = run("create_recovery_point", vm_id=vm["id"], method=method, consistency="application_or_crash",
                tag="hyperv.backup:schema-test")
    run("get_recovery_points", vm_id=vm["id"])
    run("get_vm_configuration", vm_id=vm["id"], recovery_point_id=point["id"])
    if method == "rct":
        reference = run("convert_to_reference_point", vm_id=vm["id"], id=point["id"])
        run("get_reference_points", vm_id=vm["id"])
        disk = vm["disks"][0]
        rct_id = list(reference["rct_ids"].values())[0]
        second = run("create_recovery_point", vm_id=vm["id"], method=method, consistency="application_or_crash",
                     tag="hyperv.backup:schema-test-2")
        frozen = second["disks"][0]["path"]
        run("get_disk_changes", path=frozen, limit_id=rct_id, byte_offset=0, byte_length=disk["virtual_size"])
        run("remove_recovery_point", vm_id=vm["id"], id=second["id"])
        run("remove_reference_point", vm_id=vm["id"], id=reference["id"])
    else:
        run("remove_recovery_point", vm_id=vm["id"], id=point["id"])


@pytest.mark.parametrize("era", ["2008r2", "2012", "2012r2", "2016", "2019", "2022", "2025"])
def test_every_wmi_name_the_logic_uses_is_documented_for_its_era(tmp_path, era):
    layout = LabLayout(str(tmp_path), "hv-" + era)
    lab_admin.ensure_host(layout, era=era, services={"vss": "Running"})
    lab_admin.ensure_vm(layout, {"name": "vm1", "disks": [{"size": 16 * MIB}]})
    from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge import LabBridge
    recorder = RecordingBridge(LabBridge(str(tmp_path), "hv-" + era))
    _run_workflow(recorder, "vm1", era)
    assert recorder.methods, "the workflow invoked no WMI method"
    assert _problems(Schema(), recorder, era) == []


def test_the_check_catches_an_undocumented_name():
    schema = Schema()
    assert schema.check_class("root\\virtualization\\v2", "Msvm_VirtualSystemReferencePoint", "2012r2")
    assert schema.check_property("root\\virtualization\\v2", "Msvm_VirtualSystemReferencePoint", "CreationTime", "2022")
    assert schema.check_property("root\\virtualization\\v2", "Msvm_VirtualHardDiskSettingData", "VirtualDiskId", "2012")
    assert not schema.check_property("root\\virtualization\\v2", "Msvm_VirtualHardDiskSettingData", "VirtualDiskId", "2016")
    assert schema.check_method("root\\virtualization\\v2", "Msvm_ImageManagementService", "GetVirtualDiskChanges", (), "2012r2")
    assert schema.check_class("root\\virtualization", "Msvm_ComputerSystem", "2016")
