"""script_bridge: script output -> result / BridgeError / HostOperationError, and client failures (shared by both transports)."""
import json
import socket

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import BridgeError, Embedded
from ansible_collections.hyperv.backup.plugins.module_utils.host.script_bridge import (
    MAX_TEXT, encode_arguments, encode_where, parse_output, scrub, transport_failure)

SECRET = "hunter2-secret"


def test_result_after_other_lines_is_taken_from_the_last_line():
    assert parse_output("h", "query", 'WARNING: slow\r\n{"result": []}\r\n') == []
    assert parse_output("h", "query", '{"result": [{"A": 18446744073709551615}]}') == [{"A": 18446744073709551615}]
    assert parse_output("h", "remove_file", '{"result": false}') is False


def test_error_document_scrubs_secrets_and_keeps_code_and_category():
    out = json.dumps({"error": {"code": 2147749904, "message": "logon as %s failed" % SECRET, "category": "service", "line": 7}})
    with pytest.raises(BridgeError) as err:
        parse_output("hv01", "service", out, secrets=[SECRET])
    e = err.value
    assert e.code == 0x80041010 and e.category == "service"
    assert SECRET not in str(e) and "********" in str(e) and "hv01" in str(e) and "line 7" in str(e)


@pytest.mark.parametrize("output", ["   ", "not json", '["result"]', '{"other": 1}'])
def test_no_document_is_a_failed_host_operation_error(output):
    with pytest.raises(HostOperationError) as err:
        parse_output("h", "query", output)
    assert err.value.category == "failed" and err.value.hint and err.value.operation == "query"


def test_long_text_is_cut():
    assert len(scrub("x" * (MAX_TEXT * 3), [])) < MAX_TEXT + 100


@pytest.mark.parametrize("exc,category", [
    (socket.gaierror(-2, "Name or service not known"), "unreachable"),
    (ConnectionRefusedError(111, "Connection refused"), "unreachable"),
    (TimeoutError("timed out"), "unreachable"),
    (ValueError("odd"), "failed"),
])
def test_plain_python_exceptions(exc, category):
    err = transport_failure("hv09", "invoke", exc)
    assert isinstance(err, HostOperationError) and err.category == category and "hv09" in str(err) and err.hint


def test_a_kerberos_logon_failure_is_an_authentication_error_with_a_kerberos_hint():
    # krb5 (pyspnego's password logon) raises before the host is asked; before, it read "remote call failed"
    krb5 = pytest.importorskip("krb5")
    ctx = krb5.init_context()
    principal = krb5.parse_name_flags(ctx, b"nobody@NO.SUCH.REALM.INVALID")
    creds_opts = krb5.get_init_creds_opt_alloc(ctx)
    with pytest.raises(krb5.Krb5Error) as caught:
        krb5.get_init_creds_password(ctx, principal, creds_opts, password=b"wrong")
    err = transport_failure("hv09", "query", caught.value, secrets=["wrong"])
    assert err.category == "authentication" and "Kerberos logon failed" in str(err) and "krb5.conf" in err.hint


def test_records_hold_only_base64_and_identifiers():
    lines = encode_arguments({"A": "x y\nz", "B": Embedded("C", {"D": ["1 2", None, 3, 2.5, True]}), "E": ""}) + encode_where({"F": "'"})
    for line in lines:
        assert "\n" not in line and "'" not in line and "x y" not in line
    assert "V a E s ." in lines and "A e0 D s:MSAy n:. i:Mw== d:Mi41 b:MQ==" in lines
    with pytest.raises(BridgeError):
        encode_arguments({"A": object()})
