"""hyperv/wmi.py (namespace, call, errors, times, ids) and hyperv/vss_writer.py (vssadmin by position)."""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import (
    NAMESPACE_V1, NAMESPACE_V2, WBEM_E_INVALID_CLASS, WBEM_E_NOT_FOUND, BridgeError)
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import host_checks, vss_writer, wmi

from hyperv_fake_bridge import FakeBridge


@pytest.mark.parametrize("era, expected", [("2008r2", NAMESPACE_V1), ("2012", NAMESPACE_V2), ("2012r2", NAMESPACE_V2),
                                           ("2016", NAMESPACE_V2), ("2022", NAMESPACE_V2)])
def test_namespace_by_os_version_and_cached(era, expected):
    bridge = FakeBridge(era)
    assert wmi.namespace(bridge) == expected
    assert wmi.namespace(bridge) == expected
    assert len(bridge.queried("Win32_OperatingSystem")) == 1


def test_service_is_the_single_instance_and_cached():
    bridge = FakeBridge("2016")
    assert wmi.service(bridge, wmi.VSMS, "op")["Name"] == "vmms"
    wmi.service(bridge, wmi.VSMS, "op")
    assert len(bridge.queried(wmi.VSMS)) == 1


def _bridge_returning(result):
    bridge = FakeBridge("2016")
    bridge.methods["M"] = lambda path, arguments: result
    return bridge


@pytest.mark.parametrize("code, category", [(32770, "unsupported"), (1, "unsupported"), (32774, "busy"), (32768, "recovery_point"),
                                            (4, "recovery_point"), (32779, "recovery_point")])
def test_return_values_become_categories(code, category):
    bridge = _bridge_returning({"ReturnValue": code, "out": {}, "job": None, "affected": []})
    with pytest.raises(HostOperationError) as caught:
        wmi.call(bridge, "create_recovery_point", NAMESPACE_V2, "p", "M", category="recovery_point")
    assert caught.value.category == category
    assert str(code) in caught.value.message and wmi.return_text(code) in caught.value.message
    assert caught.value.windows_error == "ReturnValue %d" % code and caught.value.hint


def test_caller_table_wins_and_jobs_are_followed():
    bridge = _bridge_returning({"ReturnValue": 32779, "out": {}, "job": None, "affected": []})
    with pytest.raises(HostOperationError) as caught:
        wmi.call(bridge, "import_vm", NAMESPACE_V2, "p", "M", code_categories={32779: "busy"})
    assert caught.value.category == "busy"
    ok = {"ReturnValue": 4096, "out": {"X": 1}, "job": {"JobState": 7, "ErrorCode": 0}, "affected": []}
    assert wmi.call(_bridge_returning(ok), "op", NAMESPACE_V2, "p", "M")["out"] == {"X": 1}
    warned = {"ReturnValue": 4096, "out": {}, "job": {"JobState": 32768, "ErrorCode": 0}, "affected": []}
    assert wmi.call(_bridge_returning(warned), "op", NAMESPACE_V2, "p", "M")
    failed = {"ReturnValue": 4096, "out": {}, "affected": [],
              "job": {"JobState": 10, "ErrorCode": 32774, "ErrorDescription": "The VM is being backed up", "errors": ["<x/>"]}}
    with pytest.raises(HostOperationError) as caught:
        wmi.call(_bridge_returning(failed), "op", NAMESPACE_V2, "p", "M", category="change_tracking")
    assert caught.value.category == "busy" and "being backed up" in caught.value.message
    assert caught.value.details()["job_errors"] == ["<x/>"]
    failed["job"]["ErrorCode"] = 32768
    with pytest.raises(HostOperationError) as caught:
        wmi.call(_bridge_returning(failed), "op", NAMESPACE_V2, "p", "M", category="change_tracking")
    assert caught.value.category == "change_tracking" and "Exception" in caught.value.message


def test_bridge_errors_map_to_categories():
    bridge = FakeBridge("2016")
    with pytest.raises(HostOperationError) as caught:
        wmi.call(bridge, "op", NAMESPACE_V2, "p", "NoSuchMethod")
    assert caught.value.category == "unsupported"
    for code, category in ((WBEM_E_INVALID_CLASS, "unsupported"), (WBEM_E_NOT_FOUND, "not_found"), (0x80070005, "failed")):
        error = wmi.bridge_failure(bridge, "op", BridgeError("boom", code=code), "reading X")
        assert error.category == category and "reading X failed: boom" in error.message
    assert wmi.bridge_failure(bridge, "op", BridgeError("x", category="unreachable"), "y").category == "unreachable"
    assert wmi.bridge_failure(bridge, "op", BridgeError("x", code=WBEM_E_INVALID_CLASS), "y").windows_error == "0x80041010"


def test_affected_elements_by_effect_and_class():
    result = {"affected": [{"__CLASS": "Msvm_VirtualSystemSettingData", "ElementEffects": [5], "InstanceID": "a"},
                           {"__CLASS": "Msvm_ComputerSystem", "ElementEffects": [2], "Name": "vm"},
                           {"__CLASS": "Msvm_VirtualSystemSettingData", "ElementEffects": [2], "InstanceID": "b"}]}
    assert [e["InstanceID"] for e in wmi.affected_elements(result, "Msvm_VirtualSystemSettingData")] == ["a"]
    assert len(wmi.affected_elements(result, effect=None)) == 3


def test_dmtf_times():
    assert wmi.dmtf_to_iso("20261202073512.123456+000") == "2026-12-02T07:35:12.123456Z"
    assert wmi.dmtf_to_iso("20261202003512.000000+120") == "2026-12-01T22:35:12.000000Z"
    assert wmi.dmtf_to_iso("20261202003512.000000-300") == "2026-12-02T05:35:12.000000Z"
    assert wmi.dmtf_to_iso("00000000000500.000000:000") is None
    assert wmi.dmtf_to_iso(None) is None and wmi.dmtf_to_iso("") is None
    assert wmi.iso_to_dmtf("2026-12-02T07:35:12.123456Z") == "20261202073512.123456+000"
    assert wmi.iso_to_dmtf("2026-12-02T08:35:12+01:00") == "20261202073512.000000+000"
    assert wmi.dmtf_to_iso(wmi.iso_to_dmtf("2026-01-31T23:59:59.000001Z")) == "2026-01-31T23:59:59.000001Z"


def test_ids():
    guid = "5ced1297-4598-4915-a5fc-ad21bb4d02a4"
    assert wmi.guid_suffix("Microsoft:5CED1297-4598-4915-A5FC-AD21BB4D02A4") == guid
    assert wmi.guid_suffix("Microsoft:4EA7033C-1111-4A2B-9C3D-0123456789AB\\5CED1297-4598-4915-A5FC-AD21BB4D02A4") == guid
    assert wmi.guid_suffix("Microsoft:VSS") is None
    assert wmi.canonical_guid("{4EA7033C-1111-4A2B-9C3D-0123456789AB}") == "4ea7033c-1111-4a2b-9c3d-0123456789ab"
    assert wmi.canonical_guid("HV01") is None
    assert wmi.substitute_disk_id("D:\\a.vhd") == wmi.substitute_disk_id("d:\\A.VHD") != wmi.substitute_disk_id("d:\\b.vhd")
    assert wmi.canonical_guid(wmi.substitute_disk_id("D:\\a.vhd"))


def test_parse_embedded_fallback_reads_values_arrays_and_nulls():
    text = ('<INSTANCE CLASSNAME="Msvm_VirtualHardDiskSettingData"><PROPERTY NAME="Format" TYPE="uint16"><VALUE>3</VALUE>'
            '</PROPERTY><PROPERTY NAME="ParentPath" TYPE="string"></PROPERTY><PROPERTY.ARRAY NAME="A" TYPE="string">'
            '<VALUE.ARRAY><VALUE>x</VALUE><VALUE>y</VALUE></VALUE.ARRAY></PROPERTY.ARRAY></INSTANCE>')
    parsed = wmi.parse_embedded(text)
    assert int(parsed["Format"]) == 3 and parsed["ParentPath"] is None and parsed["A"] == ["x", "y"]


ENGLISH = """vssadmin 1.1 - Volume Shadow Copy Service administrative command-line tool
(C) Copyright 2001-2013 Microsoft Corp.

Writer name: 'System Writer'
   Writer Id: {e8132975-6f93-4464-a53e-1050253ae220}
   Writer Instance Id: {7848396d-00b1-47cd-8ba9-769b7ce402d2}
   State: [7] Failed
   Last error: Retryable error

Writer name: 'Microsoft Hyper-V VSS Writer'
   Writer Id: {66841cd4-6ded-4f4b-8f17-fd23f8ddc3de}
   Writer Instance Id: {8a6d8a5c-0000-4000-8000-000000000001}
   State: [5] Waiting for completion
   Last error: No error
"""


def test_vssadmin_english_by_position_other_writers_ignored():
    parsed = vss_writer.parse_writer(ENGLISH)
    assert parsed == {"state": "[5] Waiting for completion", "state_number": 5, "last_error": "No error"}
    assert host_checks.vss_writer_check(parsed)["ok"]
    missing = vss_writer.parse_writer(ENGLISH.replace("66841cd4", "00000000"))
    assert missing == {"state": None, "state_number": None, "last_error": None}


def test_writer_judged_by_number_only():
    # Point 6: a stable writer on a German host (the old check wanted the English "No error").
    assert host_checks.vss_writer_check({"state": "[1] Stabil", "last_error": "Kein Fehler"})["ok"]
    assert not host_checks.vss_writer_check({"state": "[9] Fehlgeschlagen bei Einfrieren", "last_error": "x"})["ok"]
    assert not host_checks.vss_writer_check({"state": None})["ok"]
    assert not host_checks.vss_writer_check({"state": "Stable", "last_error": "No error"})["ok"]   # no number: not judged ok


def test_backup_integration_by_id_not_by_localised_name():
    german = {"name": "Sicherung (Volumeschattenkopie)", "id": "5CED1297-4598-4915-A5FC-AD21BB4D02A4", "enabled": True,
              "operational_status": "OK"}
    heartbeat = {"name": "Takt", "id": "84EAAE65-2F2E-45F5-9BB5-0E857DC8EB47", "enabled": True, "operational_status": "OK"}
    vm = {"name": "web01", "state": "Running", "integration_services": [heartbeat, german]}
    assert host_checks.backup_integration(vm) is german
    assert host_checks.integration_check(vm)["ok"]
    assert host_checks.backup_integration({"integration_services": [dict(heartbeat, name="VSS")]}) is None
    assert host_checks.backup_integration({"integration_services": [{"name": "VSS", "enabled": True}]})["name"] == "VSS"


def test_point7_Ok_from_powershell_was_judged_not_answering():
    # What the old enable script returned ('Ok') fails the check; inventory's 'OK' passes (see test_hyperv_inventory).
    vm = {"name": "web01", "state": "Running", "integration_services": [{"name": "VSS", "enabled": True, "operational_status": "Ok"}]}
    assert not host_checks.integration_check(vm)["ok"]
