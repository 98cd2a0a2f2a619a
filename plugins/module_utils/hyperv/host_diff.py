# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What ``hyperv_vss_ensure`` shows with ``--diff``: the VSS service and each VM's backup integration service.

Built from the module's result (host_checks.ensure_vss_ready), which says both what was found and what was (or, in
check mode, would be) changed, so the diff costs no extra call to the host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def vss_ready_diff(result, host, check_mode=False):
    """{before, after, ...} of the VSS service status and the VMs' backup integration services (enabled)."""
    service = result.get("vss_service") or {}
    name = service.get("name") or "vss"
    if check_mode:
        status_before = service.get("status")
    else:
        status_before = service.get("previous_status") if result.get("would_start") else service.get("status")
    status_after = "Running" if result.get("would_start") else service.get("status")
    before = {"services": {name: {"status": status_before}}, "vms": {}}
    after = {"services": {name: {"status": status_after}}, "vms": {}}
    for vm in result.get("vms") or []:
        entry = vm.get("backup_integration")
        if entry is None:
            continue            # no backup integration service in the guest: nothing the module can change
        enabled_after = True if vm.get("would_enable") else bool(entry.get("enabled"))
        enabled_before = False if vm.get("would_enable") else bool(entry.get("enabled"))
        before["vms"][vm.get("name")] = {"integration_services": {entry.get("name"): {"enabled": enabled_before}}}
        after["vms"][vm.get("name")] = {"integration_services": {entry.get("name"): {"enabled": enabled_after}}}
    return {"before": before, "after": after, "before_header": "Hyper-V host %s" % host, "after_header": "Hyper-V host %s" % host}
