"""Connection options (argument spec == doc fragment) and HostSession checks and dispatch."""
import logging
import sys
import types

import pytest
import yaml

from ansible_collections.hyperv.backup.plugins.doc_fragments.connection import ModuleDocFragment
from ansible_collections.hyperv.backup.plugins.module_utils.host import connection
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import ConnectionSettings, HostSession, connection_argument_spec
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError, HyperVBackupError

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


def test_repr_and_logs_hide_the_password(caplog):
    session = HostSession.from_module_params(params())
    assert PASSWORD not in repr(session)
    assert "********" in repr(session)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(HostOperationError):
            session.run("get_vms", names="web01")
    assert PASSWORD not in caplog.text


class RecordingTransport(object):
    def __init__(self, result=None):
        self.calls = []
        self.closed = 0
        self.result = result

    def run(self, operation, params_):
        self.calls.append((operation, params_))
        return self.result

    def close(self):
        self.closed += 1


def test_run_checks_operation_and_parameters_before_sending():
    session = HostSession.from_module_params(params())
    transport = RecordingTransport(result=[{"id": "x"}])
    session._transport = transport
    assert session.run("get_vms", names=["web01"], ids=None) == [{"id": "x"}]
    assert transport.calls == [("get_vms", {"names": ["web01"]})]
    for bad in (lambda: session.run("no_such_op"), lambda: session.run("get_vms", bogus=1),
                lambda: session.run("get_disk_changes", path="p", limit_id="l", byte_offset=0),
                lambda: session.run("get_disk_changes", path="p", limit_id="l", byte_offset=True, byte_length=1),
                lambda: session.run("get_service", name=["vss"])):
        with pytest.raises(HostOperationError) as err:
            bad()
        assert err.value.category == "failed" and err.value.hint
    assert len(transport.calls) == 1


def test_session_is_a_context_manager_that_closes():
    transport = RecordingTransport()
    with HostSession.from_module_params(params()) as session:
        session._transport = transport
    assert transport.closed == 1
    session.close()
    assert transport.closed == 1


@pytest.mark.parametrize("kind,module_name,class_name", [
    ("psrp", "transport_psrp", "PsrpTransport"), ("winrm", "transport_winrm", "WinrmTransport")])
def test_dispatch_to_network_transports(kind, module_name, class_name):
    session = HostSession.from_module_params(params(transport=kind))
    transport = session._open_transport()
    assert type(transport).__name__ == class_name
    assert type(transport).__module__.endswith(module_name)


def test_dispatch_to_lab_transport_is_lazy(monkeypatch, tmp_path):
    seen = {}

    class FakeLab(RecordingTransport):
        def __init__(self, directory, host):
            super(FakeLab, self).__init__(result={"computer_name": host})
            seen["args"] = (directory, host)

    fake = types.ModuleType("lab_host")
    fake.LabTransport = FakeLab
    monkeypatch.setitem(sys.modules, "ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host", fake)
    lab_params = params(transport="lab", lab_directory=str(tmp_path), host="lab1", username=None, password=None)
    session = HostSession.from_module_params(lab_params)
    assert session.run("get_host_info") == {"computer_name": "lab1"}
    assert seen["args"] == (str(tmp_path), "lab1")
    assert connection.TRANSPORTS == ("psrp", "winrm", "lab")
