"""The psrp transport at the pypsrp boundary: what is sent, how output and failures come back."""
import json
import logging

import pytest
import requests
from pypsrp.exceptions import AuthenticationError, WinRMTransportError

from ansible_collections.hyperv.backup.plugins.module_utils.host import transport_psrp
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession, connection_argument_spec
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_scripts import SCRIPTS

PASSWORD = "pa$$-W0rd-xyz"
NASTY_NAME = "web'01\"; $(Remove-Item C:\\ -Recurse); `n"


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


def session(**overrides):
    p = dict((name, None) for name in connection_argument_spec())
    p.update(host="hv01", username="admin", password=PASSWORD, transport="psrp")
    p.update(overrides)
    return HostSession.from_module_params(p)


def test_script_and_parameters_are_sent_separately(world):
    w = world(output=[json.dumps([{"id": "a", "name": NASTY_NAME}])])
    with session(operation_timeout=120) as s:
        result = s.run("get_vms", names=[NASTY_NAME])
    assert result == [{"id": "a", "name": NASTY_NAME}]
    assert w.scripts == [SCRIPTS["get_vms"].text]
    assert NASTY_NAME not in w.scripts[0]
    assert w.parameters == [{"Names": [NASTY_NAME], "HvTimeoutSeconds": 120}]
    assert w.pools_opened == 1 and w.pools_closed == 1


def test_wsman_options(world):
    w = world(output=['{"name": "vss"}'])
    s = session(protocol="http", cert_validation="validate", ca_cert="/etc/ca.pem", read_timeout=10,
                configuration_name="JEA.Backup", auth="ntlm")
    s.run("get_service", name="vss")
    assert w.wsman_kwargs["server"] == "hv01" and w.wsman_kwargs["port"] == 5985 and w.wsman_kwargs["ssl"] is False
    assert w.wsman_kwargs["cert_validation"] == "/etc/ca.pem"
    assert w.wsman_kwargs["operation_timeout"] < w.wsman_kwargs["read_timeout"] == 10
    assert w.wsman_kwargs["auth"] == "ntlm" and w.wsman_kwargs["password"] == PASSWORD
    assert w.pool_kwargs == {"configuration_name": "JEA.Backup"}
    s = session(cert_validation="ignore", auth="certificate", certificate_pem="/c.pem", certificate_key_pem="/k.pem",
                username=None, password=None)
    s.run("get_service", name="vss")
    assert w.wsman_kwargs["cert_validation"] is False
    assert w.wsman_kwargs["certificate_key_pem"] == "/k.pem" and "password" not in w.wsman_kwargs


def test_one_pool_for_many_operations(world):
    w = world(output=['{"name": "vss"}'])
    s = session()
    s.run("get_service", name="vss")
    s.run("get_service", name="vss")
    assert w.pools_opened == 1 and len(w.scripts) == 2
    s.close()
    assert w.pools_closed == 1


def test_error_document_becomes_host_operation_error(world):
    doc = {"error": {"category": "change_tracking", "message": "GetVirtualDiskChanges job failed: invalid id",
                     "windows_error": "0xC03A0029", "hint": "Run a full backup."}}
    world(output=[json.dumps(doc)])
    with pytest.raises(HostOperationError) as err:
        session().run("get_disk_changes", path="C:\\d.avhdx", limit_id="rct:1", byte_offset=0, byte_length=10)
    e = err.value
    assert (e.host, e.operation, e.category, e.windows_error) == ("hv01", "get_disk_changes", "change_tracking", "0xC03A0029")
    assert "invalid id" in str(e) and "Run a full backup." in str(e) and "hv01" in str(e)


def test_unknown_category_becomes_failed(world):
    world(output=['{"error": {"category": "weird", "message": "boom"}}'])
    with pytest.raises(HostOperationError) as err:
        session().run("get_host_info")
    assert err.value.category == "failed"


@pytest.mark.parametrize("output,errors,needle", [
    (["WARNING: not json"], [], "not json"),
    ([], ["Get-CimInstance : Access denied"], "Access denied"),
    (['{"name": "vss"}'], ["something went wrong"], "something went wrong"),
])
def test_bad_output_or_error_stream_is_failed(world, output, errors, needle):
    world(output=output, errors=errors)
    with pytest.raises(HostOperationError) as err:
        session().run("get_service", name="vss")
    assert err.value.category == "failed" and needle in str(err.value) and err.value.hint


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
        session().run("get_host_info")
    assert err.value.category == category
    assert hint_word in err.value.hint


def test_secrets_never_leak(world, caplog):
    # A library that puts the password in its message must not leak it through us.
    world(invoke_error=AuthenticationError("bad password %s for admin" % PASSWORD))
    s = session()
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(HostOperationError) as err:
            s.run("get_host_info")
    for text in (str(err.value), repr(err.value.details()), repr(s), caplog.text):
        assert PASSWORD not in text
    assert "********" in str(err.value)


def test_missing_pypsrp_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(transport_psrp, "HAS_PYPSRP", False)
    with pytest.raises(HostOperationError) as err:
        session().run("get_host_info")
    assert "pypsrp" in str(err.value) and "pip install pypsrp" in err.value.hint
