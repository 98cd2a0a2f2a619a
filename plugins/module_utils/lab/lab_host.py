# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Operations on a lab host from Python: the same Hyper-V logic the modules run, over the lab's bridge.

``LabTransport(lab_directory, host).run(operation_name, params)`` is ``run_operation(LabBridge(...),
...)``: the operations of ``hyperv/host_operations.py`` answered by the Python logic of ``hyperv/``
talking to the emulated WMI object model (``lab_bridge.py``), exactly as a module with
``transport: lab`` does. Tests and the hyperv_lab module use it; ``local(path)`` turns a Windows path
the host reports into the lab file behind it. ``LabFleet`` lists the hosts of a lab directory.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import BridgeError
from ansible_collections.hyperv.backup.plugins.module_utils.host.disk_access import map_path
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_operations import OPERATIONS, run_operation
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge import LabBridge
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout


class LabTransport:
    """One lab host reached the way a module reaches it: ``run(operation, params)`` over ``LabBridge``."""

    def __init__(self, lab_directory, host):
        self.host = host
        self.bridge = LabBridge(lab_directory, host)
        self.layout = LabLayout(lab_directory, host)

    def run(self, operation_name, params=None):
        try:
            return run_operation(self.bridge, operation_name, dict(params or {}))
        except BridgeError as exc:
            raise HostOperationError(self.host, operation_name, getattr(exc, "category", None) or "failed", exc.message,
                                     hint=exc.hint, windows_error=exc.code)

    def path_map(self):
        return dict(self.bridge.path_map or {})

    def local(self, windows_path):
        """The lab file behind a Windows path the host reported (None when it maps nowhere)."""
        return map_path(windows_path, self.path_map())

    def facts(self):
        """(host facts, VMs) as get_host_info / get_vms report them, each disk with the lab file behind its Windows
        path (``local_path``); when the host refuses (a fault such as 'unreachable' or a stopped vmms), what the
        lab's files say, with the refusal in ``error``. Reading facts changes nothing on the host (the VSS writers
        are not listed while VSS is stopped: hyperv/vss_writer.py)."""
        try:
            host, vms = self.run("get_host_info"), self.run("get_vms")
        except HostOperationError as err:
            doc = self.layout.read_host()
            host = {"computer_name": self.host.upper(), "era": doc.get("era"), "faults": list(doc.get("faults") or []),
                    "error": err.message}
            vms = []
            for vm_id in self.layout.vm_ids():
                try:
                    vm = self.layout.read_vm(vm_id)
                except FileNotFoundError:
                    continue
                vms.append({"id": vm["id"], "name": vm["name"], "state": vm.get("state")})
            return host, vms
        for vm in vms:
            for disk in vm.get("disks") or []:
                if disk.get("path"):
                    disk["local_path"] = self.local(disk["path"])
        return host, vms

    def close(self):
        self.bridge.close()


class LabFleet:
    """All lab hosts under one directory."""

    def __init__(self, lab_directory):
        self.lab_directory = os.path.abspath(lab_directory)

    def host_names(self):
        """Names of the lab hosts that exist (a directory with a host.json)."""
        if not os.path.isdir(self.lab_directory):
            return []
        return sorted(name for name in os.listdir(self.lab_directory)
                      if not name.startswith(".") and LabLayout(self.lab_directory, name).exists())

    def host(self, name):
        return LabTransport(self.lab_directory, name)


def operation_names():
    """Operations a lab host answers: every one of host_operations.OPERATIONS, through the same logic."""
    return sorted(OPERATIONS)
