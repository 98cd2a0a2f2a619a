# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the psrp and winrm bridges share: calls -> script parameters, script output -> results or errors.

``ScriptBridge`` implements every call of ``bridge.Bridge`` by running one script of
``bridge_scripts.SCRIPTS`` with its parameters; a transport only supplies ``_execute(call, text,
parameters) -> (output text, error texts)``. Typed values (WHERE values, method arguments, embedded
instances) are encoded here into the record lines the scripts decode (format in ``bridge_scripts``).
Client exceptions become ``HostOperationError`` (categories ``unreachable`` / ``authentication`` /
``failed``) and a script's error document becomes ``BridgeError``; secrets are scrubbed from both.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import json
import logging
import re
from xml.sax.saxutils import unescape

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import Bridge, BridgeError, Embedded, Ref
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge_scripts import SCRIPTS, TIMEOUT_PARAMETER

LOG = logging.getLogger(__name__)

MAX_TEXT = 2000
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NAMESPACE = re.compile(r"^[A-Za-z0-9_]+(\\[A-Za-z0-9_]+)*$")

HINT_UNREACHABLE = ("Check that the host name resolves, that the WinRM listener runs on the host "
                    "(winrm enumerate winrm/config/listener), that the port (5986 https / 5985 http) is open, "
                    "and raise connection_timeout/read_timeout if the host is slow.")
HINT_TLS = ("The TLS handshake failed: give the CA of the host certificate in ca_cert, check that the certificate "
            "names the host, or set cert_validation=ignore in a lab only.")
HINT_AUTH = ("The host refused the credentials: check username/password, that the user is a local administrator "
             "(or in Hyper-V Administrators), and that the auth method is enabled on the WinRM service "
             "(winrm get winrm/config/service/auth).")
HINT_OUTPUT = "The bridge script did not print one JSON document; run it on the host by hand to see what it printed."
HINT_KERBEROS = ("The Kerberos logon failed on this machine: check the password (or `kinit user@REALM` for transport winrm), "
                 "that /etc/krb5.conf (or KRB5_CONFIG) names the domain's realm and KDCs, that the clocks agree within "
                 "5 minutes, and that the host is reached by the name its SPN has (docs/kerberos.md).")

# Exception class names (anywhere in the MRO) of requests, urllib3, pypsrp, pywinrm and spnego, so this
# module needs none of those libraries to classify their errors.
_AUTH_CLASSES = {"AuthenticationError", "InvalidCredentialsError", "BasicAuthDisabledError", "SpnegoError",
                 "NoCredentialError", "BadMechanismError"}
# krb5 (pyspnego's password logon) and gssapi raise these before the host is asked: still the credentials.
_KERBEROS_CLASSES = {"Krb5Error", "GSSError", "KerberosExchangeError"}
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
    if names & _KERBEROS_CLASSES:
        return HostOperationError(host, operation, "authentication", "Kerberos logon failed (%s)" % text, hint=HINT_KERBEROS)
    if names & _AUTH_CLASSES or code == 401:
        return HostOperationError(host, operation, "authentication", "credentials refused (%s)" % text, hint=HINT_AUTH)
    if names & _TLS_CLASSES:
        return HostOperationError(host, operation, "unreachable", "TLS failure (%s)" % text, hint=HINT_TLS)
    if names & _UNREACHABLE_CLASSES or isinstance(exc, (OSError, TimeoutError)):
        return HostOperationError(host, operation, "unreachable", "host did not answer (%s)" % text, hint=HINT_UNREACHABLE)
    return HostOperationError(host, operation, "failed", "remote call failed (%s)" % text,
                              hint="Check the WinRM service and the Windows event logs on the host.")


_CLIXML_ERROR = re.compile(r'<S S="Error">(.*?)</S>', re.S)


def clixml_errors(stderr_text):
    """The error lines of a powershell.exe CLIXML stderr stream (progress records dropped), or the text as is."""
    text = stderr_text or ""
    if not text.lstrip().startswith("#< CLIXML"):
        return [text] if text.strip() else []
    lines = [unescape(m).replace("_x000D_", "").replace("_x000A_", "\n") for m in _CLIXML_ERROR.findall(text)]
    joined = "".join(lines).strip()
    return [joined] if joined else []


# --- typed values -> record lines (format: bridge_scripts module docstring) ---------------------------------

def _b64(text):
    return base64.b64encode(text.encode("utf-8")).decode("ascii") or "."


def check_name(name, what="property or parameter"):
    """Names are written into WQL and records; only identifiers pass."""
    if not isinstance(name, str) or not NAME.match(name):
        raise BridgeError("not a valid %s name: %r" % (what, name), code=0x80041017)
    return name


def check_namespace(namespace):
    """Namespaces go into class paths: backslash-separated identifiers only (root\\virtualization\\v2)."""
    if not isinstance(namespace, str) or not NAMESPACE.match(namespace):
        raise BridgeError("not a valid namespace: %r" % (namespace,), code=0x8004100E)
    return namespace


class _Encoder(object):
    def __init__(self):
        self.lines = []
        self._next_id = 0

    def item(self, value):
        """(kind, base64 text) of one value; an Embedded is defined (with its nested ones) first."""
        if value is None:
            return "n", "."
        if isinstance(value, bool):
            return "b", _b64("1" if value else "0")
        if isinstance(value, int):
            return "i", _b64(str(value))
        if isinstance(value, float):
            return "d", _b64(repr(value))
        if isinstance(value, str):
            return "s", _b64(value)
        if isinstance(value, Ref):
            return "r", _b64(value.path)
        if isinstance(value, Embedded):
            return "e", _b64(str(self.embedded(value)))
        raise BridgeError("cannot send a value of type %s to the host" % type(value).__name__, code="bad_request")

    def fields(self, name, value):
        """The fields after the target of one record: V name kind value, or A name kind:value ..."""
        check_name(name)
        if isinstance(value, (list, tuple)):
            return "A", [name] + ["%s:%s" % self.item(v) for v in value]
        return "V", [name] + list(self.item(value))

    def values(self, target, mapping):
        for name, value in (mapping or {}).items():
            record, fields = self.fields(name, value)
            self.lines.append(" ".join([record, target] + fields))

    def embedded(self, value):
        """Define an embedded instance: nested ones first (their records precede), then E and its properties."""
        check_name(value.class_name, "class")
        properties = [self.fields(name, v) for name, v in value.properties.items()]
        ident = self._next_id
        self._next_id += 1
        self.lines.append("E %d %s %s" % (ident, _b64(value.class_name), _b64(value.based_on or "")))
        for record, fields in properties:
            self.lines.append(" ".join([record, "e%d" % ident] + fields))
        return ident


def encode_where(where):
    """Record lines of a query's WHERE map (equality only; a list is refused)."""
    encoder = _Encoder()
    for name, value in (where or {}).items():
        if isinstance(value, (list, tuple, Embedded)):
            raise BridgeError("a WHERE value must be a single value: %s" % name, code=0x80041017)
    encoder.values("w", where)
    return encoder.lines


def encode_arguments(arguments):
    """Record lines of a method's arguments, embedded instances (nested first) included."""
    encoder = _Encoder()
    encoder.values("a", arguments)
    return encoder.lines


def decode_records(lines):
    """The inverse of the encoders, for tests and debugging: [("V"|"A", target, name, [(kind, text)]) | ("E", id, class, based_on)]."""
    def text(value):
        return "" if value == "." else base64.b64decode(value).decode("utf-8")

    out = []
    for line in lines:
        fields = line.split(" ")
        if fields[0] == "E":
            out.append(("E", fields[1], text(fields[2]), text(fields[3])))
            continue
        items = [fields[3:5]] if fields[0] == "V" else [f.split(":") for f in fields[3:]]
        out.append((fields[0], fields[1], fields[2], [(kind, text(value)) for kind, value in items]))
    return out


# --- script output -> result ----------------------------------------------------------------------------------

def _load_json(text):
    text = text.strip()
    if not text:
        raise ValueError("no output")
    try:
        return json.loads(text)
    except ValueError:
        # A console host may print other lines (warnings) first; the document is the last line.
        return json.loads(text.splitlines()[-1])


def parse_output(host, call, output, errors=(), secrets=()):
    """The ``result`` of a script's document; its ``error`` raises BridgeError; anything else HostOperationError."""
    error_text = scrub("\n".join(str(e) for e in errors if str(e).strip()), secrets)
    try:
        document = _load_json(output or "")
    except ValueError:
        detail = "the bridge script %s printed no JSON document" % call
        if output and output.strip():
            detail += " (output: %s)" % scrub(output.strip(), secrets)
        if error_text:
            detail += "; PowerShell errors: %s" % error_text
        raise HostOperationError(host, call, "failed", detail, hint=HINT_OUTPUT)
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        err = document["error"]
        message = scrub(err.get("message") or "the host reported an error", secrets)
        if err.get("line"):
            message += " (%s script line %s)" % (call, err["line"])
        raise BridgeError("Host %s, %s: %s" % (host, call, message), code=err.get("code"), category=err.get("category") or "failed")
    if not isinstance(document, dict) or "result" not in document:
        raise HostOperationError(host, call, "failed", "the bridge script %s printed an unexpected document" % call, hint=HINT_OUTPUT)
    if error_text:
        # Our scripts stop on every error and report it in the document; a stray record is only logged.
        LOG.debug("host %s: %s reported error records besides its result: %s", host, call, error_text)
    return document["result"]


class ScriptBridge(Bridge):
    """Every bridge call as one bridge script run; subclasses implement ``_execute`` and ``close``."""

    def __init__(self, settings):
        self.settings = settings
        self.host = settings.host

    def _execute(self, call, script_text, parameters):
        """Run ``script_text`` with ``parameters`` (name -> str/int/bool/None/list of str); (output, error texts)."""
        raise NotImplementedError

    def _call(self, call, **values):
        script = SCRIPTS[call]
        if TIMEOUT_PARAMETER in script.parameters:
            values[TIMEOUT_PARAMETER] = int(self.settings.operation_timeout)
        parameters = dict((name, values.get(name)) for name in script.parameters)
        output, errors = self._execute(call, script.text, parameters)
        return parse_output(self.host, call, output, errors, self.settings.secrets())

    def query(self, namespace, class_name, where=None, properties=None):
        check_name(class_name, "class")
        return self._call("query", Namespace=check_namespace(namespace), ClassName=class_name, Where=encode_where(where),
                          Properties=[check_name(p, "property") for p in (properties or ())])

    def associators(self, namespace, path, assoc_class, result_class=None):
        check_name(assoc_class, "class")
        if result_class is not None:
            check_name(result_class, "class")
        return self._call("associators", Namespace=check_namespace(namespace), Path=path, AssocClass=assoc_class, ResultClass=result_class or "")

    def invoke(self, namespace, path, method, arguments=None):
        check_name(method, "method")
        return self._call("invoke", Namespace=check_namespace(namespace), Path=path, Method=method, Arguments=encode_arguments(arguments))

    def invoke_paged(self, namespace, path, method, arguments, paging):
        check_name(method, "method")
        for name in paging.names():
            check_name(name, "parameter")
        return self._call("invoke_paged", Namespace=check_namespace(namespace), Path=path, Method=method,
                          Arguments=encode_arguments(arguments), OffsetParameter=paging.offset, LengthParameter=paging.length,
                          ProcessedParameter=paging.processed, StartOffset=paging.start, EndOffset=paging.end,
                          MaxLength=paging.max_length, MaxCalls=paging.max_calls, Collect=list(paging.collect))

    def service(self, name, start=False):
        return self._call("service", Name=name, Start=bool(start))

    def vss_writers(self):
        return self._call("vss_writers")

    def diskshadow(self, script):
        return self._call("diskshadow", Script=script)

    def read_file(self, path, max_bytes):
        result = self._call("read_file", Path=path, MaxBytes=int(max_bytes))
        if not result.get("exists"):
            return None
        return base64.b64decode(result.get("data") or "")

    def write_file(self, path, data, exclusive=False):
        if isinstance(data, str):
            data = data.encode("utf-8")
        return self._call("write_file", Path=path, Data=base64.b64encode(bytes(data)).decode("ascii"), Exclusive=bool(exclusive))

    def remove_file(self, path):
        return bool(self._call("remove_file", Path=path))

    def list_directory(self, path):
        return self._call("list_directory", Path=path)

    def host_environment(self):
        return self._call("host_environment")

    def close(self):
        """Release the connection; safe to call twice."""
