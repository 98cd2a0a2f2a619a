# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small helpers the recovery-point modules share: method calls with return codes, host files, times.

``checkpoints.py``, ``vss_points.py``, ``reference_points.py``, ``change_tracking.py`` and ``locks.py``
use only the bridge (``host/bridge.py``). Where ``hyperv/wmi.py`` offers the same helper (namespace
choice, DMTF times), this module delegates to it, so a method's ReturnValue / job ErrorCode becomes a
HostOperationError category the same way everywhere.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json
import re

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import wmi

RECOVERY_TYPE = "Microsoft:Hyper-V:Snapshot:Recovery"
REALIZED_TYPE = "Microsoft:Hyper-V:System:Realized"
STATE_DIR = "hyperv.backup"               # under <ProgramData> on the host


def host_name(bridge):
    return wmi.host_of(bridge)


def fail(bridge, operation, category, message, hint=None, windows_error=None, **details):
    raise HostOperationError(host_name(bridge), operation, category, message, hint=hint, windows_error=windows_error, **details)


def namespace(bridge, operation="get_recovery_points"):
    return wmi.namespace(bridge, operation)


def os_build(bridge, operation="get_recovery_points"):
    return wmi.build(bridge, operation)


def the_service(bridge, ns, class_name, operation):
    return wmi.service(bridge, class_name, operation, ns)


def call(bridge, ns, path, method, arguments, operation, category, code_categories=None, what=None, hint=None):
    """wmi.call with the argument order of this package (a failed method or job raises HostOperationError)."""
    return wmi.call(bridge, operation, ns, path, method, arguments, category=category, code_categories=code_categories,
                    what=what, hint=hint)


def affected(result, class_name):
    """Instances of ``class_name`` among the job's affected elements, created ones (ElementEffects 5) first."""
    made = wmi.affected_elements(result, class_name)
    return made + [r for r in wmi.affected_elements(result, class_name, effect=None) if r not in made]


def dmtf_to_iso(value):
    return wmi.dmtf_to_iso(value)


def find_vm(bridge, ns, vm_id, operation):
    """Msvm_ComputerSystem of a VM by its id (Name), compared case-insensitively."""
    wanted = str(vm_id or "").strip("{}").lower()
    rows = bridge.query(ns, "Msvm_ComputerSystem", where={"Name": wanted})
    if not rows:
        rows = [r for r in bridge.query(ns, "Msvm_ComputerSystem") if str(r.get("Name") or "").lower() == wanted]
    if not rows:
        fail(bridge, operation, "not_found", "no virtual machine with id %s on this host" % vm_id,
             hint="List the host's VMs with hyperv_host_info; a VM that moved to another node is backed up there.")
    return rows[0]


# --- times -----------------------------------------------------------------------------------------

_DMTF = re.compile(r"^(\d{14})\.(\d{6})([+-])(\d{3})$")


def parse_dmtf(value):
    """A DMTF datetime ('20261202073512.000000+000') as an aware UTC datetime, or None."""
    match = _DMTF.match(str(value or "").strip())
    if not match:
        return None
    moment = datetime.datetime.strptime(match.group(1), "%Y%m%d%H%M%S").replace(microsecond=int(match.group(2)))
    offset = int(match.group(4)) * (1 if match.group(3) == "+" else -1)
    return (moment - datetime.timedelta(minutes=offset)).replace(tzinfo=datetime.timezone.utc)


def iso(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if moment else None


# --- host files -------------------------------------------------------------------------------------

def win_join(*parts):
    return "\\".join(str(p).strip("\\") if i else str(p).rstrip("\\") for i, p in enumerate(parts) if p is not None and p != "")


def state_root(bridge):
    """<ProgramData>\\hyperv.backup on the host."""
    cached = getattr(bridge, "_hvb_state_root", None)
    if cached:
        return cached
    root = win_join(bridge.host_environment().get("program_data") or "C:\\ProgramData", STATE_DIR)
    try:
        bridge._hvb_state_root = root
    except AttributeError:
        pass
    return root


def read_json(bridge, path, max_bytes=4 * 1024 * 1024):
    """A JSON document from a host file; None when missing or unreadable (a run killed while writing)."""
    data = bridge.read_file(path, max_bytes)
    if data is None:
        return None
    try:
        doc = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def write_json(bridge, path, doc, exclusive=False):
    return bridge.write_file(path, json.dumps(doc, sort_keys=True, indent=1).encode("utf-8"), exclusive=exclusive)
