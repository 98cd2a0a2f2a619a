# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The psrp transport: ``PsrpBridge``, the WMI bridge over a pypsrp RunspacePool.

Each bridge call runs one generic script of ``bridge_scripts.SCRIPTS``: the text goes in with
``PowerShell.add_script`` and the call's values with ``add_parameters`` (PSRP carries strings, numbers,
booleans and string arrays natively), so no user value is ever part of the script text. One runspace
pool is opened on first use and kept until ``close()``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging
import traceback

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.script_bridge import ScriptBridge, transport_failure

try:
    from pypsrp.powershell import PowerShell, RunspacePool
    from pypsrp.wsman import WSMan
    HAS_PYPSRP = True
    PYPSRP_IMPORT_ERROR = None
except ImportError:
    PowerShell = RunspacePool = WSMan = None
    HAS_PYPSRP = False
    PYPSRP_IMPORT_ERROR = traceback.format_exc()

LOG = logging.getLogger(__name__)

# WSMan's own OperationTimeout is the server-side wait of one Receive (pypsrp loops); it must stay below read_timeout.
WSMAN_RECEIVE_SECONDS = 20


def wsman_options(settings):
    """Keyword arguments of pypsrp.wsman.WSMan for the connection settings."""
    if settings.cert_validation == "ignore":
        cert_validation = False
    else:
        cert_validation = settings.ca_cert or True   # pypsrp accepts a CA bundle path here (requests' verify)
    options = dict(
        server=settings.host, port=settings.port, ssl=settings.protocol == "https", auth=settings.auth,
        cert_validation=cert_validation, connection_timeout=settings.connection_timeout,
        read_timeout=settings.read_timeout,
        operation_timeout=max(1, min(WSMAN_RECEIVE_SECONDS, settings.read_timeout - 1)),
        encryption=settings.message_encryption,
    )
    if settings.auth == "certificate":
        options.update(certificate_pem=settings.certificate_pem, certificate_key_pem=settings.certificate_key_pem)
    else:
        options.update(username=settings.username, password=settings.password)
    return options


def _missing_pypsrp(host, call):
    return HostOperationError(host, call, "failed", "the Python library pypsrp is not installed",
                              hint="Install pypsrp on the machine that runs the module (pip install pypsrp), or use transport winrm.",
                              import_error=PYPSRP_IMPORT_ERROR)


class PsrpBridge(ScriptBridge):
    """The WMI bridge over PSRP (``bridge.Bridge``); ``close()`` closes the runspace pool."""

    def __init__(self, settings):
        super(PsrpBridge, self).__init__(settings)
        self._pool = None

    def _runspace_pool(self, call):
        if not HAS_PYPSRP:
            raise _missing_pypsrp(self.host, call)
        if self._pool is None:
            pool = RunspacePool(WSMan(**wsman_options(self.settings)), configuration_name=self.settings.configuration_name)
            pool.open()
            self._pool = pool
        return self._pool

    def _execute(self, call, script_text, parameters):
        try:
            shell = PowerShell(self._runspace_pool(call))
            shell.add_script(script_text)
            shell.add_parameters(parameters)
            output = shell.invoke()
        except HostOperationError:
            raise
        except Exception as exc:  # pylint: disable=broad-except  # every client failure becomes a categorised error
            raise transport_failure(self.host, call, exc, self.settings.secrets())
        errors = [str(record) for record in shell.streams.error] if shell.had_errors else []
        text = "\n".join(str(item) for item in output if item is not None)
        LOG.debug("host %s: bridge %s printed %d characters, %d error records", self.host, call, len(text), len(errors))
        return text, errors

    def close(self):
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                pool.close()
            except Exception as exc:  # pylint: disable=broad-except  # closing must never hide the real result
                LOG.debug("host %s: closing the runspace pool failed: %s", self.host, type(exc).__name__)
