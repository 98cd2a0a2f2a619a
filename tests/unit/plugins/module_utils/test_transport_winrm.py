"""The winrm transport at the pywinrm boundary: bootstrap, stdin payload, output, failures."""
import base64
import json

import pytest
import requests
from winrm.exceptions import InvalidCredentialsError, WinRMOperationTimeoutError, WinRMTransportError

from ansible_collections.hyperv.backup.plugins.module_utils.host import transport_winrm
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession, connection_argument_spec
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_result import clixml_errors
from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_scripts import SCRIPTS

PASSWORD = "W1nRM-secret!"
NASTY_TAG = "hyperv.backup:run'1\"; $(Stop-Computer) ; & calc"


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


def session(**overrides):
    p = dict((name, None) for name in connection_argument_spec())
    p.update(host="hv02", username="admin", password=PASSWORD, transport="winrm")
    p.update(overrides)
    return HostSession.from_module_params(p)


def decode_payload(stdin_input):
    return json.loads(base64.b64decode(stdin_input.strip()).decode("utf-8"))


def test_script_travels_on_stdin_with_parameters(protocol):
    instances = protocol(stdout=json.dumps({"id": "rp1", "consistency_fallback": False}).encode() + b"\r\n")
    vm_id = "5f0e0b7c-0000-4000-8000-000000000001"
    result = session(operation_timeout=900).run(
        "create_recovery_point", vm_id=vm_id, method="rct", consistency="application", tag=NASTY_TAG)
    assert result == {"id": "rp1", "consistency_fallback": False}
    client = instances[0]
    (shell_id, command, arguments), = client.commands
    assert command == "powershell.exe"
    assert arguments[-2] == "-EncodedCommand"
    assert base64.b64decode(arguments[-1]).decode("utf-16-le") == transport_winrm.BOOTSTRAP
    (_s, _c, stdin_input, end), = client.inputs
    assert end is True
    request = decode_payload(stdin_input)
    assert request["script"] == SCRIPTS["create_recovery_point"].text
    assert request["parameters"] == {"VmId": vm_id, "Method": "rct", "Consistency": "application", "Tag": NASTY_TAG,
                                     "HvTimeoutSeconds": 900}
    assert NASTY_TAG not in request["script"] and NASTY_TAG not in " ".join(arguments)
    assert client.cleaned == ["cmd-1"] and client.closed == ["shell-1"] and client.codepage == 65001


def test_protocol_options(protocol):
    instances = protocol(stdout=b'{"name": "vss"}')
    session(auth="negotiate", protocol="https", ca_cert="/ca.pem", read_timeout=60).run("get_service", name="vss")
    kwargs = instances[0].kwargs
    assert kwargs["endpoint"] == "https://hv02:5986/wsman"
    assert kwargs["transport"] == "ntlm" and kwargs["password"] == PASSWORD
    assert kwargs["ca_trust_path"] == "/ca.pem" and kwargs["server_cert_validation"] == "validate"
    assert kwargs["operation_timeout_sec"] < kwargs["read_timeout_sec"] == 60


def test_clixml_stderr_becomes_failed_with_the_error_text(protocol):
    stderr = (b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
              b'<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T></TN></Obj>'
              b'<S S="Error">ConvertFrom-Json : Invalid JSON primitive_x000D__x000A_</S></Objs>')
    protocol(stdout=b"", stderr=stderr, status=1)
    with pytest.raises(HostOperationError) as err:
        session().run("get_host_info")
    assert err.value.category == "failed"
    assert "ConvertFrom-Json : Invalid JSON primitive" in str(err.value)
    assert "progress" not in str(err.value)


def test_progress_only_stderr_is_ignored():
    assert clixml_errors('#< CLIXML\r\n<Objs><Obj S="progress" RefId="0"></Obj></Objs>') == []
    assert clixml_errors("plain text error") == ["plain text error"]
    assert clixml_errors("") == []


def test_exit_code_without_output_is_failed(protocol):
    protocol(stdout=b"", stderr=b"", status=5)
    with pytest.raises(HostOperationError) as err:
        session().run("get_host_info")
    assert err.value.category == "failed" and "exited with code 5" in str(err.value)


def test_error_document(protocol):
    protocol(stdout=b'{"error": {"category": "not_found", "message": "no VM named web01", "windows_error": null, "hint": "Check"}}')
    with pytest.raises(HostOperationError) as err:
        session().run("get_vms", names=["web01"])
    assert err.value.category == "not_found" and err.value.windows_error is None and "web01" in str(err.value)


@pytest.mark.parametrize("exc,category", [
    (InvalidCredentialsError("the specified credentials were rejected by the server"), "authentication"),
    (WinRMTransportError("http", 401, "Unauthorized"), "authentication"),
    (requests.exceptions.ConnectionError("[Errno 111] Connection refused"), "unreachable"),
    (requests.exceptions.ReadTimeout("read timed out"), "unreachable"),
    (WinRMOperationTimeoutError(), "unreachable"),
    (requests.exceptions.SSLError("CERTIFICATE_VERIFY_FAILED"), "unreachable"),
    (RuntimeError("surprise"), "failed"),
])
def test_exceptions_map_to_categories(protocol, exc, category):
    protocol(error=exc)
    s = session()
    with pytest.raises(HostOperationError) as err:
        s.run("get_host_info")
    assert err.value.category == category and err.value.hint
    assert PASSWORD not in str(err.value) and PASSWORD not in repr(s)


def test_missing_pywinrm_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(transport_winrm, "HAS_WINRM", False)
    with pytest.raises(HostOperationError) as err:
        session().run("get_host_info")
    assert "pywinrm" in str(err.value) and "pip install pywinrm" in err.value.hint
