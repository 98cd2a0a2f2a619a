# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options and the host session every module uses to run host operations.

``connection_argument_spec()`` matches the ``hyperv.backup.connection`` doc fragment.
``HostSession.from_module_params(params)`` picks the transport (psrp, winrm or lab) and opens its
WMI bridge (``host/bridge.py``); ``session.run(name, **params)`` checks the operation against
``hyperv/host_operations.OPERATIONS`` and runs its Python logic over that bridge
(``run_operation``), so modules never know how the host is reached and real hosts and the lab
run the same Hyper-V logic.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging

from ansible.module_utils.basic import env_fallback

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError, HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import BridgeError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_operations import get_operation, run_operation

LOG = logging.getLogger(__name__)

TRANSPORTS = ("psrp", "winrm", "lab")
AUTH_METHODS = ("negotiate", "kerberos", "ntlm", "credssp", "certificate", "basic")
DEFAULT_PORTS = {"https": 5986, "http": 5985}


def connection_argument_spec():
    """Return the argument spec of the connection options (see doc_fragments/connection.py)."""
    return dict(
        transport=dict(type="str", choices=list(TRANSPORTS), default="psrp", fallback=(env_fallback, ["HYPERV_TRANSPORT"])),
        host=dict(type="str", required=True, fallback=(env_fallback, ["HYPERV_HOST"])),
        port=dict(type="int", fallback=(env_fallback, ["HYPERV_PORT"])),
        username=dict(type="str", fallback=(env_fallback, ["HYPERV_USERNAME"])),
        password=dict(type="str", no_log=True, fallback=(env_fallback, ["HYPERV_PASSWORD"])),
        protocol=dict(type="str", choices=["https", "http"], default="https", fallback=(env_fallback, ["HYPERV_PROTOCOL"])),
        auth=dict(type="str", choices=list(AUTH_METHODS), default="negotiate", fallback=(env_fallback, ["HYPERV_AUTH"])),
        cert_validation=dict(type="str", choices=["validate", "ignore"], default="validate",
                             fallback=(env_fallback, ["HYPERV_CERT_VALIDATION"])),
        ca_cert=dict(type="path", fallback=(env_fallback, ["HYPERV_CA_CERT"])),
        certificate_pem=dict(type="path"),
        certificate_key_pem=dict(type="path", no_log=False),
        message_encryption=dict(type="str", choices=["auto", "always", "never"], default="auto"),
        configuration_name=dict(type="str", default="Microsoft.PowerShell"),
        connection_timeout=dict(type="int", default=30),
        read_timeout=dict(type="int", default=300),
        operation_timeout=dict(type="int", default=3600),
        lab_directory=dict(type="path", fallback=(env_fallback, ["HYPERV_LAB_DIRECTORY"])),
    )


class ConnectionSettings(object):
    """The connection options after defaults and checks; ``repr`` never shows the password."""

    FIELDS = tuple(connection_argument_spec())

    def __init__(self, **options):
        spec = connection_argument_spec()
        for name in self.FIELDS:
            value = options.get(name)
            if value is None:
                value = spec[name].get("default")
            setattr(self, name, value)
        if self.port is None and self.protocol in DEFAULT_PORTS:
            self.port = DEFAULT_PORTS[self.protocol]
        self._check()

    def _check(self):
        def refuse(problem, hint):
            raise HyperVBackupError("Connection options for host %s: %s." % (self.host, problem), hint=hint)

        if self.transport not in TRANSPORTS:
            refuse("transport %r is not one of %s" % (self.transport, ", ".join(TRANSPORTS)), "Set transport to psrp, winrm or lab.")
        if not self.host:
            refuse("no host given", "Set the host option or the HYPERV_HOST environment variable.")
        if self.transport == "lab":
            if not self.lab_directory:
                refuse("transport lab needs lab_directory", "Set lab_directory or HYPERV_LAB_DIRECTORY to the lab host directory.")
            return
        if self.auth not in AUTH_METHODS:
            refuse("auth %r is not one of %s" % (self.auth, ", ".join(AUTH_METHODS)), "Choose a supported auth method.")
        if self.protocol not in DEFAULT_PORTS:
            refuse("protocol %r is not https or http" % (self.protocol,), "Set protocol to https or http.")
        if self.auth == "certificate":
            if not (self.certificate_pem and self.certificate_key_pem):
                refuse("auth certificate needs certificate_pem and certificate_key_pem",
                       "Give the paths of the client certificate and of its key (PEM).")
        elif self.auth != "kerberos" and not (self.username and self.password):
            refuse("auth %s needs username and password" % self.auth,
                   "Set username and password (or HYPERV_USERNAME / HYPERV_PASSWORD), or use auth kerberos with a ticket.")
        if self.auth == "basic" and self.protocol == "http" and self.message_encryption != "never":
            refuse("auth basic cannot encrypt messages over http",
                   "Use protocol https with basic auth, or an auth method that encrypts (negotiate, kerberos, ntlm, credssp).")
        if self.operation_timeout <= 0 or self.read_timeout <= 0 or self.connection_timeout <= 0:
            refuse("timeouts must be positive", "Give connection_timeout, read_timeout and operation_timeout in seconds (> 0).")

    def secrets(self):
        """Values that must never appear in results, messages or logs."""
        return [s for s in (self.password,) if s]

    def __repr__(self):
        return "ConnectionSettings(transport=%r, host=%r, port=%r, protocol=%r, auth=%r, username=%r, password=%s)" % (
            self.transport, self.host, self.port, self.protocol, self.auth, self.username,
            "'********'" if self.password else "None")


_PARAM_TYPES = {str: (str,), int: (int,), list: (list, tuple), dict: (dict,), bool: (bool,)}


def _check_param_types(host, operation, params):
    """Refuse parameters of the wrong type before they reach a host (a module bug, so say so)."""
    for name, value in params.items():
        wanted = operation.params[name][0]
        allowed = _PARAM_TYPES.get(wanted, (wanted,))
        wrong = not isinstance(value, allowed) or (wanted is int and isinstance(value, bool))
        if wrong:
            raise HostOperationError(
                host, operation.name, "failed",
                "parameter %s must be %s, got %s" % (name, wanted.__name__, type(value).__name__),
                hint="This is a bug in the calling module; report it with the task that failed.")


class HostSession(object):
    """A connection to one Hyper-V host that runs named host operations; a context manager."""

    def __init__(self, settings):
        self.settings = settings
        self._bridge = None

    @classmethod
    def from_module_params(cls, params):
        """Build a session from a module's params (the keys of connection_argument_spec(); others are ignored)."""
        return cls(ConnectionSettings(**dict((k, params.get(k)) for k in ConnectionSettings.FIELDS)))

    @property
    def host(self):
        return self.settings.host

    @property
    def bridge(self):
        """The transport's WMI bridge (opened on first use)."""
        if self._bridge is None:
            kind = self.settings.transport
            if kind == "psrp":
                from ansible_collections.hyperv.backup.plugins.module_utils.host.transport_psrp import PsrpBridge
                self._bridge = PsrpBridge(self.settings)
            elif kind == "winrm":
                from ansible_collections.hyperv.backup.plugins.module_utils.host.transport_winrm import WinrmBridge
                self._bridge = WinrmBridge(self.settings)
            else:
                # Imported here so that psrp/winrm users (and their tests) never need the lab emulator.
                from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge import LabBridge
                self._bridge = LabBridge(self.settings.lab_directory, self.settings.host)
        return self._bridge

    def path_map(self):
        """{Windows prefix: local directory} under which the host's files are readable here (the lab's), or {}."""
        return dict(getattr(self.bridge, "path_map", None) or {})

    def run(self, operation_name, **params):
        """Run one host operation and return its result (dict or list); failures raise HostOperationError."""
        try:
            operation = get_operation(operation_name)
            checked = operation.check_params(params)
        except ValueError as exc:
            raise HostOperationError(self.host, operation_name, "failed", str(exc),
                                     hint="This is a bug in the calling module; report it with the task that failed.")
        _check_param_types(self.host, operation, checked)
        LOG.debug("host %s: running %s with parameters %s", self.host, operation_name, sorted(checked))
        try:
            return run_operation(self.bridge, operation_name, checked)
        except HostOperationError as exc:
            if exc.operation == operation_name:
                raise
            # A transport names the bridge call that failed (query, invoke ...); the user asked for the operation.
            raise HostOperationError(self.host, operation_name, exc.category, exc.problem, hint=exc.hint,
                                     windows_error=exc.windows_error, bridge_call=exc.operation)
        except BridgeError as exc:
            # The logic maps the failures it expects; anything else still reaches the user with its code.
            raise HostOperationError(self.host, operation_name, getattr(exc, "category", None) or "failed", exc.message,
                                     hint=getattr(exc, "hint", None) or "See the error code; the host refused a WMI call.",
                                     windows_error=_code_text(getattr(exc, "code", None)))

    def close(self):
        """Close the bridge (runspace pool / shell); safe to call twice."""
        bridge, self._bridge = self._bridge, None
        if bridge is not None and hasattr(bridge, "close"):
            bridge.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False

    def __repr__(self):
        return "HostSession(%r)" % (self.settings,)


def _code_text(code):
    if isinstance(code, int):
        return "0x%08X" % (code & 0xFFFFFFFF) if code < 0 or code > 0xFFFF else str(code)
    return code
