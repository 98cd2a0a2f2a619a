"""WinrmBridge at the pywinrm boundary: the fixed bootstrap, the PowerShell 2.0-safe stdin payload, output, failures."""
import base64
import json

import pytest
import requests
from winrm.exceptions import InvalidCredentialsError, WinRMOperationTimeoutError, WinRMTransportError

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host import transport_winrm
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import NAMESPACE_V1, BridgeError, Embedded, Ref
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge_scripts import BOOTSTRAP, SCRIPTS
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import ConnectionSettings
from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_syntax import check_powershell2
from ansible_collections.hyperv.backup.plugins.module_utils.host.script_bridge import clixml_errors

PASSWORD = "W1nRM-secret!"
NASTY_TAG = "hyperv.backup:run'1\"; $(Stop-Computer) ; & calc\r\n\u00fc"


class FakeProtocol(object):
    """Stands in for winrm.protocol.Protocol; the class attributes say what the next instances answer."""

    instances = []
    reply = (b"", b"", 0)
    failure = None

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.commands = []
        self.inputs = []
        self.cleaned = []
        self.closed = []
        self.codepage = None
        FakeProtocol.instances.append(self)

    def open_shell(self, codepage=437):
        if FakeProtocol.failure is not None:
            raise FakeProtocol.failure
        self.codepage = codepage
        return "shell-1"

    def run_command(self, shell_id, command, arguments=()):
        self.commands.append((shell_id, command, list(arguments)))
        return "cmd-1"

    def send_command_input(self, shell_id, command_id, stdin_input, end=False):
        self.inputs.append((shell_id, command_id, stdin_input, end))

    def get_command_output(self, shell_id, command_id):
        return FakeProtocol.reply

    def cleanup_command(self, shell_id, command_id):
        self.cleaned.append(command_id)

    def close_shell(self, shell_id):
        self.closed.append(shell_id)


@pytest.fixture
def protocol(monkeypatch):
    monkeypatch.setattr(transport_winrm, "Protocol", FakeProtocol)
    monkeypatch.setattr(transport_winrm, "HAS_WINRM", True)
    monkeypatch.setattr(FakeProtocol, "instances", [])

    def reply(stdout=b"", stderr=b"", status=0, error=None):
        monkeypatch.setattr(FakeProtocol, "reply", (stdout, stderr, status))
        monkeypatch.setattr(FakeProtocol, "failure", error)
        return FakeProtocol.instances
    return reply


def bridge(**overrides):
    options = dict(host="hv02", username="admin", password=PASSWORD, transport="winrm")
    options.update(overrides)
    return transport_winrm.WinrmBridge(ConnectionSettings(**options))


def decode_payload(stdin_input):
    """{"script", "parameters"} of a stdin payload: the bridge's record format, or the legacy base64 JSON line."""
    if stdin_input.startswith("S "):
        script, parameters = transport_winrm.decode_request(stdin_input)
        return {"script": script, "parameters": parameters}
    return json.loads(base64.b64decode(stdin_input.strip()).decode("utf-8"))


def ok(value):
    return (json.dumps({"result": value}) + "\r\n").encode()


def test_script_travels_on_stdin_as_records_and_the_command_is_fixed(protocol):
    instances = protocol(stdout=ok({"ReturnValue": 0, "out": {}, "job": None, "affected": []}))
    b = bridge(operation_timeout=900)
    answer = b.invoke(NAMESPACE_V1, "\\\\hv\\root\\virtualization:Msvm_VirtualSystemManagementService.Name=\"vmms\"",
                      "ModifyVirtualSystem", {"ComputerSystem": Ref("vm"),
                                              "SystemSettingData": Embedded("Msvm_VirtualSystemGlobalSettingData", {"ElementName": NASTY_TAG},
                                                                            based_on="gsd")})
    assert answer["ReturnValue"] == 0
    b.query(NAMESPACE_V1, "Msvm_ComputerSystem", where={"ElementName": NASTY_TAG})
    client = instances[0]
    command_lines = set((command, tuple(arguments)) for _shell, command, arguments in client.commands)
    assert len(command_lines) == 1                              # one fixed command line whatever the call and values
    (command, arguments), = command_lines
    assert command == "powershell.exe" and arguments[-2] == "-EncodedCommand"
    assert base64.b64decode(arguments[-1]).decode("utf-16-le") == BOOTSTRAP == transport_winrm.BOOTSTRAP
    first = decode_payload(client.inputs[0][2])
    assert first["script"] == SCRIPTS["invoke"].text and NASTY_TAG not in first["script"]
    assert first["parameters"]["HvTimeoutSeconds"] == 900 and first["parameters"]["Method"] == "ModifyVirtualSystem"
    assert any(line.startswith("E 0 ") for line in first["parameters"]["Arguments"])
    second = decode_payload(client.inputs[1][2])
    assert second["script"] == SCRIPTS["query"].text and second["parameters"]["Properties"] == []
    where, = second["parameters"]["Where"]
    kind_value = where.split(" ")[4]
    assert base64.b64decode(kind_value).decode("utf-8") == NASTY_TAG
    assert all(end is True for _s, _c, _i, end in client.inputs)
    assert client.cleaned == ["cmd-1", "cmd-1"] and client.closed == ["shell-1", "shell-1"] and client.codepage == 65001


def test_payload_round_trip_of_every_parameter_kind():
    parameters = {"Path": NASTY_TAG, "Empty": "", "MaxBytes": 2 ** 40, "Exclusive": True, "Start": False, "ResultClass": None,
                  "Lines": ["V w A s " + "x" * 10, ""], "NoLines": []}
    payload = transport_winrm.request_payload("param($Path)\n'x'", parameters)
    assert NASTY_TAG not in payload and "param(" not in payload
    assert all(set(line) <= set("SPLVA abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/=:.") for line in payload.split("\r\n"))
    assert transport_winrm.decode_request(payload) == ("param($Path)\n'x'", parameters)
    with pytest.raises(TypeError):
        transport_winrm.request_payload("x", {"A": 1.5})


def test_bootstrap_is_powershell_2_and_short_enough_for_a_command_line():
    assert check_powershell2(BOOTSTRAP) == []
    assert "ConvertFrom-Json" not in BOOTSTRAP
    assert len(transport_winrm.encoded_command(BOOTSTRAP)) < 8000


def test_protocol_options(protocol):
    instances = protocol(stdout=ok({"ps_version": "2.0"}))
    bridge(auth="negotiate", protocol="https", ca_cert="/ca.pem", read_timeout=60).host_environment()
    kwargs = instances[0].kwargs
    assert kwargs["endpoint"] == "https://hv02:5986/wsman"
    assert kwargs["transport"] == "ntlm" and kwargs["password"] == PASSWORD
    assert kwargs["ca_trust_path"] == "/ca.pem" and kwargs["server_cert_validation"] == "validate"
    assert kwargs["operation_timeout_sec"] < kwargs["read_timeout_sec"] == 60


def test_clixml_stderr_becomes_failed_with_the_error_text(protocol):
    stderr = (b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
              b'<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T></TN></Obj>'
              b'<S S="Error">Exception calling "Create" : parse error_x000D__x000A_</S></Objs>')
    protocol(stdout=b"", stderr=stderr, status=1)
    with pytest.raises(HostOperationError) as err:
        bridge().host_environment()
    assert err.value.category == "failed" and 'Exception calling "Create" : parse error' in str(err.value)
    assert "progress" not in str(err.value)


def test_progress_only_stderr_is_ignored():
    assert clixml_errors('#< CLIXML\r\n<Objs><Obj S="progress" RefId="0"></Obj></Objs>') == []
    assert clixml_errors("plain text error") == ["plain text error"]
    assert clixml_errors("") == []


def test_exit_code_without_output_is_failed(protocol):
    protocol(stdout=b"", stderr=b"", status=5)
    with pytest.raises(HostOperationError) as err:
        bridge().host_environment()
    assert err.value.category == "failed" and "exited with code 5" in str(err.value)


def test_error_document_becomes_bridge_error(protocol):
    protocol(stdout=b'{"error": {"code": 2147749902, "message": "Invalid namespace", "category": "failed", "type": "x", "line": 3}}\r\n')
    with pytest.raises(BridgeError) as err:
        bridge().query("root\\nope", "Msvm_ComputerSystem")
    assert err.value.code == 0x8004100E and "Invalid namespace" in str(err.value)


def test_console_lines_before_the_document_are_skipped(protocol):
    protocol(stdout=b"some banner\r\n" + ok(True))
    assert bridge().remove_file("C:\\x") is True


@pytest.mark.parametrize("exc,category", [
    (InvalidCredentialsError("the specified credentials were rejected by the server"), "authentication"),
    (WinRMTransportError("http", 401, "Unauthorized"), "authentication"),
    (requests.exceptions.ConnectionError("[Errno 111] Connection refused"), "unreachable"),
    (requests.exceptions.ReadTimeout("read timed out"), "unreachable"),
    (WinRMOperationTimeoutError(), "unreachable"),
    (requests.exceptions.SSLError("CERTIFICATE_VERIFY_FAILED"), "unreachable"),
    (RuntimeError("surprise %s" % PASSWORD), "failed"),
])
def test_exceptions_map_to_categories(protocol, exc, category):
    protocol(error=exc)
    with pytest.raises(HostOperationError) as err:
        bridge().list_directory("C:\\ProgramData\\hyperv.backup\\locks")
    assert err.value.category == category and err.value.hint and err.value.operation == "list_directory"
    assert PASSWORD not in str(err.value)


def test_missing_pywinrm_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(transport_winrm, "HAS_WINRM", False)
    with pytest.raises(HostOperationError) as err:
        bridge().host_environment()
    assert "pywinrm" in str(err.value) and "pip install pywinrm" in err.value.hint


def test_large_requests_go_to_stdin_in_pieces_below_the_envelope_size(protocol):
    instances = protocol(stdout=ok({"modified": "20261202073512.000000+000", "now": "20261202073512.000000+000"}))
    data = bytes(range(256)) * 800                                         # 200 KB: several WinRM messages
    bridge().write_file("C:\\ProgramData\\hyperv.backup\\big.bin", data)
    inputs = instances[0].inputs
    assert len(inputs) > 2 and all(len(text) <= transport_winrm.STDIN_CHUNK for _s, _c, text, _e in inputs)
    assert [end for _s, _c, _t, end in inputs] == [False] * (len(inputs) - 1) + [True]
    request = decode_payload("".join(text for _s, _c, text, _e in inputs))
    assert request["script"] == SCRIPTS["write_file"].text and base64.b64decode(request["parameters"]["Data"]) == data
