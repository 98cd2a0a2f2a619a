"""powershell_result: script output and client failures -> result or HostOperationError (shared by both transports)."""
import socket

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_result import (
    MAX_TEXT, parse_script_output, scrub, transport_failure)

SECRET = "hunter2-secret"


def test_result_after_other_lines_is_taken_from_the_last_line():
    assert parse_script_output("h", "get_vms", "WARNING: slow\r\n[]\r\n") == []
    assert parse_script_output("h", "get_vms", '[{"id": "a"}]') == [{"id": "a"}]


def test_error_document_keeps_every_field_and_scrubs_secrets():
    out = ('{"error": {"category": "authentication", "message": "logon as %s failed", "windows_error": "0x8007052F",'
           ' "hint": "check %s"}}' % (SECRET, SECRET))
    with pytest.raises(HostOperationError) as err:
        parse_script_output("hv01", "convert_to_reference_point", out, secrets=[SECRET])
    e = err.value
    assert e.category == "authentication" and e.windows_error == "0x8007052F"
    assert SECRET not in str(e) and SECRET not in repr(e.details())
    assert str(e).startswith("Host hv01, operation convert_to_reference_point: logon as ******** failed")


def test_a_result_with_an_error_key_among_others_is_a_result():
    assert parse_script_output("h", "op", '{"error": {}, "id": 1}') == {"error": {}, "id": 1}


def test_empty_output_is_failed_with_hint():
    with pytest.raises(HostOperationError) as err:
        parse_script_output("h", "get_host_info", "   ")
    assert err.value.category == "failed" and "no JSON" in str(err.value) and err.value.hint


def test_long_text_is_cut():
    assert len(scrub("x" * (MAX_TEXT * 3), [])) < MAX_TEXT + 100


@pytest.mark.parametrize("exc,category", [
    (socket.gaierror(-2, "Name or service not known"), "unreachable"),
    (ConnectionRefusedError(111, "Connection refused"), "unreachable"),
    (TimeoutError("timed out"), "unreachable"),
    (ValueError("odd"), "failed"),
])
def test_plain_python_exceptions(exc, category):
    err = transport_failure("hv09", "get_vms", exc)
    assert isinstance(err, HostOperationError) and err.category == category and "hv09" in str(err) and err.hint
