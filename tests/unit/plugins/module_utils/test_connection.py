"""Connection options (argument spec == doc fragment) and HostSession checks and dispatch."""
import importlib
import logging
import sys
import types

import pytest
import yaml

from ansible_collections.hyperv.backup.plugins.doc_fragments.connection import ModuleDocFragment
from ansible_collections.hyperv.backup.plugins.module_utils.host import connection
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import ConnectionSettings, HostSession, connection_argument_spec
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError, HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import BridgeError

PASSWORD = "s3cr3t-P@ss"


def params(**overrides):
    base = dict((name, None) for name in connection_argument_spec())
    base.update(host="hv01.example.com", username="EXAMPLE\\backup", password=PASSWORD)
    base.update(overrides)
    return base


def test_argument_spec_matches_doc_fragment():
    documented = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    spec = connection_argument_spec()
    assert sorted(documented) == sorted(spec)
    for name, doc in documented.items():
        arg = spec[name]
        assert doc["type"] == arg["type"], name
        assert doc.get("default") == arg.get("default"), name
        assert doc.get("choices") == arg.get("choices"), name
        assert bool(doc.get("required")) == bool(arg.get("required")), name
        assert doc.get("version_added") == "0.1.0", name
        assert doc["description"], name
        env = arg.get("fallback", (None, []))[1]
        for var in env:
            assert any("E(%s)" % var in line for line in doc["description"]), (name, var)
    assert spec["password"]["no_log"] is True
    assert not any(arg.get("no_log") for name, arg in spec.items() if name != "password")


def test_env_fallback_names():
    spec = connection_argument_spec()
    assert spec["host"]["fallback"][1] == ["HYPERV_HOST"]
    assert spec["lab_directory"]["fallback"][1] == ["HYPERV_LAB_DIRECTORY"]


@pytest.mark.parametrize("protocol,port", [("https", 5986), ("http", 5985)])
def test_default_port_follows_protocol(protocol, port):
    assert ConnectionSettings(**params(protocol=protocol)).port == port
    assert ConnectionSettings(**params(protocol=protocol, port=1234)).port == 1234


@pytest.mark.parametrize("overrides,fragment", [
    (dict(password=None), "needs username and password"),
    (dict(auth="certificate", certificate_pem="/c.pem"), "certificate_key_pem"),
    (dict(transport="lab"), "lab_directory"),
    (dict(host=""), "no host"),
    (dict(auth="basic", protocol="http"), "basic"),
    (dict(read_timeout=0), "timeouts"),
])
def test_bad_options_are_refused_with_a_hint(overrides, fragment):
    with pytest.raises(HyperVBackupError) as err:
        ConnectionSettings(**params(**overrides))
    assert fragment in str(err.value)
    assert err.value.hint
    assert PASSWORD not in str(err.value)


def test_kerberos_without_password_is_allowed():
    assert ConnectionSettings(**params(auth="kerberos", password=None, username=None)).auth == "kerberos"


def test_repr_and_logs_hide_the_password(caplog, no_network):
    session = HostSession.from_module_params(params())
    assert PASSWORD not in repr(session)
    assert "********" in repr(session)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(HostOperationError):
            session.run("get_vms", names="web01")
    assert PASSWORD not in caplog.text


class RecordingBridge(object):
    """A bridge that records what the session hands it; never touches a network."""

    def __init__(self, host="hv01.example.com"):
        self.host = host
        self.closed = 0

    def close(self):
        self.closed += 1


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve or reach a host fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network: %r" % (args,))

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "gethostbyname", refuse)


@pytest.fixture
def recorded_operations(monkeypatch):
    """Replace the Hyper-V logic the session runs by a recorder: [(bridge, operation, params)]."""
    calls = _Calls()

    def fake_run_operation(bridge, name, params_):
        calls.append((bridge, name, params_))
        return calls.result

    monkeypatch.setattr(connection, "run_operation", fake_run_operation)
    return calls


class _Calls(list):
    """The recorded calls; ``result`` is what every call returns."""
    result = None


def test_run_checks_operation_and_parameters_before_running(recorded_operations, no_network):
    session = HostSession.from_module_params(params())
    bridge = RecordingBridge()
    session._bridge = bridge
    recorded_operations.result = [{"id": "x"}]
    assert session.run("get_vms", names=["web01"], ids=None) == [{"id": "x"}]
    assert recorded_operations == [(bridge, "get_vms", {"names": ["web01"]})]
    for bad in (lambda: session.run("no_such_op"), lambda: session.run("get_vms", bogus=1),
                lambda: session.run("get_disk_changes", path="p", limit_id="l", byte_offset=0),
                lambda: session.run("get_disk_changes", path="p", limit_id="l", byte_offset=True, byte_length=1),
                lambda: session.run("get_service", name=["vss"])):
        with pytest.raises(HostOperationError) as err:
            bad()
        assert err.value.category == "failed" and err.value.hint
    assert len(recorded_operations) == 1


def test_session_runs_the_real_logic_over_its_bridge(no_network):
    """run() goes through hyperv.host_operations.run_operation: the logic queries the session's bridge."""

    class QueryingBridge(RecordingBridge):
        def __init__(self):
            super(QueryingBridge, self).__init__()
            self.queries = []

        def query(self, namespace, class_name, where=None, properties=None):
            self.queries.append((namespace, class_name))
            raise BridgeError("Access denied", code=0x80041003, category="authentication", hint="Check the account.")

    session = HostSession.from_module_params(params())
    session._bridge = bridge = QueryingBridge()
    with pytest.raises(HostOperationError) as err:
        session.run("get_host_info")
    assert bridge.queries, "get_host_info never asked the bridge"
    assert err.value.operation == "get_host_info"
    assert err.value.category == "authentication"
    assert err.value.windows_error == "0x80041003"
    assert "Access denied" in str(err.value) and err.value.hint == "Check the account."


def test_a_failed_bridge_call_is_reported_under_the_operation_the_user_ran(no_network):
    """Transports name the bridge call (query, invoke ...); the user sees the operation, with the call in the details."""

    class FailingBridge(RecordingBridge):
        def query(self, namespace, class_name, where=None, properties=None):
            raise HostOperationError(self.host, "query", "connection", "WinRM cannot complete the operation",
                                     hint="Check that WinRM listens on the host.", windows_error="0x80338012")

    session = HostSession.from_module_params(params())
    session._bridge = FailingBridge()
    with pytest.raises(HostOperationError) as err:
        session.run("get_host_info")
    assert err.value.operation == "get_host_info"
    assert err.value.category == "connection"
    assert err.value.windows_error == "0x80338012"
    assert err.value.hint == "Check that WinRM listens on the host."
    assert err.value.details()["bridge_call"] == "query"
    assert "operation get_host_info" in str(err.value)


def test_session_is_a_context_manager_that_closes(no_network):
    bridge = RecordingBridge()
    with HostSession.from_module_params(params()) as session:
        session._bridge = bridge
    assert bridge.closed == 1
    session.close()
    assert bridge.closed == 1


@pytest.mark.parametrize("kind,module_name,class_name", [
    ("psrp", "transport_psrp", "PsrpBridge"), ("winrm", "transport_winrm", "WinrmBridge")])
def test_network_transports_open_their_bridge_without_connecting(kind, module_name, class_name, no_network):
    session = HostSession.from_module_params(params(transport=kind))
    bridge = session.bridge
    assert type(bridge).__name__ == class_name
    assert type(bridge).__module__.endswith("host." + module_name)
    assert bridge.host == "hv01.example.com" and bridge.settings is session.settings
    assert session.bridge is bridge, "the bridge is opened once per session"
    assert session.path_map() == {}, "a remote host's files are not readable here by path"
    session.close()
    assert session._bridge is None


@pytest.mark.parametrize("kind,module_name,class_name", [
    ("psrp", "transport_psrp", "PsrpBridge"), ("winrm", "transport_winrm", "WinrmBridge")])
def test_dispatch_to_network_transports(kind, module_name, class_name, monkeypatch, recorded_operations, no_network):
    module = importlib.import_module("ansible_collections.hyperv.backup.plugins.module_utils.host." + module_name)
    made = []

    class FakeBridge(RecordingBridge):
        def __init__(self, settings):
            super(FakeBridge, self).__init__(settings.host)
            self.settings = settings
            made.append(self)

    monkeypatch.setattr(module, class_name, FakeBridge)
    recorded_operations.result = {"name": "vmms"}
    session = HostSession.from_module_params(params(transport=kind))
    assert not made, "creating a session must not open a bridge"
    assert session.run("get_service", name="vmms") == {"name": "vmms"}
    assert session.run("get_service", name="vss") == {"name": "vmms"}
    assert len(made) == 1 and made[0].settings is session.settings
    assert list(recorded_operations) == [
        (made[0], "get_service", {"name": "vmms"}), (made[0], "get_service", {"name": "vss"})]
    session.close()
    assert made[0].closed == 1


def test_dispatch_to_lab_bridge_is_lazy(monkeypatch, tmp_path, recorded_operations, no_network):
    seen = []

    class FakeLab(RecordingBridge):
        path_map = {"C:\\": "/somewhere/c"}

        def __init__(self, directory, host):
            super(FakeLab, self).__init__(host)
            seen.append((directory, host))

    lab_module = "ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge"
    fake = types.ModuleType("lab_bridge")
    fake.LabBridge = FakeLab
    monkeypatch.setitem(sys.modules, lab_module, fake)
    lab_params = params(transport="lab", lab_directory=str(tmp_path), host="lab1", username=None, password=None)
    session = HostSession.from_module_params(lab_params)
    assert seen == []
    recorded_operations.result = {"computer_name": "lab1"}
    assert session.run("get_host_info") == {"computer_name": "lab1"}
    assert seen == [(str(tmp_path), "lab1")]
    assert recorded_operations[0][0].host == "lab1" and recorded_operations[0][1:] == ("get_host_info", {})
    assert session.path_map() == {"C:\\": "/somewhere/c"}
    assert connection.TRANSPORTS == ("psrp", "winrm", "lab")


def test_psrp_and_winrm_sessions_never_import_the_lab(monkeypatch, no_network):
    lab_module = "ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge"
    monkeypatch.setitem(sys.modules, lab_module, None)  # importing it now raises ImportError
    for kind in ("psrp", "winrm"):
        session = HostSession.from_module_params(params(transport=kind))
        assert session.bridge is not None
        session.close()
