# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Turn what a remote script or its transport produced into a result or a HostOperationError.

Shared by the psrp and winrm transports: the JSON document a script prints (result or
``{"error": {...}}``), PowerShell error streams, and client exceptions (network, TLS, timeouts,
refused credentials), each mapped to an error category with a hint a person can act on.
Secrets given by the caller are scrubbed from every message.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re
from xml.sax.saxutils import unescape

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_operations import ERROR_CATEGORIES

MAX_TEXT = 2000

HINT_UNREACHABLE = ("Check that the host name resolves, that the WinRM listener runs on the host "
                    "(winrm enumerate winrm/config/listener), that the port (5986 https / 5985 http) is open, "
                    "and raise connection_timeout/read_timeout if the host is slow.")
HINT_TLS = ("The TLS handshake failed: give the CA of the host certificate in ca_cert, check that the certificate "
            "names the host, or set cert_validation=ignore in a lab only.")
HINT_AUTH = ("The host refused the credentials: check username/password, that the user is a local administrator "
             "(or in Hyper-V Administrators), and that the auth method is enabled on the WinRM service "
             "(winrm get winrm/config/service/auth).")
HINT_OUTPUT = "The script did not print one JSON document; run it on the host by hand to see what it printed."

# Exception class names (anywhere in the MRO) of requests, urllib3, pypsrp, pywinrm and spnego, so this
# module needs none of those libraries to classify their errors.
_AUTH_CLASSES = {"AuthenticationError", "InvalidCredentialsError", "BasicAuthDisabledError", "SpnegoError",
                 "NoCredentialError", "BadMechanismError"}
_TLS_CLASSES = {"SSLError", "SSLCertVerificationError", "CertificateError"}
_UNREACHABLE_CLASSES = {"ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "ProxyError", "NewConnectionError",
                        "MaxRetryError", "gaierror", "timeout", "TimeoutError", "ConnectionRefusedError",
                        "ConnectionResetError", "WinRMOperationTimeoutError"}


def scrub(text, secrets):
    """The text with every secret replaced by ********, and cut to a readable length."""
    text = "" if text is None else str(text)
    for secret in secrets or ():
        if secret:
            text = text.replace(secret, "********")
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + "... (%d more characters)" % (len(text) - MAX_TEXT)
    return text


def transport_failure(host, operation, exc, secrets=()):
    """A HostOperationError for an exception raised by a client library while talking to the host."""
    names = set(cls.__name__ for cls in type(exc).__mro__)
    code = getattr(exc, "code", None)
    text = scrub("%s: %s" % (type(exc).__name__, exc), secrets)
    if names & _AUTH_CLASSES or code == 401:
        return HostOperationError(host, operation, "authentication", "credentials refused (%s)" % text, hint=HINT_AUTH)
    if names & _TLS_CLASSES:
        return HostOperationError(host, operation, "unreachable", "TLS failure (%s)" % text, hint=HINT_TLS)
    if names & _UNREACHABLE_CLASSES or isinstance(exc, (OSError, TimeoutError)):
        return HostOperationError(host, operation, "unreachable", "host did not answer (%s)" % text, hint=HINT_UNREACHABLE)
    return HostOperationError(host, operation, "failed", "remote call failed (%s)" % text,
                              hint="Check the WinRM service and the Windows event logs on the host.")


def _load_json(text):
    text = text.strip()
    if not text:
        raise ValueError("no output")
    try:
        return json.loads(text)
    except ValueError:
        # Console hosts may print other lines (e.g. warnings) first; the document is the last line.
        return json.loads(text.splitlines()[-1])


def parse_script_output(host, operation, output, errors=(), secrets=()):
    """The result a script printed; raises HostOperationError for error documents, error streams or bad output."""
    error_text = scrub("\n".join(str(e) for e in errors if str(e).strip()), secrets)
    try:
        document = _load_json(output or "")
    except ValueError:
        detail = "the script printed no JSON document"
        if output and output.strip():
            detail += " (output: %s)" % scrub(output.strip(), secrets)
        if error_text:
            detail += "; PowerShell errors: %s" % error_text
        raise HostOperationError(host, operation, "failed", detail, hint=HINT_OUTPUT)
    if isinstance(document, dict) and set(document) == {"error"} and isinstance(document["error"], dict):
        err = document["error"]
        category = err.get("category") if err.get("category") in ERROR_CATEGORIES else "failed"
        raise HostOperationError(host, operation, category, scrub(err.get("message") or "the script reported an error", secrets),
                                 hint=scrub(err.get("hint"), secrets) or None,
                                 windows_error=scrub(err.get("windows_error"), secrets) or None)
    if error_text:
        raise HostOperationError(host, operation, "failed", "PowerShell reported errors: %s" % error_text,
                                 hint="Run the operation again with -vvv; check the Windows event logs on the host.")
    return document


_CLIXML_ERROR = re.compile(r'<S S="Error">(.*?)</S>', re.S)


def clixml_errors(stderr_text):
    """The error lines of a powershell.exe CLIXML stderr stream (progress records dropped), or the text as is."""
    text = stderr_text or ""
    if not text.lstrip().startswith("#< CLIXML"):
        return [text] if text.strip() else []
    lines = [unescape(m).replace("_x000D_", "").replace("_x000A_", "\n") for m in _CLIXML_ERROR.findall(text)]
    joined = "".join(lines).strip()
    return [joined] if joined else []
