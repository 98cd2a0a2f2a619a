# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The winrm transport: ``WinrmBridge``, the WMI bridge through powershell.exe in a pywinrm shell.

A fixed bootstrap (``bridge_scripts.BOOTSTRAP``, sent with -EncodedCommand, the same for every call)
reads the request from stdin, runs the script as a script block with the parameters splatted, and
writes what the script printed to stdout. The request is sent over stdin because a script is longer
than a command line may be (ansible-core's ``bootstrap_wrapper.ps1`` does the same). It is decoded
without ConvertFrom-Json (PowerShell 2.0 has none): one record a line, fields separated by a space,
values base64 of UTF-8 (``.`` = empty)::

    S <script text>
    P <parameter name> <kind>:<value>          kind: s string, i integer, b boolean (1/0), n null
    L <parameter name> [<kind>:<value> ...]    a string array (no items = empty array)

So user values reach the host only as parameter values, never as script or command text.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import logging
import traceback

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge_scripts import BOOTSTRAP
from ansible_collections.hyperv.backup.plugins.module_utils.host.script_bridge import (
    ScriptBridge, clixml_errors, transport_failure)

try:
    from winrm.protocol import Protocol
    HAS_WINRM = True
    WINRM_IMPORT_ERROR = None
except ImportError:
    Protocol = None
    HAS_WINRM = False
    WINRM_IMPORT_ERROR = traceback.format_exc()

LOG = logging.getLogger(__name__)

# pywinrm has no 'negotiate' transport; its 'ntlm' one is the closest (Kerberos users choose auth kerberos).
PYWINRM_AUTH = {"negotiate": "ntlm", "ntlm": "ntlm", "kerberos": "kerberos", "credssp": "credssp",
                "certificate": "certificate", "basic": "basic"}
WSMAN_RECEIVE_SECONDS = 20
UTF8_CODEPAGE = 65001
# stdin goes in pieces: one WinRM message must stay below MaxEnvelopeSizekb (150 KB by default on WinRM 2.0,
# Windows Server 2008 R2), and pywinrm base64-encodes what it sends (4/3 larger).
STDIN_CHUNK = 60000
POWERSHELL_ARGUMENTS = ["-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-EncodedCommand"]


def encoded_command(text):
    """powershell.exe -EncodedCommand takes base64 of UTF-16LE."""
    return base64.b64encode(text.encode("utf-16-le")).decode("ascii")


def _b64(text):
    return base64.b64encode(text.encode("utf-8")).decode("ascii") or "."


def _payload_item(value):
    if value is None:
        return "n:."
    if isinstance(value, bool):
        return "b:" + _b64("1" if value else "0")
    if isinstance(value, int):
        return "i:" + _b64(str(value))
    if isinstance(value, str):
        return "s:" + _b64(value)
    raise TypeError("a winrm bridge parameter must be str, int, bool or None, not %s" % type(value).__name__)


def request_payload(script_text, parameters):
    """The stdin text the bootstrap reads: the script and its parameters as records (see the module docstring)."""
    lines = ["S " + _b64(script_text)]
    for name, value in sorted(parameters.items()):
        if isinstance(value, (list, tuple)):
            lines.append(" ".join(["L", name] + [_payload_item(v) for v in value]))
        else:
            lines.append("P %s %s" % (name, _payload_item(value)))
    return "\r\n".join(lines) + "\r\n"


def decode_request(payload):
    """The inverse of ``request_payload`` (what the bootstrap does), for tests and debugging: (script, parameters)."""
    def item(text):
        kind, value = text.split(":", 1)
        raw = "" if value == "." else base64.b64decode(value).decode("utf-8")
        return {"s": lambda: raw, "i": lambda: int(raw), "b": lambda: raw == "1", "n": lambda: None}[kind]()

    script, parameters = None, {}
    for line in payload.split("\n"):
        fields = line.strip().split(" ")
        if fields[0] == "S":
            script = item("s:" + fields[1])
        elif fields[0] == "P":
            parameters[fields[1]] = item(fields[2])
        elif fields[0] == "L":
            parameters[fields[1]] = [item(f) for f in fields[2:]]
    return script, parameters


def protocol_options(settings):
    """Keyword arguments of winrm.protocol.Protocol for the connection settings."""
    options = dict(
        endpoint="%s://%s:%d/wsman" % (settings.protocol, settings.host, settings.port),
        transport=PYWINRM_AUTH[settings.auth],
        server_cert_validation=settings.cert_validation,
        read_timeout_sec=settings.read_timeout,
        operation_timeout_sec=max(1, min(WSMAN_RECEIVE_SECONDS, settings.read_timeout - 1)),
        message_encryption=settings.message_encryption,
    )
    if settings.ca_cert:
        options["ca_trust_path"] = settings.ca_cert
    if settings.auth == "certificate":
        options.update(cert_pem=settings.certificate_pem, cert_key_pem=settings.certificate_key_pem)
    else:
        options.update(username=settings.username, password=settings.password)
    return options


def _missing_pywinrm(host, call):
    return HostOperationError(host, call, "failed", "the Python library pywinrm is not installed",
                              hint="Install pywinrm on the machine that runs the module (pip install pywinrm), or use transport psrp.",
                              import_error=WINRM_IMPORT_ERROR)


def run_powershell(client, bootstrap, payload):
    """One powershell.exe run in a new shell: (stdout text, stderr text, exit status); shells are always closed."""
    shell_id = client.open_shell(codepage=UTF8_CODEPAGE)
    try:
        command_id = client.run_command(shell_id, "powershell.exe", POWERSHELL_ARGUMENTS + [encoded_command(bootstrap)])
        try:
            pieces = [payload[start:start + STDIN_CHUNK] for start in range(0, len(payload), STDIN_CHUNK)] or [""]
            for index, piece in enumerate(pieces):
                client.send_command_input(shell_id, command_id, piece, end=index == len(pieces) - 1)
            stdout, stderr, status = client.get_command_output(shell_id, command_id)
        finally:
            client.cleanup_command(shell_id, command_id)
    finally:
        client.close_shell(shell_id)
    out_text = stdout.decode("utf-8", "replace") if isinstance(stdout, bytes) else str(stdout or "")
    err_text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else str(stderr or "")
    return out_text, err_text, status


class WinrmBridge(ScriptBridge):
    """The WMI bridge over WinRM with pywinrm (``bridge.Bridge``)."""

    def __init__(self, settings):
        super(WinrmBridge, self).__init__(settings)
        self._protocol = None

    def _client(self, call):
        if not HAS_WINRM:
            raise _missing_pywinrm(self.host, call)
        if self._protocol is None:
            self._protocol = Protocol(**protocol_options(self.settings))
        return self._protocol

    def _execute(self, call, script_text, parameters):
        payload = request_payload(script_text, parameters)
        try:
            out_text, err_text, status = run_powershell(self._client(call), BOOTSTRAP, payload)
        except HostOperationError:
            raise
        except Exception as exc:  # pylint: disable=broad-except  # every client failure becomes a categorised error
            raise transport_failure(self.host, call, exc, self.settings.secrets())
        errors = clixml_errors(err_text)
        if status and not errors and not out_text.strip():
            errors = ["powershell.exe exited with code %s" % status]
        LOG.debug("host %s: bridge %s exited %s, %d characters out", self.host, call, status, len(out_text))
        return out_text, errors

    def close(self):
        self._protocol = None
