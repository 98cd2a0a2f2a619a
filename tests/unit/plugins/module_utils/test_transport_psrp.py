"""PsrpBridge at the pypsrp boundary: which script and parameters are sent, how output and failures come back."""
import base64
import json
import logging

import pytest
import requests
from pypsrp.exceptions import AuthenticationError, WinRMTransportError

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host import transport_psrp
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import NAMESPACE_V2, Bridge, BridgeError, Embedded, Ref
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge_scripts import SCRIPTS
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import ConnectionSettings
from ansible_collections.hyperv.backup.plugins.module_utils.host.script_bridge import decode_records

PASSWORD = "pa$$-W0rd-xyz"
NASTY = "web'01\"; $(Remove-Item C:\\ -Recurse); `n\\ \u00e4\u20ac"


class FakeStreams(object):
    def __init__(self, errors):
        self.error = errors


class FakeWorld(object):
    """Records what the transport does with pypsrp's WSMan, RunspacePool and PowerShell."""

    def __init__(self, output=None, errors=(), invoke_error=None, open_error=None):
        self.output = output if output is not None else []
        self.errors = list(errors)
        self.invoke_error = invoke_error
        self.open_error = open_error
        self.wsman_kwargs = None
        self.pool_kwargs = None
        self.scripts = []
        self.parameters = []
        self.pools_opened = 0
        self.pools_closed = 0
        world = self

        class WSMan(object):
            def __init__(self, **kwargs):
                world.wsman_kwargs = kwargs

        class RunspacePool(object):
            def __init__(self, wsman, **kwargs):
                world.pool_kwargs = kwargs

            def open(self):
                if world.open_error:
                    raise world.open_error
                world.pools_opened += 1

            def close(self):
                world.pools_closed += 1

        class PowerShell(object):
            def __init__(self, pool):
                self.had_errors = bool(world.errors)
                self.streams = FakeStreams(world.errors)

            def add_script(self, text):
                world.scripts.append(text)
                return self

            def add_parameters(self, params):
                world.parameters.append(dict(params))
                return self

            def invoke(self):
                if world.invoke_error:
                    raise world.invoke_error
                return world.output

        self.classes = dict(WSMan=WSMan, RunspacePool=RunspacePool, PowerShell=PowerShell)


@pytest.fixture
def world(monkeypatch):
    def make(**kwargs):
        w = FakeWorld(**kwargs)
        for name, cls in w.classes.items():
            monkeypatch.setattr(transport_psrp, name, cls)
        monkeypatch.setattr(transport_psrp, "HAS_PYPSRP", True)
        return w
    return make


def bridge(**overrides):
    options = dict(host="hv01", username="admin", password=PASSWORD, transport="psrp")
    options.update(overrides)
    return transport_psrp.PsrpBridge(ConnectionSettings(**options))


def result(value):
    return [json.dumps({"result": value})]


def test_psrp_bridge_is_a_bridge():
    assert isinstance(bridge(), Bridge)


def test_query_sends_the_fixed_script_and_values_only_as_parameters(world):
    instance = {"__CLASS": "Msvm_ComputerSystem", "__PATH": "p", "ElementName": NASTY, "OnTimeInMilliseconds": 18446744073709551615}
    w = world(output=result([instance]))
    b = bridge(operation_timeout=120)
    got = b.query(NAMESPACE_V2, "Msvm_ComputerSystem", where={"ElementName": NASTY, "EnabledState": 2, "X": None},
                  properties=["ElementName"])
    b.close()
    assert got == [instance]                                  # uint64 exact
    assert w.scripts == [SCRIPTS["query"].text]
    assert NASTY not in w.scripts[0]
    sent = w.parameters[0]
    assert sent["Namespace"] == NAMESPACE_V2 and sent["ClassName"] == "Msvm_ComputerSystem" and sent["Properties"] == ["ElementName"]
    assert sorted(decode_records(sent["Where"])) == sorted([
        ("V", "w", "ElementName", [("s", NASTY)]), ("V", "w", "EnabledState", [("i", "2")]), ("V", "w", "X", [("n", "")])])
    assert set(sent) == set(SCRIPTS["query"].parameters)
    assert w.pools_opened == 1 and w.pools_closed == 1


def test_invoke_encodes_refs_embedded_instances_and_arrays(world):
    w = world(output=result({"ReturnValue": 4096, "out": {}, "job": {"JobState": 7, "ErrorCode": 0, "errors": []}, "affected": []}))
    nested = Embedded("Msvm_Inner", {"Values": [1, 2]}, based_on="\\\\hv\\root:Msvm_Inner.InstanceID=\"a\"")
    settings = Embedded("Msvm_VirtualSystemSnapshotSettingData", {"ConsistencyLevel": 1, "IgnoreNonSnapshottableDisks": True,
                                                                  "Inner": nested, "ElementName": NASTY})
    answer = bridge(operation_timeout=900).invoke(NAMESPACE_V2, "svc-path", "CreateSnapshot", {
        "AffectedSystem": Ref("vm-path"), "SnapshotSettings": settings, "SnapshotType": 32768, "Many": [Ref("a"), Ref("b")], "Empty": []})
    assert answer["ReturnValue"] == 4096 and answer["job"]["JobState"] == 7
    sent = w.parameters[0]
    assert sent["HvTimeoutSeconds"] == 900 and sent["Method"] == "CreateSnapshot" and sent["Path"] == "svc-path"
    records = decode_records(sent["Arguments"])
    defined = [r for r in records if r[0] == "E"]
    assert defined == [("E", "0", "Msvm_Inner", "\\\\hv\\root:Msvm_Inner.InstanceID=\"a\""),
                       ("E", "1", "Msvm_VirtualSystemSnapshotSettingData", "")]    # nested first
    assert ("A", "e0", "Values", [("i", "1"), ("i", "2")]) in records
    assert ("V", "e1", "Inner", [("e", "0")]) in records and ("V", "e1", "ElementName", [("s", NASTY)]) in records
    assert ("V", "e1", "IgnoreNonSnapshottableDisks", [("b", "1")]) in records
    assert ("V", "a", "SnapshotSettings", [("e", "1")]) in records and ("V", "a", "AffectedSystem", [("r", "vm-path")]) in records
    assert ("A", "a", "Many", [("r", "a"), ("r", "b")]) in records and ("A", "a", "Empty", []) in records
    assert records.index(defined[1]) < records.index(("V", "a", "SnapshotSettings", [("e", "1")]))
    assert NASTY not in w.scripts[0]


@pytest.mark.parametrize("bad", ["a b", "x;y", "1abc", "", "Name'"])
def test_names_are_checked_before_anything_is_sent(world, bad):
    w = world(output=result([]))
    b = bridge()
    for call in (lambda: b.query(NAMESPACE_V2, bad), lambda: b.query(NAMESPACE_V2, "C", where={bad: 1}),
                 lambda: b.query(NAMESPACE_V2, "C", properties=[bad]), lambda: b.invoke(NAMESPACE_V2, "p", bad),
                 lambda: b.invoke(NAMESPACE_V2, "p", "M", {"A": Embedded(bad)}), lambda: b.associators(NAMESPACE_V2, "p", bad)):
        with pytest.raises(BridgeError) as err:
            call()
        assert err.value.code == 0x80041017
    assert w.scripts == []


@pytest.mark.parametrize("namespace", ["root\\virtualization\\v2:Msvm_X", "\\\\evil\\root", "root\\", "", None, "root/v2"])
def test_namespaces_are_checked_before_anything_is_sent(world, namespace):
    w = world(output=result([]))
    with pytest.raises(BridgeError) as err:
        bridge().query(namespace, "Msvm_ComputerSystem")
    assert err.value.code == 0x8004100E and w.scripts == []


def test_where_refuses_lists(world):
    world(output=result([]))
    with pytest.raises(BridgeError):
        bridge().query(NAMESPACE_V2, "C", where={"A": [1, 2]})


def test_error_document_becomes_bridge_error_with_the_hresult(world):
    doc = {"error": {"code": 0x80041010, "message": "Invalid class %s" % PASSWORD, "category": "failed", "type": "ManagementException",
                     "line": 12}}
    world(output=[json.dumps(doc)])
    with pytest.raises(BridgeError) as err:
        bridge().query(NAMESPACE_V2, "Msvm_Nope")
    assert err.value.code == 0x80041010 and err.value.category == "failed"
    assert "Invalid class" in str(err.value) and "hv01" in str(err.value) and PASSWORD not in str(err.value)


def test_word_codes_and_categories_pass_through(world):
    world(output=[json.dumps({"error": {"code": "exists", "message": "file exists", "category": "failed"}})])
    with pytest.raises(BridgeError) as err:
        bridge().write_file("C:\\ProgramData\\hyperv.backup\\locks\\x.lock", b"{}", exclusive=True)
    assert err.value.code == "exists"
    world(output=[json.dumps({"error": {"code": 2147943458, "message": "disabled", "category": "service"}})])
    with pytest.raises(BridgeError) as err:
        bridge().service("vss", start=True)
    assert err.value.category == "service" and err.value.code == 0x80070422


def test_file_calls_encode_and_decode_bytes(world):
    data = bytes(range(256))
    w = world(output=result({"exists": True, "data": base64.b64encode(data).decode(), "length": 256}))
    b = bridge()
    assert b.read_file("C:\\x.bin", 1000) == data
    assert w.parameters[-1] == {"Path": "C:\\x.bin", "MaxBytes": 1000}
    w.output = result({"exists": False, "data": None, "length": 0})
    assert b.read_file("C:\\missing", 10) is None
    w.output = result({"modified": "20261202073512.000000+000", "now": "20261202073513.000000+000"})
    assert b.write_file("C:\\y.json", data, exclusive=True)["modified"].endswith("+000")
    assert base64.b64decode(w.parameters[-1]["Data"]) == data and w.parameters[-1]["Exclusive"] is True
    w.output = result(False)
    assert b.remove_file("C:\\gone") is False


def test_service_and_processes_get_the_timeout(world):
    w = world(output=result({"exit_code": 0, "output": "ok"}))
    b = bridge(operation_timeout=77)
    b.diskshadow("set context persistent\r\n")
    b.vss_writers()
    assert w.parameters[0] == {"Script": "set context persistent\r\n", "HvTimeoutSeconds": 77}
    assert w.parameters[1] == {"HvTimeoutSeconds": 77}
    assert w.scripts == [SCRIPTS["diskshadow"].text, SCRIPTS["vss_writers"].text]


def test_wsman_options(world):
    w = world(output=result({"ps_version": "2.0"}))
    bridge(protocol="http", cert_validation="validate", ca_cert="/etc/ca.pem", read_timeout=10,
           configuration_name="JEA.Backup", auth="ntlm").host_environment()
    assert w.wsman_kwargs["server"] == "hv01" and w.wsman_kwargs["port"] == 5985 and w.wsman_kwargs["ssl"] is False
    assert w.wsman_kwargs["cert_validation"] == "/etc/ca.pem"
    assert w.wsman_kwargs["operation_timeout"] < w.wsman_kwargs["read_timeout"] == 10
    assert w.wsman_kwargs["auth"] == "ntlm" and w.wsman_kwargs["password"] == PASSWORD
    assert w.pool_kwargs == {"configuration_name": "JEA.Backup"}
    bridge(cert_validation="ignore", auth="certificate", certificate_pem="/c.pem", certificate_key_pem="/k.pem",
           username=None, password=None).host_environment()
    assert w.wsman_kwargs["cert_validation"] is False
    assert w.wsman_kwargs["certificate_key_pem"] == "/k.pem" and "password" not in w.wsman_kwargs


def test_one_pool_for_many_calls_and_close_twice(world):
    w = world(output=result([]))
    b = bridge()
    b.associators(NAMESPACE_V2, "p", "Msvm_SettingsDefineState")
    b.associators(NAMESPACE_V2, "p", "Msvm_SettingsDefineState", "Msvm_VirtualSystemSettingData")
    assert w.pools_opened == 1 and len(w.scripts) == 2
    assert w.parameters[0]["ResultClass"] == "" and w.parameters[1]["ResultClass"] == "Msvm_VirtualSystemSettingData"
    b.close()
    b.close()
    assert w.pools_closed == 1


@pytest.mark.parametrize("output,errors,needle", [
    (["WARNING: not json"], [], "not json"),
    ([], ["Get-WmiObject : Access denied"], "Access denied"),
    (['{"neither": 1}'], [], "unexpected"),
])
def test_bad_output_is_a_failed_host_operation_error(world, output, errors, needle):
    world(output=output, errors=errors)
    with pytest.raises(HostOperationError) as err:
        bridge().vss_writers()
    assert err.value.category == "failed" and needle in str(err.value) and err.value.hint


def test_a_result_wins_over_stray_error_records(world):
    world(output=result({"exit_code": 0, "output": ""}), errors=["a non-terminating warning"])
    assert bridge().vss_writers() == {"exit_code": 0, "output": ""}


@pytest.mark.parametrize("exc,category,hint_word", [
    (requests.exceptions.ConnectionError("Max retries exceeded: Connection refused"), "unreachable", "listener"),
    (requests.exceptions.ConnectTimeout("timed out"), "unreachable", "listener"),
    (requests.exceptions.SSLError("certificate verify failed"), "unreachable", "ca_cert"),
    (AuthenticationError("Failed to authenticate the user admin with ntlm"), "authentication", "credentials"),
    (WinRMTransportError("http", 401, "Unauthorized"), "authentication", "credentials"),
    (WinRMTransportError("http", 500, "Internal"), "failed", "WinRM"),
])
def test_transport_exceptions_map_to_categories(world, exc, category, hint_word):
    world(open_error=exc)
    with pytest.raises(HostOperationError) as err:
        bridge().host_environment()
    assert err.value.category == category and hint_word in err.value.hint
    assert err.value.operation == "host_environment"


def test_secrets_never_leak(world, caplog):
    world(invoke_error=AuthenticationError("bad password %s for admin" % PASSWORD))
    b = bridge()
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(HostOperationError) as err:
            b.host_environment()
    for text in (str(err.value), repr(err.value.details()), caplog.text):
        assert PASSWORD not in text
    assert "********" in str(err.value)


def test_missing_pypsrp_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(transport_psrp, "HAS_PYPSRP", False)
    with pytest.raises(HostOperationError) as err:
        bridge().host_environment()
    assert "pypsrp" in str(err.value) and "pip install pypsrp" in err.value.hint
