# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The PowerShell script of every host operation: ``SCRIPTS = {operation name: Script(name, text, sources)}``.

The psrp and winrm transports send ``SCRIPTS[name].text`` with the operation's parameters as
script parameters (``script_parameters``). The texts live in ``powershell_common`` (shared prelude),
``powershell_vm``, ``powershell_rct`` and ``powershell_vss`` (diskshadow, method vss); docs/powershell.md describes each one and its sources.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.host import powershell_rct, powershell_vm
from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_common import Script, script_parameters

__all__ = ["SCRIPTS", "Script", "script_parameters", "get_script"]

SCRIPTS = dict((script.name, script) for script in (
    powershell_vm.GET_HOST_INFO,
    powershell_vm.GET_SERVICE,
    powershell_vm.START_SERVICE,
    powershell_vm.GET_VMS,
    powershell_vm.ENABLE_INTEGRATION_SERVICE,
    powershell_vm.GET_VM_CONFIGURATION,
    powershell_vm.IMPORT_VM,
    powershell_rct.CREATE_RECOVERY_POINT,
    powershell_rct.GET_RECOVERY_POINTS,
    powershell_rct.REMOVE_RECOVERY_POINT,
    powershell_rct.CONVERT_TO_REFERENCE_POINT,
    powershell_rct.GET_REFERENCE_POINTS,
    powershell_rct.REMOVE_REFERENCE_POINT,
    powershell_rct.GET_DISK_CHANGES,
))


def get_script(name):
    """The Script of an operation, or KeyError naming the operation."""
    return SCRIPTS[name]
