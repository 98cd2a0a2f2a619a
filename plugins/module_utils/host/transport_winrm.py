# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The winrm transport: run an operation's PowerShell script with powershell.exe in a pywinrm shell.

A fixed bootstrap (``BOOTSTRAP``, sent with -EncodedCommand) reads one line from stdin: base64 of a
JSON document ``{"script": text, "parameters": {...}}``. It turns the script text into a script
block and calls it with the parameters splatted, so user values stay parameters here too, never
script text. The script is sent over stdin because it is longer than a command line may be. This is
the pattern of ansible-core's own ``executor/powershell/bootstrap_wrapper.ps1`` (stdin JSON with
script and params, splatted), which runs with ``-EncodedCommand`` over WinRM the same way.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import json
import logging
import traceback

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_result import (
    clixml_errors, parse_script_output, transport_failure)
from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_scripts import SCRIPTS, script_parameters

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

BOOTSTRAP = r"""
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$HvRaw = [string]($input | Out-String)
$HvJsonText = [System.Text.Encoding]::UTF8.GetString([System.Convert]::FromBase64String($HvRaw.Trim()))
$HvRequest = ConvertFrom-Json -InputObject $HvJsonText
$HvArguments = @{}
foreach ($HvProperty in $HvRequest.parameters.PSObject.Properties) { $HvArguments[$HvProperty.Name] = $HvProperty.Value }
$HvBlock = [ScriptBlock]::Create([string]$HvRequest.script)
& $HvBlock @HvArguments
"""


def encoded_command(text):
    """powershell.exe -EncodedCommand takes base64 of UTF-16LE."""
    return base64.b64encode(text.encode("utf-16-le")).decode("ascii")


def request_payload(script_text, parameters):
    """The stdin line the bootstrap reads: base64 of the JSON request."""
    body = json.dumps({"script": script_text, "parameters": parameters}, separators=(",", ":"))
    return base64.b64encode(body.encode("utf-8")).decode("ascii") + "\r\n"


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


class WinrmTransport(object):
    """Runs host operations over WinRM with pywinrm; ``run(operation, params) -> result``."""

    def __init__(self, settings):
        self.settings = settings
        self._protocol = None

    def _client(self, operation):
        if not HAS_WINRM:
            raise HostOperationError(self.settings.host, operation, "failed", "the Python library pywinrm is not installed",
                                     hint="Install pywinrm on the machine that runs the module (pip install pywinrm), or use transport psrp.",
                                     import_error=WINRM_IMPORT_ERROR)
        if self._protocol is None:
            self._protocol = Protocol(**protocol_options(self.settings))
        return self._protocol

    def run(self, operation, params):
        script = SCRIPTS[operation]
        secrets = self.settings.secrets()
        payload = request_payload(script.text, script_parameters(params, self.settings.operation_timeout))
        try:
            client = self._client(operation)
            shell_id = client.open_shell(codepage=UTF8_CODEPAGE)
            try:
                command_id = client.run_command(shell_id, "powershell.exe", [
                    "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-EncodedCommand", encoded_command(BOOTSTRAP)])
                try:
                    client.send_command_input(shell_id, command_id, payload, end=True)
                    stdout, stderr, status = client.get_command_output(shell_id, command_id)
                finally:
                    client.cleanup_command(shell_id, command_id)
            finally:
                client.close_shell(shell_id)
        except HostOperationError:
            raise
        except Exception as exc:  # pylint: disable=broad-except  # every client failure becomes a categorised error
            raise transport_failure(self.settings.host, operation, exc, secrets)
        out_text = stdout.decode("utf-8", "replace") if isinstance(stdout, bytes) else str(stdout or "")
        err_text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else str(stderr or "")
        errors = clixml_errors(err_text)
        if status and not errors and not out_text.strip():
            errors = ["powershell.exe exited with code %s" % status]
        LOG.debug("host %s: %s exited %s, %d characters out", self.settings.host, operation, status, len(out_text))
        return parse_script_output(self.settings.host, operation, out_text, errors, secrets)

    def close(self):
        self._protocol = None
