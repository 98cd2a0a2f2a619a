# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The psrp transport: run an operation's PowerShell script in a pypsrp RunspacePool.

The script text goes in with ``PowerShell.add_script`` and the operation's values with
``add_parameters``, so no user value is ever part of the script text. One runspace pool is
opened on first use and kept for the session.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging
import traceback

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_result import parse_script_output, transport_failure
from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_scripts import SCRIPTS, script_parameters

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


class PsrpTransport(object):
    """Runs host operations over PSRP; ``run(operation, params) -> result``; ``close()`` closes the pool."""

    def __init__(self, settings):
        self.settings = settings
        self._pool = None

    def _runspace_pool(self, operation):
        if not HAS_PYPSRP:
            raise HostOperationError(self.settings.host, operation, "failed", "the Python library pypsrp is not installed",
                                     hint="Install pypsrp on the machine that runs the module (pip install pypsrp), or use transport winrm.",
                                     import_error=PYPSRP_IMPORT_ERROR)
        if self._pool is None:
            pool = RunspacePool(WSMan(**wsman_options(self.settings)), configuration_name=self.settings.configuration_name)
            pool.open()
            self._pool = pool
        return self._pool

    def run(self, operation, params):
        script = SCRIPTS[operation]
        secrets = self.settings.secrets()
        try:
            pool = self._runspace_pool(operation)
            shell = PowerShell(pool)
            shell.add_script(script.text)
            shell.add_parameters(script_parameters(params, self.settings.operation_timeout))
            output = shell.invoke()
        except HostOperationError:
            raise
        except Exception as exc:  # pylint: disable=broad-except  # every client failure becomes a categorised error
            raise transport_failure(self.settings.host, operation, exc, secrets)
        errors = [str(record) for record in shell.streams.error] if shell.had_errors else []
        text = "\n".join(str(item) for item in output if item is not None)
        LOG.debug("host %s: %s printed %d characters, %d error records", self.settings.host, operation, len(text), len(errors))
        return parse_script_output(self.settings.host, operation, text, errors, secrets)

    def close(self):
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                pool.close()
            except Exception as exc:  # pylint: disable=broad-except  # closing must never hide the real result
                LOG.debug("host %s: closing the runspace pool failed: %s", self.settings.host, type(exc).__name__)
